"""Many films in one command, and this process's share of them under a launcher.

`describe` and `extract-features` take several films or folders of films, so that the model
loads once for all of them. Under `accelerate launch` or `torchrun` every process computes the
same list (a folder's films sorted by name) and takes film k when k mod WORLD_SIZE is its
RANK, read from the variables those launchers set: no two processes ever write the same
film's files, and nothing has to be exchanged between them to split the work.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import TypeVar

from locomad_cli.utils import LocomadError

T = TypeVar("T")

VIDEO_SUFFIXES = (
    ".mp4",
    ".mkv",
    ".mov",
    ".m4v",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".ts",
    ".m2ts",
    ".mts",
    ".wmv",
    ".flv",
    ".ogv",
    ".mxf",
)
"""What a folder's films end with (case ignored); other files are sidecars or unrelated."""

OWN_OUTPUTS = (".described",)
"""Stems of films locomad writes itself (`voice`: FILM.described.mkv): not films to describe."""

WAIT_FOR_OTHERS = timedelta(days=7)
"""How long a process that finished its share waits for the others (the longest share)."""


def expand_films(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, each folder replaced by its films (not its sub-folders') sorted by
    name, so that every process of a launch computes the same list; a film named twice
    (itself and through its folder) counts once."""
    out: list[Path] = []
    seen: set[str] = set()
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                (p for p in path.iterdir() if _is_film(p)), key=lambda p: (p.name, str(p))
            )
            if not found:
                kinds = ", ".join(VIDEO_SUFFIXES)
                raise LocomadError(f"{path}: a folder with no film in it (looked for {kinds})")
        else:
            found = [path]
        for film in found:
            key = os.path.realpath(film)
            if key not in seen:
                seen.add(key)
                out.append(film)
    if not out:
        raise LocomadError("no film given")
    return out


def _is_film(path: Path) -> bool:
    return (
        path.suffix.lower() in VIDEO_SUFFIXES
        and not path.stem.endswith(OWN_OUTPUTS)
        and path.is_file()
    )


def rank_and_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) as set by `torchrun` or `accelerate launch`; (0, 1, 0)
    for a plain run. Read from the environment: no process group is needed to split films.
    Both launchers also set MASTER_ADDR; a WORLD_SIZE above 1 without it is refused."""
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise LocomadError("RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers") from None
    if world < 1 or not 0 <= rank < world:
        raise LocomadError(f"bad RANK={rank} / WORLD_SIZE={world} in the environment")
    if world > 1 and not os.environ.get("MASTER_ADDR"):
        # a WORLD_SIZE left exported in a shell: this process alone would do its share of
        # the films, silently, then wait at the end for processes that were never started
        raise LocomadError(
            f"WORLD_SIZE={world} is set but no launcher started this process (no MASTER_ADDR): "
            "run under `accelerate launch` or `torchrun`, or unset WORLD_SIZE and RANK"
        )
    return rank, world, local


def share(items: Sequence[T]) -> list[T]:
    """This process's share: item k when k mod WORLD_SIZE is its RANK (all of them in a
    plain run). Round robin, so that a folder of films sorted by name spreads its long and
    short ones over the processes rather than giving one process the first half."""
    rank, world, _ = rank_and_world()
    return list(items[rank::world])


def wait_for_other_processes() -> None:
    """Under a launcher, return only when every process has finished its share.

    torchrun (and `accelerate launch`, which uses it) stops all processes as soon as one
    exits with an error: a process that reports a bad film must not exit before the others
    have written theirs. One barrier at the end, through accelerate's process state on gloo
    (CPU sockets, whatever device the films ran on); a plain run returns at once."""
    if rank_and_world()[1] == 1:
        return
    import torch.distributed
    from accelerate import PartialState

    state = PartialState(cpu=True, timeout=WAIT_FOR_OTHERS)
    state.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def beside(video: Path, suffixes: Sequence[str]) -> Path | None:
    """The first existing file named like the film with one of `suffixes` (FILM.srt)."""
    for suffix in suffixes:
        path = video.with_name(video.stem + suffix)
        if path.is_file():
            return path
    return None
