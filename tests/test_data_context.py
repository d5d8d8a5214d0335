"""Context proposals (10 earlier items, oldest first, same film, never the future) and the
text-feature cache (computed once, then reused)."""

from __future__ import annotations

import random

import torch
from helpers.datasets import fake_encode

from locomad_cli.data.context import build_contexts
from locomad_cli.data.dataset import Annotation
from locomad_cli.data.textcache import cache_path, text_features


def _films() -> list[Annotation]:
    anns = []
    for film in ("A", "B"):
        for k in range(15):
            anns.append(Annotation(film, 3.0 * k, 3.0 * k + 2.0, f"{film}{k}"))
    random.Random(0).shuffle(anns)  # file order must not matter
    return anns


def test_context_is_the_previous_ten_of_the_same_film_oldest_first():
    anns = _films()
    contexts = build_contexts(anns, 10)
    by_text = {a.text: i for i, a in enumerate(anns)}
    for film in ("A", "B"):
        for k in range(15):
            got = [anns[j].text for j in contexts[by_text[f"{film}{k}"]]]
            assert got == [f"{film}{m}" for m in range(max(0, k - 10), k)]
    # spelled out for one slot: right 10, right order, nothing from B, nothing from the future
    a12 = [anns[j] for j in contexts[by_text["A12"]]]
    assert [a.text for a in a12] == ["A2", "A3", "A4", "A5", "A6", "A7", "A8", "A9", "A10", "A11"]
    assert all(a.film == "A" and a.start < 36.0 for a in a12)


def test_context_respects_groups_and_zero_length():
    anns = [Annotation("A", 0, 1, "x", group="A#0"), Annotation("A", 2, 3, "y", group="A#1")]
    assert build_contexts(anns, 10) == [[], []]
    assert build_contexts(_films(), 0) == [[]] * 30


def test_text_cache_is_computed_once_and_reused(tmp_path, card):
    calls = []

    def encode(texts):
        calls.append(list(texts))
        return fake_encode(texts)

    feats, rows = text_features(["a", "b", "a"], card, tmp_path, encode=encode)
    assert calls == [["a", "b"]]
    assert rows[0] == rows[2] != rows[1]
    assert torch.allclose(feats[rows[1]].float(), fake_encode(["b"])[0], atol=1e-2)
    feats2, rows2 = text_features(["b", "c"], card, tmp_path, encode=encode)
    assert calls == [["a", "b"], ["c"]]  # only the new text is encoded
    assert torch.equal(feats2[rows2[0]], feats[rows[1]])
    text_features(["c", "a"], card, tmp_path, encode=encode)
    assert len(calls) == 2
    # another CLIP encoder gets its own cache
    card.clip.model = "other"
    text_features(["a"], card, tmp_path, encode=encode)
    assert calls[-1] == ["a"] and len(list(tmp_path.glob("locomad-text-*.safetensors"))) == 2
    assert cache_path(tmp_path, card).is_file()


def test_text_cache_uses_the_card_clip_encoder(tmp_path, card):
    from locomad_cli.features.clip import load_clip

    torch.manual_seed(0)  # the tiny CLIP is random init: build the same one twice
    feats, rows = text_features(["a dog runs", "a cat sleeps"], card, tmp_path)
    torch.manual_seed(0)
    expected = load_clip(card).encode_text(["a dog runs", "a cat sleeps"])
    assert torch.allclose(feats[rows].float(), expected, atol=1e-2, rtol=1e-2)
    assert not torch.allclose(expected[0], expected[1])
