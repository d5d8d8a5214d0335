"""CLIP loading, batched preprocessing and resumable feature extraction (clip.py, features.py)."""

import hashlib
import json

import h5py
import numpy as np
import pytest
import torch
from helpers.media import make_video
from PIL import Image
from safetensors.torch import save_file

from locomad_cli.card import ClipCard, tiny_card
from locomad_cli.features.clip import load_clip
from locomad_cli.features.extract import (
    extract_features,
    load_features,
    output_path,
    partial_dir,
    write_h5,
)
from locomad_cli.features.video import iter_chunks, plan_frames, probe
from locomad_cli.utils import LocomadError


@pytest.fixture(scope="module")
def encoder():
    return load_clip(tiny_card())


@pytest.fixture(scope="module")
def films(tmp_path_factory):
    d = tmp_path_factory.mktemp("films")
    return {
        "a": make_video(d / "a.mp4", duration=4.0, size="320x240"),
        "b": make_video(d / "b.mp4", duration=2.0, size="160x240", rate="24000/1001"),
        "c": make_video(d / "c.mp4", duration=1.0, size="96x64"),
    }


def _pil_reference(encoder, frames: torch.Tensor) -> torch.Tensor:
    """open_clip's own transform, one PIL image at a time."""
    images = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames]
    return torch.stack([encoder.transform(im) for im in images])


def test_preprocess_config_comes_from_open_clip(encoder):
    assert encoder.image_size == (32, 32)
    assert encoder.decode_short_side == 32
    assert encoder.preprocess_cfg["mean"] == pytest.approx((0.48145466, 0.4578275, 0.40821073))
    assert encoder.preprocess_cfg["interpolation"] == "bicubic"
    assert encoder.dim == 32


@pytest.mark.slow
def test_batched_preprocess_equals_open_clip_on_decoded_frames(encoder, films):
    plan = plan_frames(probe(films["a"]), 5.0, encoder.decode_short_side)
    _, frames = next(iter_chunks(plan, 6))
    assert frames.shape == (6, 32, 43, 3)
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    ours = encoder.preprocess(x)
    ref = _pil_reference(encoder, x)
    assert ours.shape == ref.shape == (6, 3, 32, 32)
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_batched_preprocess_close_to_open_clip_when_resizing(encoder, films):
    plan = plan_frames(probe(films["a"]), 5.0, 240)  # full size: open_clip's resize does work
    _, frames = next(iter_chunks(plan, 4))
    x = torch.from_numpy(frames).permute(0, 3, 1, 2)
    diff = (encoder.preprocess(x) - _pil_reference(encoder, x)).abs()
    assert diff.mean() < 0.01  # tensor vs PIL bicubic: a fraction of one grey level on average
    assert diff.max() < 0.2


@pytest.mark.slow
def test_encode_images_uint8_and_float_agree(encoder, films):
    frames = torch.randint(0, 256, (3, 3, 40, 50), dtype=torch.uint8)
    a = encoder.encode_images(frames)
    b = encoder.encode_images(encoder.preprocess(frames))
    assert a.dtype == torch.float32 and a.shape == (3, 32)
    torch.testing.assert_close(a, b)
    with torch.no_grad():
        direct = encoder.model.encode_image(_pil_reference(encoder, frames))
    torch.testing.assert_close(a, direct, atol=0.05, rtol=0)
    assert not torch.allclose(a[0], a[1])


def test_encode_text(encoder):
    t = encoder.encode_text(["a man opens the door", "a dog", "a man opens the door"])
    assert t.shape == (3, 32) and t.dtype == torch.float32
    torch.testing.assert_close(t[0], t[2])
    assert not torch.allclose(t[0], t[1])
    with torch.no_grad():
        ref = encoder.model.encode_text(encoder.tokenizer(["a dog"]))
    torch.testing.assert_close(t[1:2], ref)
    assert encoder.encode_text([]).shape == (0, 32)


@pytest.mark.slow
def test_extract_values_metadata_and_skip(encoder, films, tmp_path):
    card = tiny_card()
    threads = torch.get_num_threads()
    res = extract_features([films["a"]], card, out_dir=tmp_path, device="cpu", chunk_frames=8)
    assert torch.get_num_threads() == threads  # the decode thread's core is given back
    assert [r.status for r in res] == ["done"]
    out = tmp_path / "a.features.safetensors"
    assert res[0].output == out == output_path(films["a"], tmp_path)
    feats, meta = load_features(out)
    assert feats.dtype == torch.float16 and feats.shape == (20, 32)
    # same frames through decord + batched preprocess + encoder, in one go
    plan = plan_frames(probe(films["a"]), 5.0, 32)
    frames = np.concatenate([f for _, f in iter_chunks(plan, 100)])
    ref = encoder.encode_images(torch.from_numpy(frames).permute(0, 3, 1, 2))
    torch.testing.assert_close(feats.float(), ref, atol=2e-3, rtol=2e-3)
    data = films["a"].read_bytes()
    assert meta["fps"] == 5.0 and meta["frames"] == 20
    assert meta["duration"] == pytest.approx(4.0, abs=1e-3)
    assert meta["card"] == "tiny" and meta["clip_model"] == "locomad-tiny-clip"
    assert meta["clip_pretrained"] == "None"
    assert meta["source_size"] == len(data)
    assert meta["source_sha256_1mib"] == hashlib.sha256(data[: 1 << 20]).hexdigest()
    assert not partial_dir(out).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.features.safetensors"]

    calls = []
    again = extract_features(
        [films["a"]], card, out_dir=tmp_path, on_chunk=lambda *a: calls.append(a)
    )
    assert [r.status for r in again] == ["skipped"] and calls == []
    redo = extract_features(
        [films["a"]], card, out_dir=tmp_path, overwrite=True, on_chunk=lambda *a: calls.append(a)
    )
    assert [r.status for r in redo] == ["done"] and len(calls) == 1


class Crash(Exception):
    pass


@pytest.mark.slow
def test_resume_after_crash(films, tmp_path):
    card = tiny_card()
    out = tmp_path / "a.features.safetensors"

    def crash_after_chunk_1(path, chunk, n):
        if chunk == 1:
            raise Crash  # as if killed right after chunk 1 reached the disk

    with pytest.raises(Crash):
        extract_features(
            [films["a"]], card, out_dir=tmp_path, chunk_frames=6, on_chunk=crash_after_chunk_1
        )
    part = partial_dir(out)
    assert not out.exists()
    assert sorted(p.name for p in part.iterdir()) == [
        "chunk-00000.safetensors",
        "chunk-00001.safetensors",
        "state.json",
    ]
    (part / ".chunk-00002.safetensors.half.tmp").write_bytes(b"half-written")  # killed mid-write
    (part / "chunk-00001.safetensors").write_bytes(b"")  # emptied by a power cut: redone

    done = []
    res = extract_features(
        [films["a"]],
        card,
        out_dir=tmp_path,
        chunk_frames=6,
        on_chunk=lambda p, c, n: done.append((c, n)),
    )
    assert res[0].status == "resumed" and res[0].computed_frames == 14
    assert done == [(1, 6), (2, 6), (3, 2)]
    assert not part.exists()
    resumed, _ = load_features(out)

    fresh_dir = tmp_path / "fresh"
    extract_features([films["a"]], card, out_dir=fresh_dir, chunk_frames=6)
    fresh, _ = load_features(fresh_dir / "a.features.safetensors")
    torch.testing.assert_close(resumed, fresh, atol=2e-3, rtol=2e-3)


@pytest.mark.slow
def test_partial_state_of_other_settings_is_discarded(films, tmp_path):
    out = tmp_path / "c.features.safetensors"
    part = partial_dir(out)
    part.mkdir()
    (part / "state.json").write_text(json.dumps({"fps": "1"}))
    save_file(
        {"features": torch.zeros(3, 32, dtype=torch.float16)}, str(part / "chunk-00000.safetensors")
    )
    done = []
    extract_features(
        [films["c"]],
        tiny_card(),
        out_dir=tmp_path,
        chunk_frames=3,
        on_chunk=lambda p, c, n: done.append(c),
    )
    assert done == [0, 1]
    feats, _ = load_features(out)
    assert feats.shape == (5, 32) and feats.abs().sum() > 0


@pytest.mark.slow
def test_existing_output_from_other_settings_needs_overwrite(films, tmp_path):
    card = tiny_card()
    extract_features([films["c"]], card, out_dir=tmp_path)
    out = tmp_path / "c.features.safetensors"
    before = out.read_bytes()
    with pytest.raises(LocomadError, match="locomad extract-features .* --fps 2 --overwrite"):
        extract_features([films["c"]], card, out_dir=tmp_path, fps=2.0)
    assert out.read_bytes() == before
    extract_features([films["c"]], card, out_dir=tmp_path, fps=2.0, overwrite=True)
    feats, meta = load_features(out)
    assert feats.shape == (2, 32) and meta["fps"] == 2.0


@pytest.mark.slow
def test_bad_film_among_good_ones_writes_nothing(films, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a film")
    out = tmp_path / "out" / "deeper"
    with pytest.raises(LocomadError, match="bad.mp4: not a readable video"):
        extract_features([films["a"], bad], tiny_card(), out_dir=out)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_truncated_film_leaves_no_output(tmp_path):
    import subprocess

    src = tmp_path / "fs.mp4"
    cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=96x64:d=3"]
    subprocess.run([*cmd, "-c:v", "libx264", "-movflags", "+faststart", str(src)], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    with pytest.raises(LocomadError, match="truncated or corrupt"):
        extract_features([cut], tiny_card())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.mp4", "fs.mp4"]


@pytest.mark.slow
def test_same_stem_twice_is_refused(films, tmp_path):
    other = tmp_path / "a.mp4"
    other.write_bytes(films["c"].read_bytes())
    with pytest.raises(LocomadError, match="would both write"):
        extract_features([films["a"], other], tiny_card(), out_dir=tmp_path / "o")


@pytest.mark.slow
def test_ranks_split_films(films, tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    res = extract_features([films["c"], films["b"], films["a"]], tiny_card(), out_dir=tmp_path)
    assert [r.video.stem for r in res] == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.features.safetensors"]
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(LocomadError, match="WORLD_SIZE"):
        extract_features([films["c"]], tiny_card(), out_dir=tmp_path)


@pytest.mark.slow
def test_h5_mad_layout(films, tmp_path):
    card = tiny_card()
    h5 = tmp_path / "mine.h5"
    extract_features([films["c"]], card, out_dir=tmp_path, h5=h5)
    extract_features([films["b"]], card, out_dir=tmp_path, h5=h5)
    with h5py.File(h5, "r") as f:
        assert sorted(f) == ["b", "c"]
        for key in ("b", "c"):
            feats, _ = load_features(tmp_path / f"{key}.features.safetensors")
            np.testing.assert_array_equal(f[key][()], feats.float().numpy())
            assert f[key].dtype == np.float32 and f[key].attrs["fps"] == 5.0
    # replacing a film keeps the others
    extract_features([films["c"]], card, out_dir=tmp_path, h5=h5, fps=2.0, overwrite=True)
    with h5py.File(h5, "r") as f:
        assert f["c"].shape == (2, 32) and f["b"].shape == (10, 32)
    not_h5 = tmp_path / "notes.h5"
    not_h5.write_text("hello")
    with pytest.raises(LocomadError, match="not an HDF5 file"):
        write_h5(not_h5, [tmp_path / "c.features.safetensors"])
    assert not_h5.read_text() == "hello"


def test_load_features_rejects_other_files(tmp_path):
    p = tmp_path / "x.features.safetensors"
    p.write_text("nope")
    with pytest.raises(LocomadError, match="not a features file"):
        load_features(p)
    with pytest.raises(LocomadError, match="no such features file"):
        load_features(tmp_path / "missing.features.safetensors")


def test_clip_weights_from_local_safetensors(encoder, tmp_path):
    path = tmp_path / "clip.safetensors"
    state = {k: v.clone() + 0.5 for k, v in encoder.model.state_dict().items()}
    save_file(state, str(path))
    card = tiny_card()
    card.clip.pretrained = str(path)
    loaded = load_clip(card)
    for k, v in loaded.model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    # relative to the card's folder
    card.source = str(tmp_path / "card.yaml")
    card.clip.pretrained = "clip.safetensors"
    assert load_clip(card).pretrained == "clip.safetensors"


@pytest.mark.parametrize(
    "change, words",
    [
        (dict(pretrained="missing.safetensors"), "CLIP weights file not found"),
        (dict(pretrained="weights.pt"), "must be a .safetensors file"),
        (dict(pretrained="bad.safetensors"), "cannot load into"),
        (dict(model="no-such-model", config=None), "open_clip has no model named 'no-such-model'"),
        (
            dict(pretrained="laion9b", model="RN50", config=None, dim=1024),
            "neither an open_clip tag",
        ),
        (dict(dim=768), "clip.dim=768"),
    ],
)
def test_clip_errors(tmp_path, monkeypatch, change, words):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "weights.pt").write_bytes(b"pickle")
    save_file({"nonsense": torch.zeros(2)}, str(tmp_path / "bad.safetensors"))
    card = tiny_card()
    for k, v in change.items():
        setattr(card.clip, k, v)
    with pytest.raises(LocomadError, match="^.") as e:
        load_clip(card)
    assert words in str(e.value)


def test_clip_offline_hub_is_a_clear_error(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    card = tiny_card()
    card.clip = ClipCard(model="RN50", pretrained="openai", dim=1024)
    with pytest.raises(
        LocomadError, match="not in the local cache and the model hub is unreachable"
    ):
        load_clip(card)


@pytest.mark.slow
def test_resume_after_kill_9(films, tmp_path):
    """A real SIGKILL in a child process right after chunk 1 reached the disk."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import locomad_cli

    root = str(Path(locomad_cli.__file__).resolve().parent.parent)

    script = (
        "import os, signal, sys\n"
        "from locomad_cli.card import tiny_card\n"
        "from locomad_cli.features.extract import extract_features\n"
        "def kill(path, chunk, n):\n"
        "    if chunk == 1:\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "extract_features([sys.argv[1]], tiny_card(), out_dir=sys.argv[2], chunk_frames=6,\n"
        "                 on_chunk=kill)\n"
    )
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.run([sys.executable, "-c", script, str(films["a"]), str(tmp_path)], env=env)
    assert proc.returncode == -9
    out = tmp_path / "a.features.safetensors"
    assert not out.exists()
    assert len(list(partial_dir(out).glob("chunk-*.safetensors"))) == 2
    done = []
    res = extract_features(
        [films["a"]],
        tiny_card(),
        out_dir=tmp_path,
        chunk_frames=6,
        on_chunk=lambda p, c, n: done.append(c),
    )
    assert res[0].status == "resumed" and done == [2, 3]
    assert load_features(out)[0].shape == (20, 32)
