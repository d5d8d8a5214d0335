"""`locomad describe`: a film (+ subtitles) in, an audio-description track out.

The loop of the paper's recurrent setting: slots in film order; slot i is asked of the card's
describer (describer.py: the trained LoCo-MAD model, or a vision-language model, vlm.py) with
the context it picks from the descriptions so far. For LoCo-MAD the context proposal holds the
previous `proposal_len` *generated* descriptions with their subtitles, the DSM picks top-k of
them, the LLM writes description i, and it joins the proposal. `oracle`
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
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locomad_cli import __version__
from locomad_cli.card import ModelCard, load_card
from locomad_cli.describe.context import slot_frames
from locomad_cli.describe.describer import (
    Answer,
    Ask,
    Describer,
    LocoMadDescriber,
    about,
    budget_words,
    choose,
    uses_name,
)
from locomad_cli.lock import lock_path, output_lock
from locomad_cli.progress import progress_bar
from locomad_cli.slots.plan import (
    Slot,
    check_slot_choices,
    check_slot_sizes,
    plan_film,
    slots_from_times,
)
from locomad_cli.threads import torch_threads
from locomad_cli.tracks import rules
from locomad_cli.tracks.readers import Cue, read_cues, read_text, read_timed, slot_dialogue
from locomad_cli.tracks.writers import get_writer, parse_formats
from locomad_cli.utils import (
    LocomadError,
    atomic_open,
    check_writable_dir,
    path_error_line,
    resolve_device,
    write_errors,
)

if TYPE_CHECKING:
    import torch

    from locomad_cli.data.records import ClipRecord

# torch (and the records that need it) are imported where they are used: every check of the
# user's input runs first, so a bad file is refused in a fraction of a second, not after the
# seconds torch takes to import.

log = logging.getLogger(__name__)
SETTINGS = ("recurrent", "oracle", "local")
MAX_CAST = 2000
"""Names a cast file may hold: far more than any film's credits, and few enough that the
decoder's per-name rules stay quick."""
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
    "the OPT cards: describe without training with a vision-language model (--model endpoint "
    "or qwen2.5-vl-3b; README, 'Describing your own film'), or train them and pass "
    "--weights RUN/model, or try the shipped demo (--model demo)"
)


def check_weights_exist(opts: DescribeOptions, card: ModelCard) -> None:
    """Fail at once, before any work, when the card's trained weights are nowhere: the most
    likely first error of a new user, so it says what to do."""
    from locomad_cli.utils import hub_reachable

    if card.describer.kind == "vlm":
        from locomad_cli.describe.vlm import check_vlm

        check_vlm(card)
        return
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
        # who describes, but not where the server is: a resumed run may reach it elsewhere
        "describer": {k: v for k, v in about(card).items() if k != "url"},
        "slots": [[s.start, s.end] for s in slots],
    }


def read_cast(path: str) -> list[str]:
    """A cast file: one character name per line (as the credits spell it); blank lines and
    lines starting with # are skipped. A file that names nobody is refused: the rule it feeds
    would then do nothing, silently."""
    names: dict[str, None] = {}  # ordered, and a name seen again costs nothing
    for line in read_text(path).splitlines():
        name = line.strip()
        if name and not name.startswith("#"):
            names[name] = None
    if not names:
        raise LocomadError(f"{path}: names no character (one name per line)")
    if len(names) > MAX_CAST:
        raise LocomadError(f"{path}: {len(names)} names; a film's cast is at most {MAX_CAST}")
    return list(names)


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
    video: Path | None = None
    """The film itself, for describers that look at its frames."""

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

    def ask(self, slot: Slot, context: list[Any], avoid: list[str], wpm: float) -> Ask:
        """A slot's Ask: its dialogue, the context, the cast names said so far (in the
        dialogue or a context item) and its budget in words at `wpm`."""
        dialogue = self.dialogue(slot)
        said = " ".join([dialogue, *(f"{c.text} {getattr(c, 'subtitle', '')}" for c in context)])
        heard = [n for n in self.names if uses_name(said, [n])]
        unheard = [n for n in self.names if n not in heard]
        return Ask(slot, dialogue, context, heard, unheard, budget_words(slot, wpm), avoid)

    def record(self, slot: Slot, context: list[Any], cache: TextFeatureCache) -> ClipRecord:
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
    vlm: dict[str, Any] = field(default_factory=dict)
    """Vision-language backends by card (describe/vlm.py), started once."""
    clips: dict[tuple[str, str], Any] = field(default_factory=dict)
    """CLIP encoders by (device, dtype): the text encoder, and the image encoder of films
    whose features are extracted on the way (on the CPU both are the same one)."""
    machine: threading.Lock = field(default_factory=threading.Lock)
    """Held while a film's inputs are read and prepared (speech, shots, features, loading):
    with an endpoint's films described at once (describe_films), that work takes turns and
    only the asking of the server overlaps."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set when films described at once are interrupted (Ctrl-C): each stops after the slot
    it is asking, its progress kept for --resume."""

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
    check_slot_sizes(opts.min_gap, opts.margin, opts.max_len, opts.cut_margin)
    check_slot_choices(opts.vad, opts.shots)
    if opts.device not in ("auto", "cpu"):
        resolve_device(opts.device)  # a device torch cannot use, before any work
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

    What the describer needs is taken from `models` (loaded there by the first film that
    needs it, then reused: describe_many); `model` (a LoCoMAD) and `encode_text` are put into
    it first (tests, and library users who already hold them). `on_description` sees each
    slot's result as it is written. Every input is checked before anything is loaded or
    written."""
    video = Path(video)
    models = models if models is not None else Models()
    models.model = model if model is not None else models.model
    models.encode_text = encode_text if encode_text is not None else models.encode_text
    with models.machine:
        inputs = _read_inputs(video, opts, models)
    with (
        _no_trace_on_bad_input(inputs.out_dir),
        output_lock(lock_path(inputs.out_dir, video.stem)),  # one writer per film's outputs
        torch_threads(opts.threads, False, opts.device),
    ):
        with models.machine:
            film, slot_plan = _film(video, opts, inputs)
            run = _Run(
                inputs.out_dir / f"{film.name}.ad.progress.jsonl",
                _identity(video, inputs.card, opts, film.slots),
            )
            run.done = _done_so_far(run, opts)
            describer = _describer(video, film, inputs, opts, models)
            track = _track_head(video, film, inputs, opts, slot_plan)
        rows = describe_slots(describer, film, inputs.card, opts.setting, run.done)
        rows = _until_stopped(rows, models.stop)
        paths = _write_track(track, rows, run, opts, inputs, on_description)
    return track, paths


def _until_stopped(rows: Iterator[dict[str, Any]], stop: threading.Event) -> Iterator[dict]:
    """The rows, until `stop` is set; then KeyboardInterrupt, as Ctrl-C in this thread."""
    for row in rows:
        yield row
        if stop.is_set():
            raise KeyboardInterrupt


@dataclass
class _Inputs:
    """One film's inputs, checked before anything is loaded or written."""

    card: ModelCard
    formats: str
    out_dir: Path
    subtitles: list[Cue]
    cast: list[str]
    refs: list[Cue]
    duration: float
    features: torch.Tensor | None = None
    meta: dict[str, Any] | None = None


def _read_inputs(video: Path, opts: DescribeOptions, models: Models) -> _Inputs:
    formats = check_options(opts)
    if opts.setting == "oracle" and not opts.reference:
        raise LocomadError("--setting oracle needs --reference (the reference descriptions)")
    given = models.model is not None
    card = models.model.card if given else load_card(opts.model, opts.overrides)
    if not given:
        check_weights_exist(opts, card)
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
    out_dir = Path(opts.output_dir) if opts.output_dir else video.parent
    return _Inputs(card, formats, out_dir, subtitles, cast, refs, duration, features, meta)


def _film(video: Path, opts: DescribeOptions, inputs: _Inputs) -> tuple[Film, dict | None]:
    """The film's slots (planned or given) and what the loop needs of it."""
    slots, slot_plan = plan_slots(opts, inputs.subtitles, inputs.duration, video, inputs.out_dir)
    _warn_mismatches(opts, inputs.subtitles, slots, inputs.duration)
    fps = float((inputs.meta or {}).get("fps") or inputs.card.fps)
    film = Film(video.stem, slots, inputs.subtitles, inputs.refs, inputs.features, fps)
    film.names = list(dict.fromkeys([*inputs.card.llm.names, *inputs.cast]))
    film.video = video
    return film, slot_plan


@dataclass
class _Run:
    """The progress file of one film's run and the slots it already holds."""

    path: Path
    identity: dict[str, Any]
    done: list[dict[str, Any]] = field(default_factory=list)


def _done_so_far(run: _Run, opts: DescribeOptions) -> list[dict[str, Any]]:
    if opts.resume and run.path.is_file():
        return _read_progress(run.path, run.identity)
    if run.path.is_file():
        raise LocomadError(
            f"{run.path} holds an unfinished run: pass --resume to continue it, or delete it"
        )
    return []


def _needs_clip(card: ModelCard) -> bool:
    """Whether the describer needs the film's CLIP features and the CLIP text encoder."""
    return card.describer.kind == "locomad" or card.context.select == "clip"


def _describer(
    video: Path, film: Film, inputs: _Inputs, opts: DescribeOptions, models: Models
) -> Describer:
    """The card's describer, with what it needs loaded (into `models`, for the next film)."""
    card = inputs.card
    device = resolve_device(opts.device)
    if card.describer.kind == "locomad" and models.model is None:
        with _loading(models):
            models.model = _load_model(opts, card, device)
    if _needs_clip(card) and film.features is None:
        out = inputs.out_dir
        film.features, inputs.meta = _features_for(video, card, out, device, opts, models)
        film.fps = float(inputs.meta.get("fps") or card.fps)
    if _needs_clip(card) and models.encode_text is None:
        import torch

        with _loading(models):
            models.encode_text = models.clip(card, device, torch.float32).encode_text
    cache = TextFeatureCache(models.encode_text) if models.encode_text is not None else None
    if card.describer.kind == "locomad":
        _warn_unfamiliar(card, video, inputs.duration)
        return LocoMadDescriber(models.model, cache, opts.setting, opts.batch_size)
    from locomad_cli.describe.vlm import vlm_describer

    with _loading(models):
        return vlm_describer(card, film, cache, device, models.vlm, opts.setting)


def _track_head(
    video: Path, film: Film, inputs: _Inputs, opts: DescribeOptions, slot_plan: dict | None
) -> dict[str, Any]:
    card = inputs.card
    track = {
        "film": film.name,
        "card": card.name,
        "setting": opts.setting,
        "tool": "locomad",
        "version": __version__,
        "weights": card.weights,
        "describer": about(card),
        "subtitles_file": str(opts.subs) if opts.subs else None,
        "cast_file": str(opts.cast) if opts.cast else None,
        "film_duration": round(inputs.duration, 3),
        "film_source": _film_source(video, inputs.meta),
        "slots": [],
    }
    if slot_plan is not None:
        track["slot_plan"] = slot_plan
    return track


def _write_track(
    track: dict[str, Any],
    rows: Iterator[dict[str, Any]],
    run: _Run,
    opts: DescribeOptions,
    inputs: _Inputs,
    on_description: Callable[[dict[str, Any]], None] | None,
) -> list[Path]:
    """Each slot's row appended to the progress file as it comes, then the tracks written
    atomically and the progress file removed."""
    total = len(run.identity["slots"])
    try:
        with (
            write_errors(run.path),
            open(run.path, "ab" if run.done else "wb", buffering=0) as pf,
            progress_bar("describing", total, opts.progress, "slots") as bar,
        ):
            if not run.done:
                _append(pf, {"identity": run.identity})
            track["slots"].extend(run.done)
            bar(len(run.done))
            for row in rows:
                _append(pf, row)
                track["slots"].append(row)
                bar(len(track["slots"]))
                if on_description is not None:
                    on_description(row)
        track["rules"] = rules.summary(track["slots"])
        with write_errors(inputs.out_dir / f"{track['film']}.ad.*"):
            paths = get_writer(inputs.formats, inputs.out_dir)(track, track["film"])
    except BaseException as e:
        if not track["slots"] and not run.done:  # nothing to resume: leave no progress file
            run.path.unlink(missing_ok=True)
        elif isinstance(e, LocomadError) and "cannot write" in str(e):
            raise LocomadError(
                f"{e}; {len(track['slots'])} of {total} descriptions are kept in "
                f"{run.path}: free some space and run the same command with --resume"
            ) from None
        elif isinstance(e, OSError) and path_error_line(e):  # a folder where a track goes
            raise LocomadError(
                f"{path_error_line(e)}; {len(track['slots'])} of {total} descriptions "
                f"are kept in {run.path}: then run the same command with --resume"
            ) from None
        raise
    run.path.unlink()
    return paths


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


def describe_slots(
    describer: Describer, film: Film, card: ModelCard, setting: str, done: list[dict[str, Any]]
) -> Iterator[dict[str, Any]]:
    """The loop: the film's slots after the `done` ones, in film order, each asked of the
    describer with the context it picks from the descriptions so far (recurrent: the
    generated ones; oracle: the references before the slot; local: none), and each row
    yielded as it is chosen. Recurrent asks one slot at a time (slot i needs description
    i-1) and a description may not repeat one of the last llm.avoid_repeats (a model fed its
    own output can lock into copying it); the other settings ask `describer.batch` at once."""
    history = list(done)
    n = card.llm.avoid_repeats if setting == "recurrent" else 0
    wpm, budgeted = card.describer.words_per_minute, card.describer.kind == "vlm"
    todo = film.slots[len(done) :]
    step = 1 if setting == "recurrent" else max(1, describer.batch)
    for i in range(0, len(todo), step):
        asks = []
        for slot in todo[i : i + step]:
            earlier = _earlier(film, history, slot, setting)
            context = [] if setting == "local" else describer.context(film, earlier, slot)
            avoid = [r["text"] for r in history if r["text"]][-n:] if n > 0 else []
            asks.append(film.ask(slot, context, avoid, wpm))
        for ask, answer in zip(asks, describer.ask(film, asks), strict=True):
            row = _row(ask, answer, budgeted)
            if row["text"]:  # the QC rules, for every describer (an empty slot says why)
                rules.apply(row, ask.avoid, film.names)
            history.append(row)
            yield row


def _earlier(
    film: Film, history: list[dict[str, Any]], slot: Slot, setting: str
) -> list[dict[str, Any]]:
    """The descriptions a slot's context is chosen from, oldest first."""
    if setting == "recurrent":
        return history
    if setting == "local":
        return []
    return [
        {"text": r.text, "subtitles": film.dialogue(r), "start": r.start, "end": r.end}
        for r in film.references
        if r.start < slot.start
    ]


def _row(ask: Ask, answer: Answer, budgeted: bool) -> dict[str, Any]:
    """A slot's row of the track: the description `choose` keeps, and why it is empty."""
    text, notes = choose(answer, ask, budget=budgeted)
    slot = ask.slot
    return {
        "index": slot.index,
        "start": slot.start,
        "end": slot.end,
        "text": text,
        "selected": answer.selected,
        "subtitles": ask.dialogue,
        "source": slot.source,
        **({"shots": [list(b) for b in slot.shots]} if slot.shots else {}),
        **({"why": slot.why} if slot.why is not None else {}),
        "candidates": [{"text": t, "score": sc} for t, sc in answer.candidates],
        **notes,
    }
