"""CLIP text features of every description, computed once and cached beside the data.

The DSM scores context items by their CLIP text embedding (Sec. 3.2). Encoding 264K MAD
descriptions takes a while, and the text never changes, so it is done once per (text, CLIP
encoder) and kept in `locomad-text-<encoder id>.safetensors`: a `keys` tensor of 16-byte
BLAKE2 digests of encoder id + text, and the `features` rows (fp16) in the same order.
New texts are appended on the next run; nothing is re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from locomad_cli.card import ModelCard
from locomad_cli.features.clip import weights_id
from locomad_cli.utils import LocomadError, atomic_path

Encoder = Callable[[list[str]], torch.Tensor]


def encoder_id(card: ModelCard) -> str:
    """What identifies the text encoder: name, weights and (for inline configs) its shape."""
    c = card.clip
    ident = json.dumps([c.model, c.pretrained, weights_id(card), c.dim, c.config], sort_keys=True)
    return hashlib.sha256(ident.encode()).hexdigest()[:16]


def text_key(enc_id: str, text: str) -> bytes:
    return hashlib.blake2b(f"{enc_id}\n{text}".encode(), digest_size=16).digest()


def cache_path(cache_dir: str | Path, card: ModelCard) -> Path:
    return Path(cache_dir) / f"locomad-text-{encoder_id(card)}.safetensors"


def _read_cache(path: Path) -> tuple[dict[bytes, int], torch.Tensor | None]:
    if not path.is_file():
        return {}, None
    from safetensors.torch import load_file

    try:
        data = load_file(str(path))
        keys, feats = data["keys"], data["features"]
    except Exception as e:  # a damaged cache is rebuilt, not trusted
        print(f"locomad: rebuilding text cache {path} ({e.__class__.__name__})", file=sys.stderr)
        return {}, None
    index = {bytes(k.tolist()): i for i, k in enumerate(keys)}
    return index, feats


def _default_encoder(card: ModelCard) -> Encoder:
    from locomad_cli.features.clip import load_clip
    from locomad_cli.utils import resolve_device

    # 264K MAD descriptions through ViT-L/14's text tower: on the GPU when there is one
    clip = load_clip(card, device=resolve_device("auto"))
    return clip.encode_text


def text_features(
    texts: list[str],
    card: ModelCard,
    cache_dir: str | Path,
    encode: Encoder | None = None,
    batch_size: int = 256,
) -> tuple[torch.Tensor, list[int]]:
    """CLIP text features for `texts`: (matrix [U, D], row of each text in it).

    Texts missing from the cache are encoded with `encode` (default: the card's CLIP text
    encoder, loaded only when something is missing) and the cache is rewritten atomically."""
    path = cache_path(cache_dir, card)
    enc_id = encoder_id(card)
    index, feats = _read_cache(path)
    keys = [text_key(enc_id, t) for t in texts]
    missing: dict[bytes, str] = {}
    for k, t in zip(keys, texts, strict=True):
        if k not in index and k not in missing:
            missing[k] = t
    if missing:
        encode = encode or _default_encoder(card)
        new_texts = list(missing.values())
        chunks = []
        with torch.no_grad():
            for i in range(0, len(new_texts), batch_size):
                chunks.append(encode(new_texts[i : i + batch_size]).float().cpu())
        new = torch.cat(chunks).to(torch.float16)
        if new.shape[1] != card.clip.dim:
            raise LocomadError(
                f"text encoder gives {new.shape[1]}-d features, the card says clip.dim="
                f"{card.clip.dim}"
            )
        feats = new if feats is None else torch.cat([feats, new])
        for k in missing:
            index[k] = len(index)
        all_keys = sorted(index, key=index.get)
        key_tensor = torch.tensor([list(k) for k in all_keys], dtype=torch.uint8)
        _write_cache(path, key_tensor, feats, enc_id)
    if feats is None:
        return torch.zeros(0, card.clip.dim), []
    return feats, [index[k] for k in keys]


def _write_cache(path: Path, keys: torch.Tensor, feats: torch.Tensor, enc_id: str) -> None:
    from safetensors.torch import save_file

    try:
        with atomic_path(path) as tmp:
            save_file(
                {"keys": keys.contiguous(), "features": feats.contiguous()},
                str(tmp),
                metadata={"encoder_id": enc_id},
            )
    except OSError as e:
        raise LocomadError(
            f"cannot write the text-feature cache {path} ({e.strerror or e}); "
            "pass a writable --cache-dir"
        ) from None
