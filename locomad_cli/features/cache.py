"""Results cached beside a film: `<stem>.features.safetensors`, `<stem>.speech.safetensors`,
`<stem>.shots.json`.

Each cache file carries metadata naming the film it was made from (video.py's fingerprint:
size and SHA-256 of its first MiB) and how (model, settings). A file whose metadata disagrees
on the cache's `match` keys belongs to another film or model and is not used. A long
computation keeps its finished pieces in `<stem>.<kind>.partial/` beside its target, with a
`state.json` naming the same identity: a killed run continues from there, a run of anything
else clears it first.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from locomad_cli.utils import atomic_open

T = TypeVar("T")


@dataclass(frozen=True)
class FilmCache:
    """One kind of result cached beside a film."""

    kind: str
    """'features', 'speech', 'shots': the middle of the file name."""
    ext: str
    """'.safetensors' or '.json'."""
    match: tuple[str, ...]
    """Metadata that must agree for a cached or partial result to count as this film's."""

    @property
    def suffix(self) -> str:
        return f".{self.kind}{self.ext}"

    def path(self, video: str | Path, out_dir: str | Path | None = None) -> Path:
        """`<stem><suffix>` in `out_dir` (default: beside the film)."""
        video = Path(video)
        return Path(out_dir or video.parent) / f"{video.stem}{self.suffix}"

    def partial_dir(self, output: Path) -> Path:
        return output.with_name(output.name[: -len(self.suffix)] + f".{self.kind}.partial")

    def matches(self, meta: Mapping[str, Any] | None, want: Mapping[str, str]) -> bool:
        return meta is not None and all(k in meta and str(meta[k]) == want[k] for k in self.match)

    def find(
        self,
        video: Path,
        out_dir: str | Path | None,
        want: Mapping[str, str],
        read: Callable[[Path], tuple[Mapping[str, Any], T] | None],
    ) -> tuple[Path, Mapping[str, Any], T] | None:
        """The film's cache beside it, else in `out_dir`, that matches `want`: its path,
        metadata and content as `read` gives them (None when unreadable). One beside the film
        is used wherever the output goes. None when neither matches."""
        for path in dict.fromkeys([self.path(video), self.path(video, out_dir)]):
            got = read(path) if path.is_file() else None
            if got is not None and self.matches(got[0], want):
                return path, got[0], got[1]
        return None


def open_partial(part: Path, state: dict[str, str]) -> bool:
    """Whether the partial folder `part` holds pieces of an earlier run with this same
    `state` (True: keep them). Otherwise it is made afresh, holding only `state.json`; a full
    disk leaves no empty folder behind."""
    state_file = part / "state.json"
    if state_file.is_file():
        try:
            old = json.loads(state_file.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            old = None
        if old == state:
            return True
    if part.exists():
        shutil.rmtree(part)
    part.mkdir(parents=True)
    try:
        with atomic_open(state_file) as f:
            json.dump(state, f, indent=1)
    except OSError:
        shutil.rmtree(part, ignore_errors=True)
        raise
    return False
