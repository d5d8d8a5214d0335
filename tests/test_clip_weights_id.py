"""Caches of CLIP features (frame features, the DSM's text cache) know which CLIP weights made
them: features of a retrained encoder are never reused by mistake."""

import pytest
import torch
from helpers.media import make_video
from safetensors.torch import save_file

from locomad_cli.data.textcache import encoder_id
from locomad_cli.describe.film import _check_features
from locomad_cli.features.clip import load_clip, weights_id
from locomad_cli.features.extract import extract_features, load_features
from locomad_cli.utils import LocomadError


def _random_init(card):
    """A copy of `card` whose CLIP is random-init (the encoder the weights files are made from)."""
    copy = type(card)(name=card.name, clip=type(card.clip)(**card.clip.__dict__))
    copy.clip.pretrained = None
    return copy


def _save_clip(card, path, bump: float = 0.0):
    """Write the card's random-init CLIP weights to `path`; `bump` changes one value (same
    file size, other content: a retrained encoder)."""
    state = load_clip(_random_init(card)).model.state_dict()
    state = {k: v.clone().contiguous() for k, v in state.items()}
    state["logit_scale"] += bump
    save_file(state, str(path))


@pytest.fixture
def weighted_card(card, tmp_path):
    path = tmp_path / "clip.safetensors"
    _save_clip(card, path)
    card.clip.pretrained = str(path)
    return card, path


def test_weights_id_follows_the_file_content(weighted_card):
    wcard, path = weighted_card
    assert weights_id(_random_init(wcard)) == "random-init"
    first = weights_id(wcard)
    assert first.startswith(f"{path.stat().st_size}-")
    assert weights_id(wcard) == first  # stable
    before = encoder_id(wcard)
    _save_clip(wcard, path, bump=1.0)
    assert weights_id(wcard) != first
    assert encoder_id(wcard) != before


@pytest.mark.slow
def test_features_of_other_weights_are_not_reused(weighted_card, tmp_path):
    wcard, path = weighted_card
    film = make_video(tmp_path / "film.mp4", duration=1.0, size="64x48")
    out = tmp_path / "feats"
    result = extract_features([film], wcard, out_dir=out, device="cpu")
    _, meta = load_features(result[0].output)
    assert meta["clip_weights"] == weights_id(wcard)
    _check_features(result[0].output, meta, wcard)  # the same weights: accepted

    _save_clip(wcard, path, bump=1.0)
    with pytest.raises(LocomadError, match="other weights"):
        _check_features(result[0].output, meta, wcard)
    with pytest.raises(LocomadError, match="--overwrite"):
        extract_features([film], wcard, out_dir=out, device="cpu")
    again = extract_features([film], wcard, out_dir=out, device="cpu", overwrite=True)
    feats2, meta2 = load_features(again[0].output)
    assert meta2["clip_weights"] == weights_id(wcard) != meta["clip_weights"]
    assert torch.isfinite(feats2.float()).all()
