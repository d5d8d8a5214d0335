"""AD slots: where in the film a description is spoken.

Either given (`--ad-times`: the paper's setting, where the times of the reference AD are
known), or proposed in the gaps between subtitles, because audio description must not be
spoken over dialogue: a gap gets a margin after one subtitle ends and before the next starts,
gaps too short to say anything are left alone, and long gaps are split into slots of at most
`max_len` seconds so each description stays about one shot long.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from locomad_cli.subtitles import Cue, read_timed
from locomad_cli.utils import MAX_SECONDS, LocomadError

END_TOLERANCE = 0.05
"""Seconds a slot may pass the film's end (rounding of times written with milliseconds)."""


@dataclass
class Slot:
    start: float
    end: float
    index: int
    """Position in film order, from 0."""
    source: str = ""
    """Where the slot came from: file:line for given times, 'gap' for proposed ones."""
    text: str = ""
    """The text the times file carried, if any (a reference description)."""


def slots_from_times(path: str | Path, duration: float | None = None) -> list[Slot]:
    """Slots from an SRT/WebVTT/CSV/JSON times file, in film order. A slot that ends before it
    starts, starts before 0 or passes the film's end is refused with its file:line."""
    path = Path(path)
    cues = read_timed(path)
    slots = []
    for cue in cues:
        is_json = path.suffix.lower() == ".json"
        where = f"{path}: entry {cue.line}" if is_json else f"{path}:{cue.line}"
        if cue.end <= cue.start:
            raise LocomadError(f"{where}: slot ends ({cue.end:.3f}s) at or before its start")
        if cue.start < 0:
            raise LocomadError(f"{where}: slot starts before the film ({cue.start:.3f}s)")
        if duration is not None and cue.end > duration + END_TOLERANCE:
            raise LocomadError(
                f"{where}: slot ends at {cue.end:.3f}s, past the film's end ({duration:.3f}s)"
            )
        slots.append(Slot(cue.start, min(cue.end, duration or cue.end), 0, where, cue.text))
    if not slots:
        raise LocomadError(f"{path}: no AD slot in the file")
    slots.sort(key=lambda s: (s.start, s.end))
    for i, s in enumerate(slots):
        s.index = i
    return slots


def dialogue_spans(cues: list[Cue]) -> list[tuple[float, float]]:
    """The union of the cues' intervals (overlapping or touching cues merge)."""
    spans: list[tuple[float, float]] = []
    for c in sorted(cues, key=lambda c: c.start):
        if spans and c.start <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], c.end))
        else:
            spans.append((c.start, c.end))
    return spans


def propose_slots(
    cues: list[Cue],
    duration: float,
    min_gap: float = 2.0,
    margin: float = 0.3,
    max_len: float = 8.0,
) -> list[Slot]:
    """Slots in the gaps between subtitles, in film order.

    A gap runs from `margin` after a subtitle ends to `margin` before the next one starts (the
    film's start and end need no margin); it becomes slots only when at least `min_gap`
    seconds long, split evenly into the fewest slots of at most `max_len`. Nothing is placed
    past `duration`.
    """
    if not math.isfinite(duration) or duration > MAX_SECONDS:
        # NaN passes every comparison and infinity overflows ceil(): refuse both here
        raise LocomadError(f"the film's duration ({duration} s) is not usable: no AD slot possible")
    if duration <= 0:
        raise LocomadError(f"the film has no duration ({duration}s): no AD slot possible")
    if not all(math.isfinite(x) for x in (min_gap, margin, max_len)):
        raise LocomadError(
            f"slot sizes must be finite numbers (min_gap {min_gap}, margin {margin}, "
            f"max_len {max_len})"
        )
    if min_gap <= 0 or max_len <= 0 or margin < 0 or max_len < min_gap:
        raise LocomadError(
            f"slot sizes must satisfy 0 < min_gap ({min_gap}) <= max_len ({max_len}) "
            f"and margin ({margin}) >= 0"
        )
    gaps: list[tuple[float, float]] = []
    prev_end: float | None = None
    for s, e in dialogue_spans([c for c in cues if c.start < duration]):
        a = 0.0 if prev_end is None else prev_end + margin
        gaps.append((a, s - margin))
        prev_end = e
    gaps.append((0.0 if prev_end is None else prev_end + margin, duration))
    slots: list[Slot] = []
    for a, b in gaps:
        b = min(b, duration)
        length = b - a
        if length < min_gap - 1e-9:
            continue
        n = math.ceil(length / max_len - 1e-9)
        step = length / n
        for j in range(n):
            # to whole milliseconds, inwards, so rounding never reaches into dialogue
            start = math.ceil((a + j * step) * 1000 - 1e-6) / 1000
            end = math.floor((b if j == n - 1 else a + (j + 1) * step) * 1000 + 1e-6) / 1000
            slots.append(Slot(start, end, len(slots), "gap"))
    return slots
