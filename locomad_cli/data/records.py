"""The clip record every dataset yields and every model entry point consumes.

A record is one AD slot of one film: its frame features, its ground-truth description
(empty at inference), the dialogue that goes with it, and its context proposal — the previous
descriptions of the same film (oldest first) with their subtitles and cached CLIP text
features. `collate` pads a list of records into tensors; the model tokenizes text itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class ContextItem:
    """One earlier description of the same film and the subtitles around it."""

    text: str
    subtitle: str = ""
    start: float = 0.0
    end: float = 0.0


@dataclass
class ClipRecord:
    film: str
    start: float
    end: float
    features: torch.Tensor
    """[T, D] frame features of the slot at the card's FPS (float)."""
    text: str = ""
    """Ground-truth description ('' when generating)."""
    subtitle: str = ""
    """The dialogue that goes with the slot (subtitles.dialogue_windows), joined with spaces."""
    context: list[ContextItem] = field(default_factory=list)
    """Up to `proposal_len` earlier items of the same film, oldest first, never from the future."""
    context_features: torch.Tensor | None = None
    """[len(context), D] CLIP text features of `context[i].text` (None when context is empty)."""
    index: int = 0
    """Position of the slot in its film."""
    source: str = ""
    """Where the record came from (file:line) for error messages."""


@dataclass
class ClipBatch:
    frames: torch.Tensor
    """[B, T, D] padded frame features."""
    frame_mask: torch.Tensor
    """[B, T] bool, True where a real frame is."""
    context_features: torch.Tensor
    """[B, P, D] context text features, P = proposal_len; zeros where empty."""
    context_mask: torch.Tensor
    """[B, P] bool, True where a real context item is (empty slots are masked, not zeros)."""
    texts: list[str]
    subtitles: list[str]
    contexts: list[list[ContextItem]]
    """Per clip, the P-aligned context items (the real ones, oldest first)."""
    records: list[ClipRecord]

    def to(self, device: torch.device | str) -> ClipBatch:
        self.frames = self.frames.to(device)
        self.frame_mask = self.frame_mask.to(device)
        self.context_features = self.context_features.to(device)
        self.context_mask = self.context_mask.to(device)
        return self

    def __len__(self) -> int:
        return len(self.records)


def subsample_frames(features: torch.Tensor, max_frames: int) -> torch.Tensor:
    """Uniformly subsample [T, D] to at most `max_frames` rows (never cut the clip's end)."""
    t = features.shape[0]
    if t <= max_frames:
        return features
    idx = torch.linspace(0, t - 1, max_frames).round().long()
    return features[idx]


def collate(records: list[ClipRecord], max_frames: int, proposal_len: int) -> ClipBatch:
    """Pad records into a batch. Context items are right-aligned to the newest-last order
    they arrive in; slots without an item are masked."""
    if not records:
        raise ValueError("collate() needs at least one record")
    feats = [subsample_frames(r.features.float(), max_frames) for r in records]
    dim = feats[0].shape[1]
    t_max = max(max(f.shape[0] for f in feats), 1)
    frames = torch.zeros(len(records), t_max, dim)
    frame_mask = torch.zeros(len(records), t_max, dtype=torch.bool)
    for i, f in enumerate(feats):
        frames[i, : f.shape[0]] = f
        frame_mask[i, : f.shape[0]] = True
    ctx_dim = dim
    for r in records:
        if r.context_features is not None and r.context_features.numel():
            ctx_dim = r.context_features.shape[1]
            break
    ctx = torch.zeros(len(records), proposal_len, ctx_dim)
    ctx_mask = torch.zeros(len(records), proposal_len, dtype=torch.bool)
    contexts: list[list[ContextItem]] = []
    for i, r in enumerate(records):
        items = r.context[-proposal_len:]
        contexts.append(list(items))
        if items:
            if r.context_features is None or r.context_features.shape[0] != len(r.context):
                raise ValueError(f"{r.source or r.film}: context features missing or misaligned")
            cf = r.context_features[-proposal_len:].float()
            ctx[i, : len(items)] = cf
            ctx_mask[i, : len(items)] = True
    return ClipBatch(
        frames=frames,
        frame_mask=frame_mask,
        context_features=ctx,
        context_mask=ctx_mask,
        texts=[r.text for r in records],
        subtitles=[r.subtitle for r in records],
        contexts=contexts,
        records=list(records),
    )
