"""Shared builders for the model tests (no tests here): tiny clip records and batches."""

import torch

from locomad_cli.data.records import ClipBatch, ClipRecord, ContextItem, collate

TEXTS = [
    "A man opens the door.",
    "She runs down the stairs.",
    "The car drives into the night.",
    "Two dogs play in the snow.",
]


def records_of(card, n: int, frames: int = 6, seed: int = 0) -> list[ClipRecord]:
    """n clips of one film; clip i has the i earlier descriptions as its context."""
    g = torch.Generator().manual_seed(seed)
    texts = [TEXTS[i % len(TEXTS)] + ("" if i < len(TEXTS) else f" ({i})") for i in range(n)]
    out = []
    for i, text in enumerate(texts):
        ctx = [ContextItem(text=texts[j], subtitle=f"line {j}") for j in range(i)]
        feats = torch.randn(len(ctx), card.clip.dim, generator=g) if ctx else None
        out.append(
            ClipRecord(
                film="film",
                start=float(i),
                end=i + 1.0,
                features=torch.randn(frames, card.clip.dim, generator=g),
                text=text,
                subtitle="where are you going",
                context=ctx,
                context_features=feats,
                index=i,
            )
        )
    return out


def batch_of(card, n: int, frames: int = 6, seed: int = 0) -> ClipBatch:
    return collate(records_of(card, n, frames, seed), frames + 1000, card.dsm.proposal_len)
