"""`locomad` as a user runs it, from the tests that start it as a process: offline, one torch
thread, no debug; its one-line errors; a real small disk; and permission checks that hold for
root too (the tests run as root here and in CI)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-c", "from locomad_cli.cli import main; main()"]


def run_cli(
    args: list,
    env: dict[str, str] | None = None,
    cmd: list[str] | None = None,
    cwd: str | Path | None = None,
    timeout: int = 600,
    prefix: list[str] | tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """`locomad ARGS` (or `cmd ARGS`); `env` adds to the environment; `prefix` runs it under
    another command (as_user())."""
    full = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    if "LOCOMAD_DEBUG" not in (env or {}):
        full.pop("LOCOMAD_DEBUG", None)
    full["PYTHONPATH"] = str(ROOT) + os.pathsep + full.get("PYTHONPATH", "")
    return subprocess.run(
        [*prefix, *(cmd or CLI), *map(str, args)],
        capture_output=True,
        text=True,
        env=full,
        cwd=cwd,
        timeout=timeout,
    )


def one_error(res: subprocess.CompletedProcess, *words: str) -> str:
    """Exit 2, exactly one stderr line starting `locomad: error:`, holding every word."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    assert lines[0].startswith("locomad: error: "), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


@contextlib.contextmanager
def small_disk(path: Path, size: str = "200k") -> Iterator[Path]:
    """A real file system of `size` (tmpfs) at `path`; skipped where mounting is not allowed
    (it needs root)."""
    path.mkdir(parents=True)
    try:
        res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)  # fmt: skip
    except FileNotFoundError:
        pytest.skip("no mount command here")
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}): needs root")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path, leave_pages: int) -> Path:
    """Fill `disk` until only `leave_pages` pages of 4 KiB are free (the filler is remade)."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    st = os.statvfs(disk)
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave_pages * 4096))
    return filler


def as_user() -> list[str]:
    """A prefix under which file permissions hold as for any user. Root passes them
    (CAP_DAC_OVERRIDE): under root the command runs without that capability and its
    read-search twin (util-linux's setpriv), so a folder of mode 555 refuses a write to its
    owner, root, as it would to anyone. Skipped where capabilities cannot be dropped."""
    if os.geteuid() != 0:
        return []
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    if shutil.which("setpriv") is None:
        pytest.skip("no setpriv here (util-linux): permissions cannot be tested as root")
    if subprocess.run([*drop, "true"], capture_output=True).returncode != 0:
        pytest.skip("capabilities cannot be dropped here: permissions cannot be tested as root")
    return drop
