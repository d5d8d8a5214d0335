"""Describe to fit: the n-best ranked against the slot's word budget (model/locomad.py's
rank_to_budget, llm.length_weight), exact inputs and a tiny model."""

from __future__ import annotations

import torch

from locomad_cli.model.locomad import rank_to_budget

CANDS = [  # the decoder's n-best, best first
    ("A man in a green coat enters the kitchen.", -0.2),  # 9 words
    ("Leo walks into the kitchen.", -0.3),  # 5
    ("A man enters.", -0.5),  # 3
]


def test_the_best_candidate_within_the_budget_comes_first_the_longer_ones_stay():
    ranked = rank_to_budget(CANDS, budget=6.8, weight=1.0)  # a 2.4 s slot at 170 wpm
    assert ranked == [CANDS[1], CANDS[2], CANDS[0]]  # scores unchanged, nothing dropped
    assert rank_to_budget(CANDS, budget=10.0, weight=1.0) == CANDS  # all fit: the decoder's
    assert rank_to_budget(CANDS, budget=4.0, weight=1.0)[0] == CANDS[2]
    # a light weight lets a much likelier wording run a word over
    light = [("Leo walks into the big kitchen.", -0.2), ("Leo walks in.", -0.9)]
    assert rank_to_budget(light, budget=5.0, weight=0.3)[0] == light[0]
    assert rank_to_budget(light, budget=5.0, weight=1.0)[0] == light[1]


def test_generate_ranks_its_n_best_to_each_clips_budget(card, one_thread):
    from helpers.batches import batch_of

    from locomad_cli.model.locomad import LoCoMAD

    card.llm.max_new_tokens = 8
    card.llm.num_beams = 4
    card.llm.length_weight = 100.0  # strict: fewest words first
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card)
    batch = batch_of(card, 2)
    free = model.generate(batch)
    fitted = model.generate(batch, budgets=[0.0, 1000.0])
    words = [len(t.split()) for t, _ in fitted[0].candidates]
    assert words == sorted(words) and fitted[0].text == fitted[0].candidates[0][0]
    assert sorted(fitted[0].candidates) == sorted(free[0].candidates)  # same n-best
    assert fitted[1].candidates == free[1].candidates  # a roomy slot: the decoder's order
    card.llm.length_weight = 0.0  # off
    assert model.generate(batch, budgets=[0.0, 0.0])[0].candidates == free[0].candidates


def test_word_limits_stop_every_beam_at_its_limit(card, one_thread):
    from helpers.batches import batch_of

    from locomad_cli.model.locomad import LoCoMAD

    card.llm.max_new_tokens = 12
    card.llm.min_new_tokens = 1
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card)
    batch = batch_of(card, 2)
    q = model.pme.encode_queries(*model._frames(batch))
    free = model.decoder.generate_nbest(q, [[], []], ["", ""], num_beams=3)
    limited = model.decoder.generate_nbest(q, [[], []], ["", ""], num_beams=3, word_limits=[2, 50])
    assert max(len(t.split()) for t, _ in free[0]) > 2  # the tiny model rambles
    assert all(len(t.split()) <= 2 for t, _ in limited[0])
    assert limited[1] == free[1]  # a limit it never reaches changes nothing
