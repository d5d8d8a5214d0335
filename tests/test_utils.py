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


def test_outputs_never_replace_a_device_pipe_or_socket_and_write_through_links(tmp_path):
    """A rename puts a plain file where a device node or a pipe was (as root, `-o /dev/null`
    replaced the system's /dev/null); those are refused in one line. A symbolic link stays
    a link: its target gets the new content."""
    import socket
    import stat

    from locomad_cli.utils import LocomadError, atomic_open

    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(tmp_path / "s.json"))
    specials = {fifo: "a named pipe", tmp_path / "s.json": "a socket"}
    null = tmp_path / "null"
    try:
        os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        specials[null] = "a character device"
    except PermissionError:
        pass  # not root: the pipe and the socket show the same check
    (tmp_path / "to-null.json").symlink_to("/dev/null")
    specials[tmp_path / "to-null.json"] = "a character device"
    for path, what in specials.items():
        kind = os.lstat(path).st_mode
        with pytest.raises(LocomadError, match=f"is {what}, not a file"):
            with atomic_open(path) as f:
                f.write("x")
        assert os.lstat(path).st_mode == kind  # still what it was
    sock.close()
    real = tmp_path / "real.json"
    real.write_text("old")
    (tmp_path / "link.json").symlink_to("real.json")
    with atomic_open(tmp_path / "link.json") as f:
        f.write("new")
    assert (tmp_path / "link.json").is_symlink() and real.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_text_inputs_are_read_with_a_bound(tmp_path):
    """A subtitle/times/cast path that never ends (/dev/zero) was read until memory ran out;
    now at most one byte past the limit is read."""
    from locomad_cli.describe.film import MAX_CAST, read_cast
    from locomad_cli.tracks.readers import read_text
    from locomad_cli.utils import LocomadError

    with pytest.raises(LocomadError, match="far too large"):
        read_text("/dev/zero")
    cast = tmp_path / "cast.txt"
    cast.write_text("".join(f"Name{i}\n" for i in range(MAX_CAST + 1)), encoding="utf-8")
    with pytest.raises(LocomadError, match=f"{MAX_CAST + 1} names"):
        read_cast(str(cast))
    cast.write_text("Amy\n# note\nLeo\nAmy\n\n", encoding="utf-8")
    assert read_cast(str(cast)) == ["Amy", "Leo"]
