"""Names only once heard (card llm.names, describe --cast): a description may name a
character only when its prompt holds the name (the slot's dialogue or a chosen context
item); decoding bans the first token of every name it does not."""

import math

import pytest
import torch

from locomad_cli.data.records import ContextItem
from locomad_cli.model.locomad import LoCoMAD, unheard_names

pytestmark = pytest.mark.usefixtures("one_thread")


def test_heard_means_said_as_a_whole_word_in_the_dialogue_or_a_chosen_item():
    names = ["Tom", "Olga", "Mary Jane", "Al"]
    items = [ContextItem("A woman in a red coat sits.", "Thanks, OLGA."), ContextItem("Tom goes.")]
    unheard, heard = unheard_names(names, "Mary Jane, sit down. Always.", items)
    assert heard == ["Tom", "Olga", "Mary Jane"]  # any case; a two-word name whole
    assert unheard == ["Al"]  # "Always" is not "Al"
    assert unheard_names(names, "", []) == (names, [])


def _generated(model, items, subtitles, names, beams):
    """Every candidate's token ids, with the names rule as LoCoMAD.generate applies it."""
    dec = model.decoder
    pairs = zip(subtitles, items, strict=True)
    rules = [dec.name_tokens(*unheard_names(names, s, its)) for s, its in pairs]
    q = torch.randn(
        len(items),
        model.card.pme.num_queries,
        model.card.pme.hidden_size,
        generator=torch.Generator().manual_seed(1),
    )
    return dec.generate_nbest_ids(q, items, subtitles, num_beams=beams, names=rules)


@pytest.mark.parametrize("beams", [1, 3])
def test_an_unheard_name_is_never_written_and_a_heard_one_changes_nothing(card, beams):
    card.llm.min_new_tokens = 2
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card).eval()
    dec = model.decoder
    items, subs = [[ContextItem("the red key", "take it")], []], ["where is it", "no"]
    free = _generated(model, items, subs, [], beams)
    # a word the model writes, taken as if it were a name: its first token that is a word
    best = free[0][0][0]
    words = [t for t in best if dec.tok.decode([t]).strip().isalpha()]
    assert words, [dec.tok.decode([t]) for t in best]
    word = dec.tok.decode([words[0]]).strip()
    tokens = set(dec.name_tokens([word], []).unheard)
    assert words[0] in tokens
    ruled = _generated(model, items, subs, [word], beams)
    for cands in ruled:
        for ids, _ in cands:
            assert not tokens & set(ids), (word, ids)
    assert ruled[0][0][0] != free[0][0][0]
    # said in clip 0's dialogue, the name is heard there: clip 0 decodes as without the rule
    heard_subs = [f"{subs[0]} {word}", subs[1]]
    assert unheard_names([word], heard_subs[0], items[0]) == ([], [word])
    free_heard = _generated(model, items, heard_subs, [], beams)
    ruled_heard = _generated(model, items, heard_subs, [word], beams)
    assert ruled_heard[0] == free_heard[0]


def test_generate_takes_the_cards_names_by_default(card):
    card.llm.min_new_tokens = 2
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card).eval()
    from locomad_cli.data.records import ClipRecord, collate

    rec = ClipRecord(film="f", start=0.0, end=1.0, features=torch.randn(5, card.clip.dim))
    batch = collate([rec], card.pme.max_frames, card.dsm.proposal_len)
    dec = model.decoder
    free = model.generate(batch, setting="local")[0].text
    ids = dec.tok(free, add_special_tokens=False).input_ids
    word = next(w for w in (dec.tok.decode([t]).strip() for t in ids) if w.isalpha())
    model.card.llm.names = [word]
    ruled = model.generate(batch, setting="local")[0].text
    assert ruled != free
    assert not set(dec.name_tokens([word], []).unheard) & set(dec.tok(ruled).input_ids)
    assert model.generate(batch, setting="local", names=[])[0].text == free


def test_where_a_name_is_heard_it_takes_the_names_probability():
    """Per row (prompts x beams): when the cast names together outscore every other token,
    the likeliest heard name gets their whole probability; unheard names are always out."""
    from locomad_cli.model.decoder import NameTokens, _NameRule

    logp = torch.log(torch.tensor([0.30, 0.25, 0.20, 0.05, 0.20]))  # 1, 2 unheard; 3 heard
    rules = [NameTokens(unheard=[1, 2], heard=[3]), NameTokens(unheard=[1, 2], heard=[])]
    out = _NameRule(rules, beams=2)(None, logp.repeat(4, 1))
    for row in (0, 1):  # prompt 0, both beams: names 0.25 + 0.20 + 0.05 = 0.50 > 0.30
        assert int(out[row].argmax()) == 3
        assert float(out[row, 3].exp()) == pytest.approx(0.50)
        assert out[row, 1] == -math.inf and out[row, 2] == -math.inf
        assert torch.equal(out[row, [0, 4]], logp[[0, 4]])
    for row in (2, 3):  # prompt 1 has heard no name: the unheard ones are banned, that is all
        assert int(out[row].argmax()) == 0
        assert out[row, 1] == -math.inf and out[row, 2] == -math.inf
        assert torch.equal(out[row, [0, 3, 4]], logp[[0, 3, 4]])
    # names together below the best other token: the heard name keeps its own score
    low = torch.log(torch.tensor([0.60, 0.10, 0.10, 0.05, 0.15]))
    out = _NameRule(rules[:1], beams=1)(None, low[None].clone())
    assert int(out[0].argmax()) == 0 and out[0, 3] == low[3]
