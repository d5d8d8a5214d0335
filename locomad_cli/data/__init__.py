"""Training and evaluation data: `load_split(spec, card, split)` → a Dataset of ClipRecords.

A data SPEC names a reader and its root, with optional `?key=value&...` options:
    folder:PATH    a folder of films (folder.py; the layout of extract-features output)
    mad:ROOT       MAD with the MAD-v2/AutoAD annotations (mad.py)
    lsmdc:ROOT     LSMDC multi-sentence description (lsmdc.py)
    PATH           auto-detected: *.features.safetensors → folder, *frames_features*.h5 →
                   mad, LSMDC*.csv → lsmdc
"""

from __future__ import annotations

from pathlib import Path

from locomad_cli.card import ModelCard
from locomad_cli.data.context import build_contexts
from locomad_cli.data.dataset import ClipDataset, DatasetSplit, check_annotations
from locomad_cli.data.folder import read_folder
from locomad_cli.data.lsmdc import read_lsmdc
from locomad_cli.data.mad import read_mad
from locomad_cli.data.textcache import Encoder, text_features
from locomad_cli.utils import LocomadError

READERS = {"folder": read_folder, "mad": read_mad, "lsmdc": read_lsmdc}


def parse_spec(spec: str) -> tuple[str, Path, dict[str, str]]:
    """'kind:PATH?k=v&k2=v2' → (kind, PATH, {k: v}); a bare PATH is auto-detected."""
    body, _, query = spec.partition("?")
    options: dict[str, str] = {}
    for part in filter(None, query.split("&")):
        key, eq, value = part.partition("=")
        if not eq:
            raise LocomadError(f"data spec '{spec}': option '{part}' is not key=value")
        options[key.strip()] = value.strip()
    kind, colon, path = body.partition(":")
    if colon and kind in READERS:
        return kind, Path(path).expanduser(), options
    if colon and len(kind) > 1 and not Path(body).exists():
        raise LocomadError(
            f"data spec '{spec}': unknown kind '{kind}' (use {', '.join(READERS)}:PATH)"
        )
    root = Path(body).expanduser()
    if not root.is_dir():
        raise LocomadError(f"data spec '{spec}': {root} is not a folder")
    if any(root.glob("*.features.safetensors")) or any(
        (root / s).is_dir() for s in ("train", "val")
    ):
        return "folder", root, options
    if any(root.rglob("*frames_features*.h5")):
        return "mad", root, options
    if any(root.rglob("LSMDC*.csv")):
        return "lsmdc", root, options
    raise LocomadError(
        f"{root}: cannot tell the dataset kind (no *.features.safetensors, MAD .h5 or LSMDC "
        "csv); write folder:PATH, mad:ROOT or lsmdc:ROOT"
    )


def read_split(spec: str, card: ModelCard, split: str, strict: bool = False) -> DatasetSplit:
    """The checked slots of one split (malformed rows reported in `.skipped`)."""
    kind, root, options = parse_spec(spec)
    data = READERS[kind](root, split, card.fps, options)
    good, problems = check_annotations(data.annotations, data.frames, strict=strict)
    if strict and data.skipped:
        raise LocomadError(f"{data.skipped[0]} (drop --strict to skip malformed rows)")
    if not good:
        first = f"; first problem: {(data.skipped + problems)[0]}" if problems else ""
        raise LocomadError(f"{spec}: no usable clips in split '{split}'{first}")
    dim = data.frames.dim(good[0].key)
    if dim != card.clip.dim:
        raise LocomadError(
            f"{spec}: frame features are {dim}-d, the card '{card.name}' expects "
            f"clip.dim={card.clip.dim} (features from another CLIP model?)"
        )
    data.annotations = good
    data.skipped = data.skipped + problems
    return data


def load_split(
    spec: str,
    card: ModelCard,
    split: str = "train",
    strict: bool = False,
    cache_dir: str | Path | None = None,
    encode: Encoder | None = None,
) -> ClipDataset:
    """A Dataset of ClipRecords for one split: slots, their context proposals (oracle: the
    reference descriptions) and cached CLIP text features. `encode` replaces the card's CLIP
    text encoder (tests); the cache lives in `cache_dir` (default: the data root)."""
    data = read_split(spec, card, split, strict)
    proposal_len = card.dsm.proposal_len
    if data.max_context is not None:
        proposal_len = min(proposal_len, data.max_context)
    contexts = build_contexts(data.annotations, proposal_len)
    _, root, _ = parse_spec(spec)
    feats, rows = text_features(
        [a.text for a in data.annotations], card, cache_dir or root, encode=encode
    )
    return ClipDataset(data, contexts, feats, rows)
