"""The vision-language describer's parts: context selection (recent, clip on exact
similarities), the prompt, cleaning and checking answers, the budget."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch

from locomad_cli.describe.context import (
    ContextLine,
    film_so_far,
    select_clip,
    select_recent,
    tokens,
)
from locomad_cli.describe.describer import Answer, Ask, budget_words, choose
from locomad_cli.describe.vlm import clean, prompt
from locomad_cli.slots.plan import Slot
from locomad_cli.tracks.readers import Cue

DEMO = Path(__file__).resolve().parent.parent / "demo"


def _items(*texts: str) -> list[ContextLine]:
    return [ContextLine("description", t, float(i), i + 0.5) for i, t in enumerate(texts)]


VECTORS = {
    "a man": [1.0, 0.0, 0.0],
    "a dog": [0.0, 1.0, 0.0],
    "a man and a dog": [1.0, 1.0, 0.0],
    "a cat": [-1.0, 0.0, 0.0],
    "rain": [0.0, 0.0, 2.0],
}


def _features(texts: list[str]) -> torch.Tensor:
    return torch.tensor([VECTORS[t] for t in texts])


def test_clip_keeps_the_top_k_by_exact_cosine_plus_the_most_recent():
    items = _items("a man", "a dog", "a man and a dog", "a cat", "rain")
    anchor = torch.tensor([2.0, 0.0, 1.0])  # the slot's mean frame feature
    kept = select_clip(items, 2, 200, anchor, _features)
    # cos(v, anchor) by hand: |anchor| = sqrt(5)
    want = {
        "a man": 2 / math.sqrt(5),
        "a dog": 0.0,
        "a man and a dog": 2 / (math.sqrt(2) * math.sqrt(5)),
        "a cat": -2 / math.sqrt(5),
        "rain": 2 / (2 * math.sqrt(5)),
    }
    for c in items:
        assert c.score == pytest.approx(want[c.text], abs=1e-6)
    # top 2 of the earlier ones ("a man" 0.894, "a man and a dog" 0.632) + the last ("rain")
    assert [c.text for c in kept] == ["a man", "a man and a dog", "rain"]


def test_clip_ties_go_to_the_later_item_and_the_cap_drops_the_lowest_first():
    items = _items("a man", "a man", "a dog", "a cat")
    kept = select_clip(items, 2, 200, torch.tensor([1.0, 0.0, 0.0]), _features)
    assert [c.start for c in kept] == [0.0, 1.0, 3.0]
    # cap of 4 tokens: the most recent (2) and the best (2) fit, the third does not
    kept = select_clip(items, 2, 4, torch.tensor([1.0, 0.0, 0.0]), _features)
    assert [c.start for c in kept] == [1.0, 3.0]


def test_recent_keeps_the_last_k_within_the_cap():
    items = _items("one two", "three four", "five six", "seven")
    assert [c.text for c in select_recent(items, 2, 200)] == ["five six", "seven"]
    assert [c.text for c in select_recent(items, 3, 3)] == ["five six", "seven"]
    assert select_recent([], 5, 200) == []
    assert tokens("A man, alone.") == 5


def test_film_so_far_is_descriptions_and_earlier_subtitles_in_order():
    earlier = [{"text": "A door.", "start": 1.0, "end": 2.0}, {"text": "", "start": 5, "end": 6}]
    subs = [Cue(3.0, 4.0, "Hello."), Cue(9.0, 11.0, "Later.")]
    items = film_so_far(earlier, subs, Slot(8.0, 10.0, 2))
    assert [(c.kind, c.text) for c in items] == [("description", "A door."), ("dialogue", "Hello.")]


@pytest.mark.parametrize(
    ("raw", "text", "why"),
    [
        ('"The image shows a man opening a door."', "A man opening a door.", None),
        ("We see Leo run", "Leo run.", None),
        ("In these frames, the woman sits.", "The woman sits.", None),
        ("**A dog barks.**", "A dog barks.", None),
        ("   ", "", "empty answer"),
        ("NOTHING_NEW", "", "nothing new to describe (the model's answer)"),
        ("nothing new.", "", "nothing new to describe (the model's answer)"),
    ],
)
def test_clean(raw, text, why):
    assert clean(raw) == (text, why)


def test_clean_refusal():
    text, why = clean("I'm sorry, but I can't describe this.")
    assert text == "" and why.startswith("refused")


def _ask(**kw) -> Ask:
    base = dict(slot=Slot(0.0, 3.0, 0), dialogue="", context=[], budget=8)
    base.update(kw)
    return Ask(**base)


def test_budget_is_slot_length_at_the_cards_rate():
    assert budget_words(Slot(0.0, 3.0, 0), 160) == 8
    assert budget_words(Slot(0.0, 0.2, 0), 160) == 1
    assert budget_words(Slot(10.0, 17.5, 0), 160) == 20


def test_choose_rules():
    ask = _ask(avoid=["A door opens."], unheard=["Leo"])
    a = Answer([("A door opens", None), ("Leo waves.", None), ("A man waves.", None)])
    assert choose(a, ask) == ("A man waves.", {})
    long = "A man in a long green coat waves at the woman by the door."
    text, notes = choose(Answer([(long, None)]), ask)
    assert text == long and notes["over_budget"] == {"words": 14, "budget": 8}
    text, notes = choose(Answer([("Leo waves.", None)]), ask)
    assert text == "" and "Leo" in notes["empty"]
    text, notes = choose(Answer([], notes={"empty": "refused: no"}), ask)
    assert (text, notes) == ("", {"empty": "refused: no"})


def test_prompt_holds_dialogue_context_names_and_budget():
    ctx = [ContextLine("description", "A door opens.", 61.0, 62.0),
           ContextLine("dialogue", "Hello, Amy.", 63.0, 64.0)]  # fmt: skip
    text = prompt(_ask(dialogue="Is it time?", context=ctx, names=["Amy"]), 8)
    assert "The 8 frames are evenly spaced over 3.0 seconds" in text
    assert 'Dialogue during these seconds: "Is it time?"' in text
    assert "- [00:01:01] described: A door opens." in text
    assert "- [00:01:03] said: Hello, Amy." in text
    assert "Names said so far: Amy." in text
    assert text.endswith("at most 8 words.")


def test_clip_context_through_describe_uses_the_cards_clip(tmp_path):
    """select: clip inside describe: the scores the request's context carries are the cosine
    of each item's CLIP text features with the slot's mean frame feature, recomputed here
    from the features file and the card's (tiny, random) CLIP."""
    from helpers.openai_server import FakeVLM

    from locomad_cli.card import TINY_CLIP_CONFIG, load_card
    from locomad_cli.describe.context import slot_frames
    from locomad_cli.describe.film import DescribeOptions, describe
    from locomad_cli.features.clip import load_clip
    from locomad_cli.features.extract import load_features

    for name in ("demo.mp4", "demo.srt"):
        shutil.copy(DEMO / name, tmp_path / name)
    (tmp_path / "slots.srt").write_text(
        "1\n00:00:20,000 --> 00:00:23,000\nx\n\n2\n00:00:45,000 --> 00:00:48,000\nx\n"
    )
    cfg = str(TINY_CLIP_CONFIG).replace("'", "")
    sets = ["clip.model=locomad-tiny-clip", "clip.pretrained=null", "clip.dim=32",
            f"clip.config={cfg}", "context.select=clip", "context.k=2", "describer.frames=2",
            "describer.frame_size=64", "describer.words_per_minute=400",
            "endpoint.backoff=0"]  # fmt: skip
    with FakeVLM() as server:
        sets += [f"endpoint.url={server.url}", "endpoint.model=fake-vlm"]
        opts = DescribeOptions(model="endpoint", overrides=sets, subs=str(tmp_path / "demo.srt"),
                               ad_times=str(tmp_path / "slots.srt"), progress=False,
                               output_dir=str(tmp_path / "out"), formats="json")  # fmt: skip
        track, _ = describe(tmp_path / "demo.mp4", opts)
    card = load_card("endpoint", sets)
    features, meta = load_features(tmp_path / "out" / "demo.features.safetensors")
    encode = load_clip(card).encode_text
    for row in track["slots"]:
        anchor = slot_frames(features, float(meta["fps"]), row["start"], row["end"]).mean(0)
        earlier = [c.text for c in _all_earlier(track, row)]
        assert len(row["selected"]) == min(3, len(earlier))  # k = 2 and the most recent
        for item in row["selected"]:
            want = torch.nn.functional.cosine_similarity(encode([item["text"]])[0], anchor, dim=0)
            assert item["score"] == pytest.approx(float(want), abs=1e-5)
        cos = torch.nn.functional.cosine_similarity
        best = sorted(earlier[:-1], key=lambda t: -float(cos(encode([t])[0], anchor, dim=0)))[:2]
        assert sorted(i["text"] for i in row["selected"]) == sorted([*best, earlier[-1]])


def _all_earlier(track, row):
    from locomad_cli.tracks.readers import read_cues

    subs = read_cues(track["subtitles_file"])
    done = [r for r in track["slots"] if r["start"] < row["start"]]
    return film_so_far(done, subs, Slot(row["start"], row["end"], row["index"]))
