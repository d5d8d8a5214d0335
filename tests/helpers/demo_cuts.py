"""Short films cut from the shipped demo film, each with its own files beside it, as a
folder of films is laid out for `locomad describe FOLDER`: NAME.mp4 (picture and sound of
[start, start + seconds) of demo/demo.mp4, re-encoded so that it starts exactly there),
NAME.srt (the demo's subtitles inside that stretch, if any) and NAME.ad-times.srt (its
reference AD inside it: the slots, if any). Used by the multi-film tests and by
benchmarks/describe.py.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from helpers.srt import srt_text
from locomad_cli.tracks.readers import read_cues

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "demo" / "demo.mp4"


def _cut_cues(path: Path, start: float, seconds: float, out: Path) -> Path | None:
    """The cues inside the stretch, shifted to its start; no file when there are none."""
    cues = [c for c in read_cues(path) if c.start >= start and c.end <= start + seconds]
    if not cues:
        return None
    shifted = [(c.start - start, c.end - start, c.text) for c in cues]
    out.write_text(srt_text(shifted), encoding="utf-8")
    return out


def cut_demo(folder: Path, name: str, start: float, seconds: float) -> Path:
    """folder/NAME.mp4 with NAME.srt and NAME.ad-times.srt beside it; returns the film."""
    folder.mkdir(parents=True, exist_ok=True)
    film = folder / f"{name}.mp4"
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-y", "-i", str(DEMO), "-ss", f"{start:g}"]
    cmd += ["-t", f"{seconds:g}", "-c:v", "libx264", "-preset", "ultrafast", "-g", "10"]
    cmd += ["-pix_fmt", "yuv420p", "-c:a", "aac", "-threads", "1", str(film)]
    subprocess.run(cmd, check=True)
    _cut_cues(DEMO.with_suffix(".srt"), start, seconds, folder / f"{name}.srt")
    _cut_cues(DEMO.with_name("demo.ad-times.srt"), start, seconds, folder / f"{name}.ad-times.srt")
    return film
