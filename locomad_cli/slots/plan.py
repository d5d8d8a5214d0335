"""AD slots: where in the film a description is spoken.

Either given (`--ad-times`: the paper's setting, where the times of the reference AD are
known), or proposed where nobody speaks, because audio description must not be spoken over
dialogue. What counts as speech is the union of the subtitle cues and the speech the soundtrack
holds (audio.py): a line missing from the subtitles still blocks a slot, and a film without
subtitles still gets slots between its lines. A gap gets a margin after one stretch of speech
and before the next, gaps too short to say anything are left alone. A shot change (shots.py)
is a preferred boundary, not a wall: a gap is cut at a cut only where both sides keep at least
`min_gap` (a cut within `cut_margin` of a gap's edge is not cut at), so the short shots of
fast-cut action join their neighbours into one slot instead of going undescribed; a piece
longer than `max_len` is split evenly. A slot never crosses speech: it lies inside its gap.

Every proposed slot says why it is where it is (`Slot.why`): the gap it lies in, the speech
and subtitle intervals that bound that gap, what starts and ends it (dialogue, a cut, the
film's edges, an even split) and the rule that gave its length.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locomad_cli.tracks.readers import Cue, read_timed
from locomad_cli.utils import MAX_SECONDS, LocomadError

log = logging.getLogger(__name__)

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
    shots: list[tuple[float, float]] = field(default_factory=list)
    """Boundaries (start, end) of the shots the slot lies in (proposed slots, shots known)."""
    why: dict[str, Any] | None = None
    """For a proposed slot: its gap, the intervals bounding it and the rule behind its length."""


@dataclass
class Interval:
    """A stretch of speech that blocks AD: a subtitle cue or a speech interval of the
    soundtrack."""

    start: float
    end: float
    kind: str
    """'subtitle' or 'speech'."""
    ref: str = ""
    """'film.srt:12' for a subtitle, 'speech 4' (1-based) for the soundtrack's speech."""
    text: str = ""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "start": self.start, "end": self.end}
        if self.ref:
            out["ref"] = self.ref
        if self.text:
            out["text"] = self.text
        return out


@dataclass
class Skipped:
    """A stretch free of speech that got no slot, and why (shown in the JSON)."""

    start: float
    end: float
    why: str


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
    return [(a, b) for a, b, _ in _spans([Interval(c.start, c.end, "subtitle") for c in cues])]


def _spans(intervals: list[Interval]) -> list[tuple[float, float, list[Interval]]]:
    """The union of the intervals, each merged span with the intervals it is made of."""
    spans: list[tuple[float, float, list[Interval]]] = []
    for iv in sorted(intervals, key=lambda x: (x.start, x.end)):
        if spans and iv.start <= spans[-1][1]:
            a, b, members = spans[-1]
            spans[-1] = (a, max(b, iv.end), members + [iv])
        else:
            spans.append((iv.start, iv.end, [iv]))
    return spans


def blocking_intervals(
    cues: list[Cue],
    speech: list[tuple[float, float]] | None = None,
    subtitles_name: str = "subtitles",
) -> list[Interval]:
    """Subtitle cues and soundtrack speech as one list of intervals that AD must keep off."""
    out = [
        Interval(c.start, c.end, "subtitle", f"{subtitles_name}:{c.line}" if c.line else "", c.text)
        for c in cues
        if c.end > c.start
    ]
    out += [Interval(a, b, "speech", f"speech {i + 1}") for i, (a, b) in enumerate(speech or [])]
    return out


def _check_sizes(duration: float, min_gap: float, margin: float, max_len: float) -> None:
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
    check_slot_sizes(min_gap, margin, max_len)


MAX_SLOT = 600.0
"""The longest slot (and gap) a planner option may ask for, in seconds: a description of ten
minutes is no description; larger values only overflow the arithmetic."""


def check_slot_sizes(
    min_gap: float, margin: float, max_len: float, cut_margin: float = 0.0
) -> None:
    """The planner's options, before any work: finite, in range (--min-gap, --margin,
    --max-len, --cut-margin)."""
    sizes = {"--min-gap": min_gap, "--margin": margin, "--max-len": max_len}
    sizes["--cut-margin"] = cut_margin
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in sizes.values()):
        shown = ", ".join(f"{k} {v}" for k, v in sizes.items())
        raise LocomadError(f"slot sizes must be finite numbers ({shown})")
    if min_gap <= 0 or max_len <= 0 or margin < 0 or max_len < min_gap or cut_margin < 0:
        raise LocomadError(
            f"slot sizes must satisfy 0 < --min-gap ({min_gap}) <= --max-len ({max_len}), "
            f"--margin ({margin}) >= 0 and --cut-margin ({cut_margin}) >= 0"
        )
    big = [f"{k} {v:g} s" for k, v in sizes.items() if v > MAX_SLOT]
    if big:
        raise LocomadError(f"{', '.join(big)}: at most {MAX_SLOT:g} s")


def check_slot_choices(vad: str, shots: str) -> None:
    """--vad and --shots, before any work."""
    if vad not in VAD_CHOICES:
        raise LocomadError(f"unknown --vad '{vad}' (choose {', '.join(VAD_CHOICES)})")
    if shots not in SHOTS_CHOICES:
        raise LocomadError(f"unknown --shots '{shots}' (choose {', '.join(SHOTS_CHOICES)})")


def _edge(members: list[Interval], at: float, side: str) -> list[Interval]:
    """The intervals of a span that make its edge: those ending (side 'end') or starting at
    `at`."""
    key = (lambda iv: iv.end) if side == "end" else (lambda iv: iv.start)
    return [iv for iv in members if abs(key(iv) - at) < 1e-6]


def _pieces(
    a: float, b: float, cuts: list[float], cut_margin: float, min_gap: float
) -> list[tuple[float, float, list[float]]]:
    """[a, b] cut at the shot changes inside it, each piece with the cuts it runs across.
    A cut within `cut_margin` of an edge, or of the previous cut kept, is never cut at; a cut
    that would leave a piece shorter than `min_gap` on either side is crossed (the short shot
    joins the next one) rather than costing the gap its description."""
    edges, crossed = [a], [[]]
    for c in sorted(cuts):
        if not (a + cut_margin < c < b - cut_margin):
            continue
        if c - edges[-1] >= min_gap - 1e-9 and b - c >= min_gap - 1e-9:
            edges.append(c)
            crossed.append([])
        else:
            crossed[-1].append(c)
    edges.append(b)
    return [(edges[i], edges[i + 1], crossed[i]) for i in range(len(edges) - 1)]


def _ms_in(a: float, b: float) -> tuple[float, float]:
    """To whole milliseconds, inwards, so rounding never reaches into dialogue."""
    return math.ceil(a * 1000 - 1e-6) / 1000, math.floor(b * 1000 + 1e-6) / 1000


def _shots_of(start: float, end: float, bounds: list[float]) -> list[tuple[float, float]]:
    """The shots (between consecutive boundaries) that [start, end] overlaps."""
    return [
        (bounds[i], bounds[i + 1])
        for i in range(len(bounds) - 1)
        if bounds[i] < end and start < bounds[i + 1]
    ]


def plan_gaps(
    intervals: list[Interval], duration: float, margin: float
) -> list[tuple[float, float, list[Interval], list[Interval]]]:
    """The stretches free of speech, margins applied: (start, end, intervals ending where it
    starts, intervals starting where it ends); the film's edges need no margin."""
    gaps = []
    prev: tuple[float, list[Interval]] | None = None
    for s, e, members in _spans([iv for iv in intervals if iv.start < duration]):
        a = 0.0 if prev is None else prev[0] + margin
        gaps.append(
            (a, min(s - margin, duration), prev[1] if prev else [], _edge(members, s, "start"))
        )
        prev = (e, _edge(members, e, "end"))
    gaps.append((0.0 if prev is None else prev[0] + margin, duration, prev[1] if prev else [], []))
    return gaps


def propose_slots(
    cues: list[Cue],
    duration: float,
    min_gap: float = 2.0,
    margin: float = 0.3,
    max_len: float = 8.0,
    speech: list[tuple[float, float]] | None = None,
    cuts: list[float] | None = None,
    cut_margin: float = 0.5,
    subtitles_name: str = "subtitles",
    skipped: list[Skipped] | None = None,
) -> list[Slot]:
    """Slots where nobody speaks, in film order.

    Speech is the union of the subtitle `cues` and the soundtrack's `speech` intervals. A gap
    runs from `margin` after a stretch of speech ends to `margin` before the next one starts
    (the film's start and end need no margin); one shorter than `min_gap` gets no slot. A gap
    is cut at the shot changes `cuts` inside it where both sides keep `min_gap` (see _pieces;
    `cuts=None`: shots unknown, `[]`: one shot), and each piece is split evenly into the fewest
    slots of at most `max_len`. Nothing is placed past `duration`. Stretches that get no slot
    are appended to `skipped` when given.
    """
    _check_sizes(duration, min_gap, margin, max_len)
    if not math.isfinite(cut_margin) or cut_margin < 0:
        raise LocomadError(f"cut margin must be a finite number >= 0, got {cut_margin}")
    with_shots = cuts is not None
    cuts = sorted(c for c in (cuts or []) if 0 < c < duration)
    bounds = [0.0, *cuts, duration]
    intervals = blocking_intervals(cues, speech, subtitles_name)
    slots: list[Slot] = []
    for a, b, after, before in plan_gaps(intervals, duration, margin):
        if b - a < min_gap - 1e-9:
            if skipped is not None and b - a > 0:
                skipped.append(Skipped(a, b, f"gap of {b - a:.2f} s is shorter than min_gap"))
            continue
        pieces = _pieces(a, b, cuts, cut_margin, min_gap)
        for k, (pa, pb, crossed) in enumerate(pieces):
            length = pb - pa
            n = max(1, math.ceil(length / max_len - 1e-9))
            step = length / n
            for j in range(n):
                start, end = _ms_in(pa + j * step, pb if j == n - 1 else pa + (j + 1) * step)
                start_by = (
                    ("film start" if a == 0.0 and not after else "dialogue")
                    if k == 0 and j == 0
                    else ("cut" if j == 0 else "split")
                )
                end_by = (
                    ("film end" if not before else "dialogue")
                    if k == len(pieces) - 1 and j == n - 1
                    else ("cut" if j == n - 1 else "split")
                )
                why = {
                    "gap": [round(a, 3), round(b, 3)],
                    "after": [iv.as_json() for iv in after],
                    "before": [iv.as_json() for iv in before],
                    "start_by": start_by,
                    "end_by": end_by,
                    "reason": _reason(a, b, pa, pb, n, len(pieces), min_gap, max_len, margin),
                }
                across = [round(c, 3) for c in crossed if start < c < end]
                if across:
                    why["cuts_crossed"] = across
                    why["reason"] += (
                        f" It runs across the cut{'s' if len(across) > 1 else ''} at "
                        f"{', '.join(f'{c:.2f}' for c in across)} s: cut there, a shot piece "
                        f"would be shorter than min_gap {min_gap:g} s."
                    )
                slot = Slot(start, end, len(slots), "gap", why=why)
                if with_shots:
                    slot.shots = _shots_of(start, end, bounds)
                slots.append(slot)
    return slots


def _reason(
    a: float,
    b: float,
    pa: float,
    pb: float,
    n: int,
    pieces: int,
    min_gap: float,
    max_len: float,
    margin: float,
) -> str:
    """One sentence on why a slot has its length."""
    gap = f"the {b - a:.2f} s without speech (margins of {margin:g} s kept)"
    if pieces == 1:
        where = gap
    else:
        where = f"the {pb - pa:.2f} s shot inside {gap}, cut into {pieces} pieces at shot changes"
    if n == 1:
        return (
            f"{where[0].upper()}{where[1:]}: at least min_gap {min_gap:g} s and at most "
            f"max_len {max_len:g} s, one slot."
        )
    return (
        f"{where[0].upper()}{where[1:]}: longer than max_len {max_len:g} s, split evenly into "
        f"{n} slots of {(pb - pa) / n:.2f} s."
    )


# --- a film's plan: listen to its soundtrack, find its cuts, propose slots ----------------------

VAD_CHOICES = ("auto", "on", "off")
SHOTS_CHOICES = ("on", "off")


@dataclass
class SlotPlan:
    """The proposed slots of a film and everything they were planned from."""

    slots: list[Slot]
    vad: str
    """'on' (speech from the soundtrack used), 'off', 'no audio' or 'failed' (undecodable)."""
    speech: Any = None
    """audio.Speech when the soundtrack was listened to."""
    shots: Any = None
    """shots.Shots when cuts were detected."""
    skipped: list[Skipped] = field(default_factory=list)
    settings: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        """What the JSON track says about how its slots were planned."""
        out: dict[str, Any] = {"vad": self.vad, **self.settings}
        if self.speech is not None:
            out["speech_model"] = self.speech.model
            out["speech_file"] = str(self.speech.path)
            out["speech"] = [[round(a, 3), round(b, 3)] for a, b in self.speech.intervals]
        if self.shots is not None:
            out["shot_detector"] = self.shots.detector
            out["shots_file"] = str(self.shots.path) if self.shots.path else None
            out["cuts"] = list(self.shots.cuts)
        out["skipped"] = [
            {"start": round(s.start, 3), "end": round(s.end, 3), "why": s.why} for s in self.skipped
        ]
        return out


def listen(
    video: Path | None, vad: str, out_dir: Path, subtitles: bool, progress: bool = False
) -> tuple[Any, str]:
    """(audio.Speech or None, vad status) for `--vad auto|on|off`. A film without audio, or
    whose audio cannot be decoded, falls back to the subtitles with one warning line (`auto`);
    `on` refuses instead, and so does `auto` when there are no subtitles to fall back on."""
    from locomad_cli.features.video import probe
    from locomad_cli.slots.speech import AudioError, detect_speech

    if vad not in VAD_CHOICES:
        raise LocomadError(f"unknown --vad '{vad}' (choose {', '.join(VAD_CHOICES)})")
    if vad == "off":
        return None, "off"
    if video is None or not video.is_file():
        if vad == "on":
            raise LocomadError("--vad on needs the film itself, not only its --features")
        if subtitles:
            log.warning("no film at hand (only --features): slots from the subtitles alone")
        else:
            log.warning(
                "no film at hand (only --features) and no subtitles: slots fill the film and "
                "may fall on dialogue"
            )
        return None, "no audio"
    if not probe(video).audio:
        if vad == "on":
            raise LocomadError(f"--vad on: {video} has no audio stream")
        if subtitles:
            log.warning("%s has no audio stream: slots from the subtitles alone", video)
        else:
            log.warning("%s has no audio stream and no subtitles: slots fill the film", video)
        return None, "no audio"
    try:
        return detect_speech(
            video, out_dir, on_start=_say(progress, "listening for speech (silero-vad) in", video)
        ), "on"
    except AudioError as e:
        if vad == "on":
            raise LocomadError(f"{e} (--vad on)") from None
        if not subtitles:
            raise LocomadError(
                f"{e}, and no --subs was given: nothing tells where the film speaks (give "
                "--subs or --ad-times, or --vad off to fill the film regardless)"
            ) from None
        log.warning("%s: slots from the subtitles alone", e)
        return None, "failed"


def _say(progress: bool, what: str, video: Path):
    """A callable printing one line on stderr (a long step is starting), or None."""
    if not progress:
        return None
    return lambda: print(f"locomad: {what} {video}", file=sys.stderr, flush=True)


def find_cuts(video: Path | None, shots: str, out_dir: Path, progress: bool = False) -> Any:
    """shots.Shots for `--shots on` (None when off or when the film cannot be read for it,
    with one warning line: slots are then only not cut at shot changes)."""
    from locomad_cli.slots.shots import detect_cuts

    if shots not in SHOTS_CHOICES:
        raise LocomadError(f"unknown --shots '{shots}' (choose {', '.join(SHOTS_CHOICES)})")
    if shots == "off" or video is None or not video.is_file():
        return None
    try:
        return detect_cuts(
            video,
            out_dir,
            on_start=_say(progress, "finding shot changes (PySceneDetect) in", video),
        )
    except LocomadError as e:
        log.warning("%s; slots are not cut at shot changes", e)
        return None


def plan_film(
    video: Path | None,
    cues: list[Cue],
    duration: float,
    out_dir: Path,
    vad: str = "auto",
    shots: str = "on",
    min_gap: float = 2.0,
    margin: float = 0.3,
    max_len: float = 8.0,
    cut_margin: float = 0.5,
    subtitles_name: str = "subtitles",
    progress: bool = False,
) -> SlotPlan:
    """Slots for a film from its subtitles, its soundtrack's speech and its cuts (caches in
    `out_dir`; with `progress`, a line on stderr before each is computed). Refuses when no
    slot is possible."""
    _check_sizes(duration, min_gap, margin, max_len)
    speech, status = listen(video, vad, out_dir, bool(cues), progress)
    if status == "off" and not cues:
        log.warning("no subtitles and --vad off: slots fill the film and may fall on dialogue")
    found = find_cuts(video, shots, out_dir, progress)
    skipped: list[Skipped] = []
    slots = propose_slots(
        cues,
        duration,
        min_gap,
        margin,
        max_len,
        speech=speech.intervals if speech is not None else None,
        cuts=found.cuts if found is not None else None,
        cut_margin=cut_margin,
        subtitles_name=subtitles_name,
        skipped=skipped,
    )
    if not slots:
        what = "subtitles or speech" if speech is not None else "subtitles"
        raise LocomadError(
            f"no AD slot possible: no gap of {min_gap:g} s or more between {what} in "
            f"{duration:.1f} s of film (lower --min-gap or give --ad-times)"
        )
    settings = {"min_gap": min_gap, "margin": margin, "max_len": max_len, "cut_margin": cut_margin}
    return SlotPlan(slots, status, speech, found, skipped, settings)
