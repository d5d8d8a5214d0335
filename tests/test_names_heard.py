"""Names only once heard (card llm.names, describe --cast): a description may name a
character only when its prompt holds the name (the slot's dialogue or a chosen context
item); decoding bans the first token of every name it does not."""

import re

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


def test_where_a_name_is_heard_it_takes_the_place_of_the_unheard_one(card):
    """Greedy: up to where the model would write the unheard name nothing changes; there the
    likeliest heard name is written instead, so the sentence goes on about someone known."""
    card.llm.min_new_tokens = 2
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card).eval()
    dec = model.decoder
    items, subs = [[ContextItem("the red key", "take it")]], ["where is it"]
    free = _generated(model, items, subs, [], 1)[0][0][0]
    k, x = next((i, t) for i, t in enumerate(free) if dec.tok.decode([t]).strip().isalpha())
    name = dec.tok.decode([x]).strip()
    other = next(
        w
        for w in (dec.tok.decode([t]).strip() for t in range(len(dec.tok)))
        if w.isalpha()
        and w != name
        and not re.search(rf"\b{re.escape(w)}\b", subs[0] + " the red key take it")
    )
    heard_subs = [f"{subs[0]} {other}"]
    free = _generated(model, items, heard_subs, [], 1)[0][0][0]
    k, x = next((i, t) for i, t in enumerate(free) if dec.tok.decode([t]).strip() == name)
    rule = dec.name_tokens([name], [other])
    ruled = _generated(model, items, heard_subs, [name, other], 1)[0][0][0]
    assert ruled[:k] == free[:k]
    assert ruled[k] in rule.heard and x not in ruled
