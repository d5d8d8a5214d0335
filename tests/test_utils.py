import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from locomad_cli.utils import atomic_dir, atomic_open, atomic_path


def test_atomic_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_open(tmp_path / "track.vtt") as f:
            f.write("WEBVTT\n")
        with atomic_path(tmp_path / "w.safetensors") as tmp:
            tmp.write_bytes(b"x")
        with atomic_path(tmp_path / "f.features.safetensors") as tmp:
            save_file({"features": torch.zeros(2, 2)}, str(tmp))  # writes a private file
    finally:
        os.umask(old)
    for name in ("track.vtt", "w.safetensors", "f.features.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.srt"
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_whole_folders_with_usual_permissions(tmp_path):
    target = tmp_path / "model"
    old = os.umask(0o022)
    try:
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("1")
        assert stat.S_IMODE(target.stat().st_mode) == 0o755
        with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("boom")
        assert sorted(p.name for p in target.iterdir()) == ["a.txt"]  # the old folder stays
        with atomic_dir(target) as tmp:
            (tmp / "c.txt").write_text("2")
    finally:
        os.umask(old)
    assert sorted(p.name for p in target.iterdir()) == ["c.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp left behind
