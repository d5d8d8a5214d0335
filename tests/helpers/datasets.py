"""Small datasets in the exact upstream layouts, written on the spot (shared by data/train tests).

Frame features encode where they come from: row t of film f is [t, f, 0, ...] plus a fixed
random part, so tests can check that a slot's rows are the right ones.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

DIM = 32  # tiny_card().clip.dim
FPS = 5.0


def fake_encode(texts: list[str]) -> torch.Tensor:
    """A deterministic stand-in for CLIP's text encoder: a vector seeded by the text."""
    rows = []
    for t in texts:
        seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "little")
        rows.append(torch.randn(DIM, generator=torch.Generator().manual_seed(seed)))
    return torch.stack(rows)


def film_features(film_number: int, frames: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(film_number)
    x = torch.randn(frames, DIM, generator=g) * 0.1
    x[:, 0] = torch.arange(frames, dtype=torch.float32)
    x[:, 1] = film_number
    return x


def write_mad(root: Path, films: dict[str, int], ad_rows: list[str], subs_rows: list[str]) -> Path:
    """MAD layout: the 5 FPS CLIP-L14 HDF5, AD and subtitle CSVs, AutoAD-style split file."""
    import h5py

    root.mkdir(parents=True, exist_ok=True)
    with h5py.File(root / "CLIP_L14_frames_features_5fps.h5", "w") as f:
        for i, (film, frames) in enumerate(films.items()):
            f.create_dataset(film, data=film_features(i + 1, frames).numpy())
    (root / "mad-v2-ad-unnamed.csv").write_text("\n".join(ad_rows) + "\n")
    (root / "mad-v2-subs.csv").write_text("\n".join(subs_rows) + "\n")
    return root


def write_film_folder(root: Path, films: dict[str, list[tuple[float, float, str]]], frames=300):
    """Folder layout: NAME.features.safetensors + NAME.ad.csv (+ NAME.srt subtitles)."""
    from safetensors.torch import save_file

    root.mkdir(parents=True, exist_ok=True)
    for i, (name, ads) in enumerate(films.items()):
        save_file(
            {"features": film_features(i + 1, frames).half()},
            str(root / f"{name}.features.safetensors"),
            metadata={"fps": "5.0", "card": "tiny"},
        )
        lines = ["start,end,text"] + [f"{s},{e},{t}" for s, e, t in ads]
        (root / f"{name}.ad.csv").write_text("\n".join(lines) + "\n")
    return root


def simple_films(n_films: int = 2, n_slots: int = 14) -> dict[str, list[tuple[float, float, str]]]:
    """Films whose descriptions say which film and slot they are (learnable for tiny runs)."""
    words = ["a man walks", "a woman sits", "the door opens", "a car stops", "she smiles"]
    films = {}
    for f in range(n_films):
        films[f"film{f}"] = [
            (2.0 * k + 0.5, 2.0 * k + 2.0, f"{words[(k + f) % len(words)]} slowly")
            for k in range(n_slots)
        ]
    return films


def write_splits(root: Path, splits: dict[str, list[str]]) -> None:
    (root / "splits.json").write_text(json.dumps(splits))


def tiny_train_config(data: Path, card: Path | None, out: Path, **kw):
    """A stage-1 TrainConfig on a film folder for the tests: a few steps, no validation, no
    workers, no progress bar; `kw` replaces any field."""
    from locomad_cli.train.loop import TrainConfig

    base = dict(
        stage=1,
        data=f"folder:{data}",
        out=str(out),
        model=str(card) if card else None,
        batch_size=4,
        max_steps=6,
        lr=1e-3,
        warmup_steps=2,
        val_data="none",
        log_every=1,
        num_workers=0,
        progress=False,
    )
    return TrainConfig(**{**base, **kw})


def saved_tiny_card(root: Path):
    """A tiny card (3 new tokens, DSM proposals of 3, top 2) with random weights saved under
    ROOT/weights and its YAML at ROOT/tiny.yaml, seeded: describe runs on it in seconds, as a
    user's card with trained weights. Returns (card, its YAML path, the weights folder)."""
    from locomad_cli.card import tiny_card
    from locomad_cli.model.checkpoint import save_model
    from locomad_cli.model.locomad import LoCoMAD

    card = tiny_card()
    card.llm.max_new_tokens = 3
    card.dsm.proposal_len = 3
    card.dsm.top_k = 2
    torch.manual_seed(0)
    weights = save_model(LoCoMAD.from_card(card, pretrained=False), root / "weights")
    card.weights = str(weights)
    card_path = root / "tiny.yaml"
    card_path.write_text(card.to_yaml())
    return card, card_path, weights
