"""Speech from the soundtrack (audio.py) on demo films that really speak (espeak-ng), and the
demo soundtrack itself. Real ffmpeg, espeak-ng and silero-vad throughout."""

import hashlib
import shutil
import subprocess

import numpy as np
import pytest
from helpers.demo_films import undecodable_audio
from helpers.media import make_video

from locomad_cli.slots.speech import (
    AudioError,
    _ffmpeg_cmd,
    _load_vad,
    detect_speech,
    output_path,
    partial_dir,
)
from locomad_cli.utils import LocomadError


@pytest.fixture(scope="module")
def speech(demo_films, tmp_path_factory):
    """The first film's speech, found once (cache in a module folder)."""
    return detect_speech(demo_films[0].mp4, tmp_path_factory.mktemp("speech"))


def _overlaps(a, b):
    return a[0] < b[1] and b[0] < a[1]


@pytest.mark.slow
def test_every_voiced_line_is_found_and_nothing_else(demo_films, speech):
    film = demo_films[0]
    assert speech.status == "done" and speech.model.startswith("silero-vad")
    assert speech.duration == pytest.approx(film.duration, abs=0.1)
    for v in film.voiced:
        hits = [s for s in speech.intervals if _overlaps(s, v)]
        assert hits, f"voiced line {v} not found"
        assert abs(hits[0][0] - v[0]) <= 0.3 and abs(hits[-1][1] - v[1]) <= 0.3, (v, hits)
    for s in speech.intervals:  # the noise bed is not speech
        assert any(_overlaps(s, v) for v in film.voiced), f"speech {s} where nobody talks"


@pytest.mark.slow
def test_batched_rows_agree_with_silero_on_the_whole_stream(demo_films, speech):
    """Rows run side by side (for speed) against silero-vad's own one-stream
    get_speech_timestamps on the same decoded audio: the same intervals, edges within 0.2 s
    (the network's state reaches back further than a row's warm-up)."""
    import torch
    from silero_vad import get_speech_timestamps

    raw = subprocess.run(_ffmpeg_cmd(demo_films[0].mp4, 0), capture_output=True, check=True).stdout
    wav = torch.from_numpy(np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768)
    ref = get_speech_timestamps(wav, _load_vad(), sampling_rate=16000, return_seconds=True)
    assert len(ref) == len(speech.intervals)
    for r, (a, b) in zip(ref, speech.intervals, strict=True):
        assert abs(r["start"] - a) <= 0.2 and abs(r["end"] - b) <= 0.2


@pytest.mark.slow
def test_cache_is_reused_and_keyed_on_the_file(demo_films, speech, tmp_path):
    again = detect_speech(demo_films[0].mp4, speech.path.parent)
    assert again.status == "cached" and again.intervals == speech.intervals
    # a copy of the film elsewhere with the cache beside it: used wherever -o points
    film = tmp_path / "film.mp4"
    shutil.copyfile(demo_films[0].mp4, film)
    shutil.copyfile(speech.path, output_path(film))
    found = detect_speech(film, tmp_path / "out")
    assert found.status == "cached" and found.path == output_path(film)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    # another film under the same name: the stale cache is not used
    shutil.copyfile(demo_films[1].mp4, film)
    other = detect_speech(film, tmp_path)
    assert other.status == "done" and other.intervals != speech.intervals


@pytest.mark.slow
def test_killed_run_resumes_from_its_last_block(demo_films, tmp_path):
    film = demo_films[0].mp4
    whole = detect_speech(film, tmp_path / "whole", block_rows=1)

    def crash(block, seconds):
        if block == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        detect_speech(film, tmp_path / "run", on_block=crash, block_rows=1)
    part = partial_dir(output_path(film, tmp_path / "run"))
    assert sorted(p.name for p in part.glob("block-*")) == ["block-00000.safetensors"] + [
        "block-00001.safetensors"
    ]
    resumed = detect_speech(film, tmp_path / "run", block_rows=1)
    assert resumed.status == "resumed" and not part.exists()
    assert len(resumed.intervals) == len(whole.intervals)
    for a, b in zip(resumed.intervals, whole.intervals, strict=True):
        assert a == pytest.approx(b, abs=0.05)


@pytest.mark.slow
def test_film_without_audio_is_refused(tmp_path):
    video = make_video(tmp_path / "silent.mp4", duration=2.0, size="64x48")
    with pytest.raises(LocomadError, match="has no audio stream"):
        detect_speech(video, tmp_path)


@pytest.mark.slow
def test_undecodable_audio_is_an_audio_error_leaving_nothing(tmp_path):
    film = undecodable_audio(tmp_path / "broken.mkv")
    with pytest.raises(AudioError, match="audio stream cannot be decoded"):
        detect_speech(film, tmp_path / "out")
    out = output_path(film, tmp_path / "out")
    assert not out.exists() and not partial_dir(out).exists()


def _video_stream(path):
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v", "-c", "copy", "-f", "h264", "-"],
        capture_output=True,
        check=True,
    ).stdout
    return hashlib.sha256(raw).hexdigest()


@pytest.mark.slow
def test_demo_soundtrack_is_deterministic_and_leaves_the_video_alone(demo_films, tmp_path):
    from helpers.demo_films import FPS

    from locomad_cli.demo.render import encode_mp4, film_frames, film_soundtrack

    film = demo_films[0]
    frames = film_frames(film.film, FPS)
    again = encode_mp4(frames, FPS, tmp_path / "again.mp4", sound=film_soundtrack(film.film, FPS))
    assert again.read_bytes() == film.mp4.read_bytes()
    silent = encode_mp4(frames, FPS, tmp_path / "silent.mp4")
    assert _video_stream(silent) == _video_stream(film.mp4)
    # voiced lines lie inside their subtitles, in order
    lines = film.film.lines
    assert len(film.voiced) == len(lines)
    for (a, b), ln in zip(film.voiced, lines, strict=True):
        assert ln.start <= a < b <= ln.end + 1e-6
