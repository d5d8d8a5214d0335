"""Does a film look like what the model was trained on?

A model only describes the kind of film it learnt from: the demo model knows six rendered
rooms and eight cartoon people, and given real footage it still writes fluent sentences about
them. The training frames' feature statistics travel with the weights (`frame-stats.json`:
per-dimension mean and spread, and the distance within which 99 % of training frames lie);
`describe` measures how many of a film's frames lie beyond it and warns once when most do.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from locomad_cli.utils import atomic_open

STATS_FILE = "frame-stats.json"
QUANTILE = 0.99
WARN_SHARE = 0.5
"""Warn when more than this share of a film's frames lie outside the training range."""


@dataclass
class FrameStats:
    mean: list[float]
    std: list[float]
    threshold: float
    """The RMS z-score distance that QUANTILE of the training frames stay within."""
    frames: int
    """How many training frames the statistics come from."""

    def distance(self, features: torch.Tensor) -> torch.Tensor:
        """[T] RMS over dimensions of each frame's z-score against the training frames."""
        mean, std = torch.tensor(self.mean), torch.tensor(self.std)
        return ((features.float() - mean) / std).square().mean(1).sqrt()

    def outside(self, features: torch.Tensor) -> float:
        """The share of `features` rows farther than the threshold."""
        if features.shape[0] == 0:
            return 0.0
        return float((self.distance(features) > self.threshold).float().mean())


def fit(features: list[torch.Tensor]) -> FrameStats:
    """Statistics of training frames ([T_i, D] per film)."""
    x = torch.cat([f.float() for f in features])
    mean, std = x.mean(0), x.std(0).clamp(min=1e-6)
    stats = FrameStats(mean.tolist(), std.tolist(), 0.0, int(x.shape[0]))
    stats.threshold = float(torch.quantile(stats.distance(x), QUANTILE))
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


def unfamiliar(features: torch.Tensor, stats: FrameStats | None, model_name: str) -> str | None:
    """A one-line warning when most frames lie outside the model's training range."""
    if stats is None or len(stats.mean) != features.shape[1]:
        return None
    share = stats.outside(features)
    if share <= WARN_SHARE:
        return None
    return (
        f"{share:.0%} of this film's frames look unlike anything model '{model_name}' was "
        "trained on; its descriptions will not fit this film"
        + (
            " (the demo model only knows the rendered demo world)"
            if model_name == "demo"
            else ""
        )
    )
