"""One progress bar for every long step: describing slots, voicing cues, extracting frames,
training steps.

One rule for when it shows: the command asked for it (no `--quiet`; the main process of a
distributed run) and stderr is a terminal. In a pipe or a log file a bar is noise around the
results, so nothing is drawn there. Results printed on stdout while a bar runs pass above it
when stdout is the same terminal, and go to the pipe or file untouched otherwise.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator


def _same_terminal() -> bool:
    """Whether stdout and stderr are one terminal (then lines printed on stdout must pass
    through the bar's console, or the bar would overwrite them)."""
    try:
        return sys.stdout.isatty() and os.path.samestat(os.fstat(1), os.fstat(2))
    except (OSError, ValueError, AttributeError):
        return False


def _nothing(done: int, total: int | None = None, note: str = "") -> None:
    return None


@contextlib.contextmanager
def progress_bar(
    label: str, total: int | None = None, show: bool = True, unit: str = ""
) -> Iterator[Callable[..., None]]:
    """A rich bar on stderr (`label`, bar, done/total, `unit`/s, a note, time left) while the
    block runs; yields `update(done, total=None, note="")`. The rate counts from the first
    update, so work a resumed run found already done does not inflate it."""
    from rich.console import Console

    console = Console(stderr=True)
    if not show or not console.is_terminal:
        yield _nothing
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[note]}", markup=False),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=console, redirect_stdout=_same_terminal()) as bar:
        task = bar.add_task(label, total=total, rate="", note="")
        first: tuple[int, float] | None = None

        def update(done: int, total: int | None = None, note: str = "") -> None:
            nonlocal first
            now = time.monotonic()
            first = first or (done, now)
            rate = ""
            if unit and now > first[1]:
                rate = f"{(done - first[0]) / (now - first[1]):.2f} {unit}/s"
            more = {} if total is None else {"total": total}
            bar.update(task, completed=done, rate=rate, note=note, **more)

        yield update
