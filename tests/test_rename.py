"""Character renaming for training (data/rename.py, `locomad train --rename-names`)."""

from __future__ import annotations

import re

import pytest
import torch

from locomad_cli.data.records import ClipRecord, ContextItem, collate
from locomad_cli.data.rename import name_pattern, read_names, rename_batch
from locomad_cli.utils import LocomadError

POOL = ["Tom", "Mira", "Ann", "Anna", "Omar", "Lena", "Ivo", "Rosa"]


def _batch() -> object:
    rec = ClipRecord(
        film="f",
        start=10.0,
        end=12.0,
        features=torch.zeros(3, 4),
        text="Tom hands Mira the red key.",
        subtitle="Thank you, Tom. Tomatoes, Anna?",
        context=[
            ContextItem("A man in a green coat, Tom, enters.", "Hello, Tom.", 1.0, 2.0),
            ContextItem("Mira sits down.", "", 3.0, 4.0),
        ],
        context_features=torch.zeros(2, 4),
    )
    plain = ClipRecord(film="g", start=0.0, end=1.0, features=torch.zeros(2, 4), text="It rains.")
    return collate([rec, plain], max_frames=8, proposal_len=8)


def test_names_are_swapped_one_to_one_and_the_same_in_every_text_of_a_clip():
    pat = name_pattern(POOL)
    for seed in range(20):
        out = rename_batch(_batch(), POOL, pat, torch.Generator().manual_seed(seed))
        text, sub = out.texts[0], out.subtitles[0]
        tom, mira = text.split()[0], text.split()[2]
        assert tom in POOL and mira in POOL and tom != mira
        assert text == f"{tom} hands {mira} the red key."
        anna = re.search(r"Tomatoes, (\w+)\?", sub).group(1)
        # whole words only: "Tomatoes" is no Tom; Anna is its own name, not "Ann" + "a"
        assert sub == f"Thank you, {tom}. Tomatoes, {anna}?"
        assert anna in POOL and anna not in (tom, mira)
        ctx = out.contexts[0]
        assert [c.text for c in ctx] == [
            f"A man in a green coat, {tom}, enters.",
            f"{mira} sits down.",
        ]
        assert ctx[0].subtitle == f"Hello, {tom}." and (ctx[0].start, ctx[1].end) == (1.0, 4.0)
        # a clip without names is untouched
        assert out.texts[1] == "It rains." and out.contexts[1] == []


def test_renaming_is_drawn_afresh_and_reproducible():
    pat = name_pattern(POOL)
    first = {
        rename_batch(_batch(), POOL, pat, torch.Generator().manual_seed(s)).texts[0]
        for s in range(30)
    }
    assert len(first) > 10  # drawn afresh, not a fixed relabelling
    again = rename_batch(_batch(), POOL, pat, torch.Generator().manual_seed(3)).texts
    assert again == rename_batch(_batch(), POOL, pat, torch.Generator().manual_seed(3)).texts


def test_names_file_is_checked(tmp_path):
    good = tmp_path / "names.txt"
    good.write_text("# the cast\nTom\n\nMira\n", encoding="utf-8")
    assert read_names(good) == ["Tom", "Mira"]
    (tmp_path / "one.txt").write_text("Tom\n")
    with pytest.raises(LocomadError, match="at least two"):
        read_names(tmp_path / "one.txt")
    (tmp_path / "twice.txt").write_text("Tom\nMira\nTom\n")
    with pytest.raises(LocomadError, match="'Tom' is listed twice"):
        read_names(tmp_path / "twice.txt")
    with pytest.raises(LocomadError, match="cannot read"):
        read_names(tmp_path / "missing.txt")


def test_renamed_training_holds_the_names_token_rows():
    """Renamed names are exchangeable: trained, their tied embedding rows drift together
    (Decoder.hold_words). Held, a training step leaves their rows exactly as they were and
    still trains every other row it reaches."""
    from locomad_cli.card import load_card
    from locomad_cli.demo.world import NAMES
    from locomad_cli.model.locomad import LoCoMAD

    card = load_card("demo")  # its tokenizer makes every name one token
    card.llm.config = dict(card.llm.config, num_hidden_layers=1)
    torch.manual_seed(0)
    dec = LoCoMAD.from_card(card).decoder
    handle = dec.hold_words(list(NAMES))
    emb = dec.llm.get_input_embeddings().weight
    rows = [dec.tok(" " + n, add_special_tokens=False).input_ids[0] for n in NAMES]
    other = dec.tok(" kitchen", add_special_tokens=False).input_ids
    before = emb.detach().clone()
    opt = torch.optim.SGD(dec.parameters(), lr=1.0)
    q = torch.zeros(2, card.pme.num_queries, card.pme.hidden_size)
    items = [[ContextItem("Tom enters the kitchen.", "Hello, Mira.")], []]
    dec.loss(q, items, ["", "Omar?"], ["Tom sits in the kitchen.", "Mira waves."]).backward()
    opt.step()
    assert torch.equal(emb.detach()[rows], before[rows])
    assert not torch.equal(emb.detach()[other], before[other])
    handle.remove()
