"""`locomad describe` over several films: one model start-up for all of them.

With several films (or a folder), each film's own files are found beside it by name, as in
the folder-of-films layout: FILM.srt or FILM.vtt (subtitles), FILM.ad-times.srt/.vtt/.csv/
.json (AD times; with `--setting oracle` also the reference descriptions, as in the paper's
data, where the reference AD gives both), FILM.cast.txt (its character names) and
FILM.features.safetensors (features; extracted
when missing, as for one film). A flag naming one film's file is refused with several films.
FILM.ad.srt is not read: it is what describe writes.

With `--resume`, a film already described (its tracks written by the same card, weights,
setting and cast file, no progress file left) is skipped, an interrupted one continues after
its last slot and the rest are described: rerunning the same command after a crash redoes
nothing that was done.

With an OpenAI-compatible server (card `endpoint`), up to endpoint.concurrency films are
described at once: a film's slots are asked in order (each one's context is the one before),
so only other films keep a server busy; each film's preparation (speech, shots) and voicing
still take turns, and the films' progress bars are off (each film's lines say when it ends).

A film whose input is bad is reported in one line and the others go on; the caller exits
non-zero at the end. What every film would fail on alike (an option, the model card, its
weights, loading the model) stops the run at once. Under `accelerate launch` or `torchrun`
each process describes its share of the films (films.share).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locomad_cli.card import ModelCard, load_card
from locomad_cli.describe.film import (
    DescribeOptions,
    Models,
    check_options,
    check_weights_exist,
    describe,
)
from locomad_cli.films import beside, expand_films, rank_and_world, share
from locomad_cli.tracks.writers import parse_formats
from locomad_cli.utils import LocomadError

SUBTITLES = (".srt", ".vtt")
AD_TIMES = (".ad-times.srt", ".ad-times.vtt", ".ad-times.csv", ".ad-times.json")
PER_FILM_FLAGS = {
    "subs": "--subs",
    "ad_times": "--ad-times",
    "reference": "--reference",
    "features": "--features",
    "cast": "--cast",
}
CAST = (".cast.txt",)
# what runs on each film's new track (the CLI's --voice): (film, output folder, track) ->
# (a summary line, the paths it wrote)
Then = Callable[[Path, Path, dict[str, Any]], tuple[str, list[Path]]]


@dataclass
class FilmOutcome:
    """What became of one film: its files, or the one line saying why it has none."""

    video: Path
    track: dict[str, Any] | None = None
    paths: list[Path] = field(default_factory=list)
    voiced: str | None = None
    """`voice`'s summary line, when the film was voiced too."""
    error: str | None = None
    skipped: bool = False
    """Already described (`--resume`): its tracks were there and were left as they were."""


def several(videos: list[str | Path]) -> bool:
    """Whether the films' own files are found beside them: several films, or a folder."""
    return len(videos) > 1 or any(Path(v).is_dir() for v in videos)


def film_options(video: Path, opts: DescribeOptions) -> DescribeOptions:
    """The options of one film of several: its subtitles and AD times found beside it."""
    ad_times = beside(video, AD_TIMES)
    reference = None
    if opts.setting == "oracle":
        if ad_times is None:
            raise LocomadError(
                f"{video}: --setting oracle needs the film's reference AD beside it "
                f"({video.stem}{AD_TIMES[0]}, or .vtt, .csv, .json)"
            )
        reference = str(ad_times)
    subs = beside(video, SUBTITLES)
    cast = beside(video, CAST)
    return dataclasses.replace(
        opts,
        subs=str(subs) if subs else None,
        ad_times=str(ad_times) if ad_times else None,
        reference=reference,
        cast=str(cast) if cast else None,
    )


def _check_outputs(films: list[Path], opts: DescribeOptions) -> None:
    """Two films that would write the same track (same name, same output folder)."""
    seen: dict[tuple[str, str], Path] = {}
    for video in films:
        out = Path(opts.output_dir) if opts.output_dir else video.parent
        key = (str(out.resolve()), video.stem)
        if key in seen:
            raise LocomadError(
                f"{seen[key]} and {video} would both write {out / video.stem}.ad.*: "
                "rename one or describe them into different output folders"
            )
        seen[key] = video


def already_described(
    video: Path, opts: DescribeOptions, card: ModelCard
) -> tuple[dict[str, Any], list[Path]] | None:
    """Under `--resume`, the film's finished track and its files when there is one to keep:
    no progress file beside it (an interrupted run continues instead), every track `-f` asks
    for exists, and the JSON track (the one that says who wrote it, so json must be among the
    formats) is a whole track of this card, weights, setting and cast file. None: describe
    the film."""
    out = Path(opts.output_dir) if opts.output_dir else video.parent
    formats = parse_formats(opts.formats)
    paths = [out / f"{video.stem}.ad.{f}" for f in formats]
    if "json" not in formats or (out / f"{video.stem}.ad.progress.jsonl").exists():
        return None
    if not all(p.is_file() for p in paths):
        return None
    try:
        track = json.loads((out / f"{video.stem}.ad.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(track, dict) or not isinstance(track.get("slots"), list):
        return None
    same = [track.get(k) for k in ("card", "weights", "setting", "cast_file")]
    expected = [card.name, opts.weights or card.weights, opts.setting, opts.cast]
    return (track, paths) if same == expected else None


def _per_process_device(opts: DescribeOptions) -> DescribeOptions:
    """Under a launcher with GPUs, process k uses GPU LOCAL_RANK mod the GPUs there are."""
    _, world, local = rank_and_world()
    if world == 1 or opts.device not in ("auto", "cuda"):
        return opts
    import torch

    if not torch.cuda.is_available():
        return opts
    return dataclasses.replace(opts, device=f"cuda:{local % torch.cuda.device_count()}")


def _line(video: Path, e: LocomadError) -> str:
    message = str(e)
    return message if str(video) in message else f"{video}: {message}"


def describe_films(
    videos: list[str | Path],
    opts: DescribeOptions,
    on_description: Callable[[Path, dict[str, Any]], None] | None = None,
    on_film: Callable[[FilmOutcome], None] | None = None,
    then: Then | None = None,
    shared: bool = True,
) -> list[FilmOutcome]:
    """Describe every film (this process's share under a launcher, unless `shared=False`)
    with one model; returns one outcome per film, in order, and hands each to `on_film` as
    soon as it is done (after `then` on its track, if given). A film's bad input is its
    outcome's `error`; what would fail every film raises a LocomadError, before any work
    where it can be told then."""
    films = expand_films(videos)
    beside_films = several(videos)
    if beside_films:
        given = [flag for name, flag in PER_FILM_FLAGS.items() if getattr(opts, name)]
        if given:
            raise LocomadError(
                f"{' and '.join(given)} name{'s' if len(given) == 1 else ''} one film's file, "
                "but several films are given: each film's files are found beside it instead "
                "(FILM.srt, FILM.ad-times.srt, FILM.features.safetensors)"
            )
    check_options(opts)
    _check_outputs(films, opts)
    card = None
    if len(films) > 1 or opts.resume:
        card = load_card(opts.model, opts.overrides)
    if len(films) > 1:  # once for all (describe checks a film of its own)
        check_weights_exist(opts, card)
    mine = share(films) if shared else films
    opts = _per_process_device(opts) if mine else opts
    models = Models()
    at_once = films_at_once(card, len(mine))
    if at_once > 1:  # several progress bars would fight over one terminal line
        opts = dataclasses.replace(opts, progress=False)

    def one(video: Path) -> FilmOutcome:
        return _one_film(video, opts, models, card, beside_films, on_description, then)

    if at_once == 1:
        outcomes = []
        for video in mine:
            outcomes.append(one(video))
            if on_film is not None:
                on_film(outcomes[-1])
        return outcomes
    return _at_once(mine, one, at_once, on_film, opts, models)


def films_at_once(card: ModelCard | None, films: int) -> int:
    """How many films are described at the same time: with an OpenAI-compatible server,
    up to endpoint.concurrency (a film's slots are asked in order, so only other films can
    keep a server's batch full); one at a time for every describer that computes here."""
    if card is None or films < 2:
        return 1
    if card.describer.kind != "vlm" or card.vlm.backend != "endpoint":
        return 1
    return min(films, card.endpoint.concurrency)


def _at_once(
    mine: list[Path],
    one: Callable[[Path], FilmOutcome],
    workers: int,
    on_film: Callable[[FilmOutcome], None] | None,
    opts: DescribeOptions,
    models: Models,
) -> list[FilmOutcome]:
    """`one` over the films in `workers` threads; `on_film` in this thread as each ends.
    What would fail every film, or Ctrl-C, stops the rest: those not started are not, the
    others after the slot they are asking (models.stop)."""
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from locomad_cli.threads import torch_threads

    # one torch setting for the run: every film's own torch_threads then finds it and
    # puts it back, whatever order the films end in
    with (
        torch_threads(opts.threads, False, opts.device),
        ThreadPoolExecutor(max_workers=workers, thread_name_prefix="film") as pool,
    ):
        futures = [pool.submit(one, video) for video in mine]
        try:
            for done in as_completed(futures):
                outcome = done.result()
                if on_film is not None:
                    on_film(outcome)
        except BaseException:
            models.stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return [f.result() for f in futures]


def _one_film(
    video: Path,
    opts: DescribeOptions,
    models: Models,
    card: ModelCard | None,
    beside_films: bool,
    on_description: Callable[[Path, dict[str, Any]], None] | None,
    then: Then | None,
) -> FilmOutcome:
    """One film of describe_films: described (or kept, under --resume), then `then`; its
    bad input is the outcome's error, unless it is the only film or would fail every film."""
    outcome = FilmOutcome(video)
    try:
        film_opts = film_options(video, opts) if beside_films else opts
        hook = None if on_description is None else _bind(on_description, video)
        kept = already_described(video, film_opts, card) if opts.resume else None
        if kept is not None:
            outcome.skipped = True
            outcome.track, outcome.paths = kept
        else:
            outcome.track, outcome.paths = describe(
                video, film_opts, on_description=hook, models=models
            )
        if then is not None:
            out = Path(film_opts.output_dir) if film_opts.output_dir else video.parent
            with models.machine:  # voicing is the machine's work, one film at a time
                outcome.voiced, more = then(video, out, outcome.track)
            outcome.paths += [p for p in more if p not in outcome.paths]
    except LocomadError as e:
        if models.failed or not beside_films:  # one film: its error is the run's
            raise
        outcome.error = _line(video, e)
    return outcome


def _bind(
    on_description: Callable[[Path, dict[str, Any]], None], video: Path
) -> Callable[[dict[str, Any]], None]:
    return lambda row: on_description(video, row)
