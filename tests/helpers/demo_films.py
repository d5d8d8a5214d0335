"""Two short demo films with their real soundtrack (espeak-ng dialogue over the noise bed),
rendered once per test session for the slot, audio and shot tests.

Each comes with the truth the tests measure against: where each line is really heard (from
the renderer, not from any detector), where the picture cuts to another place, and the
subtitle file the world writes. The seed is one no demo model is trained or tuned on.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from locomad_cli.demo.data import write_srt
from locomad_cli.demo.render import encode_mp4, film_frames, film_soundtrack
from locomad_cli.demo.world import Film, make_plot

SEED = 9011
FPS = 10.0


@dataclass
class DemoFilm:
    film: Film
    mp4: Path
    srt: Path
    voiced: list[tuple[float, float]]
    cuts: list[float]
    """Times at which the picture changes to another place (the world's scene changes)."""
    duration: float
    """Seconds of video (and of sound)."""


def place_changes(film: Film) -> list[float]:
    """Where the renderer switches backgrounds: every scene's establishing slot (from the
    empty first location, index 0, at the start)."""
    cuts, loc = [], 0
    for s in film.slots:
        if s.action.kind == "establish":
            if s.action.location != loc:
                cuts.append(s.start)
            loc = s.action.location
    return cuts


@functools.cache
def demo_films() -> tuple[DemoFilm, ...]:
    root = Path(tempfile.mkdtemp(prefix="locomad-demo-films-"))
    atexit.register(shutil.rmtree, root, True)
    out = []
    for i in range(2):
        film = make_plot(np.random.default_rng([SEED, i]), f"held{i}", SEED, scenes=2)
        frames = film_frames(film, FPS)
        sound = film_soundtrack(film, FPS)
        mp4 = encode_mp4(frames, FPS, root / f"{film.name}.mp4", sound=sound)
        srt = write_srt([(ln.start, ln.end, ln.text) for ln in film.lines], mp4.with_suffix(".srt"))
        duration = len(frames) / FPS
        out.append(DemoFilm(film, mp4, srt, sound.voiced, place_changes(film), duration))
    return tuple(out)


def undecodable_audio(path):
    """A Matroska film whose audio track names a codec that does not exist (ffprobe lists
    the stream, ffmpeg cannot decode it)."""
    src = path.with_suffix(".src.mkv")
    cmd = ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "testsrc2=s=64x48:r=10:d=4"]
    cmd += ["-f", "lavfi", "-i", "sine=f=300:d=4", "-c:v", "libx264", "-preset", "ultrafast"]
    subprocess.run(cmd + ["-pix_fmt", "yuv420p", "-c:a", "pcm_s16le", str(src)], check=True)
    data = src.read_bytes()
    assert b"A_PCM/INT/LIT" in data
    path.write_bytes(data.replace(b"A_PCM/INT/LIT", b"A_XYZ/INT/LIT", 1))
    src.unlink()
    return path
