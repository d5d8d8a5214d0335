"""The demo model warns once when the footage is not the demo world (familiar.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers.demo_films import demo_films
from helpers.media import make_video

from locomad_cli.card import MODELS_DIR
from locomad_cli.features import familiar

REPO = MODELS_DIR.parent


@pytest.mark.slow
def test_colour_statistics_tell_demo_films_from_other_pictures(tmp_path):
    films = demo_films()
    stats = familiar.fit([(f.mp4, f.duration) for f in films])
    assert stats.films == 2 and 0 < stats.threshold < 1
    for f in films:
        hist = familiar.colour_histogram(f.mp4, f.duration)
        assert stats.distance(hist) <= stats.threshold
    other = make_video(tmp_path / "pattern.mp4", duration=6.0)
    assert stats.distance(familiar.colour_histogram(other, 6.0)) > 1.5 * stats.threshold
    # round trip beside the weights; a model without the file is never checked
    familiar.save(stats, tmp_path)
    assert familiar.load(tmp_path) == stats
    assert familiar.load(tmp_path / "none") is None
    assert familiar.unfamiliar(other, 6.0, None, "demo") is None
    line = familiar.unfamiliar(other, 6.0, stats, "demo")
    assert line and "demo world" in line and "\n" not in line
    assert familiar.unfamiliar(films[0].mp4, films[0].duration, stats, "demo") is None


def _describe(video, tmp_path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from locomad_cli.cli import main; main()", "describe"]
    cmd += [str(video), "--model", "demo"]
    cmd += ["-o", str(tmp_path / "out"), "-q", "--vad", "off", "--shots", "off"]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)


@pytest.mark.slow
def test_shipped_demo_model_warns_once_on_other_footage_only(tmp_path):
    assert (REPO / "weights" / "demo" / familiar.STATS_FILE).is_file()
    other = _describe(make_video(tmp_path / "pattern.mp4", duration=10.0), tmp_path)
    assert other.returncode == 0, other.stderr
    warnings = [ln for ln in other.stderr.splitlines() if "looks unlike" in ln]
    assert len(warnings) == 1 and "demo world" in warnings[0]
    demo = _describe(REPO / "demo" / "demo.mp4", tmp_path)
    assert demo.returncode == 0, demo.stderr
    assert "looks unlike" not in demo.stderr
