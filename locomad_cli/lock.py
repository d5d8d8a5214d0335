"""One writer per film's outputs: an OS file lock (flock) on `FILM.locomad.lock` beside them.

Two runs writing the same film's tracks at once (a long `describe` in one terminal and a retry
in another, or the review page saving while a run ends) would interleave one progress file and
rename tracks over each other. The second one is refused in one line naming the first (its
process id), or waits for it with `wait=`. The kernel drops the lock when a process dies, even
by kill -9, so a stale lock file never blocks anyone; the holder removes the file on its way out.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Iterator
from pathlib import Path

from locomad_cli.utils import LocomadError

SUFFIX = ".locomad.lock"


def lock_path(out_dir: str | Path, film: str) -> Path:
    """The lock file of the film named `film` (its stem) whose outputs go to `out_dir`."""
    return Path(out_dir) / f"{film}{SUFFIX}"


class Busy(LocomadError):
    """Another process holds the lock; `holder` names it ('process PID')."""

    def __init__(self, line: str, holder: str = "another process"):
        super().__init__(line)
        self.holder = holder


def _holder(path: Path) -> str:
    """'process PID' of the holder of the flock on `path`, from the kernel's own table
    (/proc/locks on Linux): the lock file stays empty, so taking the lock needs no free space
    on a full disk. 'another process' where the table cannot say."""
    try:
        st = os.stat(path)
        want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            f = line.split()
            if len(f) >= 6 and f[1] == "FLOCK" and f[5] == want and f[4].isdigit():
                return f"process {f[4]}"
    except (OSError, ValueError):
        pass
    return "another process"


@contextlib.contextmanager
def output_lock(path: str | Path, what: str = "", wait: float = 0.0) -> Iterator[Path]:
    """Hold the lock `path` for the block. When another process holds it, wait up to `wait`
    seconds (0: not at all), then raise Busy with one line naming that process. `what` names
    the outputs in that line (default: the lock file's film)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            name = what or f"the outputs of {path.name[: -len(SUFFIX)]} in {path.parent}"
            holder = _holder(path)
            raise Busy(
                f"{name} are being written by locomad {holder} (lock {path}): wait for it "
                "to finish, or write elsewhere with --output-dir",
                holder,
            ) from None
        except BaseException:
            os.close(fd)
            raise
        # the holder before us may have removed the file after we opened it: then our lock is
        # on a name nobody else sees, and another process may lock the new file; start over
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding it: a waiter then retries on a fresh file
        os.close(fd)
