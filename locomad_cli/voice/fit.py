"""`locomad voice`: an AD track (`FILM.ad.json` from describe) in, audio description a listener
hears out: each description fitted to its slot, spoken, the film ducked under it, delivered.

Fitting, per description, measured on the real synthesized audio (tts.py):

1. spoken at `--rate` (heard words per minute, default 170) it fits the slot: **fitted**;
2. else spoken faster, never above `--max-rate` (200): **sped_up**;
3. else the shortest of the model's other n-best candidates that fits (at the rate or faster):
   **substituted**;
4. else `--overflow`: **extended** (the picture holds at the slot's end for the overrun: an
   extended-AD cut; the default with `--extended`), **dropped** (the default otherwise, with a
   warning) or **kept** (spoken at the ceiling past its slot, by choice).

A slot is first shrunk to keep off dialogue (the subtitles the track was made with, or
`--subs`): a description starts when speech has stopped and must end before it starts again.
Every decision is recorded in the JSON (`voice` in each slot, a summary at the top) and in
`FILM.metrics.json` (counts, the heard-rate distribution, AD time over dialogue, which is 0
unless a description was kept past its slot).

Deliverables in the output folder: `FILM.ad.wav` (the AD stem), `FILM.ad-mix.wav` (programme
ducked + AD, at the loudness target), `FILM.described.mkv` (or .mp4: the film with an AD audio
track and the descriptions as a text track), the voiced text tracks (`-f`: srt, vtt, json,
dapt) and the metrics. Everything goes to temporary files first and is renamed at the end;
synthesized speech is cached in `FILM.voice-cache/`, so a rerun synthesizes nothing twice.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import shutil
import statistics
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locomad_cli import __version__
from locomad_cli.lock import lock_path, output_lock
from locomad_cli.progress import progress_bar
from locomad_cli.tracks.writers import get_writer, parse_formats
from locomad_cli.utils import (
    TEMP_SUFFIX,
    LocomadError,
    atomic_path,
    check_writable_dir,
    os_error_line,
    sweep_temps,
    temp_prefix,
)
from locomad_cli.voice.mix import (
    MixOptions,
    MixResult,
    Pause,
    PlacedCue,
    duck_envelope,
    duck_spans,
    extended_cut,
    mix,
    mux,
    output_time,
    speech_gate,
    to_output_spans,
    write_envelope,
    write_stem,
)
from locomad_cli.voice.tts import NoSpeech, Speech, SpeechCache, TTSEngine, make_engine

if TYPE_CHECKING:
    from locomad_cli.features.video import VideoInfo

log = logging.getLogger(__name__)

OVERFLOW = ("extend", "drop", "keep")
DECISIONS = ("fitted", "sped_up", "substituted", "extended", "kept", "dropped")
CEILING_SLACK = 1.005
"""A sped-up reading may measure this much over --max-rate (rounding of the engine's knob)."""


@dataclass
class VoiceOptions:
    """Everything `voice()` needs besides the film; the CLI fills it from its flags."""

    ad: str
    """The AD track: FILM.ad.json written by describe (or by an earlier voice run)."""
    output_dir: str | None = None
    tts: str = "espeak-ng"
    voice: str | None = None
    """Engine voice: an espeak-ng voice name (default: --language), a piper .onnx file."""
    rate: float = 170.0
    """Heard words per minute to speak at."""
    max_rate: float = 200.0
    """The fastest a description may be spoken to fit its slot."""
    overflow: str | None = None
    """extend | drop | keep; None: extend with `extended`, else drop."""
    extended: bool = False
    subs: str | None = None
    """Dialogue to keep off; default the subtitles the track was made with, when found."""
    formats: str = "srt,vtt,json"
    mix: MixOptions = field(default_factory=MixOptions)
    progress: bool = True

    def check(self) -> None:
        if not (60 <= self.rate <= 400) or not math.isfinite(self.rate):
            raise LocomadError(f"--rate must be 60-400 words per minute, got {self.rate}")
        if not (self.rate <= self.max_rate <= 450):
            raise LocomadError(
                f"--max-rate must be at least --rate ({self.rate:g}) and at most 450, "
                f"got {self.max_rate}"
            )
        if self.overflow is not None and self.overflow not in OVERFLOW:
            raise LocomadError(
                f"unknown --overflow '{self.overflow}' (choose {', '.join(OVERFLOW)})"
            )
        self.mix.check()

    @property
    def overflow_policy(self) -> str:
        if self.overflow is not None:
            return self.overflow
        return "extend" if self.extended else "drop"


# --- reading the track ----------------------------------------------------------------------


def load_track(path: str | Path, video: Path, duration: float) -> dict[str, Any]:
    """The AD track, refused in one line when it is not one, was written for another film or
    by another version of locomad (whose JSON may mean something else), or is damaged: its
    shape is checked here, once, so that nothing after (voice, review) can trip on it."""
    path = Path(path)
    track = _read_track_json(path)
    if not isinstance(track, dict) or track.get("tool") != "locomad":
        raise LocomadError(f"--ad {path}: not an AD track written by locomad describe")
    if "version" not in track:
        raise LocomadError(
            f"--ad {path} names no locomad version (this is locomad {__version__}): describe "
            "the film again with this version"
        )
    if track["version"] != __version__:
        raise LocomadError(
            f"--ad {path} was written by locomad {_plain(track['version'])}; this is locomad "
            f"{__version__}: describe the film again with this version"
        )
    problem = _track_problem(track)
    if problem:
        raise LocomadError(f"--ad {path}: damaged track: {problem}")
    _check_same_film(track, path, video)
    for pos, s in enumerate(track["slots"]):
        if float(s["end"]) > duration + 0.05:
            raise LocomadError(
                f"--ad {path}: {_slot_name(pos, s)} ends at {_secs(float(s['end']))} s, past "
                f"the end of {video.name} ({duration:.3f} s): a track of another film?"
            )
    return track


def _read_track_json(path: Path) -> Any:
    """The file's JSON, or one line on why there is none (a folder, unreadable, not JSON)."""
    if path.is_dir():
        raise LocomadError(f"--ad {path} is a folder: name the track file (FILM.ad.json)")
    if not path.exists():
        raise LocomadError(f"--ad {path}: no such file (write it with locomad describe)")
    if not path.is_file():
        raise LocomadError(f"--ad {path}: not a regular file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise LocomadError(f"--ad {path}: not a UTF-8 JSON file") from None
    except json.JSONDecodeError as e:
        raise LocomadError(f"--ad {path}: not JSON ({e.msg}, line {e.lineno})") from None
    except RecursionError:
        raise LocomadError(f"--ad {path}: not JSON (nested too deeply)") from None
    except ValueError as e:  # e.g. an integer of more digits than Python converts
        raise LocomadError(f"--ad {path}: not JSON ({e})") from None
    except OSError as e:
        raise LocomadError(f"--ad {path}: cannot be read ({e.strerror or e})") from None


def _check_same_film(track: dict[str, Any], path: Path, video: Path) -> None:
    """Refuse a track written for another film: by its fingerprint where it has one (same
    name and size but other content is said: another cut or encode), else by the film name."""
    src = track.get("film_source") or {}
    if not (src.get("source_sha256_1mib") and src.get("source_size") is not None):
        if track.get("film") != video.stem:
            raise LocomadError(
                f"--ad {path} was written for the film {_show(track.get('film'))}, "
                f"not '{video.stem}'"
            )
        return
    from locomad_cli.features.video import source_fingerprint

    mine = source_fingerprint(video)
    theirs_size, my_size = int(src["source_size"]), int(mine["source_size"])
    if mine["source_sha256_1mib"] == src["source_sha256_1mib"] and my_size == theirs_size:
        return
    name = _plain(src.get("source_name") or "?")
    if name == video.name and theirs_size == my_size:
        raise LocomadError(
            f"--ad {path} was written for another film: {video.name} of the same name and "
            f"size ({my_size} bytes) but different content (another cut or encode of the "
            "film?): describe this file again"
        )
    raise LocomadError(
        f"--ad {path} was written for another film ({name}, {theirs_size} bytes), "
        f"not {video.name} ({my_size} bytes)"
    )


def _track_problem(track: dict[str, Any]) -> str | None:
    """What is wrong with the track's shape (the top-level fields, then each slot), or None."""
    for key, check in _TOP_CHECKS:
        if track.get(key) is not None:
            problem = check(track[key])
            if problem:
                return _field(key, problem)
    slots = track.get("slots")
    if not isinstance(slots, list):
        return f"slots is {_kind(slots)}, not a list"
    for pos, s in enumerate(slots):
        problem = _slot_problem(s)
        if problem:
            return f"{_slot_name(pos, s)}: {problem}"
    return None


def _slot_problem(s: Any) -> str | None:
    """What is wrong with one slot: its times, then each field voice or review reads."""
    if not isinstance(s, dict):
        return f"is {_kind(s)}, not an object"
    problem = _times_problem(s)
    if problem:
        return problem
    for key, check in _SLOT_CHECKS:
        if s.get(key) is not None:
            problem = check(s[key])
            if problem:
                return _field(key, problem)
    if "text" in s and s["text"] is None:
        return "text is null, not a string"
    return None


def _times_problem(s: dict[str, Any]) -> str | None:
    for key in ("start", "end"):
        if key not in s:
            return f"has no {key}"
        problem = _seconds_problem(s[key])
        if problem:
            return f"{key} {problem}"
    a, b = float(s["start"]), float(s["end"])
    if a < 0:
        return f"starts before the film does ({_secs(a)} s)"
    if b <= a:
        return f"ends ({_secs(b)} s) {'where' if a == b else 'before'} it starts ({_secs(a)} s)"
    return None


def _seconds_problem(v: Any) -> str | None:
    """A time in seconds is a finite JSON number (not a string, not true/false)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return f"{_show(v)} is not a number"
    try:
        x = float(v)
    except OverflowError:
        return f"{_show(v)} is too large"
    return None if math.isfinite(x) else f"{_show(v)} is not a finite number"


Check = Callable[[Any], "str | None"]
"""A field's check: what is wrong with its value, or None."""


def _str_problem(v: Any) -> str | None:
    return None if isinstance(v, str) else f"is {_kind(v)}, not a string"


def _dict_of(checks: tuple[tuple[str, Check], ...]) -> Check:
    """A check that the value is an object whose named fields (where present) pass theirs."""

    def check(v: Any) -> str | None:
        if not isinstance(v, dict):
            return f"is {_kind(v)}, not an object"
        for key, sub in checks:
            if v.get(key) is not None:
                problem = sub(v[key])
                if problem:
                    return "." + _field(key, problem)
        return None

    return check


def _field(key: str, problem: str) -> str:
    """`key` and what is wrong with it; a nested field's name is joined with a dot."""
    return key + problem if problem.startswith(".") else f"{key} {problem}"


def _list_problem(v: Any) -> str | None:
    return None if isinstance(v, list) else f"is {_kind(v)}, not a list"


def _size_problem(v: Any) -> str | None:
    """A byte count: a whole number, or its digits as a string (as describe writes it)."""
    ok = (isinstance(v, int) and not isinstance(v, bool) and v >= 0) or (
        isinstance(v, str) and v.isascii() and v.isdigit()
    )
    return None if ok else f"{_show(v)} is not a number of bytes"


def _candidates_problem(v: Any) -> str | None:
    """The n-best: a list of objects, each with its text (voice substitutes from them)."""
    if not isinstance(v, list):
        return f"is {_kind(v)}, not a list"
    for k, c in enumerate(v):
        if not isinstance(c, dict):
            return f"item {k} is {_kind(c)}, not an object with a text"
        if not isinstance(c.get("text"), str):
            if "text" not in c:
                return f"item {k} has no text"
            return f"item {k} has text {_show(c['text'])}, not a string"
    return None


_TOP_CHECKS: tuple[tuple[str, Check], ...] = (
    ("subtitles_file", _str_problem),
    (
        "film_source",
        _dict_of(
            (
                ("source_name", _str_problem),
                ("source_size", _size_problem),
                ("source_sha256_1mib", _str_problem),
            )
        ),
    ),
    ("voice", _dict_of((("summary", _str_problem),))),
)
"""Top-level fields voice and review read: (key, check), each checked where it is not null."""

_SLOT_CHECKS: tuple[tuple[str, Check], ...] = (
    ("text", _str_problem),
    ("candidates", _candidates_problem),
    ("why", _dict_of((("after", _list_problem), ("before", _list_problem)))),
    (
        "voice",  # a voiced track read back: review shows and replays what voice recorded
        _dict_of(
            (
                ("text", _str_problem),
                ("start", _seconds_problem),
                ("end", _seconds_problem),
                ("engine_rate", _seconds_problem),
            )
        ),
    ),
)
"""A slot's fields besides its times: (key, check), each checked where it is not null."""


def _slot_name(pos: int, s: Any) -> str:
    """A slot as the user finds it: by its index, else by its place in the list."""
    index = s.get("index") if isinstance(s, dict) else None
    if isinstance(index, int) and not isinstance(index, bool) and abs(index) < 10**9:
        return f"slot {index}"
    return f"slot number {pos + 1} in the list"


def _kind(v: Any) -> str:
    if v is None:
        return "null"
    names = {bool: "true/false", int: "a number", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "an object"})
    return names.get(type(v), type(v).__name__)


def _show(v: Any) -> str:
    """A value in a message, cut short (a damaged file may hold anything, of any length)."""
    if v is None or isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, int) and abs(v) >= 10**30:
        return f"a {len(str(abs(v)))}-digit number"  # JSON's digits are within str()'s limit
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _plain(v: Any) -> str:
    """A short one-line string as it is (a version, a file name), anything else as _show's."""
    ok = isinstance(v, str) and v.isprintable() and len(v) <= 80
    return v if ok else _show(v)


def _secs(t: float) -> str:
    return f"{t:.3f}" if abs(t) < 1e9 else f"{t:g}"


def dialogue_of(
    track: dict[str, Any], opts: VoiceOptions, ad_path: Path
) -> list[tuple[float, float]]:
    """Dialogue intervals to keep off, merged: --subs or the subtitles the track names (looked
    for as written, then beside the track), and the speech and subtitle intervals that bound
    describe's proposed slots (`why.after`/`why.before`: speech the soundtrack holds, found by
    its VAD, even with no subtitles at all). None known: said once."""
    from locomad_cli.slots.plan import dialogue_spans
    from locomad_cli.tracks.readers import Cue, read_cues

    path = None
    if opts.subs:
        path = Path(opts.subs)
    elif track.get("subtitles_file"):
        named = Path(track["subtitles_file"])
        for p in (named, ad_path.parent / named.name):
            if p.is_file():
                path = p
                break
        if path is None:
            log.warning(
                "the track's subtitles %s are not found: descriptions are kept off the "
                "dialogue the track itself records only (pass --subs)",
                named,
            )
    cues = list(read_cues(path)) if path is not None else []
    for slot in track["slots"]:
        why = slot.get("why") or {}
        for iv in [*(why.get("after") or []), *(why.get("before") or [])]:
            try:
                a, b = float(iv["start"]), float(iv["end"])
            except (KeyError, TypeError, ValueError):
                continue
            if math.isfinite(a) and math.isfinite(b) and a < b:
                cues.append(Cue(a, b, ""))
    return dialogue_spans(cues)


def speakable_window(
    start: float, end: float, dialogue: list[tuple[float, float]]
) -> tuple[float, float]:
    """The slot shrunk to keep off dialogue: it starts once speech covering its start has
    stopped and ends where the next speech begins."""
    a, b = start, end
    for s, e in dialogue:
        if s <= a < e:
            a = e
    for s, _ in dialogue:
        if a < s < b:
            b = s
            break
    return a, max(a, b)


# --- fitting --------------------------------------------------------------------------------


@dataclass
class Fit:
    """What was decided for one description."""

    decision: str
    window: tuple[float, float]
    speech: Speech | None = None
    candidate: int | None = None
    """Rank of the spoken text in the model's n-best (0: its first choice)."""
    overrun: float = 0.0
    """Seconds the audio runs past the window (extended or kept)."""
    reason: str = ""
    tried: list[dict[str, Any]] = field(default_factory=list)


def _overflow(
    fit: Fit,
    text: str,
    primary: Speech,
    calm: list[tuple[Speech, int]],
    n: int,
    cache: SpeechCache,
    opts: VoiceOptions,
    note: Callable[[Speech, int], Speech],
) -> Fit:
    """The ladder's last rung, apart so fit_description stays readable: no candidate fits,
    so the overflow policy drops, extends or keeps the first choice."""
    room = fit.window[1] - fit.window[0]
    policy = opts.overflow_policy
    if policy == "drop":
        which = "it has no other candidate" if n == 1 else f"none of its {n} candidates does"
        shortest = min([primary.duration, *(s.duration for s, _ in calm)])
        fit.reason = (
            f"does not fit its {room:.2f} s slot even at {opts.max_rate:g} wpm, and {which} "
            f"(the shortest takes {shortest:.2f} s at {opts.rate:g} wpm)"
        )
        return fit
    if policy == "extend":
        s = primary  # the picture is held: no need to hurry
        fit.decision = "extended"
    else:
        s = note(cache.speak(text, opts.max_rate, at_most=opts.max_rate), 0)
        fit.decision = "kept"
    fit.speech, fit.candidate, fit.overrun = s, 0, max(0.0, s.duration - room)
    return fit


def fit_description(
    texts: list[str], window: tuple[float, float], cache: SpeechCache, opts: VoiceOptions
) -> Fit:
    """The fitting ladder of the module docstring for one slot; `texts` is the model's n-best,
    first choice first."""
    room = window[1] - window[0]
    fit = Fit("dropped", window)
    if not texts or not texts[0]:
        fit.reason = "no text"
        return fit
    if room <= 0.05:
        fit.reason = "the slot lies inside dialogue"
        return fit

    def note(s: Speech, rank: int) -> Speech:
        fit.tried.append(
            {"candidate": rank, "wpm": round(s.wpm, 1), "duration": round(s.duration, 3)}
        )
        return s

    def fits(s: Speech) -> bool:
        return s.duration <= room + 1e-3

    def faster(text: str, rank: int, calm: Speech) -> Speech | None:
        """`text` sped up just enough to fit, at most to the ceiling."""
        want = min(opts.max_rate, calm.wpm * calm.duration / room * 1.02)
        targets = [want] if want >= opts.max_rate else [want, opts.max_rate]
        for w in targets:
            if w <= calm.wpm:
                continue
            s = note(cache.speak(text, w, at_most=opts.max_rate), rank)
            if fits(s) and s.wpm <= opts.max_rate * CEILING_SLACK:
                return s
        return None

    try:
        primary = note(cache.speak(texts[0], opts.rate), 0)
    except NoSpeech as e:
        fit.reason = str(e)
        return fit
    if fits(primary):
        fit.decision, fit.speech, fit.candidate = "fitted", primary, 0
        return fit
    quick = faster(texts[0], 0, primary)
    if quick is not None:
        fit.decision, fit.speech, fit.candidate = "sped_up", quick, 0
        return fit
    others = [(rank, t) for rank, t in enumerate(texts) if rank > 0 and t and t != texts[0]]
    calm = []
    for rank, t in others:
        with contextlib.suppress(NoSpeech):  # a silent candidate is no candidate
            calm.append((note(cache.speak(t, opts.rate), rank), rank))
    calm.sort(key=lambda x: x[0].duration)
    for s, rank in calm:  # shortest first: the first that fits is the shortest that fits
        chosen = s if fits(s) else faster(s.text, rank, s)
        if chosen is not None:
            fit.decision, fit.speech, fit.candidate = "substituted", chosen, rank
            return fit
    return _overflow(fit, texts[0], primary, calm, 1 + len(others), cache, opts, note)


# --- the command ----------------------------------------------------------------------------


@dataclass
class Voiced:
    """One spoken description, placed."""

    slot: dict[str, Any]
    fit: Fit
    start: float
    """Film time where its audio starts."""
    pause: Pause | None = None


def voice(
    video: str | Path,
    opts: VoiceOptions,
    track: dict[str, Any] | None = None,
    lock: bool = True,
) -> tuple[dict[str, Any], list[Path]]:
    """Voice, mix and deliver one film's AD track; returns the voiced track and the files
    written. `track` replaces reading `opts.ad` (describe --voice passes its own). Every
    input is checked before anything is synthesized or written. The film's output lock is
    taken for the writing; `lock=False` when the caller holds it already (review's export:
    a second flock in one process would refuse its own holder)."""
    from locomad_cli.features.video import probe

    video = Path(video)
    opts.check()
    formats = parse_formats(opts.formats)
    if "json" not in formats:
        formats.append("json")  # the decisions always go somewhere
    info = probe(video)
    ad_path = Path(opts.ad)
    if track is None:
        track = load_track(ad_path, video, info.duration)
    engine = make_engine(opts.tts, opts.voice or opts.mix.language)
    dialogue = dialogue_of(track, opts, ad_path)  # bad subtitles: refused before any folder
    out_dir = Path(opts.output_dir) if opts.output_dir else ad_path.parent
    check_writable_dir(out_dir)
    film = video.stem
    cache_dir = out_dir / f"{film}.voice-cache"
    held = output_lock(lock_path(out_dir, film)) if lock else contextlib.nullcontext()
    with held, _disk_errors(out_dir, cache_dir):
        sweep_temps(out_dir)  # the work folders a killed run left (ours only)
        return _voice_into(video, opts, track, dialogue, engine, out_dir, formats, info)


@contextlib.contextmanager
def _disk_errors(out_dir: Path, cache_dir: Path):
    """A full disk (or quota, or permissions) while voicing: one line that names the file and
    the disk, and what is kept (the cues already in the voice cache, whole: the next run
    reuses them and synthesizes only the rest)."""
    try:
        yield
    except OSError as e:
        # a write to an open work file names none: then the output folder is named
        line = os_error_line(e, None if e.filename else out_dir)
        if line is None:
            raise
        kept = len(list(cache_dir.glob("*.wav"))) if cache_dir.is_dir() else 0
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            then = "free some space"
        elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            then = "make it writable (or use --output-dir)"
        else:
            then = "write elsewhere with --output-dir"
        raise LocomadError(
            f"{line}; kept {kept} spoken cue(s) in {cache_dir} and no half-written output: "
            f"{then} and run the same command again"
        ) from None


def _voice_into(
    video: Path,
    opts: VoiceOptions,
    track: dict[str, Any],
    dialogue: list[tuple[float, float]],
    engine: TTSEngine,
    out_dir: Path,
    formats: list[str],
    info: VideoInfo,
) -> tuple[dict[str, Any], list[Path]]:
    """voice() once the inputs are checked and the film's outputs are locked."""
    film = video.stem
    streams = info.audio
    if not streams:
        log.warning(
            "%s has no audio: the AD track is the descriptions alone (no programme to mix)",
            video.name,
        )
    cache = SpeechCache(out_dir / f"{film}.voice-cache", engine)
    placed = _fit_all(track, dialogue, cache, opts)
    pauses = [v.pause for v in placed if v.pause is not None]
    total = info.duration + sum(p.duration for p in pauses)
    stem_name = f"{film}.ad.wav"

    with contextlib.ExitStack() as stack:
        work = Path(
            tempfile.mkdtemp(prefix=temp_prefix(f"{film}.voice"), suffix=TEMP_SUFFIX, dir=out_dir)
        )
        stack.callback(shutil.rmtree, work, True)
        cues = [
            PlacedCue(output_time(v.start, pauses), v.fit.speech.duration, v.fit.speech.path)
            for v in placed
            if v.fit.speech is not None
        ]
        if not cues:
            raise LocomadError("no description could be voiced: nothing to mix (see warnings)")
        stem_out, mix_out, levels, extended_video, prog_ext = _mix_into(
            stack, work, video, info, opts, cues, pauses, dialogue, total, out_dir / stem_name
        )
        paths: list[Path] = []
        paths += [out_dir / stem_name] + ([out_dir / f"{film}.ad-mix.wav"] if mix_out else [])

        voiced = _voiced_track(track, placed, pauses, opts, engine.identity(), stem_name)
        metrics = _metrics(film, placed, pauses, dialogue, levels, opts)
        voiced["voice"]["summary"] = summary_line(film, metrics)
        loud = metrics["loudness"]
        _warn_off_spec(loud)

        text_track = work / f"{film}.ad.vtt"
        get_writer("vtt", work)(output_view(voiced, pauses, stem_name), film)
        described = out_dir / f"{film}.described.{opts.mix.container}"
        film_out = stack.enter_context(atomic_path(described))
        ad_audio = mix_out if mix_out is not None else stem_out
        for w in mux(
            video,
            ad_audio,
            text_track,
            film_out,
            opts.mix,
            original_streams=len(streams),
            extended_video=extended_video,
            original_audio=prog_ext,
        ):
            log.warning("%s", w)
        paths.append(described)
        metrics_path = out_dir / f"{film}.metrics.json"
        f = stack.enter_context(atomic_path(metrics_path))
        f.write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        paths.append(metrics_path)
        # the text tracks last: a failure above leaves the old ones (and the input) untouched
        view = film_view(voiced, stem_name)
        text = [f for f in formats if f != "json"]
        if text:
            paths += get_writer(",".join(text), out_dir)(view, film)
        paths += get_writer("json", out_dir)(voiced, film)
    return voiced, paths


def _mix_into(
    stack: contextlib.ExitStack,
    work: Path,
    video: Path,
    info: VideoInfo,
    opts: VoiceOptions,
    cues: list[PlacedCue],
    pauses: list[Pause],
    dialogue: list[tuple[float, float]],
    total: float,
    stem_path: Path,
) -> tuple[Path, Path | None, MixResult, Path | None, Path | None]:
    """The audio half of _voice_into, apart to keep it short: the AD stem, the ducking (and
    gate) envelopes, the extended cut when there are pauses, and the mix; returns the stem and
    mix outputs (pending renames on `stack`), the measured levels and the extended cut's files."""
    film = video.stem
    out_dir = stem_path.parent
    streams = info.audio
    stem_raw = work / "stem-raw.wav"
    write_stem(cues, total, stem_raw)
    programme = None
    extended_video = prog_ext = None
    if pauses:
        extended_video = work / "extended.mkv"
        prog_ext = work / "programme.flac" if streams else None
        extended_cut(video, info.duration, pauses, extended_video, prog_ext, opts.mix.crf)
    if streams:
        programme = ["-i", str(prog_ext or video)]
    out_dialogue = to_output_spans(dialogue, pauses)
    spans = duck_spans(cues, opts.mix.ramp, out_dialogue)
    envelope = work / "duck.f32"
    write_envelope(duck_envelope(spans, total, opts.mix.duck_db), envelope)

    stem_out = stack.enter_context(atomic_path(stem_path))
    mix_out = None
    if programme is not None:
        mix_out = stack.enter_context(atomic_path(out_dir / f"{film}.ad-mix.wav"))
    gate = None
    if opts.mix.loudness_spec.gate == "dialogue":
        gate = work / "speech.f32"
        spoken = speech_spans(video, out_dir, streams, pauses, cues)
        write_envelope(speech_gate(spoken, total), gate)
    levels = mix(programme, stem_raw, envelope, stem_out, mix_out, opts.mix, gate)
    return stem_out, mix_out, levels, extended_video, prog_ext


def _warn_off_spec(loud: dict[str, Any]) -> None:
    """A mix that misses its loudness spec is still delivered, so say so."""
    if not loud["within_spec"]:
        log.warning(
            "the mix misses the %s spec: %s %s LUFS (target %g ±%g), true peak %s dBTP "
            "(at most %g)",
            loud["spec"], loud["measure"], loud["value"], loud["target"], loud["tolerance"],
            loud["measured"].get("true_peak"), loud["true_peak_max"],
        )  # fmt: skip


def speech_spans(
    video: Path,
    out_dir: Path,
    streams: list[dict],
    pauses: list[Pause],
    cues: list[PlacedCue],
) -> list[tuple[float, float]]:
    """What a dialogue-gated meter listens to, on the output timeline: the speech silero-vad
    finds in the programme (cached beside the film or in `out_dir`, as describe leaves it)
    and the AD's own speech, merged."""
    from locomad_cli.slots.speech import detect_speech

    spans = [(c.start, c.end) for c in cues]
    if streams:
        spans += to_output_spans(detect_speech(video, out_dir).intervals, pauses)
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _fit_all(
    track: dict[str, Any], dialogue: list[tuple[float, float]], cache: SpeechCache, opts
) -> list[Voiced]:
    """Fit every slot in film order; a kept description that runs into the next one's slot
    pushes that one's start back (said)."""
    placed: list[Voiced] = []
    cursor = 0.0
    slots = sorted(track["slots"], key=lambda s: (s["start"], s["end"]))
    said = _Warnings()
    with progress_bar("voicing", len(slots), opts.progress) as step:
        for slot in slots:
            window = speakable_window(float(slot["start"]), float(slot["end"]), dialogue)
            if cursor > window[0]:
                said.warn(
                    "said",
                    "slot %s starts while the kept description before it is still spoken",
                    slot.get("index", "?"),
                )
                window = (min(cursor, window[1]), window[1])
            texts = [slot.get("text", "").strip()]
            texts += [c.get("text", "").strip() for c in slot.get("candidates") or []][1:]
            fit = fit_description(texts, window, cache, opts)
            v = Voiced(slot, fit, window[0])
            if fit.decision == "extended":
                v.pause = Pause(window[1], fit.overrun)
            if fit.decision == "dropped" and texts[0]:
                said.warn(
                    "dropped",
                    "dropped the description of slot %s (%s): %s",
                    slot.get("index", "?"),
                    _hms(slot["start"]),
                    fit.reason,
                )
            if fit.speech is not None:  # where the film is when this one has been said
                extended = fit.decision == "extended"
                cursor = window[1] if extended else window[0] + fit.speech.duration
            placed.append(v)
            step(len(placed))
    said.summary(
        {"said": "slots started while the one before was still spoken", "dropped": "dropped"}
    )
    return placed


class _Warnings:
    """Per-slot warnings, the first few of each kind in full: a track of thousands of tiny
    slots would otherwise print a line for every one (the metrics JSON has them all)."""

    FIRST = 10

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}

    def warn(self, kind: str, message: str, *args: Any) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if self.counts[kind] <= self.FIRST:
            log.warning(message, *args)

    def summary(self, what: dict[str, str]) -> None:
        for kind, n in self.counts.items():
            if n > self.FIRST:
                log.warning(
                    "... and %d more %s (%d in all; see the voiced JSON track)",
                    n - self.FIRST,
                    what[kind],
                    n,
                )


def _hms(t: float) -> str:
    from locomad_cli.tracks.writers import format_timestamp

    return format_timestamp(t)


# --- outputs --------------------------------------------------------------------------------


def _voiced_track(
    track: dict[str, Any],
    placed: list[Voiced],
    pauses: list[Pause],
    opts: VoiceOptions,
    engine: str,
    stem_name: str,
) -> dict[str, Any]:
    """The input track with a `voice` record per slot and one at the top (the JSON)."""
    out = {k: v for k, v in track.items() if k not in ("slots", "voice")}
    out["language"] = opts.mix.language
    by_id = {id(v.slot): v for v in placed}
    slots = []
    for slot in track["slots"]:
        row = {k: v for k, v in slot.items() if k != "voice"}
        v = by_id.get(id(slot))
        if v is not None:
            row["voice"] = _voice_record(v, pauses, stem_name)
        slots.append(row)
    out["slots"] = slots
    added = sum(p.duration for p in pauses)
    out["voice"] = {
        "engine": engine,
        "rate": opts.rate,
        "max_rate": opts.max_rate,
        "overflow": opts.overflow_policy,
        "extended": bool(pauses),
        "pauses": [{"at": round(p.at, 3), "duration": round(p.duration, 3)} for p in pauses],
        "added_time": round(added, 3),
        "stem": stem_name,
        "duck_db": opts.mix.duck_db,
        "duck_ramp": opts.mix.ramp,
        "loudness_spec": opts.mix.spec,
        "loudness_target": opts.mix.loudness,
        "true_peak_max": opts.mix.true_peak,
    }
    return out


def _voice_record(v: Voiced, pauses: list[Pause], stem_name: str) -> dict[str, Any]:
    f = v.fit
    rec: dict[str, Any] = {
        "decision": f.decision,
        "window": [round(f.window[0], 3), round(f.window[1], 3)],
    }
    if f.speech is None:
        rec["reason"] = f.reason
    else:
        s = f.speech
        out_start = output_time(v.start, pauses)
        rec.update(
            text=s.text,
            candidate=f.candidate,
            start=round(v.start, 3),
            end=round(v.start + s.duration, 3),
            duration=round(s.duration, 3),
            wpm=round(s.wpm, 1),
            engine_rate=s.engine_rate,
            overrun=round(f.overrun, 3),
            output_start=round(out_start, 3),
            output_end=round(out_start + s.duration, 3),
            audio={
                "src": stem_name,
                "begin": round(out_start, 3),
                "end": round(out_start + s.duration, 3),
            },
        )
        if v.pause is not None:
            rec["pause"] = {"at": round(v.pause.at, 3), "duration": round(v.pause.duration, 3)}
    rec["tried"] = f.tried
    return rec


def film_view(voiced: dict[str, Any], stem_name: str) -> dict[str, Any]:
    """What the text tracks in the output folder hold: the spoken descriptions on the film's
    timeline, each from where its audio starts to where it ends (for an extended one, to
    where the picture holds, with the pause), the audio's place in the stem."""
    slots = []
    for slot in voiced["slots"]:
        v = slot.get("voice") or {}
        if "text" not in v:
            continue
        end = v["pause"]["at"] if "pause" in v else v["end"]
        row = {
            "index": slot.get("index"),
            "start": v["start"],
            "end": max(end, v["start"] + 0.001),
            "text": v["text"],
            "audio": v["audio"],
        }
        if "pause" in v:
            row["pause"] = v["pause"]
        slots.append(row)
    return {**{k: x for k, x in voiced.items() if k != "slots"}, "slots": slots}


def output_view(voiced: dict[str, Any], pauses: list[Pause], stem_name: str) -> dict[str, Any]:
    """The same on the delivered timeline (the extended cut's, when there are pauses): the
    text track muxed into the described film."""
    view = film_view(voiced, stem_name)
    for row in view["slots"]:
        row["start"], row["end"] = row["audio"]["begin"], row["audio"]["end"]
        row.pop("pause", None)
    return view


def _overlap(a: float, b: float, spans: list[tuple[float, float]]) -> float:
    return sum(max(0.0, min(b, e) - max(a, s)) for s, e in spans)


def _metrics(
    film: str,
    placed: list[Voiced],
    pauses: list[Pause],
    dialogue: list[tuple[float, float]],
    levels,
    opts: VoiceOptions,
) -> dict[str, Any]:
    counts = {d: 0 for d in DECISIONS}
    wpms, spoken, over, overlapping = [], 0.0, 0.0, []
    for v in placed:
        counts[v.fit.decision] += 1
        s = v.fit.speech
        if s is None:
            continue
        wpms.append(s.wpm)
        spoken += s.duration
        # film time the audio covers: an extended description stops the film at its pause
        end = v.pause.at if v.pause is not None else v.start + s.duration
        o = _overlap(v.start, end, dialogue)
        if o > 1e-3:
            over += o
            overlapping.append(v.slot.get("index"))
    bins = {"<160": 0, "160-180": 0, "180-200": 0, ">200": 0}
    for w in wpms:
        key = "<160" if w < 160 else "160-180" if w < 180 else "180-200" if w <= 200 else ">200"
        bins[key] += 1
    rates = (
        {
            "min": round(min(wpms), 1),
            "median": round(statistics.median(wpms), 1),
            "mean": round(statistics.fmean(wpms), 1),
            "max": round(max(wpms), 1),
            "histogram": bins,
        }
        if wpms
        else {}
    )
    mix_levels = {k: (round(x, 2) if math.isfinite(x) else None) for k, x in levels.mix.items()}
    spec = opts.mix.loudness_spec
    gated = spec.gate == "dialogue"
    value = levels.dialogue if gated else levels.mix["integrated"]
    value = round(value, 2) if value is not None and math.isfinite(value) else None
    peak = mix_levels.get("true_peak")
    within = (
        value is not None
        and abs(value - opts.mix.loudness) <= spec.tolerance
        and (peak is None or peak <= opts.mix.true_peak + 0.05)
    )
    return {
        "film": film,
        "descriptions": len(placed),
        "voiced": len(wpms),
        "counts": counts,
        "wpm": rates,
        "ad_seconds": round(spoken, 3),
        "ad_over_dialogue_seconds": round(over, 3),
        "overlapping_dialogue": overlapping,
        "dialogue_known": bool(dialogue),
        "pauses": len(pauses),
        "added_time": round(sum(p.duration for p in pauses), 3),
        "loudness": {
            "spec": spec.name,
            "measure": "dialogue-gated" if gated else "integrated",
            "target": opts.mix.loudness,
            "tolerance": spec.tolerance,
            "true_peak_max": opts.mix.true_peak,
            "value": value,
            "within_spec": within,
            "measured": mix_levels,
            "ad_gain_db": round(levels.ad_gain_db, 2),
            "mix_gain_db": round(levels.mix_gain_db, 2),
            "limited": levels.limited,
            "programme": None
            if levels.programme is None
            else round(levels.programme["integrated"], 2),
        },
        "duck": {"depth_db": opts.mix.duck_db, "ramp": opts.mix.ramp},
    }


def summary_line(film: str, m: dict[str, Any]) -> str:
    """One line for the terminal (and the JSON)."""
    c = m["counts"]
    parts = [f"{c[d]} {d.replace('_', ' ')}" for d in DECISIONS if c[d]]
    line = f"{film}: voiced {m['voiced']} of {m['descriptions']} descriptions ({', '.join(parts)})"
    if m["wpm"]:
        line += f"; {m['wpm']['median']:.0f} wpm median, {m['wpm']['max']:.0f} max"
    line += f"; AD over dialogue {m['ad_over_dialogue_seconds']:.2f} s"
    if not m["dialogue_known"]:
        line += " (no dialogue known)"
    if m["pauses"]:
        n = m["pauses"]
        line += f"; extended cut +{m['added_time']:.2f} s at {n} pause{'s' if n > 1 else ''}"
    loud = m["loudness"]
    if loud["value"] is not None:
        gated = " dialogue-gated" if loud["measure"] == "dialogue-gated" else ""
        line += f"; {loud['value']:.1f} LUFS{gated}"
        if loud["spec"] != "ebu":
            line += f" ({loud['spec']}{'' if loud['within_spec'] else ': OUT OF SPEC'})"
    return line


def voice_described(
    video: Path, out_dir: Path, track: dict[str, Any], formats: str, progress: bool
) -> tuple[str, list[Path]]:
    """`locomad voice` with its defaults on a track `describe` just wrote (same folder, same
    -f): `describe --voice`. Returns the summary line and the paths written."""
    vopts = VoiceOptions(
        ad=str(out_dir / f"{video.stem}.ad.json"),
        output_dir=str(out_dir),
        formats=formats,
        progress=progress,
    )
    voiced, paths = voice(video, vopts, track=track)
    return voiced["voice"]["summary"], paths
