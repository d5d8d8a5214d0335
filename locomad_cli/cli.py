"""The `locomad` command: a thin Typer layer over the pipeline's functions.

Every command turns a LocomadError (bad input, missing weights, offline hub) into one line
on stderr and exit code 2; a full disk or a permission error while writing is one line and
exit 2 as well; anything else is a bug of ours: one line saying so, exit code 70, and the
traceback with `--debug` or LOCOMAD_DEBUG=1. Results go to stdout, progress and warnings to
stderr. Nothing here holds logic that tests cannot reach directly.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import traceback
import warnings
from pathlib import Path

import typer

from locomad_cli.utils import (
    DEBUG_ENV,
    EXIT_INTERNAL,
    EXIT_USER,
    LocomadError,
    os_error_line,
)

app = typer.Typer(
    name="locomad",
    help="Write audio-description tracks for films with the LoCo-MAD model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags show as flags, no boxes in pipes and logs
)

MODEL_HELP = "Model card: a shipped name (opt-2.7b, opt-1.3b, opt-350m, demo) or a YAML path."
SET_HELP = "Override a card field, e.g. --set llm.num_beams=1 (repeatable)."
# options that several commands share, the same way each time
MODEL_OPTION = typer.Option("opt-2.7b", "--model", "-m", help=MODEL_HELP)
SET_OPTION = typer.Option([], "--set", help=SET_HELP)
DEVICE_OPTION = typer.Option("auto", "--device", help="auto | cpu | cuda. Default: auto.")
THREADS_OPTION = typer.Option(
    None,
    "--threads",
    metavar="N",
    help="torch CPU threads. Default: the cores the load average leaves free, one fewer "
    "while a film is decoded (or $OMP_NUM_THREADS).",
)
"""One definition for every command that runs torch (locomad_cli/threads.py)."""


def _show_help(ctx: typer.Context, value: bool) -> None:
    if value and not ctx.resilient_parsing:
        typer.echo(ctx.get_help(), color=ctx.color)
        raise typer.Exit()


HELP_OPTION = typer.Option(
    False, "--help", is_eager=True, callback=_show_help, help="Show this message and exit."
)
"""A group's own --help. Typer's built-in one has no default, so on `locomad CMD --help` the
group's unset flag goes through pydantic's validation, and importing pydantic was half the
time of every help screen (benchmarks/startup.py)."""


def fail(message: str) -> None:
    """One clear line on stderr, exit code 2."""
    typer.echo(f"locomad: error: {message}", err=True)
    raise typer.Exit(EXIT_USER)


def _threads(value: str | None) -> int | None:
    """--threads as a number (None: the policy picks), or one line and exit 2."""
    from locomad_cli.threads import parse_threads

    try:
        return parse_threads(value)
    except LocomadError as e:
        fail(str(e))


class _WarningLine(logging.Handler):
    """locomad's own warnings as `locomad: warning: ...` on the stderr of the moment (so that
    test runners that swap sys.stderr see them too)."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(f"locomad: warning: {record.getMessage()}", err=True)


def _setup_logging() -> None:
    log = logging.getLogger("locomad_cli")
    if not any(isinstance(h, _WarningLine) for h in log.handlers):
        # records still propagate (test runners capture them at the root); with no handler
        # at the root, logging's last-resort printer stays silent because this one exists
        log.addHandler(_WarningLine(logging.WARNING))
    root = logging.getLogger()
    if not root.handlers:
        # a library's module-level logging.warning() would otherwise configure the root with
        # a printer of its own (logging.basicConfig), and every later warning of ours would
        # appear twice ("WARNING:locomad_cli...."): a handler at the root prevents that
        root.addHandler(logging.NullHandler())


def _version_callback(value: bool) -> None:
    if value:
        from locomad_cli import __version__

        typer.echo(f"locomad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(
        False,
        "--debug",
        help=f"Show the traceback of an internal error (or set {DEBUG_ENV}=1). Default: off.",
    ),
    _help: bool = HELP_OPTION,
) -> None:
    """locomad: audio description for films (LoCo-MAD)."""
    if debug:
        os.environ[DEBUG_ENV] = "1"
        warnings.resetwarnings()
    _setup_logging()


@app.command()
def doctor(
    model: str = MODEL_OPTION,
) -> None:
    """What this machine has for a model card: tools, CLIP/BERT/OPT weights in the local caches,
    trained LoCo-MAD weights, Java, CoreNLP, espeak-ng. Exit code 1 when the card cannot describe
    a film here (a row needed for `describe` is missing), 0 otherwise."""
    from locomad_cli.doctor import blocking, run_checks

    try:
        rows = run_checks(model)
    except LocomadError as e:
        fail(str(e))
    from rich.console import Console
    from rich.table import Table

    from locomad_cli import __version__

    table = Table(title=f"locomad {__version__} doctor, model card {model}")
    table.add_column("check")
    table.add_column("status")
    table.add_column("needed for")
    table.add_column("details", overflow="fold")
    for r in rows:
        status = "[green]ok[/]" if r.ok else "[yellow]missing[/]"
        table.add_row(r.name, status, r.needed_for, r.details)
    Console(soft_wrap=False).print(table)
    missing = blocking(rows)
    if missing:
        typer.echo(
            f"locomad: error: model card '{model}' cannot describe a film on this machine: "
            f"missing {', '.join(r.name for r in missing)}",
            err=True,
        )
        raise typer.Exit(1)


@app.command("extract-features")
def extract_features_cmd(
    videos: list[str] = typer.Argument(
        ..., help="Film files (any format ffmpeg reads) or folders of films."
    ),
    out_dir: str = typer.Option(
        None, "--out-dir", "-o", help="Output folder. Default: beside each video."
    ),
    model: str = MODEL_OPTION,
    overrides: list[str] = SET_OPTION,
    fps: float = typer.Option(None, "--fps", help="Frames per second. Default: the card's (5)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Frames per CLIP batch. Default: 64."),
    device: str = DEVICE_OPTION,
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto | fp32 | fp16 | bf16. Default: auto (bf16 on GPUs, fp32 CPU)."
    ),
    threads: str = THREADS_OPTION,
    h5: str = typer.Option(
        None, "--h5", help="Also add the films to this MAD-layout HDF5 (key = file stem)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo films whose features exist. Default: skip them."
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress bars, no summary line. Default: shown."
    ),
) -> None:
    """CLIP frame features at exact 1/fps timestamps into NAME.features.safetensors."""
    from locomad_cli.card import load_card

    n_threads = _threads(threads)
    try:
        card = load_card(model, overrides)  # before importing torch: a bad card fails fast
        from locomad_cli.features.extract import extract_features, summary_line
        from locomad_cli.films import expand_films

        results = extract_features(
            expand_films(videos),  # this process's share is taken inside
            card,
            out_dir=out_dir,
            fps=fps,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            threads=n_threads,
            h5=h5,
            overwrite=overwrite,
            progress=not quiet,
        )
    except LocomadError as e:
        fail(str(e))
    if not quiet:
        typer.echo(summary_line(results), err=True)


@app.command("convert-weights")
def convert_weights_cmd(
    src: str = typer.Argument(..., help="A PyTorch state dict (.pth or .bin)."),
    dst: str = typer.Argument(..., help="Output file; must end in .safetensors."),
) -> None:
    """Re-save a third-party .pth/.bin state dict as safetensors (read with weights_only=True)."""
    from locomad_cli.model.checkpoint import convert_weights

    try:
        out = convert_weights(src, dst)
    except LocomadError as e:
        fail(str(e))
    typer.echo(f"wrote {out}", err=True)


@app.command("train")
def train_cmd(
    stage: int = typer.Option(..., "--stage", help="1 = the PME (L_s1); 2 = DSM + LLM (L_s2)."),
    data: str = typer.Option(
        ..., "--data", help="folder:PATH, mad:ROOT, lsmdc:ROOT or a folder (auto-detected)."
    ),
    out: str = typer.Option(..., "--out", "-o", help="RUN_DIR for checkpoints and logs."),
    model: str = typer.Option(
        None, "--model", "-m", help=MODEL_HELP + " Default: the --init checkpoint's card."
    ),
    overrides: list[str] = SET_OPTION,
    init: str = typer.Option(
        None, "--init", help="Start from this run dir or model dir (stage 2: the stage-1 run)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue RUN_DIR from its last checkpoint. Default: off."
    ),
    val_data: str = typer.Option(
        None, "--val-data", help="Validation SPEC ('none' = skip). Default: --data's val split."
    ),
    epochs: int = typer.Option(None, "--epochs", help="Default: 10 (stage 1), 5 (stage 2)."),
    max_steps: int = typer.Option(
        None, "--max-steps", help="Optimizer steps in all. Default: epochs × steps per epoch."
    ),
    eval_every: int = typer.Option(
        None, "--eval-every", help="Validate + checkpoint every N steps. Default: each epoch."
    ),
    save_every: int = typer.Option(
        None, "--save-every", help="Checkpoint every N steps. Default: --eval-every."
    ),
    keep_last: int = typer.Option(2, "--keep-last", help="Checkpoints kept. Default: 2."),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Clips per process per micro-batch. Default: 64 / 32."
    ),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per step. Default: 1."),
    lr: float = typer.Option(1e-5, "--lr", help="Peak learning rate. Default: 1e-5."),
    warmup_steps: int = typer.Option(500, "--warmup-steps", help="Default: 500 (from 1e-8)."),
    weight_decay: float = typer.Option(0.05, "--weight-decay", help="Default: 0.05."),
    max_grad_norm: float = typer.Option(
        1.0, "--max-grad-norm", help="Gradient clipping, 0 = off. Default: 1.0."
    ),
    context_dropout: float = typer.Option(
        0.0,
        "--context-dropout",
        help="Stage 2: chance a clip's prompt leaves out its context items, so the LLM "
        "learns to read the frames too. Default: 0.",
    ),
    visual_contrast: float = typer.Option(
        0.0,
        "--visual-contrast",
        help="Stage 2: weight of a loss asking each description to be likelier under its own "
        "clip's visual prompt than under another clip's (docs/model.md). Default: 0.",
    ),
    rename_names: str = typer.Option(
        None,
        "--rename-names",
        help="A file of character names, one per line: each training clip's characters are "
        "renamed at random from it, so a name can only be learnt from the dialogue and "
        "earlier AD, not by memorising the films' casts (on the demo it stopped the "
        "memorising but the decoder did not learn to copy: docs/training.md). "
        "Default: names as they are.",
    ),
    seed: int = typer.Option(2023, "--seed", help="Default: 2023."),
    mixed_precision: str = typer.Option(
        "auto", "--mixed-precision", help="auto | no | fp16 | bf16. Default: auto (bf16 on GPU)."
    ),
    eval_batch_size: int = typer.Option(8, "--eval-batch-size", help="Default: 8."),
    val_max_clips: int = typer.Option(
        None, "--val-max-clips", help="Validate on the first N val clips. Default: all."
    ),
    num_workers: int = typer.Option(2, "--num-workers", help="Data loader workers. Default: 2."),
    threads: str = THREADS_OPTION,
    strict: bool = typer.Option(
        False, "--strict", help="Refuse malformed annotation rows. Default: skip and report them."
    ),
    cache_dir: str = typer.Option(
        None, "--cache-dir", help="CLIP text-feature cache folder. Default: beside the data."
    ),
    log_every: int = typer.Option(10, "--log-every", help="metrics.jsonl every N. Default: 10."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar. Default: shown."),
    tensorboard: bool = typer.Option(
        False, "--tensorboard", help="Also log to RUN_DIR/tensorboard. Default: off."
    ),
) -> None:
    """Train stage 1 or 2 (plain, one GPU, or under `accelerate launch` for DDP/FSDP)."""
    from locomad_cli.threads import torch_threads
    from locomad_cli.train.loop import TrainConfig, train

    n_threads = _threads(threads)

    cfg = TrainConfig(
        stage=stage,
        data=data,
        out=out,
        model=model,
        overrides=list(overrides),
        init=init,
        resume=resume,
        val_data=val_data,
        epochs=epochs,
        max_steps=max_steps,
        eval_every=eval_every,
        save_every=save_every,
        keep_last=keep_last,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        context_dropout=context_dropout,
        visual_contrast=visual_contrast,
        rename_names=rename_names,
        seed=seed,
        mixed_precision=mixed_precision,
        eval_batch_size=eval_batch_size,
        val_max_clips=val_max_clips,
        num_workers=num_workers,
        strict=strict,
        cache_dir=cache_dir,
        log_every=log_every,
        progress=not quiet,
        tensorboard=tensorboard,
    )
    try:
        with torch_threads(n_threads, decoding=False, device="auto"):
            result = train(cfg)
    except LocomadError as e:
        fail(str(e))
    if result.is_main:
        typer.echo(f"trained to step {result.step}: {result.run_dir / 'model'}", err=True)


@app.command("evaluate")
def evaluate_cmd(
    prediction: str = typer.Argument(
        ..., help="Our NAME.ad.json, any SRT/WebVTT AD track, or a folder of them (one per film)."
    ),
    reference: str = typer.Option(
        ...,
        "--reference",
        "-r",
        help="Reference AD (SRT, WebVTT, CSV or JSON with texts), or a folder of NAME.ad.*.",
    ),
    metrics: str = typer.Option(
        "all",
        "--metrics",
        help="Comma list of cider,bleu,rouge,meteor,spice,bertscore,recall. Default: all.",
    ),
    output: str = typer.Option(None, "--output", "-o", help="Write the JSON report here."),
    min_iou: float = typer.Option(
        0.5, "--min-iou", help="Time overlap needed to pair a prediction. Default: 0.5."
    ),
    bert_model: str = typer.Option(
        "bert-base-uncased", "--bert-model", help="BertScore model. Default: bert-base-uncased."
    ),
    bert_rescale: bool = typer.Option(
        False,
        "--bert-rescale",
        help="Rescale BertScore with bert-score's baseline (AutoAD-II). Default: off (paper).",
    ),
    recall_model: str = typer.Option(
        "roberta-large", "--recall-model", help="R@k/N BertScore model. Default: roberta-large."
    ),
    device: str = typer.Option("cpu", "--device", help="BertScore device. Default: cpu."),
    threads: str = THREADS_OPTION,
    corenlp: str = typer.Option(
        None,
        "--corenlp",
        help="Folder with Stanford CoreNLP 3.6.0's jars for SPICE. Default: $LOCOMAD_CORENLP, "
        "else pycocoevalcap's own download.",
    ),
    allow_missing: bool = typer.Option(
        False,
        "--allow-missing",
        help="Exit 0 even when a requested metric cannot be computed. Default: exit 1.",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="Nothing on stderr but errors. Default: off."
    ),
) -> None:
    """Score an AD track against references: CIDEr, BLEU, ROUGE-L, METEOR, SPICE, BertScore,
    R@5/16. Exit code 1 when a requested metric is unavailable (unless --allow-missing)."""
    from locomad_cli.evaluate.report import evaluate, missing_line, report_table, write_report

    n_threads = _threads(threads)
    try:
        report = evaluate(
            prediction,
            reference,
            metrics=metrics,
            min_iou=min_iou,
            bert_model=bert_model,
            bert_rescale=bert_rescale,
            recall_model=recall_model,
            device=device,
            threads=n_threads,
            corenlp=corenlp,
        )
        if output:
            write_report(report, output)
    except LocomadError as e:
        fail(str(e))
    from rich.console import Console

    Console().print(report_table(report))
    if not quiet and (report["unmatched_predictions"] or report["unmatched_references"]):
        typer.echo(
            f"unmatched: {len(report['unmatched_predictions'])} predictions, "
            f"{len(report['unmatched_references'])} references (listed in the JSON report)",
            err=True,
        )
    line = missing_line(report)
    if line and not allow_missing:
        typer.echo(f"locomad: error: {line}", err=True)
        raise typer.Exit(1)


@app.command("describe")
def describe_cmd(
    videos: list[str] = typer.Argument(
        ...,
        help="The film (any format ffmpeg reads), or several films or folders of films: "
        "then each film's subtitles and AD times are found beside it (FILM.srt, "
        "FILM.ad-times.srt) and the model loads once.",
    ),
    subs: str = typer.Option(
        None,
        "--subs",
        help="Subtitles (SRT/WebVTT, any encoding): the slots avoid them. One film only; with "
        "several, each film's NAME.srt/.vtt beside it is used.",
    ),
    subs_encoding: str = typer.Option(
        None, "--subs-encoding", help="Encoding of --subs, e.g. cp1250. Default: detected."
    ),
    ad_times: str = typer.Option(
        None,
        "--ad-times",
        help="AD slot times (SRT/WebVTT/CSV/JSON). Default: proposed between subtitles. One "
        "film only; with several, each film's NAME.ad-times.* beside it.",
    ),
    model: str = MODEL_OPTION,
    overrides: list[str] = SET_OPTION,
    weights: str = typer.Option(
        None, "--weights", help="Trained weights folder or HF repo id. Default: the card's."
    ),
    setting: str = typer.Option(
        "recurrent",
        "--setting",
        help="recurrent (earlier generated AD as context) | oracle (--reference as context) | "
        "local (none). Default: recurrent.",
    ),
    reference: str = typer.Option(
        None,
        "--reference",
        help="Reference AD (SRT/WebVTT/CSV/JSON) for --setting oracle. One film only; with "
        "several, each film's NAME.ad-times.*.",
    ),
    output_dir: str = typer.Option(
        None, "--output-dir", "-o", help="Output folder. Default: beside the video."
    ),
    formats: str = typer.Option(
        "srt,vtt,json",
        "--format",
        "-f",
        help="srt, vtt, json, dapt (comma list) or all (srt, vtt, json). Default: srt,vtt,json.",
    ),
    features: str = typer.Option(
        None,
        "--features",
        help="Precomputed NAME.features.safetensors (one film only). Default: the one beside "
        "the film, else extract (cached, reused).",
    ),
    device: str = DEVICE_OPTION,
    threads: str = THREADS_OPTION,
    cast: str = typer.Option(
        None,
        "--cast",
        help="The film's character names, one per line: a description names a character only "
        "once the film has said the name (with several films: FILM.cast.txt beside each). "
        "Default: the card's names, if any.",
    ),
    batch_size: int = typer.Option(
        8, "--batch-size", help="Slots per call for oracle/local (recurrent: 1). Default: 8."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue an interrupted run after its last slot; films already described by "
        "the same card and setting (their tracks written, json among them) are kept. "
        "Default: off.",
    ),
    min_gap: float = typer.Option(
        2.0, "--min-gap", help="Shortest gap between speech to describe (s). Default: 2.0."
    ),
    margin: float = typer.Option(
        0.3, "--margin", help="Silence kept around subtitles and speech (s). Default: 0.3."
    ),
    max_len: float = typer.Option(
        8.0, "--max-len", help="Longest slot; longer shots are split (s). Default: 8.0."
    ),
    vad: str = typer.Option(
        "auto",
        "--vad",
        help="Keep slots off the speech the soundtrack holds (silero-vad): auto (when the film "
        "has audio) | on | off. Default: auto.",
    ),
    shots: str = typer.Option(
        "on", "--shots", help="Cut slots at shot changes (PySceneDetect): on | off. Default: on."
    ),
    cut_margin: float = typer.Option(
        0.5, "--cut-margin", help="How far a slot may run across a cut (s). Default: 0.5."
    ),
    then_voice: bool = typer.Option(
        False,
        "--voice",
        help="Then voice, mix and deliver the track (locomad voice with its defaults, same "
        "output folder and -f). Default: off.",
    ),
    quiet: bool = typer.Option(
        False,
        "--quiet",
        "-q",
        help="Nothing on stderr but warnings and errors (the descriptions still go to stdout). "
        "Default: progress shown.",
    ),
) -> None:
    """Write an audio-description track (SRT, WebVTT, JSON) for a film or several. Each
    description is printed on stdout as it is made (one line: start --> end  text, after the
    film's name with several films); progress on stderr. Under `accelerate launch` each
    process describes its share of the films."""
    from locomad_cli.describe.film import DescribeOptions
    from locomad_cli.describe.many import describe_films, several

    opts = DescribeOptions(
        subs=subs,
        subs_encoding=subs_encoding,
        ad_times=ad_times,
        model=model,
        overrides=list(overrides),
        weights=weights,
        setting=setting,
        reference=reference,
        output_dir=output_dir,
        formats=formats,
        features=features,
        device=device,
        batch_size=batch_size,
        resume=resume,
        min_gap=min_gap,
        margin=margin,
        max_len=max_len,
        vad=vad,
        shots=shots,
        cut_margin=cut_margin,
        progress=not quiet,
        threads=_threads(threads),
        cast=cast,
    )
    many = several(videos)

    def described(video: Path, row: dict) -> None:
        _print_description(row, video.name if many else None)

    def done(outcome) -> None:
        if outcome.error is not None:
            typer.echo(f"locomad: error: {outcome.error}", err=True)
        if outcome.voiced is not None:
            summary = f"{outcome.video.name}  {outcome.voiced}" if many else outcome.voiced
            result_line(summary)
        if outcome.skipped and not quiet:
            names = ", ".join(p.name for p in outcome.paths)
            typer.echo(f"{outcome.video}: already described, kept {names} (--resume)", err=True)
        elif not quiet:
            for p in outcome.paths:
                typer.echo(f"wrote {p}", err=True)

    try:
        if then_voice:  # a missing espeak-ng is said before the model runs, not after
            from locomad_cli.voice.tts import make_engine

            make_engine()
            from locomad_cli.voice.fit import voice_described

            then = functools.partial(voice_described, formats=opts.formats, progress=opts.progress)
        outcomes = describe_films(videos, opts, described, done, then if then_voice else None)
    except LocomadError as e:
        fail(str(e))
    _end_of_films(outcomes)


def _end_of_films(outcomes: list) -> None:
    """Under a launcher, wait for the other processes (a failing one must not stop them);
    then exit 2 with one line when a film failed."""
    from locomad_cli.films import rank_and_world, wait_for_other_processes

    wait_for_other_processes()
    bad = [o for o in outcomes if o.error is not None]
    if bad:
        rank, world, _ = rank_and_world()
        who = f" (process {rank} of {world})" if world > 1 else ""
        names = ", ".join(o.video.name for o in bad)
        rest = "; the others are written" if len(bad) < len(outcomes) else ""
        fail(f"{len(bad)} of {len(outcomes)} films{who} failed: {names}{rest}")


def result_line(text: str) -> None:
    """One result line on stdout in one write, flushed. print() writes the text and the
    newline separately, and with PYTHONUNBUFFERED (set in many containers and CI images)
    those are two writes: under a launcher, two processes sharing stdout then glue one's line
    onto the other's (seen in CI: a description lost inside another film's line)."""
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _print_description(row: dict, film: str | None = None) -> None:
    """A result line on stdout, flushed at once (a pipe sees each description as it is made),
    after the film's name with several films. Plain print: rich would wrap long lines at 80
    columns when stdout is not a terminal."""
    from locomad_cli.tracks.writers import format_timestamp, one_line

    when = f"{format_timestamp(row['start'])} --> {format_timestamp(row['end'])}"
    result_line(f"{film + '  ' if film else ''}{when}  {one_line(row['text'])}")


@app.command("voice")
def voice_cmd(
    video: str = typer.Argument(..., help="The film the AD track was written for."),
    ad: str = typer.Option(
        None, "--ad", help="The AD track (FILM.ad.json from describe). Default: beside the film."
    ),
    output_dir: str = typer.Option(
        None, "--output-dir", "-o", help="Output folder. Default: the AD track's folder."
    ),
    tts: str = typer.Option(
        "espeak-ng", "--tts", help="Speech engine: espeak-ng | piper. Default: espeak-ng."
    ),
    voice_name: str = typer.Option(
        None,
        "--voice",
        help="espeak-ng voice (espeak-ng --voices) or piper voice file (.onnx). "
        "Default: the --language's espeak-ng voice.",
    ),
    rate: float = typer.Option(
        170.0, "--rate", help="Speaking rate in heard words per minute. Default: 170."
    ),
    max_rate: float = typer.Option(
        200.0, "--max-rate", help="Fastest rate a description is sped up to. Default: 200."
    ),
    overflow: str = typer.Option(
        None,
        "--overflow",
        help="A description that fits neither sped up nor by another candidate: extend | drop | "
        "keep. Default: extend with --extended, else drop (with a warning).",
    ),
    extended: bool = typer.Option(
        False,
        "--extended",
        help="Extended AD: hold the picture for what does not fit (the video is re-encoded). "
        "Default: off.",
    ),
    subs: str = typer.Option(
        None, "--subs", help="Dialogue to keep off. Default: the subtitles the track names."
    ),
    duck: float = typer.Option(
        -12.0, "--duck", help="Programme gain under the AD (dB). Default: -12."
    ),
    duck_ramp: float = typer.Option(
        0.2, "--duck-ramp", help="Fade into and out of the dip (s). Default: 0.2."
    ),
    loudness: float = typer.Option(
        -23.0, "--loudness", help="Integrated loudness of the mix (LUFS). Default: -23 (R128)."
    ),
    ad_level: float = typer.Option(
        0.0, "--ad-level", help="AD loudness relative to the programme (LU). Default: 0."
    ),
    language: str = typer.Option(
        "en", "--language", help="Language of the descriptions (track tags). Default: en."
    ),
    container: str = typer.Option(
        "mkv", "--container", help="The described film: mkv | mp4. Default: mkv."
    ),
    formats: str = typer.Option(
        "srt,vtt,json",
        "--format",
        "-f",
        help="Voiced text tracks: srt, vtt, json, dapt (comma list) or all. The JSON is always "
        "written. Default: srt,vtt,json.",
    ),
    quiet: bool = typer.Option(
        False, "--quiet", "-q", help="No progress bar or file list. Default: shown."
    ),
) -> None:
    """Voice an AD track: fit each description to its slot (measured), speak it, duck the film
    under it, and write FILM.ad.wav, FILM.ad-mix.wav, FILM.described.mkv and FILM.metrics.json.
    The summary line goes to stdout."""
    from locomad_cli.voice.fit import VoiceOptions, voice
    from locomad_cli.voice.mix import MixOptions

    opts = VoiceOptions(
        ad=ad or str(Path(video).with_name(f"{Path(video).stem}.ad.json")),
        output_dir=output_dir,
        tts=tts,
        voice=voice_name,
        rate=rate,
        max_rate=max_rate,
        overflow=overflow,
        extended=extended,
        subs=subs,
        formats=formats,
        mix=MixOptions(
            duck_db=duck,
            ramp=duck_ramp,
            loudness=loudness,
            ad_level=ad_level,
            language=language,
            container=container,
        ),
        progress=not quiet,
    )
    try:
        voiced, paths = voice(video, opts)
    except LocomadError as e:
        fail(str(e))
    result_line(voiced["voice"]["summary"])
    if not quiet:
        for p in paths:
            typer.echo(f"wrote {p}", err=True)


demo_app = typer.Typer(
    help="The embedded demo: a rendered film world, its data and its small model.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(demo_app, name="demo")


@demo_app.callback()
def _demo(_help: bool = HELP_OPTION) -> None:
    """The embedded demo: a rendered film world, its data and its small model."""


@demo_app.command("make-data")
def demo_make_data_cmd(
    out_dir: str = typer.Argument(..., help="Folder for train/, val/ and test/ films."),
    seed: int = typer.Option(0, "--seed", help="World seed: same seed, same films. Default: 0."),
    films: int = typer.Option(60, "--films", help="Films in all. Default: 60."),
    val: int = typer.Option(6, "--val", help="Validation films. Default: 6."),
    test: int = typer.Option(6, "--test", help="Held-out films (the last ones). Default: 6."),
    cast: int = typer.Option(3, "--cast", help="Characters per film (1-4). Default: 3."),
    fps: float = typer.Option(10.0, "--fps", help="Frame rate of the MP4s. Default: 10."),
    dialogue_intro: float = typer.Option(
        1.0,
        "--dialogue-intro",
        help="Chance a newcomer is named by dialogue instead of the AD. Default: 1.",
    ),
    features: bool = typer.Option(
        True, "--features/--no-features", help="Extract frame features too. Default: on."
    ),
    model: str = typer.Option("demo", "--model", "-m", help="Card whose CLIP makes features."),
    threads: str = THREADS_OPTION,
) -> None:
    """Render demo films (MP4 + subtitles + reference AD) in the folder-of-films layout."""
    from locomad_cli.demo.data import DemoDataConfig, make_data

    n_threads = _threads(threads)

    cfg = DemoDataConfig(
        seed=seed,
        films=films,
        val=val,
        test=test,
        cast=cast,
        fps=fps,
        dialogue_intro=dialogue_intro,
    )
    try:
        out = make_data(
            out_dir, cfg, features=features, card=model, progress=True, threads=n_threads
        )
    except LocomadError as e:
        fail(str(e))
    typer.echo(
        ", ".join(f"{len(v)} {k}" for k, v in out.items()) + f" films in {out_dir}", err=True
    )


@demo_app.command("train-clip")
def demo_train_clip_cmd(
    data: str = typer.Argument(..., help="Demo data folder (from make-data)."),
    out: str = typer.Option(
        "weights/demo/clip.safetensors",
        "--out",
        "-o",
        help="Default: weights/demo/clip.safetensors.",
    ),
    model: str = typer.Option("demo", "--model", "-m", help="Card whose CLIP is trained."),
    steps: int = typer.Option(600, "--steps", help="Optimizer steps. Default: 600."),
    batch_size: int = typer.Option(64, "--batch-size", help="Default: 64."),
    seed: int = typer.Option(0, "--seed", help="Default: 0."),
    threads: str = THREADS_OPTION,
) -> None:
    """Train the demo card's small CLIP contrastively on demo frames (open_clip's loss)."""
    from locomad_cli.card import load_card
    from locomad_cli.demo.clip_train import train_clip
    from locomad_cli.threads import torch_threads

    n_threads = _threads(threads)
    try:
        card = load_card(model)
        with torch_threads(n_threads, decoding=False, device="cpu"):
            r = train_clip(data, card, out, steps=steps, batch_size=batch_size, seed=seed)
    except LocomadError as e:
        fail(str(e))
    typer.echo(
        f"wrote {out}: val caption->frame R@1 {r['val_r1_random']:.2f} at random init, "
        f"{r['val_r1_trained']:.2f} trained (chance {r['chance']:.2f})",
        err=True,
    )


@demo_app.command("tokenizers")
def demo_tokenizers_cmd(
    data: str = typer.Argument(..., help="Demo data folder (from make-data)."),
    out: str = typer.Option("weights/demo", "--out", "-o", help="Default: weights/demo."),
    vocab_size: int = typer.Option(1000, "--vocab-size", help="BPE vocabulary. Default: 1000."),
) -> None:
    """Train the demo's PME and LLM tokenizers (byte-level BPE) on the training films' text."""
    from locomad_cli.demo.tokenizers import make_tokenizers

    try:
        folders = make_tokenizers(data, out, vocab_size)
    except LocomadError as e:
        fail(str(e))
    typer.echo("wrote " + ", ".join(str(f) for f in folders), err=True)


@demo_app.command("features")
def demo_features_cmd(
    data: str = typer.Argument(..., help="Demo data folder (from make-data)."),
    model: str = typer.Option("demo", "--model", "-m", help="Card whose CLIP makes features."),
    threads: str = THREADS_OPTION,
) -> None:
    """Extract frame features for every demo film (skips films already done)."""
    from locomad_cli.demo.data import extract_demo_features

    n_threads = _threads(threads)
    try:
        n = extract_demo_features(data, model, threads=n_threads)
    except LocomadError as e:
        fail(str(e))
    typer.echo(f"{n} films have features", err=True)


@demo_app.command("train")
def demo_train_cmd(
    work: str = typer.Argument(..., help="Folder for the demo data and the training runs."),
    weights: str = typer.Option(
        "weights/demo", "--weights", help="Where the model goes. Default: weights/demo."
    ),
    seed: int = typer.Option(0, "--seed", help="World and training seed. Default: 0."),
    films: int = typer.Option(
        60, "--films", help="Films whose last 12 validate and test. Default: 60."
    ),
    extra_films: int = typer.Option(
        0, "--extra-films", help="More training films after those. Default: 0."
    ),
    clip_steps: int = typer.Option(2000, "--clip-steps", help="CLIP steps. Default: 2000."),
    clip_hard_negatives: bool = typer.Option(
        False,
        "--clip-hard-negatives/--no-clip-hard-negatives",
        help="Train the CLIP against captions with one prop, garment or room swapped "
        "(docs/demo.md). Default: off, as the shipped weights were made.",
    ),
    s1_epochs: int = typer.Option(20, "--s1-epochs", help="Stage-1 epochs. Default: 20."),
    s2_epochs: int = typer.Option(30, "--s2-epochs", help="Stage-2 epochs. Default: 30."),
    visual_contrast: float = typer.Option(
        0.0,
        "--visual-contrast",
        help="Stage 2's visual-contrast weight (`locomad train --visual-contrast`). Default: 0.",
    ),
    rename_names: bool = typer.Option(
        False,
        "--rename-names/--keep-names",
        help="Rename training clips' characters at random from the world's name pool "
        "(`locomad train --rename-names`; measured worse on the demo, docs/demo.md). "
        "Default: off.",
    ),
    measure: bool = typer.Option(
        True, "--measure/--no-measure", help="Measure on held-out films. Default: on."
    ),
    threads: str = THREADS_OPTION,
) -> None:
    """Train the demo model from nothing: data, tokenizers, CLIP, stage 1, stage 2, measure."""
    from locomad_cli.demo.pipeline import DemoTrainConfig, train_demo
    from locomad_cli.threads import pick_threads

    n_threads = _threads(threads)

    cfg = DemoTrainConfig(
        work=work,
        weights=weights,
        seed=seed,
        films=films,
        extra_train=extra_films,
        clip_steps=clip_steps,
        clip_hard_negatives=clip_hard_negatives,
        s1_epochs=s1_epochs,
        s2_epochs=s2_epochs,
        s2_visual_contrast=visual_contrast,
        rename_names=rename_names,
        measure=measure,
        progress=True,
    )
    cfg.threads = pick_threads(n_threads, decoding=False, device="cpu")
    try:
        result = train_demo(cfg)
    except LocomadError as e:
        fail(str(e))
    _print_scores(result.get("test", {}))


def _print_scores(rows: dict[str, dict[str, float]]) -> None:
    """One line per setting on stdout: CIDEr beside what a listener notices."""
    from locomad_cli.demo.attributes import ATTRIBUTES

    for setting, row in rows.items():
        cells = [f"CIDEr {row['CIDEr']:6.1f}" if "CIDEr" in row else ""]
        cells += [f"{a} {row[a]:.2f}" for a in ATTRIBUTES if a in row]
        if "repeat_rate" in row:
            cells.append(
                f"repeats {row['repeat_rate']:.2f} (ref {row['reference_repeat_rate']:.2f})"
            )
        print(f"{setting:18s} " + "  ".join(c for c in cells if c), flush=True)


def _demo_model(model: str, weights: str | None):
    """The model `demo measure` and `demo probe` score: a card, its weights or --weights."""
    from locomad_cli.card import load_card
    from locomad_cli.model.checkpoint import load_model

    card = load_card(model)
    if weights:
        card.weights = weights
    return load_model(card)


@demo_app.command("measure")
def demo_measure_cmd(
    data: str = typer.Argument(..., help="Demo data folder with features (from make-data)."),
    model: str = typer.Option("demo", "--model", "-m", help=MODEL_HELP),
    weights: str = typer.Option(None, "--weights", help="Model folder. Default: the card's."),
    split: str = typer.Option("test", "--split", help="Films to score. Default: test."),
    settings: str = typer.Option(
        "oracle,recurrent,recurrent-last-k,local",
        "--settings",
        help="Comma list of oracle, oracle-last-k, recurrent, recurrent-last-k, local, stage1. "
        "Default: oracle,recurrent,recurrent-last-k,local.",
    ),
    heard_names: bool = typer.Option(
        False,
        "--heard-names",
        help="Name a character only once the prompt holds the name (llm.names = the world's "
        "48 names, as describe --cast does for a film). Default: the card's llm.names.",
    ),
    threads: str = THREADS_OPTION,
) -> None:
    """Score a model on demo films, slot by slot against world.json: CIDEr, location, look,
    prop, action and name accuracy, and how often a description repeats one of the last 3."""
    from locomad_cli.demo.measure import SETTINGS, measure
    from locomad_cli.threads import torch_threads
    from locomad_cli.utils import parse_choice_list

    n_threads = _threads(threads)
    try:
        chosen = parse_choice_list(settings, SETTINGS, "--settings")
        demo_model = _demo_model(model, weights)
        if heard_names:
            from locomad_cli.demo.world import NAMES

            demo_model.card.llm.names = list(NAMES)
        with torch_threads(n_threads, decoding=False, device="cpu"):
            scores = measure(demo_model, data, settings=chosen, split=split)
        _print_scores(scores)
    except LocomadError as e:
        fail(str(e))


@demo_app.command("probe")
def demo_probe_cmd(
    data: str = typer.Argument(..., help="Demo data folder with features (from make-data)."),
    model: str = typer.Option("demo", "--model", "-m", help=MODEL_HELP),
    weights: str = typer.Option(None, "--weights", help="Model folder. Default: the card's."),
    split: str = typer.Option("test", "--split", help="Held-out films. Default: test."),
    train_films: int = typer.Option(
        48, "--train-films", help="Training films the probes are fit on. Default: 48."
    ),
    threads: str = THREADS_OPTION,
) -> None:
    """Where the model loses what its frames show: linear probes and a small sequence reader
    (location, look, prop, action) on frame features, PME queries and the visual prompt, then
    the model with its visual prompt intact, zeroed and shuffled across slots."""
    from locomad_cli.demo.probe import ProbeConfig, probe
    from locomad_cli.threads import torch_threads

    n_threads = _threads(threads)
    try:
        with torch_threads(n_threads, decoding=False, device="cpu"):
            result = probe(_demo_model(model, weights), ProbeConfig(data, split, train_films))
    except LocomadError as e:
        fail(str(e))
    _print_scores(result)


def main() -> None:
    """Console-script entry point: exit 0 done, 2 bad input or environment (one line), 70 an
    internal error (one line; the traceback with --debug or LOCOMAD_DEBUG=1), 130 Ctrl-C.
    Libraries' Python warnings (deprecations, pickle protocols) are not for users: hidden
    unless debugging; locomad's own warnings are log lines and always shown."""
    if not _debugging():
        warnings.simplefilter("ignore")
    try:
        app()
    except LocomadError as e:  # raised outside a command's own handling
        typer.echo(f"locomad: error: {e}", err=True)
        sys.exit(EXIT_USER)
    except KeyboardInterrupt:
        typer.echo("locomad: interrupted", err=True)
        sys.exit(130)
    except OSError as e:
        line = os_error_line(e)  # a full disk or a permission problem: the machine's, not ours
        if line is None:
            _internal_error(e)
        typer.echo(f"locomad: error: {line}", err=True)
        sys.exit(EXIT_USER)
    except Exception as e:
        _internal_error(e)


def _debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes", "on")


def _internal_error(e: BaseException) -> None:
    if _debugging():
        traceback.print_exception(e)
    what = " ".join(f"{e.__class__.__name__}: {e}".split())[:300]
    typer.echo(
        f"locomad: internal error (a bug in locomad, not in your input): {what}; run again "
        f"with --debug or {DEBUG_ENV}=1 for the traceback, and please report it",
        err=True,
    )
    sys.exit(EXIT_INTERNAL)


@app.command("review")
def review_cmd(
    video: str = typer.Argument(..., help="The film whose AD track to review."),
    ad: str = typer.Option(
        None, "--ad", help="The AD track (FILM.ad.json). Default: beside the film."
    ),
    port: int = typer.Option(0, "--port", help="Port to listen on. Default: 0 (a free one)."),
    host: str = typer.Option(
        "127.0.0.1",
        "--host",
        help="Address to listen on. Default: 127.0.0.1 (this machine only); another one warns.",
    ),
    no_browser: bool = typer.Option(
        False, "--no-browser", help="Do not open the system browser. Default: opened."
    ),
    overrides: list[str] = typer.Option(
        [], "--set", help="Override a field of the card that regenerates, e.g. llm.num_beams=3."
    ),
    device: str = typer.Option("cpu", "--device", help="Device for regenerating. Default: cpu."),
) -> None:
    """Review an AD track in the browser: play the film with its descriptions, correct,
    regenerate, re-voice, approve, export. The page's address (with its token) goes to stdout;
    Ctrl-C stops the server."""
    from locomad_cli.review import ReviewOptions, review

    if not 0 <= port <= 65535:
        fail(f"--port must be 0-65535, got {port}")
    try:
        review(
            video,
            ReviewOptions(ad=ad, overrides=list(overrides), device=device),
            host=host,
            port=port,
            open_browser=not no_browser,
        )
    except LocomadError as e:
        fail(str(e))
