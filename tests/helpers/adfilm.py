"""A short film with programme audio for the voice and mix tests, made on the spot with ffmpeg
and espeak-ng: the first 40 s of the shipped demo film's picture (stream-copied) under a
soundtrack of a steady pink-noise bed and the demo subtitles spoken at their times. And AD
tracks for it as `locomad describe` writes them (same fields, the film's fingerprint).
"""

from __future__ import annotations

import json
import subprocess
import wave
from pathlib import Path

import numpy as np

from helpers.srt import srt_text
from locomad_cli import __version__
from locomad_cli.features.video import source_fingerprint
from locomad_cli.tracks.readers import Cue

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo" / "demo.mp4"
# The dialogue of the film's first 40 s, fixed here (not read from demo/demo.srt, which
# changes whenever the demo is re-rendered): the slots below are placed around these lines.
DIALOGUE = [
    (8.6, 10.0, "What a day."),
    (18.0, 20.4, "What a day."),
    (24.8, 26.4, "I knew it."),
    (29.9, 31.5, "Is it time already?"),
    (35.4, 37.8, "Is it time already?"),
]
DURATION = 40.0
BED = 0.03
"""Pink-noise amplitude of the programme bed (about -38 dBFS RMS): steady, so levels compare."""

# (start, end, [text, other candidates...]) inside the first 40 s; subtitles are at 8.6-10.0,
# 18.0-20.4, 24.8-26.4, 29.9-31.5 and 35.4-37.8
SLOTS = [
    # too long even at 200 wpm; the third candidate fits: substituted
    (
        1.0,
        3.9,
        [
            "In the kitchen, a blue cup and a yellow book lie on the big wooden table.",
            "In the old kitchen, a blue cup and a yellow book lie on the big wooden table.",
            "A wide view of the kitchen.",
        ],
    ),
    (5.1, 8.3, ["A man in a green coat, Leo, enters the kitchen."]),
    (10.3, 12.9, ["Leo jumps up and down."]),
    (14.2, 17.7, ["A woman in an orange jacket, Amy, enters the kitchen."]),
    (20.7, 24.5, ["Leo picks up the yellow book."]),
    # cannot fit and has no shorter candidate: dropped, or extended with --extended
    (
        26.7,
        29.6,
        ["Leo jumps for joy, laughing, and then he runs around the kitchen table twice."],
    ),
    (31.8, 35.1, ["Leo leaves the kitchen."]),
    # given times reach into dialogue (35.4-37.8): it may only be spoken after 37.8
    (36.5, 39.5, ["Amy waits."]),
]


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-y", *args], check=True)


def make_film(folder: Path, audio: bool = True) -> tuple[Path, Path]:
    """(film.mp4, film.srt) in `folder`: the demo picture's first 40 s, with the soundtrack
    (or none), and the subtitles of those 40 s."""
    folder.mkdir(parents=True, exist_ok=True)
    film, srt = folder / "film.mp4", folder / "film.srt"
    cues = [Cue(a, b, t) for a, b, t in DIALOGUE]
    srt.write_text(srt_text(DIALOGUE), encoding="utf-8")
    if not audio:
        _ffmpeg("-i", str(DEMO), "-t", f"{DURATION}", "-map", "0:v", "-c", "copy", str(film))
        return film, srt
    inputs, parts = [], []
    for i, c in enumerate(cues):
        line = folder / f".line{i}.wav"
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", "160", "-w", str(line), c.text], check=True
        )
        inputs += ["-i", str(line)]
        parts.append(f"[{i + 2}:a]aresample=48000,adelay={round(c.start * 1000)}:all=1[d{i}]")
    mixed = "".join(f"[d{i}]" for i in range(len(cues)))
    graph = ";".join(parts) + f";[1:a]volume={BED}[bed];[bed]{mixed}"
    graph += f"amix=inputs={len(cues) + 1}:normalize=0:duration=first[a]"
    noise = f"anoisesrc=c=pink:r=48000:d={DURATION}:seed=7"
    _ffmpeg(
        "-i", str(DEMO), "-f", "lavfi", "-i", noise, *inputs,
        "-filter_complex", graph, "-map", "0:v", "-map", "[a]", "-t", f"{DURATION}",
        "-c:v", "copy", "-c:a", "aac", "-b:a", "160k", "-ac", "2", str(film),
    )  # fmt: skip
    for p in folder.glob(".line*.wav"):
        p.unlink()
    return film, srt


def make_track(film: Path, srt: Path | None, slots=SLOTS) -> dict:
    """An AD track of `film` as describe writes it (candidates best first, scores made up)."""
    fp = source_fingerprint(film)
    rows = []
    for i, (a, b, texts) in enumerate(slots):
        rows.append(
            {
                "index": i,
                "start": a,
                "end": b,
                "text": texts[0],
                "selected": [],
                "subtitles": "",
                "source": f"test:{i}",
                "candidates": [{"text": t, "score": -0.2 - 0.01 * k} for k, t in enumerate(texts)],
            }
        )
    return {
        "film": film.stem,
        "card": "demo",
        "setting": "recurrent",
        "tool": "locomad",
        "version": __version__,
        "weights": "weights/demo",
        "subtitles_file": str(srt) if srt else None,
        "film_duration": DURATION,
        "film_source": {k: fp[k] for k in ("source_name", "source_size", "source_sha256_1mib")},
        "slots": rows,
    }


def write_track(track: dict, path: Path) -> Path:
    path.write_text(json.dumps(track, indent=2), encoding="utf-8")
    return path


def short_film(folder: Path) -> tuple[Path, Path]:
    """A 5 s film with a tone (160 x 120) and a two-slot AD track for it, in `folder`: the
    smallest film `voice` does all its work on."""
    from helpers.media import make_video

    film = make_video(folder / "short.mp4", duration=5.0, size="160x120", audio=True)
    slots = [(0.5, 2.5, ["A door opens."]), (3.0, 4.9, ["Rain falls."])]
    return film, write_track(make_track(film, None, slots), folder / "short.ad.json")


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """[samples, channels] float in [-1, 1), and the sample rate."""
    with wave.open(str(path), "rb") as w:
        assert w.getsampwidth() == 2
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
        return x.reshape(-1, w.getnchannels()) / 32768.0, w.getframerate()


def db(x: np.ndarray) -> float:
    """RMS level in dBFS."""
    return float(10 * np.log10(np.mean(np.square(x)) + 1e-20))
