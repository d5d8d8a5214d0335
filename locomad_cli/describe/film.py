"""`locomad describe`: a film (+ subtitles) in, an audio-description track out.

The loop of the paper's recurrent setting: slots in film order; for slot i the context
proposal holds the previous `proposal_len` *generated* descriptions with their subtitles, the
DSM picks top-k of them, the LLM writes description i, and it joins the proposal. `oracle`
fills the proposal with reference descriptions instead (the paper's upper bound), `local`
leaves it empty. Every description's CLIP text features are computed once and kept, so the
cost of a slot does not grow with its index.

Each finished slot is appended to `<stem>.ad.progress.jsonl` in the output folder (one
complete line per write, fsynced); `--resume` reads it back and continues after the last
written slot with exactly the context an uninterrupted run would have had. The final tracks
are written atomically and the progress file removed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locomad_cli import __version__
from locomad_cli.card import ModelCard, load_card
from locomad_cli.describe import rules
from locomad_cli.slots.plan import Slot, plan_film, slots_from_times
from locomad_cli.threads import torch_threads
from locomad_cli.tracks.readers import Cue, read_cues, read_text, read_timed, slot_dialogue
from locomad_cli.tracks.writers import get_writer, parse_formats
from locomad_cli.utils import (
    LocomadError,
    atomic_open,
    check_writable_dir,
    resolve_device,
    write_errors,
)

if TYPE_CHECKING:
    import torch

    from locomad_cli.data.records import ClipRecord, ContextItem

# torch (and the records that need it) are imported where they are used: every check of the
# user's input runs first, so a bad file is refused in a fraction of a second, not after the
# seconds torch takes to import.

log = logging.getLogger(__name__)
SETTINGS = ("recurrent", "oracle", "local")
TextEncoder = Callable[[list[str]], "torch.Tensor"]


@dataclass
class DescribeOptions:
    """Everything `describe()` needs besides the video; the CLI fills it from its flags."""

    subs: str | None = None
    subs_encoding: str | None = None
    """Text encoding of --subs; None = detected."""
    ad_times: str | None = None
    model: str = "opt-2.7b"
    overrides: list[str] = field(default_factory=list)
    weights: str | None = None
    setting: str = "recurrent"
    reference: str | None = None
    output_dir: str | None = None
    formats: str = "srt,vtt,json"
    features: str | None = None
    device: str = "auto"
    batch_size: int = 8
    """Slots per model call in the oracle and local settings (recurrent is one at a time:
    slot i needs description i-1)."""
    resume: bool = False
    min_gap: float = 2.0
    margin: float = 0.3
    max_len: float = 8.0
    vad: str = "auto"
    """Speech from the soundtrack blocks slots too: auto (when the film has audio), on, off."""
    shots: str = "on"
    """Cut slots at shot changes (PySceneDetect): on, off."""
    cut_margin: float = 0.5
    """Seconds a proposed slot may run across a cut."""
    progress: bool = True
    threads: int | None = None
    """torch's CPU threads (None: threads.pick_threads chooses)."""
    cast: str | None = None
    """The film's character names, one per line (read_cast): a description names one only
    once the film has said it (LLMCard.names, to which these are added)."""


@dataclass
class TextFeatureCache:
    """CLIP text features per distinct text, each computed once.

    Texts are encoded one per call: a batched matmul rounds differently from a single row, and
    a resumed run (which re-encodes its history together) must give bit-identical features,
    hence identical DSM scores and descriptions, to an uninterrupted one."""

    encode: TextEncoder
    features: dict[str, torch.Tensor] = field(default_factory=dict)

    def get(self, texts: list[str]) -> torch.Tensor:
        import torch

        for t in texts:
            if t not in self.features:
                self.features[t] = self.encode([t]).detach().float().cpu()[0]
        return torch.stack([self.features[t] for t in texts])


def slot_frames(features: torch.Tensor, fps: float, start: float, end: float) -> torch.Tensor:
    """Rows of the slot: frame i is on screen at i/fps; at least one frame."""
    t = features.shape[0]
    a = min(max(0, math.floor(start * fps)), t - 1)
    b = min(t, math.ceil(end * fps))
    return features[a : max(b, a + 1)].float()


def oracle_context(refs: list[Cue], slot: Slot, proposal_len: int) -> list[Cue]:
    """Reference descriptions earlier in film order than the slot (never the slot's own, never
    a later one), the last `proposal_len` of them: the training-time proposal rule."""
    earlier = [r for r in refs if r.start < slot.start]
    return earlier[-proposal_len:] if proposal_len > 0 else []


# --- inputs -----------------------------------------------------------------------------------


def _film_duration(video: Path, meta: dict[str, Any] | None, features: torch.Tensor | None):
    if meta is not None and meta.get("duration"):
        duration = float(meta["duration"])
    elif meta is not None and features is not None and meta.get("fps"):
        duration = features.shape[0] / float(meta["fps"])
    else:
        from locomad_cli.features.video import probe

        duration = probe(video).duration
    if not math.isfinite(duration) or duration <= 0:
        where = "its features file" if meta is not None else "ffprobe"
        raise LocomadError(f"{video}: {where} gives no usable duration ({duration} s)")
    return duration


def _check_same_film(path: Path, meta: dict[str, Any], video: Path) -> None:
    """Features of another film are refused: their size and first-MiB hash (written by
    extract-features) must be the video's; files without them are checked by duration."""
    from locomad_cli.features.video import probe, source_fingerprint

    if not video.is_file():
        return  # features alone (no video at hand): nothing to compare with
    if meta.get("source_sha256_1mib") and meta.get("source_size") is not None:
        mine = source_fingerprint(video)
        same_hash = mine["source_sha256_1mib"] == meta["source_sha256_1mib"]
        if not same_hash or int(mine["source_size"]) != int(meta["source_size"]):
            made_from = meta.get("source_name") or "another file"
            raise LocomadError(
                f"{path}: features of another film ({made_from}, {meta['source_size']} bytes), "
                f"not {video.name} ({mine['source_size']} bytes); extract this film's features "
                "or leave out --features"
            )
        return
    if meta.get("duration"):
        theirs, ours = float(meta["duration"]), probe(video).duration
        if abs(theirs - ours) > max(1.0, 0.01 * ours):
            raise LocomadError(
                f"{path}: features of a {theirs:.1f} s film, but {video.name} lasts {ours:.1f} s "
                "(features of another film?)"
            )


def _check_features(
    path: Path, meta: dict[str, Any], card: ModelCard, features: torch.Tensor | None = None
) -> None:
    from locomad_cli.features.clip import weights_id

    if features is not None:
        if features.ndim != 2 or features.shape[0] == 0:
            raise LocomadError(
                f"{path}: expected frame features [frames, {card.clip.dim}], "
                f"got shape {list(features.shape)}"
            )
        if features.shape[1] != card.clip.dim:
            raise LocomadError(
                f"{path}: features are {features.shape[1]} wide, model card '{card.name}' "
                f"wants {card.clip.dim} (clip.dim)"
            )

    model = meta.get("clip_model")
    if model and model != card.clip.model:
        raise LocomadError(
            f"{path}: features were made with CLIP '{model}', but model card '{card.name}' "
            f"uses '{card.clip.model}'"
        )
    made_with = meta.get("clip_weights")
    if made_with and made_with != weights_id(card):
        raise LocomadError(
            f"{path}: features were made with other weights of CLIP '{card.clip.model}' than "
            f"model card '{card.name}' uses ({card.clip.pretrained}); extract them again"
        )
    fps = meta.get("fps")
    if fps and abs(float(fps) - card.fps) > 1e-6:
        raise LocomadError(f"{path}: features are at {fps:g} FPS, model card wants {card.fps:g}")


def plan_slots(
    opts: DescribeOptions,
    subtitles: list[Cue],
    duration: float,
    video: Path | None = None,
    out_dir: Path | None = None,
) -> tuple[list[Slot], dict[str, Any] | None]:
    """The slots to describe and, for proposed ones, how they were planned (JSON): given by
    --ad-times, or where neither the subtitles nor the soundtrack speak (slots.plan_film;
    speech and cut caches go to `out_dir`)."""
    if opts.ad_times:
        return slots_from_times(opts.ad_times, duration), None
    plan = plan_film(
        video,
        subtitles,
        duration,
        out_dir or (video.parent if video is not None else Path(".")),
        vad=opts.vad,
        shots=opts.shots,
        min_gap=opts.min_gap,
        margin=opts.margin,
        max_len=opts.max_len,
        cut_margin=opts.cut_margin,
        subtitles_name=Path(opts.subs).name if opts.subs else "subtitles",
        progress=opts.progress,
    )
    return plan.slots, plan.as_json()


NO_WEIGHTS = (
    "no trained LoCo-MAD weights for model card '{card}' ({where}): none are published for "
    "the OPT cards, so train them first (README, 'Describing your own film') and pass "
    "--weights RUN/model, or try the shipped demo (--model demo)"
)


def check_weights_exist(opts: DescribeOptions, card: ModelCard) -> None:
    """Fail at once, before any work, when the card's trained weights are nowhere: the most
    likely first error of a new user, so it says what to do."""
    from locomad_cli.utils import hub_reachable

    if opts.weights:
        given = Path(opts.weights).expanduser()
        if not given.exists() and not _hub_id(opts.weights):  # a hub id: its loader says more
            raise LocomadError(f"--weights {opts.weights}: no such folder")
        return
    local = card.weights_path()
    if local is None:
        raise LocomadError(NO_WEIGHTS.format(card=card.name, where="the card names none"))
    # 'weights/<card>' is the repository's own folder, not a hub id, whatever its slash says
    hub = _hub_id(card.weights) and not card.weights.startswith("weights/") and hub_reachable()
    if not local.exists() and not hub:
        raise LocomadError(NO_WEIGHTS.format(card=card.name, where=f"{local} does not exist"))


def _hub_id(name: str) -> bool:
    """Whether `name` could be a Hugging Face repo id ('org/name')."""
    return not Path(name).is_absolute() and name.count("/") == 1


def _load_model(opts: DescribeOptions, card: ModelCard, device: str):
    from locomad_cli.model.checkpoint import load_model

    if opts.weights:
        w = Path(opts.weights).expanduser()
        card.weights = str(w.resolve()) if w.exists() else opts.weights
        if not w.exists() and opts.weights.count("/") != 1:
            raise LocomadError(f"--weights {opts.weights}: no such folder")
    return load_model(card, device=device)


# --- progress file ----------------------------------------------------------------------------


def _identity(video: Path, card: ModelCard, opts: DescribeOptions, slots: list[Slot]) -> dict:
    return {
        "video": video.name,
        "card": card.name,
        "weights": opts.weights or card.weights,
        "setting": opts.setting,
        "reference": Path(opts.reference).name if opts.reference else None,
        "subtitles": Path(opts.subs).name if opts.subs else None,
        "cast": Path(opts.cast).name if opts.cast else None,
        "slots": [[s.start, s.end] for s in slots],
    }


def read_cast(path: str) -> list[str]:
    """A cast file: one character name per line (as the credits spell it); blank lines and
    lines starting with # are skipped. A file that names nobody is refused: the rule it feeds
    would then do nothing, silently."""
    names = []
    for line in read_text(path).splitlines():
        name = line.strip()
        if name and not name.startswith("#") and name not in names:
            names.append(name)
    if not names:
        raise LocomadError(f"{path}: names no character (one name per line)")
    return names


def _read_progress(path: Path, identity: dict) -> list[dict[str, Any]]:
    """Slots already written by an earlier run of the same job (a torn last line is ignored)."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                break  # the line being written when the run died
            raise LocomadError(f"{path}:{i + 1}: damaged progress file; delete it") from None
    if not rows or rows[0].get("identity") != identity:
        raise LocomadError(
            f"{path} belongs to another run (video, model card, setting or slots differ); "
            "delete it or run without --resume in another output folder"
        )
    done = rows[1:]
    for j, row in enumerate(done):
        if row.get("index") != j:
            raise LocomadError(f"{path}:{j + 2}: slots out of order; delete it")
    # rewrite without a torn tail, so the next appended line starts on a line of its own
    with write_errors(path), atomic_open(path) as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    return done


def _append(f, row: dict[str, Any]) -> None:
    """One complete line, fsynced, to an unbuffered binary file. A write that fails (a full
    disk) is cut back to where it started, so no torn line is left for a resume to skip."""
    data = memoryview((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
    offset = os.lseek(f.fileno(), 0, os.SEEK_END)
    try:
        while data:
            data = data[f.write(data) :]
        os.fsync(f.fileno())
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(f.fileno(), offset)
        raise


# --- the loop ---------------------------------------------------------------------------------


@dataclass
class Film:
    """One film's inputs to the loop."""

    name: str
    slots: list[Slot]
    subtitles: list[Cue]
    references: list[Cue]
    features: torch.Tensor | None = None
    """[T, D] frame features; None until extracted."""
    fps: float = 5.0
    names: list[str] = field(default_factory=list)
    """Names a description may use only once heard (the card's llm.names and --cast)."""

    def __post_init__(self) -> None:
        # each slot's and each reference's dialogue, computed once (cost per slot stays flat)
        self._dialogue: dict[int, str] = {}
        for spans in (self.slots, self.references):
            texts = slot_dialogue(self.subtitles, [(x.start, x.end) for x in spans])
            self._dialogue.update(zip(map(id, spans), texts, strict=True))

    def dialogue(self, item: Slot | Cue) -> str:
        """The dialogue that goes with a slot or reference of this film (see
        subtitles.dialogue_windows)."""
        return self._dialogue[id(item)]

    def record(self, slot: Slot, context: list[ContextItem], cache: TextFeatureCache) -> ClipRecord:
        """The ClipRecord of a slot with the given context proposal."""
        from locomad_cli.data.records import ClipRecord

        return ClipRecord(
            film=self.name,
            start=slot.start,
            end=slot.end,
            features=slot_frames(self.features, self.fps, slot.start, slot.end),
            subtitle=self.dialogue(slot),
            context=context,
            context_features=cache.get([c.text for c in context]) if context else None,
            index=slot.index,
            source=slot.source,
        )


@dataclass
class Models:
    """The model and CLIP text encoder of a run over many films: loaded by the first film
    that gets as far as needing them, then reused, so that the start-up is paid once.
    `failed`: loading them failed, so every later film would fail the same way."""

    model: Any = None
    encode_text: TextEncoder | None = None
    failed: bool = False
    clips: dict[tuple[str, str], Any] = field(default_factory=dict)
    """CLIP encoders by (device, dtype): the text encoder, and the image encoder of films
    whose features are extracted on the way (on the CPU both are the same one)."""

    def clip(self, card: ModelCard, device: str, dtype: torch.dtype):
        """The card's CLIP on `device` in `dtype`, loaded on first use."""
        from locomad_cli.features.clip import load_clip

        key = (device, str(dtype))
        if key not in self.clips:
            self.clips[key] = load_clip(card, device, dtype)
        return self.clips[key]


@contextlib.contextmanager
def _loading(models: Models | None):
    try:
        yield
    except LocomadError:
        if models is not None:
            models.failed = True
        raise


def check_options(opts: DescribeOptions) -> str:
    """The checks of the options that hold for every film (run once for many films);
    returns the formats to write."""
    if opts.setting not in SETTINGS:
        raise LocomadError(f"unknown setting '{opts.setting}' (choose {', '.join(SETTINGS)})")
    if opts.batch_size < 1:
        raise LocomadError(f"--batch-size must be at least 1, got {opts.batch_size}")
    return ",".join(parse_formats(opts.formats))


def describe(
    video: str | Path,
    opts: DescribeOptions,
    model: Any = None,
    encode_text: TextEncoder | None = None,
    on_description: Callable[[dict[str, Any]], None] | None = None,
    models: Models | None = None,
) -> tuple[dict[str, Any], list[Path]]:
    """Describe one film; returns the track (see writers.py) and the files written.

    `model` (a LoCoMAD) and `encode_text` replace loading them from the card (tests, and
    library users who describe many films with one model); `models` keeps what this call
    loads for the next one (describe_many). `on_description` sees each slot's result as it
    is written. Every input is checked before anything is loaded or written."""
    video = Path(video)
    if models is not None:
        model = model if model is not None else models.model
        encode_text = encode_text if encode_text is not None else models.encode_text
    formats = check_options(opts)
    if opts.setting == "oracle" and not opts.reference:
        raise LocomadError("--setting oracle needs --reference (the reference descriptions)")
    card = model.card if model is not None else load_card(opts.model, opts.overrides)
    if model is None:
        check_weights_exist(opts, card)
    out_dir = Path(opts.output_dir) if opts.output_dir else video.parent
    subtitles = read_cues(opts.subs, opts.subs_encoding) if opts.subs else []
    cast = read_cast(opts.cast) if opts.cast else []
    refs = [c for c in read_timed(opts.reference) if c.text] if opts.reference else []
    if opts.setting == "oracle" and not refs:
        raise LocomadError(f"{opts.reference}: no reference description with text")
    refs.sort(key=lambda c: (c.start, c.end))

    features = meta = None
    if opts.features:
        from locomad_cli.features.extract import load_features

        features, meta = load_features(opts.features)
        _check_features(Path(opts.features), meta, card, features)
        _check_same_film(Path(opts.features), meta, video)
    elif not video.is_file():
        raise LocomadError(f"{video}: no such video file")
    duration = _film_duration(video, meta, features)
    if opts.ad_times:  # given slots are checked before anything is written
        slots_from_times(opts.ad_times, duration)

    with _no_trace_on_bad_input(out_dir), torch_threads(opts.threads, False, opts.device):
        slots, slot_plan = plan_slots(opts, subtitles, duration, video, out_dir)
        _warn_mismatches(opts, subtitles, slots, duration)
        film = Film(
            video.stem, slots, subtitles, refs, features, float((meta or {}).get("fps") or card.fps)
        )
        film.names = list(dict.fromkeys([*card.llm.names, *cast]))
        progress_path = out_dir / f"{film.name}.ad.progress.jsonl"
        identity = _identity(video, card, opts, slots)
        done: list[dict[str, Any]] = []
        if opts.resume and progress_path.is_file():
            done = _read_progress(progress_path, identity)
        elif progress_path.is_file():
            raise LocomadError(
                f"{progress_path} holds an unfinished run: pass --resume to continue it, "
                "or delete it"
            )
        device = resolve_device(opts.device)
        if model is None:
            with _loading(models):
                model = _load_model(opts, card, device)
            if models is not None:
                models.model = model
        if film.features is None:
            film.features, meta = _features_for(video, card, out_dir, device, opts, models)
            film.fps = float(meta.get("fps") or card.fps)
        _warn_unfamiliar(card, video, duration)
        if encode_text is None:
            import torch

            from locomad_cli.features.clip import load_clip

            with _loading(models):
                clip = models.clip if models is not None else load_clip
                encode_text = clip(card, device, torch.float32).encode_text
            if models is not None:
                models.encode_text = encode_text
        track = {
            "film": film.name,
            "card": card.name,
            "setting": opts.setting,
            "tool": "locomad",
            "version": __version__,
            "weights": card.weights,
            "subtitles_file": str(opts.subs) if opts.subs else None,
            "cast_file": str(opts.cast) if opts.cast else None,
            "film_duration": round(duration, 3),
            "film_source": _film_source(video, meta),
            "slots": [],
        }
        if slot_plan is not None:
            track["slot_plan"] = slot_plan
        runner = _run_recurrent if opts.setting == "recurrent" else _run_batched
        rows = runner(model, film, TextFeatureCache(encode_text), opts, done)
        try:
            with (
                write_errors(progress_path),
                open(progress_path, "ab" if done else "wb", buffering=0) as pf,
                _progress(opts, len(slots)) as bar,
            ):
                if not done:
                    _append(pf, {"identity": identity})
                track["slots"].extend(done)
                bar(len(done))
                for row in rows:
                    _append(pf, row)
                    track["slots"].append(row)
                    bar(len(track["slots"]))
                    if on_description is not None:
                        on_description(row)
            track["rules"] = rules.summary(track["slots"])
            with write_errors(out_dir / f"{film.name}.ad.*"):
                paths = get_writer(formats, out_dir)(track, film.name)
        except BaseException as e:
            if not track["slots"] and not done:  # nothing to resume: leave no progress file
                progress_path.unlink(missing_ok=True)
            elif isinstance(e, LocomadError) and "cannot write" in str(e):
                raise LocomadError(
                    f"{e}; {len(track['slots'])} of {len(slots)} descriptions are kept in "
                    f"{progress_path}: free some space and run the same command with --resume"
                ) from None
            raise
        progress_path.unlink()
    return track, paths


def _warn_unfamiliar(card: ModelCard, video: Path, duration: float) -> None:
    """One warning line when the film looks unlike the model's training films (familiar.py;
    only models that ship their training films' statistics, like the demo's)."""
    from locomad_cli.features import familiar

    message = familiar.unfamiliar(video, duration, familiar.load(card.weights_path()), card.name)
    if message:
        log.warning("%s", message)


def _warn_mismatches(
    opts: DescribeOptions, subtitles: list[Cue], slots: list[Slot], duration: float
) -> None:
    """One warning line each for inputs that look like they belong to another film or are
    the wrong file: they are not errors (a film may be cut), but they are usually mistakes."""
    from locomad_cli.tracks.writers import format_timestamp

    if subtitles:
        last = max(c.end for c in subtitles)
        if last > duration + max(60.0, 0.1 * duration):
            log.warning(
                "%s: subtitles run to %s, far past the film's end (%s): they may belong to "
                "another film",
                opts.subs,
                format_timestamp(last),
                format_timestamp(duration),
            )
    if opts.ad_times and opts.subs:
        same_file = Path(opts.ad_times).resolve() == Path(opts.subs).resolve()
        spoken = {(round(c.start, 3), round(c.end, 3)) for c in subtitles}
        given = {(round(s.start, 3), round(s.end, 3)) for s in slots}
        if same_file or (spoken and given and given <= spoken):
            log.warning(
                "--ad-times %s holds the same times as the subtitles %s: the descriptions "
                "would be spoken over the dialogue (the wrong file?)",
                opts.ad_times,
                opts.subs,
            )


@contextlib.contextmanager
def _no_trace_on_bad_input(out_dir: Path):
    """Bad input found late (weights, model, features) leaves no output folder behind."""
    created = not out_dir.exists()
    check_writable_dir(out_dir)
    try:
        yield
    except LocomadError:
        if created:
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only when empty
        raise


def _features_for(
    video: Path, card: ModelCard, out_dir: Path, device: str, opts, models: Models | None
):
    """The film's cached features (beside the video or in the output folder), extracted
    through `extract-features` when there are none yet (with the CLIP `models` keeps)."""
    from locomad_cli.features.clip import load_clip
    from locomad_cli.features.extract import extract_features, load_features, output_path

    beside = output_path(video)
    target_dir = None if beside.is_file() else out_dir
    results = extract_features(
        [video],
        card,
        out_dir=target_dir,
        device=device,
        progress=opts.progress,
        shared=False,
        load_encoder=models.clip if models is not None else load_clip,
        threads=opts.threads,
    )
    features, meta = load_features(results[0].output)
    _check_features(results[0].output, meta, card, features)
    return features, meta


def _film_source(video: Path, meta: dict[str, Any] | None) -> dict[str, str] | None:
    """Size and first-MiB hash of the film (or of the one the features were made from), so
    that `locomad voice` can refuse a track written for another film."""
    keys = ("source_name", "source_size", "source_sha256_1mib")
    if video.is_file():
        from locomad_cli.features.video import source_fingerprint

        fp = source_fingerprint(video)
        return {k: fp[k] for k in keys}
    if meta and meta.get("source_sha256_1mib"):
        return {k: str(meta[k]) for k in keys if meta.get(k) is not None}
    return None


def _row(slot: Slot, record: ClipRecord, gen) -> dict[str, Any]:
    scores = list(gen.scores) + [None] * (len(gen.selected) - len(gen.scores))
    nbest = getattr(gen, "candidates", None) or [(gen.text, None)]
    return {
        "index": slot.index,
        "start": slot.start,
        "end": slot.end,
        "text": gen.text.strip(),
        "selected": [
            {
                "text": record.context[j].text,
                "subtitle": record.context[j].subtitle,
                "start": record.context[j].start,
                "end": record.context[j].end,
                "score": None if s is None else float(s),
            }
            for j, s in zip(gen.selected, scores, strict=True)
        ],
        "subtitles": record.subtitle,
        "source": slot.source,
        **({"shots": [list(b) for b in slot.shots]} if slot.shots else {}),
        **({"why": slot.why} if slot.why is not None else {}),
        "candidates": [
            {"text": t.strip(), "score": None if sc is None else round(float(sc), 5)}
            for t, sc in nbest
        ],
    }


def _generate(
    model,
    records: list[ClipRecord],
    setting: str,
    names: list[str],
    avoid: list[list[str]] | None = None,
):
    from locomad_cli.data.records import collate

    card = model.card
    batch = collate(records, card.pme.max_frames, card.dsm.proposal_len)
    local = "local" if setting == "local" else "context"
    budgets = [(r.end - r.start) * card.llm.words_per_minute / 60 for r in records]
    return model.generate(batch, setting=local, avoid=avoid, names=names, budgets=budgets)


def _run_recurrent(model, film: Film, cache: TextFeatureCache, opts: DescribeOptions, done):
    """One slot at a time: each description joins the proposal of the next ones, and may
    not repeat one of the last llm.avoid_repeats word for word (a model fed its own output
    can lock into copying it)."""
    from locomad_cli.data.records import ContextItem

    p, n = model.card.dsm.proposal_len, model.card.llm.avoid_repeats
    history = [ContextItem(r["text"], r.get("subtitles", ""), r["start"], r["end"]) for r in done]
    for slot in film.slots[len(done) :]:
        record = film.record(slot, history[-p:] if p > 0 else [], cache)
        avoid = [[h.text for h in history[-n:]]] if n > 0 else None
        row = _row(slot, record, _generate(model, [record], "recurrent", film.names, avoid)[0])
        rules.apply(row, [h.text for h in history[-n:]] if n > 0 else [], film.names)
        history.append(ContextItem(row["text"], row["subtitles"], slot.start, slot.end))
        yield row


def _run_batched(model, film: Film, cache: TextFeatureCache, opts: DescribeOptions, done):
    """Oracle and local: slots do not depend on each other, so they go in batches."""
    from locomad_cli.data.records import ContextItem

    p = model.card.dsm.proposal_len
    todo = film.slots[len(done) :]
    for i in range(0, len(todo), opts.batch_size):
        chunk = todo[i : i + opts.batch_size]
        records = []
        for slot in chunk:
            context = []
            if opts.setting == "oracle":
                context = [
                    ContextItem(r.text, film.dialogue(r), r.start, r.end)
                    for r in oracle_context(film.references, slot, p)
                ]
            records.append(film.record(slot, context, cache))
        for slot, record, gen in zip(
            chunk, records, _generate(model, records, opts.setting, film.names), strict=True
        ):
            yield rules.apply(_row(slot, record, gen), [], film.names)


def _same_terminal() -> bool:
    """Whether stdout and stderr are one terminal (then results printed on stdout must pass
    through the progress bar's console, or the bar would overwrite them)."""
    try:
        return sys.stdout.isatty() and os.path.samestat(os.fstat(1), os.fstat(2))
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _progress(opts: DescribeOptions, total: int):
    """A rich progress bar (slots, slots/s, ETA) on stderr, only when stderr is a terminal.
    Descriptions are results, printed on stdout by the caller: when stdout is the same
    terminal, rich shows those lines above the bar; when it is a pipe or a file they go
    there untouched."""
    from rich.console import Console

    console = Console(stderr=True)
    if not opts.progress or not console.is_terminal:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    columns = [
        TextColumn("describing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeRemainingColumn(),
    ]
    with Progress(
        *columns, console=console, transient=False, redirect_stdout=_same_terminal()
    ) as progress:
        task = progress.add_task("slots", total=total, rate="")
        t0, n0 = time.monotonic(), None

        def update(n: int) -> None:
            nonlocal n0
            if n0 is None:
                n0 = n
            rate = (n - n0) / max(time.monotonic() - t0, 1e-9)
            progress.update(task, completed=n, rate=f"{rate:.2f} slots/s")

        yield update
