"""A film folder for the review tests: the shipped demo film copied, its subtitles, and an AD
track as `locomad describe` writes it (the film's fingerprint, four slots between the lines).
`fake_probe` stands in for ffprobe in the fast tests (no subprocess)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from locomad_cli import __version__
from locomad_cli.features.video import source_fingerprint

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo" / "demo.mp4"
DURATION = 123.4
SUBS = [(2.0, 4.0, "Good morning."), (9.0, 10.0, "I'm Leo."), (15.0, 16.0, "Hello, Amy.")]
SLOTS = [
    (0.2, 1.8, "The kitchen is quiet."),
    (4.3, 8.7, "A man in a green coat enters the kitchen."),
    (10.3, 14.7, "Luis hands Luis the white letter."),
    (16.3, 20.0, "Carl and Carl embrace."),
]


def srt(cues) -> str:
    def ts(t: float) -> str:
        ms = round(t * 1000)
        return f"{ms // 3600000:02d}:{ms // 60000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"

    return "".join(f"{i}\n{ts(a)} --> {ts(b)}\n{t}\n\n" for i, (a, b, t) in enumerate(cues, 1))


def make_film(folder: Path) -> Path:
    """demo.mp4, demo.srt and demo.ad.json in `folder`; returns the film's path."""
    folder.mkdir(parents=True, exist_ok=True)
    video = folder / "demo.mp4"
    shutil.copy(DEMO, video)
    (folder / "demo.srt").write_text(srt(SUBS), encoding="utf-8")
    fp = source_fingerprint(video)
    track = {
        "film": "demo",
        "card": "demo",
        "setting": "recurrent",
        "tool": "locomad",
        "version": __version__,
        "weights": "weights/demo",
        "subtitles_file": str(folder / "demo.srt"),
        "film_duration": DURATION,
        "film_source": {k: fp[k] for k in ("source_name", "source_size", "source_sha256_1mib")},
        "slots": [
            {
                "index": i,
                "start": a,
                "end": b,
                "text": t,
                "source": "test",
                "candidates": [{"text": t, "score": -0.1}],
            }
            for i, (a, b, t) in enumerate(SLOTS)
        ],
    }
    (folder / "demo.ad.json").write_text(json.dumps(track, indent=2), encoding="utf-8")
    return video


def fake_probe(path):
    return SimpleNamespace(path=Path(path), duration=DURATION)


def start_review(
    film: Path, *args: str, stderr: int | None = subprocess.PIPE
) -> tuple[subprocess.Popen, str]:
    """`locomad review FILM --no-browser ARGS` as a process, and the page's address once the
    server answers (the socket listens when the URL is printed; uvicorn starts just after).
    `stderr=None` leaves the server's stderr on the test's own."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "locomad_cli", "review", str(film), "--no-browser", *args]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, cwd=ROOT)
    url = p.stdout.readline().strip()
    if not url.startswith("http://"):
        why = p.stderr.read() if p.stderr is not None and p.poll() is not None else url
        raise AssertionError(f"no review page address: {why}")
    import httpx

    for _ in range(100):
        try:
            if httpx.get(url + "api/track", timeout=5).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    return p, url
