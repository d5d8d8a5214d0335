"""Contrastive training of the demo card's small CLIP on demo frames.

Why train it: at random init the text tower's features bear no relation to the frames, so
the DSM's context-clip contrast (CLIP text of earlier descriptions against the clip's frame
features) has nothing to find; `docs/demo.md` gives the retrieval figures before and after.

Frames come through exactly the extraction path (features/video.py decoding at the card's FPS,
`ClipEncoder.preprocess`), paired with the slot's look-only caption ("The woman in the red
dress picks up the blue cup.") or, a fifth of the time, its reference AD with the names, so
the text tower learns that names carry no visual meaning.

With `hard_negatives`, each image also meets a hard negative caption, its own caption with
one prop, garment or room swapped for another of the world's (NegCLIP, Yuksekgonul et al.
2023). Without them a batch of 64 slots is told apart by room, look and action, so nothing
asks the image tower for the few pixels of a prop. Linear probes on held-out frame features
(docs/demo.md): a prop in view 0.94 -> 0.99, a prop in a hand 0.17 -> 0.19 (chance 0.17),
the rest unchanged; no demo model trained on it wrote better, so the shipped recipe leaves
it off.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from locomad_cli.card import ModelCard
from locomad_cli.demo.world import LOCATIONS, LOOKS, PROPS
from locomad_cli.utils import LocomadError, atomic_path

# What a hard negative may swap: each group's phrases for one another.
_SWAPS = (
    tuple(p.name for p in PROPS),
    tuple(look.garment for look in LOOKS),
    tuple(loc.name for loc in LOCATIONS),
)


@dataclass
class SlotFrames:
    frames: torch.Tensor
    """uint8 [n, 3, H, W] decoded frames inside the slot."""
    caption: str
    text: str


def load_slots(root: str | Path, split: str, card: ModelCard, short_side: int) -> list[SlotFrames]:
    """Every AD slot of a split with its decoded frames (at the card's FPS)."""
    from locomad_cli.features.video import iter_chunks, plan_frames, probe

    out: list[SlotFrames] = []
    for world_path in sorted((Path(root) / split).glob("*.world.json")):
        world = json.loads(world_path.read_text(encoding="utf-8"))
        mp4 = world_path.with_name(world["name"] + ".mp4")
        plan = plan_frames(probe(mp4), card.fps, short_side)
        frames = np.concatenate([f for _, f in iter_chunks(plan, 10_000)])
        video = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()
        for s in world["slots"]:
            a, b = int(math.ceil(s["start"] * card.fps)), int(math.floor(s["end"] * card.fps))
            if b > a:
                out.append(SlotFrames(video[a:b], s["caption"], s["text"]))
    if not out:
        raise LocomadError(f"{root}/{split}: no demo films with frames")
    return out


def hard_negative(caption: str, rng: np.random.Generator) -> str | None:
    """The caption with one prop, garment or room (picked at random among those it names)
    replaced by another of the same kind; None if it names none. The result is a sentence
    the world could have written, so the text tower cannot tell it from a real caption by
    its form, only by what it says."""
    found = [
        (word, group)
        for group in _SWAPS
        for word in group
        if re.search(rf"\b{re.escape(word)}\b", caption)
    ]
    if not found:
        return None
    word, group = found[int(rng.integers(len(found)))]
    other = str(rng.choice([w for w in group if w != word]))
    return re.sub(rf"\b{re.escape(word)}\b", other, caption, count=1)


def contrastive_loss(
    image: torch.Tensor, text: torch.Tensor, negatives: torch.Tensor, scale: torch.Tensor
) -> torch.Tensor:
    """CLIP's symmetric InfoNCE over a batch of matching (image, text) rows, with extra
    negative texts in the image-to-text direction only (NegCLIP); all features normalised.
    open_clip's ClipLoss has no place for negatives that match no image."""
    labels = torch.arange(len(image))
    per_image = scale * image @ torch.cat([text, negatives]).T
    per_text = scale * text @ image.T
    ce = torch.nn.functional.cross_entropy
    return (ce(per_image, labels) + ce(per_text, labels)) / 2


def retrieval_r1(encoder, slots: list[SlotFrames], group: int = 32) -> float:
    """Caption → frame R@1 within groups of `group` slots (middle frame of each slot):
    chance is 1/group. Used to show what training bought."""
    hits, total = 0, 0
    for i in range(0, len(slots) - group + 1, group):
        chunk = slots[i : i + group]
        img = encoder.encode_images(torch.stack([s.frames[len(s.frames) // 2] for s in chunk]))
        txt = encoder.encode_text([s.caption for s in chunk])
        img = torch.nn.functional.normalize(img, dim=-1)
        txt = torch.nn.functional.normalize(txt, dim=-1)
        hits += int((txt @ img.T).argmax(1).eq(torch.arange(len(chunk))).sum())
        total += len(chunk)
    return hits / max(total, 1)


def train_clip(
    root: str | Path,
    card: ModelCard,
    out: str | Path,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 1e-3,
    seed: int = 0,
    log_every: int = 100,
    caption_share: float = 0.8,
    hard_negatives: bool = False,
) -> dict[str, float]:
    """Train the card's CLIP (from random init) on root/train and save it to `out` as fp16
    safetensors; returns validation caption→frame R@1 before and after."""
    from safetensors.torch import save_file

    from locomad_cli.features.clip import load_clip

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    init = dataclasses.replace(card, clip=dataclasses.replace(card.clip, pretrained=None))
    encoder = load_clip(init, "cpu", torch.float32)
    train = load_slots(root, "train", card, encoder.decode_short_side)
    val = load_slots(root, "val", card, encoder.decode_short_side)
    before = retrieval_r1(encoder, val)
    model = encoder.model
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}], lr=lr
    )
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, steps - warmup)))
        ),
    )
    normalize = torch.nn.functional.normalize
    for step in range(steps):
        pick = rng.choice(len(train), size=min(batch_size, len(train)), replace=False)
        imgs, texts, negatives = [], [], []
        for j in pick:
            s = train[int(j)]
            imgs.append(s.frames[int(rng.integers(len(s.frames)))])
            texts.append(s.caption if rng.random() < caption_share else s.text)
            negative = hard_negative(texts[-1], rng) if hard_negatives else None
            if negative is not None:
                negatives.append(negative)
        x = encoder.preprocess(torch.stack(imgs))
        if rng.random() < 0.5:
            x = x.flip(-1)  # mirror: looks and actions read the same either way round
        image = normalize(model.encode_image(x), dim=-1)
        text = normalize(model.encode_text(encoder.tokenizer(texts + negatives)), dim=-1)
        loss = contrastive_loss(
            image, text[: len(texts)], text[len(texts) :], model.logit_scale.exp()
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if log_every and (step + 1) % log_every == 0:
            print(f"clip step {step + 1}/{steps} loss {loss.item():.3f}", flush=True)
    model.eval()
    after = retrieval_r1(encoder, val)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    with atomic_path(out) as tmp:
        save_file(state, str(tmp), metadata={"format": "open_clip", "model": card.clip.model})
    return {"val_r1_random": before, "val_r1_trained": after, "chance": 1 / 32}
