"""Probing and exact-timestamp decoding (locomad_cli/features/video.py)."""

import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers.media import make_audio_only, make_video

from locomad_cli.features.video import (
    VideoInfo,
    decode_size,
    frame_count,
    iter_chunks,
    plan_frames,
    probe,
    sample_indices,
    source_fingerprint,
)
from locomad_cli.utils import LocomadError

FLAT_STEP = 255 / 219 * 2
"""RGB step between frames of an index video (luma 16 + 2·N, limited range → full range)."""


def make_index_video(path: Path, rate: str = "25", duration: float = 4.0, vfr: bool = False):
    """A lossless flat-grey video whose grey level says which source frame N it is, so a test
    can tell exactly which frame was decoded. `vfr` drops frames as tests/helpers/media.py does."""
    src = f"nullsrc=s=64x48:r={rate}:d={duration},geq=lum='16+2*N':cb=128:cr=128"
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", src]
    if vfr:
        cmd += ["-vf", "select='not(eq(mod(n\\,3)\\,2))*not(between(t\\,1.0\\,1.5))'"]
        cmd += ["-fps_mode", "vfr"]
    cmd += ["-c:v", "libx264", "-preset", "ultrafast", "-qp", "0", "-pix_fmt", "yuv420p"]
    subprocess.run([*cmd, str(path)], check=True)
    return path


def decoded_source_frames(path: Path, fps: float = 5.0) -> np.ndarray:
    plan = plan_frames(probe(path), fps, 48)
    frames = np.concatenate([f for _, f in iter_chunks(plan, 7)])
    return np.rint(frames.reshape(len(frames), -1).mean(1) / FLAT_STEP).astype(int)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    d = tmp_path_factory.mktemp("video")
    return {
        "idx25": make_index_video(d / "idx25.mp4", "25"),
        "idx23": make_index_video(d / "idx23.mp4", "24000/1001"),
        "idxvfr": make_index_video(d / "idxvfr.mp4", "25", vfr=True),
        "wide": make_video(d / "wide.mp4", duration=2.0, size="320x180"),
        "tall": make_video(d / "tall.mp4", duration=2.0, size="120x200", rate="24000/1001"),
        "vfr": make_video(d / "vfr.mp4", duration=3.0, size="160x120", vfr=True),
        "dir": d,
    }


@pytest.mark.slow
def test_25fps_takes_every_fifth_frame(media):
    plan = plan_frames(probe(media["idx25"]), 5.0, 48)
    assert plan.frames == 20
    assert plan.indices.tolist() == list(range(0, 100, 5))
    assert decoded_source_frames(media["idx25"]).tolist() == list(range(0, 100, 5))


@pytest.mark.slow
def test_23976_follows_timestamps_not_every_nth_frame(media):
    info = probe(media["idx23"])
    plan = plan_frames(info, 5.0, 48)
    # 96 frames of 1001/24000 s = 4.004 s → floor(20.02) = 20 output frames
    assert plan.duration == pytest.approx(96 * 1001 / 24000, abs=1e-3)
    assert plan.frames == 20
    expected = [math.floor(i / 5 * 24000 / 1001 + 1e-9) for i in range(20)]
    assert expected[:4] == [0, 4, 9, 14]  # not 0, 5, 10, 15: that would drift by 4 ms a frame
    assert decoded_source_frames(media["idx23"]).tolist() == expected


@pytest.mark.slow
def test_variable_frame_rate_shows_the_frame_on_screen(media):
    kept = [n for n in range(100) if n % 3 != 2 and not 1.0 <= n / 25 <= 1.5]
    plan = plan_frames(probe(media["idxvfr"]), 5.0, 48)
    assert plan.frames == 20
    expected = [max(n for n in kept if n / 25 <= i / 5 + 1e-9) for i in range(20)]
    assert expected[5:8] == [24, 24, 24]  # 1.0 s, 1.2 s, 1.4 s: the hole holds the last frame
    assert decoded_source_frames(media["idxvfr"]).tolist() == expected


@pytest.mark.slow
def test_other_rates(media):
    expected = [math.floor(i * 12.5) for i in range(8)]
    assert decoded_source_frames(media["idx25"], fps=2.0).tolist() == expected
    # above the video's own rate, frames repeat rather than invent motion
    plan = plan_frames(probe(media["idx25"]), 50.0, 48)
    assert plan.frames == 200 and plan.indices[:4].tolist() == [0, 0, 1, 1]


@pytest.mark.slow
def test_probe_and_decode_size(media):
    info = probe(media["wide"])
    assert (info.width, info.height, info.display_width) == (320, 180, 320)
    assert info.duration == pytest.approx(2.0, abs=0.05)
    assert info.size == media["wide"].stat().st_size
    assert decode_size(info, 32) == (57, 32)
    tall = probe(media["tall"])
    assert decode_size(tall, 32) == (32, 53)
    plan = plan_frames(tall, 5.0, 32)
    chunks = list(iter_chunks(plan, 4))
    assert [c for c, _ in chunks] == [0, 1, 2]
    # 48 frames of 1001/24000 s = 2.002 s → 10 output frames
    assert [f.shape for _, f in chunks] == [(4, 53, 32, 3), (4, 53, 32, 3), (2, 53, 32, 3)]
    assert all(f.dtype == np.uint8 for _, f in chunks)


@pytest.mark.slow
def test_anamorphic_uses_display_aspect(tmp_path):
    path = tmp_path / "ana.mp4"
    cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=64x48:d=1"]
    subprocess.run([*cmd, "-vf", "setsar=2", "-c:v", "libx264", str(path)], check=True)
    info = probe(path)
    assert (info.width, info.display_width, info.display_height) == (64, 128, 48)
    assert decode_size(info, 24) == (64, 24)


@pytest.mark.slow
def test_chunks_skip_and_agree_with_one_pass(media):
    plan = plan_frames(probe(media["vfr"]), 5.0, 32)
    assert plan.frames == 14  # the last kept frame (73 of 75) ends at 2.96 s
    whole = np.concatenate([f for _, f in iter_chunks(plan, 100)])
    parts = dict(iter_chunks(plan, 4, skip={1}))
    assert sorted(parts) == [0, 2, 3]
    np.testing.assert_array_equal(parts[2], whole[8:12])
    np.testing.assert_array_equal(parts[3], whole[12:14])


def test_sample_indices_and_frame_count():
    starts = np.array([10.0, 10.1, 10.5, 10.55])
    assert sample_indices(starts, 5.0, 4).tolist() == [0, 1, 1, 3]
    assert frame_count(4.004, 5.0) == 20
    assert frame_count(3.9999999, 5.0) == 20
    assert frame_count(0.1, 5.0) == 0


@pytest.mark.slow
def test_a_film_is_probed_and_hashed_once_while_unchanged(tmp_path, monkeypatch):
    """Every stage of a command asks for the film's facts: ffprobe runs and the first MiB is
    read once while the file is unchanged, and again once it has changed."""
    import hashlib

    import ffmpeg

    calls = {"ffprobe": 0, "sha256": 0}

    def counted(name, real):
        def call(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(ffmpeg, "probe", counted("ffprobe", ffmpeg.probe))
    monkeypatch.setattr(hashlib, "sha256", counted("sha256", hashlib.sha256))
    film = tmp_path / "film.mp4"
    film.write_bytes(make_video(tmp_path / "a.mp4", 1.0, "64x48", audio=True).read_bytes())
    first = probe(film)
    assert probe(film) is first and probe(str(film)) is first
    assert [s["codec_type"] for s in first.audio] == ["audio"]
    assert first.fingerprint == source_fingerprint(film) == probe(film).fingerprint
    assert calls == {"ffprobe": 1, "sha256": 1}
    film.write_bytes(make_video(tmp_path / "b.mp4", 1.0, "64x48").read_bytes())  # silent
    again = probe(film)
    assert again.audio == () and again.fingerprint != first.fingerprint
    assert calls == {"ffprobe": 2, "sha256": 2}


@pytest.mark.slow
def test_fingerprint(media):
    import hashlib

    fp = source_fingerprint(media["wide"])
    data = media["wide"].read_bytes()
    assert fp["source_size"] == str(len(data))
    assert fp["source_sha256_1mib"] == hashlib.sha256(data[: 1 << 20]).hexdigest()


def _bad(tmp_path: Path, kind: str) -> Path:
    if kind == "missing":
        return tmp_path / "nope.mp4"
    if kind == "empty":
        p = tmp_path / "empty.mp4"
        p.write_bytes(b"")
        return p
    if kind == "text":
        p = tmp_path / "notes.mp4"
        p.write_text("this is not a film\n" * 50)
        return p
    if kind == "audio":
        return make_audio_only(tmp_path / "sound.mp4")
    if kind == "truncated":
        src = make_video(tmp_path / "full.mp4", duration=2.0)
        p = tmp_path / "cut.mp4"
        p.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
        return p
    if kind == "folder":
        p = tmp_path / "dir.mp4"
        p.mkdir()
        return p
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, words",
    [
        ("missing", "no such file"),
        ("empty", "empty file"),
        ("text", "not a readable video"),
        ("audio", "no video stream (only audio streams)"),
        ("truncated", "not a readable video"),
        ("folder", "not a file"),
    ],
)
@pytest.mark.slow
def test_probe_rejects_bad_input(tmp_path, kind, words):
    path = _bad(tmp_path, kind)
    with pytest.raises(LocomadError, match=r"^.+: ") as e:
        probe(path)
    assert words in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_truncated_faststart_fails_at_decoding(tmp_path):
    src = tmp_path / "fs.mp4"
    cmd = ["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "testsrc2=s=160x120:d=3"]
    subprocess.run([*cmd, "-c:v", "libx264", "-movflags", "+faststart", str(src)], check=True)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 3])
    info = probe(cut)  # the index at the front still describes 3 s
    assert info.duration == pytest.approx(3.0, abs=0.05)
    with pytest.raises(LocomadError, match="truncated or corrupt"):
        plan = plan_frames(info, 5.0, 32)
        list(iter_chunks(plan, 4))


@pytest.mark.slow
def test_too_short_for_one_frame(tmp_path):
    path = make_video(tmp_path / "blink.mp4", duration=0.08)
    with pytest.raises(LocomadError, match="shorter than one frame"):
        plan_frames(probe(path), 5.0, 32)


@pytest.mark.slow
def test_zero_fps_rejected(media):
    info: VideoInfo = probe(media["wide"])
    with pytest.raises(LocomadError, match="fps must be positive"):
        plan_frames(info, 0.0, 32)
