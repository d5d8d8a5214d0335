"""Shot changes (cuts): where a description should start and end.

A description that runs across a cut talks about a picture that is gone. Slots (slots.py) are
cut at these times, so this module only finds them:

- `detect_cuts(video)`: PySceneDetect's AdaptiveDetector on the decoded frames (colour and
  brightness change against the frames around it, so a flicker or a pan is not a cut). The
  default: on the demo films it found every cut with the fewest false ones (docs/describe.md).
- `cuts_from_features(features, fps)`: the change between the mean CLIP features of the
  frames before and after each frame boundary. Free, since describe has the features anyway,
  but coarser (5 FPS) and, with the demo's small CLIP, less exact; kept for comparison and for
  library users who have features and no video.

`detect_cuts` decodes the whole film again, so its cuts are cached in `<stem>.shots.json`
beside the film or in the output folder, keyed on the file's identity like the feature files.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from locomad_cli.features.cache import FilmCache
from locomad_cli.features.video import source_fingerprint
from locomad_cli.utils import LocomadError, atomic_open

FORMAT = "locomad-shots-1"
MIN_SHOT = 0.6
"""Seconds: PySceneDetect's shortest shot (its default, 15 frames, would miss a cut 1 s into
the film at 10 FPS)."""
CACHE = FilmCache("shots", ".json", ("source_size", "source_sha256_1mib", "detector"))
output_path = CACHE.path


@dataclass
class Shots:
    cuts: list[float]
    """Seconds at which a new shot begins, in order (never 0)."""
    detector: str
    path: Path | None = None
    """The cache file (None for cuts from features)."""
    status: str = "done"
    """'done' (computed now) or 'cached'."""


def detector_name(min_shot: float = MIN_SHOT) -> str:
    try:
        version = metadata.version("scenedetect")
    except metadata.PackageNotFoundError:
        raise LocomadError("PySceneDetect is not installed (pip install scenedetect)") from None
    return f"pyscenedetect {version} adaptive min_scene_len={min_shot:g}s"


def _read_cache(path: Path) -> tuple[dict, list[float]] | None:
    """(the file's fields, its cuts) of a shots cache, None when unreadable."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return None
    cuts = data.get("cuts")
    if not isinstance(cuts, list) or not all(
        isinstance(c, (int, float)) and math.isfinite(c) for c in cuts
    ):
        return None
    return data, [float(c) for c in cuts]


def detect_cuts(
    video: str | Path,
    out_dir: str | Path | None = None,
    min_shot: float = MIN_SHOT,
    on_start: Callable[[], None] | None = None,
) -> Shots:
    """The film's cuts by PySceneDetect, cached in `out_dir` (default: beside the film); a
    matching cache beside the film is used wherever `out_dir` is. `on_start()` runs when the
    film has to be decoded (no cache)."""
    video = Path(video)
    if not video.is_file():
        raise LocomadError(f"{video}: no such file")
    want = {**source_fingerprint(video), "detector": detector_name(min_shot)}
    found = CACHE.find(video, out_dir, want, _read_cache)
    if found is not None:
        return Shots(found[2], want["detector"], found[0], "cached")
    if on_start is not None:
        on_start()
    target = output_path(video, out_dir)
    cuts = _scenedetect(video, min_shot)
    with atomic_open(target) as f:
        json.dump({"format": FORMAT, **want, "cuts": cuts}, f, indent=1)
    return Shots(cuts, want["detector"], target, "done")


def _scenedetect(video: Path, min_shot: float) -> list[float]:
    from scenedetect import AdaptiveDetector, detect

    logger = logging.getLogger("pyscenedetect")
    level = logger.level
    logger.setLevel(logging.ERROR)  # it logs every step at INFO and warns about seeking
    try:
        scenes = detect(str(video), AdaptiveDetector(min_scene_len=f"{min_shot:g}s"))
    except Exception as e:  # scenedetect raises its own VideoOpenFailure and OpenCV errors
        raise LocomadError(
            f"{video}: PySceneDetect cannot read the video ({' '.join(str(e).split())[:200]})"
        ) from None
    finally:
        logger.setLevel(level)
    return [round(float(start.seconds), 3) for start, _ in scenes[1:]]


def cuts_from_features(
    features, fps: float, threshold: float = 0.5, window: int = 2, min_shot: float = 1.0
) -> list[float]:
    """Cuts where the mean of the `window` frames after a boundary points away from the mean
    of the `window` frames before it (1 - cosine >= `threshold`), the largest change within
    `min_shot` seconds winning. Frame i shows t = i/fps, so a cut between frames i-1 and i is
    placed at (i - 0.5)/fps. Tuned on demo films (docs/describe.md)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        return []
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    csum = np.concatenate([np.zeros((1, f.shape[1])), np.cumsum(f, axis=0)])
    t = len(f)
    change = np.zeros(t)
    for i in range(1, t):
        a, b = max(0, i - window), min(t, i + window)
        before = (csum[i] - csum[a]) / (i - a)
        after = (csum[b] - csum[i]) / (b - i)
        denom = max(float(np.linalg.norm(before) * np.linalg.norm(after)), 1e-12)
        change[i] = 1.0 - float(before @ after) / denom
    reach = max(1, int(round(min_shot * fps)))
    cuts = []
    for i in range(1, t):
        lo, hi = max(1, i - reach), min(t, i + reach + 1)
        if change[i] >= threshold and change[i] == change[lo:hi].max():
            if not cuts or i - cuts[-1] > reach:
                cuts.append(i)
    return [round((i - 0.5) / fps, 3) for i in cuts]


def shot_bounds(cuts: list[float], duration: float) -> list[tuple[float, float]]:
    """The shots (start, end) between the film's edges and its cuts."""
    edges = [0.0, *[c for c in sorted(cuts) if 0 < c < duration], duration]
    return [(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
