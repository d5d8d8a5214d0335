"""Describe ONE slot again: the card that wrote the track, its n-best for that slot, with the
film's reviewed cues before it as the context proposal (the recurrent setting: the model was
trained on earlier descriptions as context, so a later cue is never shown to it) and the
approved ones kept in the proposal first when there are more than it holds.

It goes through describe's own pieces (the card, weights, features cache, Film records, the
generate call), so an alternative is what `describe` would have written for that slot given
that context. The beam count is the card's (`--set llm.num_beams=3` for several)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from locomad_cli.utils import LocomadError

if TYPE_CHECKING:
    from locomad_cli.review.session import Review


class Loaded:
    """The model, text encoder and features of one film, loaded on the first regenerate."""

    def __init__(self, review: Review, track: dict[str, Any]):
        import torch

        from locomad_cli.card import load_card
        from locomad_cli.describe.film import (
            DescribeOptions,
            TextFeatureCache,
            _features_for,
            _load_model,
            check_weights_exist,
        )
        from locomad_cli.features.clip import load_clip
        from locomad_cli.utils import resolve_device

        name = track.get("card")
        if not name:
            raise LocomadError("the track does not say which model card wrote it")
        card = load_card(name, review.opts.overrides)
        weights = track.get("weights")
        w = Path(weights).expanduser() if weights else None
        opts = DescribeOptions(
            model=name,
            overrides=review.opts.overrides,
            weights=str(w) if w is not None and w.is_absolute() and w.exists() else None,
            device=review.opts.device,
            progress=False,
        )
        check_weights_exist(opts, card)
        device = resolve_device(opts.device)
        self.model = _load_model(opts, card, device)
        features, meta = _features_for(review.video, card, review.folder, device, opts, None)
        self.features = features
        self.fps = float(meta.get("fps") or card.fps)
        self.cache = TextFeatureCache(load_clip(card, device, torch.float32).encode_text)
        self.names = list(card.llm.names)


def context_for(
    track: dict[str, Any], slot: dict[str, Any], proposal_len: int
) -> list[dict[str, Any]]:
    """The cues before `slot` in film order, the last `proposal_len` of them; when more
    exist, approved ones are kept in preference to unapproved ones."""
    earlier = sorted(
        (s for s in track["slots"] if float(s["end"]) <= float(slot["start"]) + 1e-3),
        key=lambda s: (float(s["start"]), float(s["end"])),
    )
    earlier = [s for s in earlier if s.get("index") != slot.get("index") and s.get("text")]
    if proposal_len <= 0:
        return []
    if len(earlier) <= proposal_len:
        return earlier
    keep = earlier[-proposal_len:]
    older_approved = [s for s in earlier[:-proposal_len] if s.get("approved")]
    while older_approved:
        plain = [s for s in keep if not s.get("approved")]
        if not plain:
            break
        keep.remove(plain[0])
        keep.append(older_approved.pop())
    return sorted(keep, key=lambda s: (float(s["start"]), float(s["end"])))


def nbest_for_slot(
    review: Review, track: dict[str, Any], slot: dict[str, Any]
) -> list[tuple[str, float | None]]:
    """(text, score) best first for one slot, repeated and empty texts dropped."""
    from locomad_cli.data.records import ContextItem, collate
    from locomad_cli.describe.film import Film
    from locomad_cli.slots.plan import Slot
    from locomad_cli.threads import torch_threads

    if review._model is None:
        with torch_threads(None, False, review.opts.device):
            review._model = Loaded(review, track)
    m: Loaded = review._model
    s = Slot(float(slot["start"]), float(slot["end"]), int(slot.get("index", 0)))
    subtitles = review._subtitles
    film = Film(review.video.stem, [s], subtitles, [], m.features, m.fps, m.names)
    p = m.model.card.dsm.proposal_len
    context = [
        ContextItem(c["text"], c.get("subtitles", ""), float(c["start"]), float(c["end"]))
        for c in context_for(track, slot, p)
    ]
    record = film.record(s, context, m.cache)
    card = m.model.card
    batch = collate([record], card.pme.max_frames, card.dsm.proposal_len)
    budgets = [(s.end - s.start) * card.describer.words_per_minute / 60]  # as describe ranks them
    with torch_threads(None, True, review.opts.device):
        gen = m.model.generate(batch, setting="context", names=film.names, budgets=budgets)[0]
    out: list[tuple[str, float | None]] = []
    for text, score in gen.candidates or [(gen.text, None)]:
        text = text.strip()
        if text and text not in [t for t, _ in out]:
            out.append((text, None if score is None else round(float(score), 5)))
    return out
