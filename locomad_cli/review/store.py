"""The reviewed AD track on disk: `FILM.ad.json` as `describe` and `voice` write it, and an
edit journal beside it (`FILM.ad.review.jsonl`: who, when, the slot before and after).

Why this shape: the JSON stays the one file every other command reads, so a reviewed track
is voiced, evaluated or reviewed again as it is. Every change is saved at once: the journal
line first (fsynced), then the JSON rewritten atomically (temp file + rename), so a kill at
any moment leaves the last saved JSON; a journal line whose change never reached the JSON is
recognised (the JSON's version is still the line's `before`) and dropped on the next read.

The version a client edits against is a hash of the JSON's bytes: two tabs, two servers or a
`locomad voice` run in between all change it, and a write against an old version is refused
(StaleVersion) with nothing written. Undo and redo are entries of the journal too, so the
undo history survives a restart of the server.

Every write holds the film's output lock (lock.py, `FILM.locomad.lock`), the one `describe`
and `voice` hold while they write the same outputs: a save while one of them runs is refused
with one line naming it (nothing saved), and they are refused while an export runs. Reads do
not need the lock (every writer renames whole files)."""

from __future__ import annotations

import contextlib
import datetime as dt
import getpass
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locomad_cli.lock import Busy, lock_path, output_lock
from locomad_cli.utils import LocomadError, atomic_open

NUDGE = 0.1
"""Seconds one nudge moves a cue's start or end."""
MIN_CUE = 0.3
"""The shortest slot a reviewer may make (seconds)."""
EPS = 1e-3
STALE = (
    "the track was changed elsewhere (another tab, server or command) since this page loaded "
    "it: reload to see the current track; nothing was saved"
)
LOCK_WAIT = 2.0
"""Seconds a save waits for another writer of the film (another server's save takes
milliseconds; a describe or voice run takes minutes, and the save is refused)."""


class ReviewError(LocomadError):
    """An edit refused, with the reason for the reviewer."""

    status = 422


class StaleVersion(ReviewError):
    status = 409


class NotFound(ReviewError):
    status = 404


class InUse(ReviewError):
    """Another process (describe, voice, another server's export) is writing the film."""

    status = 423


def version_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def journal_path(ad: Path) -> Path:
    return ad.with_name(ad.name.removesuffix(".json") + ".review.jsonl")


@dataclass
class Snapshot:
    """The track as read, with the version it was read at."""

    track: dict[str, Any]
    version: str


class TrackStore:
    """One film's AD track and its journal. Stateless between calls (everything is read
    from disk under a lock), so several servers on one film agree."""

    def __init__(self, ad: str | Path, who: str | None = None, lock: str | Path | None = None):
        """`lock`: the film's output lock (default: the one of the film `FILM.ad.json` is of,
        beside it; review passes the film's own, as voice takes it)."""
        self.ad = Path(ad).resolve()
        self.journal = journal_path(self.ad)
        film = self.ad.name.removesuffix(".json").removesuffix(".ad")
        self.lock_path = Path(lock) if lock else lock_path(self.ad.parent, film)
        self.who = who or _user()
        if not self.ad.is_file():
            raise LocomadError(f"{self.ad}: no such AD track (write it with locomad describe)")
        with self._locked():
            snap = self._read()
            self._reconcile(snap.version)
            if _needs_indices(snap.track["slots"]):
                self._write(_with_indices(snap.track))  # not an edit: no journal line

    # --- reading ------------------------------------------------------------------------

    def read(self) -> Snapshot:
        try:
            with self._locked(wait=0.5):
                snap = self._read()
                self._reconcile(snap.version)
                return snap
        except InUse:
            return self._read()  # a run writes the film: its files are renamed in whole

    def _read(self) -> Snapshot:
        data = self.ad.read_bytes()
        try:
            track = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LocomadError(f"{self.ad}: not a JSON AD track") from None
        if not isinstance(track, dict) or not isinstance(track.get("slots"), list):
            raise LocomadError(f"{self.ad}: not an AD track written by locomad describe")
        return Snapshot(track, version_of(data))

    def entries(self) -> list[dict[str, Any]]:
        if not self.journal.is_file():
            return []
        out = []
        lines = self.journal.read_text(encoding="utf-8").splitlines()
        for i, line in enumerate(lines):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break  # torn last line: that edit never reached the JSON
                raise LocomadError(f"{self.journal}:{i + 1}: damaged journal line") from None
        return out

    def history(self) -> tuple[list[int], list[int]]:
        """(done, undone): journal sequence numbers that undo and redo would act on next,
        replayed from the journal (so they survive a restart)."""
        done: list[int] = []
        undone: list[int] = []
        for e in self.entries():
            if e["op"] == "undo":
                if done and done[-1] == e["target"]:
                    undone.append(done.pop())
            elif e["op"] == "redo":
                if undone and undone[-1] == e["target"]:
                    done.append(undone.pop())
            else:
                done.append(e["seq"])
                undone.clear()
        return done, undone

    # --- writing ------------------------------------------------------------------------

    def change(
        self, version: str, op: str, index: int | None, new_slot: dict[str, Any] | None
    ) -> Snapshot:
        """Replace (or add, or with None delete) the slot `index`, saved at once; refused
        when `version` is not the file's."""
        with self._locked():
            snap = self._checked(version)
            old = _find(snap.track, index) if index is not None else None
            if index is not None and old is None:
                raise NotFound(f"no cue {index} in the track")
            if new_slot is not None and index is None:
                index = _next_index(snap.track)
                new_slot = {**new_slot, "index": index}
            return self._commit(snap, {"op": op, "index": index, "old": old, "new": new_slot})

    def undo(self, version: str) -> Snapshot:
        return self._step(version, "undo")

    def redo(self, version: str) -> Snapshot:
        return self._step(version, "redo")

    def _step(self, version: str, op: str) -> Snapshot:
        with self._locked():
            snap = self._checked(version)
            done, undone = self.history()
            stack = done if op == "undo" else undone
            if not stack:
                raise ReviewError(f"nothing to {op}")
            target = next(e for e in self.entries() if e["seq"] == stack[-1])
            before, after = (
                (target["new"], target["old"]) if op == "undo" else (target["old"], target["new"])
            )
            cur = _find(snap.track, target["index"])
            if _strip(cur) != _strip(before):
                raise ReviewError(
                    f"cannot {op}: cue {target['index']} was changed since (by voice or by hand)"
                )
            return self._commit(
                snap,
                {
                    "op": op,
                    "target": target["seq"],
                    "what": target["op"],
                    "index": target["index"],
                    "old": cur,
                    "new": after,
                },
            )

    @contextlib.contextmanager
    def exclusive(self, version: str) -> Iterator[Snapshot]:
        """Hold the lock at `version` while another writer (voice, for an export) rewrites
        the JSON; its voice records are not edits, so they make no journal line."""
        with self._locked():
            yield self._checked(version)

    def _checked(self, version: str) -> Snapshot:
        snap = self._read()
        self._reconcile(snap.version)
        if version != snap.version:
            raise StaleVersion(STALE)
        return snap

    def _commit(self, snap: Snapshot, entry: dict[str, Any]) -> Snapshot:
        track = snap.track
        slots = [s for s in track["slots"] if s.get("index") != entry["index"]]
        if entry["new"] is not None:
            slots.append(entry["new"])
        slots.sort(key=lambda s: (float(s["start"]), float(s["end"])))
        new_track = {**track, "slots": slots}
        data = _dump(new_track)
        seq = max((e["seq"] for e in self.entries()), default=0) + 1
        line = {
            "seq": seq,
            "who": self.who,
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            **entry,
            "before": snap.version,
            "after": version_of(data),
        }
        _append_line(self.journal, line)
        return self._write_bytes(data, new_track)

    def _write(self, track: dict[str, Any]) -> Snapshot:
        return self._write_bytes(_dump(track), track)

    def _write_bytes(self, data: bytes, track: dict[str, Any]) -> Snapshot:
        with atomic_open(self.ad, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return Snapshot(track, version_of(data))

    def _reconcile(self, version: str) -> None:
        """Drop the journal's last line when its change never reached the JSON (killed
        between the two writes)."""
        entries = self.entries()
        if not entries:
            if self.journal.is_file() and self.journal.stat().st_size:
                self.journal.write_bytes(b"")  # a lone torn line
            return
        last = entries[-1]
        raw = self.journal.read_bytes()
        torn = not raw.endswith(b"\n") or raw.count(b"\n") != len(entries)
        if last["after"] != version and last["before"] == version:
            entries = entries[:-1]
            torn = True
        if torn:
            with atomic_open(self.journal, "w") as f:
                f.writelines(json.dumps(e, ensure_ascii=False) + "\n" for e in entries)

    @contextlib.contextmanager
    def _locked(self, wait: float | None = None) -> Iterator[None]:
        """One writer of the film at a time across processes (two servers, or a server and a
        describe or voice run); InUse, naming the other, when it is not let go in `wait` s."""
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(
                    output_lock(self.lock_path, wait=LOCK_WAIT if wait is None else wait)
                )
            except Busy as e:
                raise InUse(
                    f"{self.ad.name} is being written by locomad {e.holder} (a describe, voice "
                    "or export of this film): nothing was saved; try again when it has finished"
                ) from None
            yield


# --- checks of an edit ----------------------------------------------------------------------


def check_times(
    track: dict[str, Any],
    index: int | None,
    start: float,
    end: float,
    dialogue: list[tuple[float, float, str]],
    duration: float | None,
    old: tuple[float, float] | None = None,
) -> None:
    """Refuse a slot that overlaps its neighbours or dialogue (more than it already did),
    with the reason."""
    for name, v in (("start", start), ("end", end)):
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ReviewError(f"{name} must be a number of seconds")
    if start < 0:
        raise ReviewError("a cue cannot start before the film")
    if duration is not None and end > duration + 0.05:
        raise ReviewError(f"a cue cannot end after the film ({duration:.1f} s)")
    if end - start < MIN_CUE - EPS:
        raise ReviewError(f"a cue must last at least {MIN_CUE} s")
    for s in track["slots"]:
        if s.get("index") == index:
            continue
        a, b = float(s["start"]), float(s["end"])
        if start < b - EPS and a < end - EPS:
            raise ReviewError(
                f"overlaps the neighbouring cue at {_mmss(a)}–{_mmss(b)} ('{_short(s['text'])}')"
            )
    for a, b, text in dialogue:
        o = max(0.0, min(end, b) - max(start, a))
        was = max(0.0, min(old[1], b) - max(old[0], a)) if old else 0.0
        if o > EPS and o > was + EPS:
            raise ReviewError(f"overlaps dialogue at {_mmss(a)}–{_mmss(b)} ('{_short(text)}')")


def _mmss(t: float) -> str:
    m, s = divmod(max(0.0, t), 60)
    return f"{int(m):02d}:{s:04.1f}"


def _short(text: str, n: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# --- helpers --------------------------------------------------------------------------------


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "reviewer"


def _dump(track: dict[str, Any]) -> bytes:
    return (json.dumps(track, ensure_ascii=False, indent=2) + "\n").encode("utf-8")


def _find(track: dict[str, Any], index: int | None) -> dict[str, Any] | None:
    return next((s for s in track["slots"] if s.get("index") == index), None)


def _strip(slot: dict[str, Any] | None) -> Any:
    """A slot without what voice rewrites on every run (so an export does not block undo)."""
    if slot is None:
        return None
    return {k: v for k, v in slot.items() if k != "voice"}


def _next_index(track: dict[str, Any]) -> int:
    return max((int(s["index"]) for s in track["slots"]), default=-1) + 1


def _needs_indices(slots: list[dict[str, Any]]) -> bool:
    idx = [s.get("index") for s in slots]
    return not all(isinstance(i, int) for i in idx) or len(set(idx)) != len(idx)


def _with_indices(track: dict[str, Any]) -> dict[str, Any]:
    slots = [{**s, "index": i} for i, s in enumerate(track["slots"])]
    return {**track, "slots": slots}


def _append_line(path: Path, row: dict[str, Any]) -> None:
    data = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
