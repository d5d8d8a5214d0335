"""Does a film look like what the model was trained on?

A model only describes the kind of film it learnt from: the demo model knows six rendered
rooms and eight cartoon people, and given real footage it still writes fluent sentences about
them. Its own frame features cannot tell: the small demo CLIP maps any picture (ffmpeg's
test patterns, a Mandelbrot zoom, cellular automata) into the range of its training frames.
The pixels can: the demo world is drawn in a few flat colours, so the colour histogram of a
handful of frames (64 bins, 4 levels per channel) sits close to the training films' mean —
total-variation distance 0.41-0.48 for demo films, 0.80-0.90 for those other pictures.

`frame-stats.json` beside a model's weights holds the training films' mean histogram and a
threshold (1.25 × the farthest training film); `describe` samples the film and warns once
when it lies beyond it. Models without the file are not checked.
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from locomad_cli.utils import atomic_open

STATS_FILE = "frame-stats.json"
SAMPLES = 8
"""Frames sampled per film (one ffmpeg seek each: well under a second in all)."""
MARGIN = 1.25
SHORT = 60.0
"""A film shorter than this (an excerpt) shows fewer of the world's places than the training
films did, so its histogram lies farther from their mean though it is the same world:
measured, 12-20 s excerpts of the demo film at 0.64-0.69 against a whole-film threshold of
0.58, other pictures (test patterns, cellular automata, fractals) at 0.76-1.00."""
SHORT_MARGIN = 1.3
"""An excerpt's threshold, relative to the whole films' (0.58 → 0.75 for the demo model)."""
UNUSED = 1e-3
"""A histogram bin whose training mean is below this is a colour the world never shows."""
UNUSED_MASS = 0.1
"""A film with more of its pixels than this in unused colours is unfamiliar however close its
histogram is otherwise (demo excerpts ≤ 0.02; test patterns and fractals 0.28-0.71)."""


def colour_histogram(video: str | Path, duration: float, samples: int = SAMPLES) -> np.ndarray:
    """Mean 64-bin RGB histogram (4 levels per channel) of `samples` frames spread over the
    film, each scaled to 64×48."""
    hists = []
    for i in range(samples):
        t = duration * (i + 0.5) / samples
        cmd = ["ffmpeg", "-v", "error", "-ss", f"{t:.3f}", "-i", str(video), "-frames:v", "1"]
        cmd += ["-vf", "scale=64:48:flags=area", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"]
        raw = subprocess.run(cmd, capture_output=True, check=False).stdout
        if len(raw) != 64 * 48 * 3:
            continue  # past the last frame, or nothing decodable there
        q = np.frombuffer(raw, np.uint8).reshape(-1, 3) // 64
        idx = q[:, 0].astype(int) * 16 + q[:, 1] * 4 + q[:, 2]
        hists.append(np.bincount(idx, minlength=64) / idx.size)
    if not hists:
        raise ValueError(f"{video}: no frame could be decoded")
    return np.mean(hists, axis=0)


@dataclass
class FrameStats:
    histogram: list[float]
    """Mean colour histogram of the training films."""
    threshold: float
    """Total-variation distance beyond which a film is unlike the training films."""
    films: int

    def distance(self, histogram: np.ndarray) -> float:
        return float(0.5 * np.abs(np.asarray(self.histogram) - histogram).sum())

    def unused(self, histogram: np.ndarray) -> float:
        """The share of the film's pixels in colours the training films (almost) never show."""
        return float(np.asarray(histogram)[np.asarray(self.histogram) < UNUSED].sum())


def fit(videos: list[tuple[Path, float]]) -> FrameStats:
    """Statistics of training films given as (path, duration)."""
    hists = [colour_histogram(v, d) for v, d in videos]
    mean = np.mean(hists, axis=0)
    stats = FrameStats(mean.tolist(), 0.0, len(hists))
    stats.threshold = MARGIN * max(stats.distance(h) for h in hists)
    return stats


def save(stats: FrameStats, folder: str | Path) -> Path:
    path = Path(folder) / STATS_FILE
    with atomic_open(path) as f:
        json.dump(asdict(stats), f)
    return path


def load(folder: str | Path | None) -> FrameStats | None:
    """The statistics shipped beside a model's weights, or None when it has none."""
    if folder is None or not (Path(folder) / STATS_FILE).is_file():
        return None
    data = json.loads((Path(folder) / STATS_FILE).read_text(encoding="utf-8"))
    return FrameStats(**data)


def unfamiliar(
    video: Path, duration: float, stats: FrameStats | None, model_name: str
) -> str | None:
    """A one-line warning when the film looks unlike the model's training films."""
    if stats is None or not video.is_file():
        return None
    try:
        histogram = colour_histogram(video, duration)
    except ValueError:
        return None  # undecodable frames are reported where frames are decoded
    bound = stats.threshold * (SHORT_MARGIN if duration < SHORT else 1.0)
    if stats.distance(histogram) <= bound and stats.unused(histogram) <= UNUSED_MASS:
        return None
    what = " (it only knows the rendered demo world)" if model_name == "demo" else ""
    return (
        f"{video.name} looks unlike the films model '{model_name}' was trained on{what}: "
        "its descriptions will not fit this film"
    )
