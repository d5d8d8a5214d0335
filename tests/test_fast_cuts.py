"""Slots in fast-cut footage (the issue's measure): 40 s with a cut every 1-2.5 s and four
spoken lines, planned from the soundtrack's speech and the detected cuts, with no subtitles
and with half of them. AD over speech at most 1 % of AD time, at least 80 % of the time
without speech used (94-95 % measured; the planner that treated cuts as walls used 21-28 %
of this film, 58-65 % of the issue's footage: every shot piece
under min_gap between two cuts went undescribed).

The film is made here: shots of coloured blocks (numpy frames piped to ffmpeg) and a
soundtrack of a quiet pink-noise bed with four espeak-ng lines."""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from locomad_cli.tracks.readers import Cue

DURATION, FPS, W, H = 40.0, 25, 160, 120
LINES = [
    (5.0, "Where have you been all this time?"),
    (14.5, "Get down, they are coming!"),
    (23.0, "Run to the car, now."),
    (32.5, "We made it, I cannot believe it."),
]


def _cut_times(seed: int = 3) -> list[float]:
    rng = np.random.default_rng(seed)
    cuts, t = [], 0.0
    while True:
        t += float(rng.uniform(1.0, 2.5))
        if t >= DURATION - 0.5:
            return cuts
        cuts.append(round(t * FPS) / FPS)


def _picture(path: Path, cuts: list[float]) -> None:
    rng = np.random.default_rng(0)
    bounds = [0.0, *cuts, DURATION]
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"]
    cmd += ["-s", f"{W}x{H}", "-r", str(FPS), "-i", "-", "-c:v", "libx264", "-preset"]
    cmd += ["ultrafast", "-pix_fmt", "yuv420p", str(path)]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        shot = np.empty((H, W, 3), np.uint8)
        shot[:] = rng.integers(0, 256, 3)
        for _ in range(4):  # a few blocks, so a shot has content, not one flat colour
            y, x = rng.integers(0, H - 30), rng.integers(0, W - 40)
            shot[y : y + 30, x : x + 40] = rng.integers(0, 256, 3)
        for k in range(round(a * FPS), round(b * FPS)):
            frame = np.roll(shot, k % 8, axis=1)  # a slow pan inside the shot
            proc.stdin.write(frame.tobytes())
    proc.stdin.close()
    assert proc.wait() == 0


def make_fast_cut_film(folder: Path) -> tuple[Path, list[tuple[float, float]], list[Cue]]:
    """(film.mp4, the spoken spans, their subtitle cues)."""
    folder.mkdir(parents=True, exist_ok=True)
    picture, film = folder / "picture.mp4", folder / "film.mp4"
    _picture(picture, _cut_times())
    inputs, parts, spans, cues = [], [], [], []
    for i, (at, text) in enumerate(LINES):
        line = folder / f"line{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(line), text], check=True)
        with wave.open(str(line)) as w:
            length = w.getnframes() / w.getframerate()
        spans.append((at, at + length))
        cues.append(Cue(at, at + length, text))
        inputs += ["-i", str(line)]
        parts.append(f"[{i + 2}:a]aresample=48000,adelay={round(at * 1000)}:all=1[d{i}]")
    lines = "".join(f"[d{i}]" for i in range(len(LINES)))
    graph = ";".join(parts) + f";[1:a]volume=0.03[bed];[bed]{lines}"
    graph += f"amix=inputs={len(LINES) + 1}:normalize=0:duration=first[a]"
    noise = f"anoisesrc=c=pink:r=48000:d={DURATION}:seed=7"
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(picture), "-f", "lavfi"]
    cmd += ["-i", noise, *inputs, "-filter_complex", graph, "-map", "0:v", "-map", "[a]"]
    cmd += ["-c:v", "copy", "-c:a", "aac", "-t", f"{DURATION}", str(film)]
    subprocess.run(cmd, check=True)
    return film, spans, cues


def _overlap(a: tuple[float, float], b: tuple[float, float]) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


@pytest.fixture(scope="module")
def fast_cut_film(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast-cuts")
    return root, *make_fast_cut_film(root)


@pytest.mark.slow
@pytest.mark.parametrize("kept", ["none", "half"])
def test_fast_cuts_use_the_free_time_and_keep_off_speech(fast_cut_film, kept):
    from locomad_cli.slots.plan import plan_film

    root, film, spans, cues = fast_cut_film
    subs = [] if kept == "none" else cues[::2]
    plan = plan_film(film, subs, DURATION, root)
    assert plan.vad == "on" and plan.shots is not None
    assert len(plan.shots.cuts) >= 0.8 * len(_cut_times())  # the footage is fast-cut
    ad = sum(s.end - s.start for s in plan.slots)
    over = sum(_overlap((s.start, s.end), v) for s in plan.slots for v in spans)
    free = DURATION - sum(b - a for a, b in spans)
    print(f"{kept}: {len(plan.slots)} slots, AD {ad:.1f} s, over speech {over:.2f} s, "
          f"free {free:.1f} s used {ad / free:.0%}")  # fmt: skip
    assert over / ad <= 0.01
    assert ad / free >= 0.80
    for s in plan.slots:
        assert s.why["reason"] and (s.end - s.start) >= 2.0 - 1e-6
