"""A vision-language describer's context, chosen the DSM's way without training.

The items are the film so far: its earlier descriptions and its earlier subtitle lines.
`recent` keeps the last k. `clip` ranks them by the cosine similarity of each item's CLIP
text features to the slot's mean frame feature (the anchor of the DSM's contrastive loss,
the CCL) and keeps the top k plus the most recent item. Both stay within the paper's
200-token cap (context.max_tokens), dropping the lowest-ranked (for `recent`, the oldest)
first, and hand the items over in film order (docs/model.md).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from locomad_cli.slots.plan import Slot
    from locomad_cli.tracks.readers import Cue


@dataclass
class ContextLine:
    """One item of a vlm's context: a description or a line of dialogue."""

    kind: str
    """description | dialogue"""
    text: str
    start: float
    end: float
    score: float | None = None
    """The CLIP similarity to the slot (select: clip)."""

    def as_json(self) -> dict[str, Any]:
        score = None if self.score is None else round(self.score, 6)
        return {
            "kind": self.kind,
            "text": self.text,
            "start": self.start,
            "end": self.end,
            "score": score,
        }


def tokens(text: str) -> int:
    """Tokens as the cap counts them: words and punctuation marks (an LLM's BPE gives about
    as many for English prose)."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def film_so_far(
    earlier: list[dict[str, Any]], subtitles: list[Cue], slot: Slot
) -> list[ContextLine]:
    """The earlier descriptions (rows with text) and subtitle lines that end by the slot's
    start, in film order."""
    items = [
        ContextLine("description", r["text"], r["start"], r["end"])
        for r in earlier
        if r.get("text") and r["start"] < slot.start
    ]
    items += [
        ContextLine("dialogue", c.text, c.start, c.end)
        for c in subtitles
        if c.text and c.end <= slot.start
    ]
    return sorted(items, key=lambda c: (c.start, c.end, c.kind))


def _capped(items: list[ContextLine], order: list[int], cap: int) -> list[ContextLine]:
    """`items` at the indices in `order` (most wanted first), as many as fit in `cap`
    tokens, in film order."""
    kept, used = [], 0
    for i in order:
        n = tokens(items[i].text)
        if used + n <= cap:
            kept.append(i)
            used += n
    return [items[i] for i in sorted(kept)]


def select_recent(items: list[ContextLine], k: int, cap: int) -> list[ContextLine]:
    """The last k items within the cap (the oldest dropped first)."""
    last = list(range(len(items)))[-k:]
    return _capped(items, last[::-1], cap)


def select_clip(
    items: list[ContextLine],
    k: int,
    cap: int,
    anchor: torch.Tensor,
    text_features: Callable[[list[str]], torch.Tensor],
) -> list[ContextLine]:
    """The k items whose text is most similar to `anchor` (cosine), plus the most recent item,
    within the cap; the most recent goes in first, then the rest by score (ties: the later
    item). Each kept item carries its score."""
    if not items:
        return []
    import torch

    feats = text_features([c.text for c in items]).float()
    a = anchor.float().reshape(-1)
    scores = torch.nn.functional.cosine_similarity(feats, a.unsqueeze(0), dim=-1)
    for c, s in zip(items, scores.tolist(), strict=True):
        c.score = float(s)
    last = len(items) - 1
    ranked = sorted(range(last), key=lambda i: (-items[i].score, -i))[:k]
    return _capped(items, [last, *ranked], cap)


def slot_frames(features: torch.Tensor, fps: float, start: float, end: float) -> torch.Tensor:
    """A film's feature rows within a slot: frame i is on screen at i/fps; at least one."""
    t = features.shape[0]
    a = min(max(0, math.floor(start * fps)), t - 1)
    b = min(t, math.ceil(end * fps))
    return features[a : max(b, a + 1)].float()
