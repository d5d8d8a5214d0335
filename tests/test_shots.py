"""Shot changes (shots.py): PySceneDetect on demo films whose cuts are known, its cache, and
the feature-based detector on features with known cuts."""

import json
import shutil

import numpy as np
import pytest

from locomad_cli.slots.shots import (
    FORMAT,
    cuts_from_features,
    detect_cuts,
    output_path,
    shot_bounds,
)
from locomad_cli.utils import LocomadError


@pytest.mark.slow
def test_demo_place_changes_found_and_cached(demo_films, tmp_path):
    for film in demo_films:
        shots = detect_cuts(film.mp4, tmp_path)
        assert shots.status == "done" and shots.detector.startswith("pyscenedetect")
        for c in film.cuts:
            assert any(abs(c - x) <= 0.15 for x in shots.cuts), (c, shots.cuts)
        # a character walking in or a prop changing hands is not a cut (at most one slip)
        assert len(shots.cuts) <= len(film.cuts) + 1
        data = json.loads(shots.path.read_text())
        assert data["format"] == FORMAT and data["cuts"] == shots.cuts
        again = detect_cuts(film.mp4, tmp_path)
        assert again.status == "cached" and again.cuts == shots.cuts


@pytest.mark.slow
def test_stale_cache_of_another_film_is_not_used(demo_films, tmp_path):
    film = tmp_path / "film.mp4"
    shutil.copyfile(demo_films[0].mp4, film)
    first = detect_cuts(film)
    assert first.path == output_path(film)
    shutil.copyfile(demo_films[1].mp4, film)  # same name, other film
    second = detect_cuts(film)
    assert second.status == "done"
    assert all(any(abs(c - x) <= 0.15 for x in second.cuts) for c in demo_films[1].cuts)


def test_unreadable_video_refused_in_one_line(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00not a film" * 100)
    with pytest.raises(LocomadError, match="PySceneDetect cannot read the video") as e:
        detect_cuts(bad, tmp_path)
    assert "\n" not in str(e.value)
    assert not output_path(bad, tmp_path).exists()


def test_feature_cuts_between_shots_not_within():
    rng = np.random.default_rng(0)
    fps = 5.0
    a, b, c = (rng.standard_normal(16) for _ in range(3))
    # three shots of 4, 3 and 5 s; inside each shot the frames wobble (motion)
    shots = [(a, 20), (b, 15), (c, 25)]
    frames = np.concatenate(
        [base + 0.2 * rng.standard_normal((n, 16)) for base, n in shots], dtype=np.float32
    )
    assert cuts_from_features(frames, fps) == [3.9, 6.9]  # between frames 19|20 and 34|35
    assert cuts_from_features(frames[:20], fps) == []
    assert cuts_from_features(np.zeros((1, 4)), fps) == []


def test_shot_bounds():
    assert shot_bounds([5.0, 2.0, 0.0, 12.0], 10.0) == [(0.0, 2.0), (2.0, 5.0), (5.0, 10.0)]
    assert shot_bounds([], 3.0) == [(0.0, 3.0)]
