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
from collections.abc import Callable
from pathlib import Path

import typer

from locomad_cli.cli_common import (
    DEVICE_OPTION,
    HELP_OPTION,
    MODEL_HELP,
    MODEL_OPTION,
    SET_OPTION,
    THREADS_OPTION,
    fail,
    from_params,
    one_line_errors,
    threads_arg,
)
from locomad_cli.demo.cli import demo_app
from locomad_cli.utils import DEBUG_ENV, EXIT_INTERNAL, EXIT_USER, LocomadError, os_error_line

app = typer.Typer(
    name="locomad",
    help="Write audio-description tracks for films with the LoCo-MAD model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags show as flags, no boxes in pipes and logs
)


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
        help=f"Show the traceback of an internal error (or set {DEBUG_ENV}=1).",
    ),
    _help: bool = HELP_OPTION,
) -> None:
    """locomad: audio description for films (LoCo-MAD)."""
    if debug:
        os.environ[DEBUG_ENV] = "1"
        warnings.resetwarnings()
    _setup_logging()


@app.command()
@one_line_errors
def doctor(
    model: str = MODEL_OPTION,
) -> None:
    """What this machine has for a model card: tools, CLIP/BERT/OPT weights in the local caches,
    trained LoCo-MAD weights, Java, CoreNLP, espeak-ng. Exit code 1 when the card cannot describe
    a film here (a row needed for `describe` is missing), 0 otherwise."""
    from locomad_cli.doctor import blocking, run_checks

    rows = run_checks(model)
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
@one_line_errors
def extract_features_cmd(
    videos: list[str] = typer.Argument(
        ..., help="Film files (any format ffmpeg reads) or folders of films."
    ),
    out_dir: str = typer.Option(
        None, "--out-dir", "-o", help="Output folder.", show_default="beside each video"
    ),
    model: str = MODEL_OPTION,
    overrides: list[str] = SET_OPTION,
    fps: float = typer.Option(None, "--fps", help="Frames per second.", show_default="the card's"),
    batch_size: int = typer.Option(64, "--batch-size", help="Frames per CLIP batch."),
    device: str = DEVICE_OPTION,
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto | fp32 | fp16 | bf16 (auto: bf16 on GPUs, fp32 on CPU)."
    ),
    threads: str = THREADS_OPTION,
    h5: str = typer.Option(
        None, "--h5", help="Also add the films to this MAD-layout HDF5 (key = file stem)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo films whose features exist (without it: skip them)."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars, no summary line."),
) -> None:
    """CLIP frame features at exact 1/fps timestamps into NAME.features.safetensors."""
    params = dict(locals())
    from locomad_cli.card import load_card

    n_threads = threads_arg(threads)
    card = load_card(model, overrides)  # before importing torch: a bad card fails fast
    from locomad_cli.features.extract import extract_features, summary_line
    from locomad_cli.films import expand_films

    # this process's share of the films is taken inside
    films = expand_films(videos)
    results = from_params(extract_features, params, videos=films, card=card, threads=n_threads)
    if not quiet:
        typer.echo(summary_line(results), err=True)


@app.command("convert-weights")
@one_line_errors
def convert_weights_cmd(
    src: str = typer.Argument(..., help="A PyTorch state dict (.pth or .bin)."),
    dst: str = typer.Argument(..., help="Output file; must end in .safetensors."),
) -> None:
    """Re-save a third-party .pth/.bin state dict as safetensors (read with weights_only=True)."""
    from locomad_cli.model.checkpoint import convert_weights

    out = convert_weights(src, dst)
    typer.echo(f"wrote {out}", err=True)


@app.command("train")
@one_line_errors
def train_cmd(
    stage: int = typer.Option(..., "--stage", help="1 = the PME (L_s1); 2 = DSM + LLM (L_s2)."),
    data: str = typer.Option(
        ..., "--data", help="folder:PATH, mad:ROOT, lsmdc:ROOT or a folder (auto-detected)."
    ),
    out: str = typer.Option(..., "--out", "-o", help="RUN_DIR for checkpoints and logs."),
    model: str = typer.Option(
        None,
        "--model",
        "-m",
        help=MODEL_HELP,
        show_default="the --init checkpoint's card",
    ),
    overrides: list[str] = SET_OPTION,
    init: str = typer.Option(
        None, "--init", help="Start from this run dir or model dir (stage 2: the stage-1 run)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue RUN_DIR from its last checkpoint."
    ),
    val_data: str = typer.Option(
        None,
        "--val-data",
        help="Validation SPEC ('none' = skip).",
        show_default="--data's val split",
    ),
    epochs: int = typer.Option(
        None, "--epochs", help="Passes over the data.", show_default="10 in stage 1, 5 in stage 2"
    ),
    max_steps: int = typer.Option(
        None, "--max-steps", help="Optimizer steps in all.", show_default="epochs × steps per epoch"
    ),
    eval_every: int = typer.Option(
        None, "--eval-every", help="Validate + checkpoint every N steps.", show_default="each epoch"
    ),
    save_every: int = typer.Option(
        None, "--save-every", help="Checkpoint every N steps.", show_default="--eval-every"
    ),
    keep_last: int = typer.Option(2, "--keep-last", help="Checkpoints kept."),
    batch_size: int = typer.Option(
        None, "--batch-size", help="Clips per process per micro-batch.", show_default="64 / 32"
    ),
    grad_accum: int = typer.Option(1, "--grad-accum", help="Micro-batches per step."),
    lr: float = typer.Option(1e-5, "--lr", help="Peak learning rate."),
    warmup_steps: int = typer.Option(
        500, "--warmup-steps", help="Steps of linear warm-up from 1e-8 to --lr."
    ),
    weight_decay: float = typer.Option(0.05, "--weight-decay", help="AdamW weight decay."),
    max_grad_norm: float = typer.Option(1.0, "--max-grad-norm", help="Gradient clipping, 0 = off."),
    context_dropout: float = typer.Option(
        0.0,
        "--context-dropout",
        help="Stage 2: chance a clip's prompt leaves out its context items, so the LLM "
        "learns to read the frames too.",
    ),
    visual_contrast: float = typer.Option(
        0.0,
        "--visual-contrast",
        help="Stage 2: weight of a loss asking each description to be likelier under its own "
        "clip's visual prompt than under another clip's (docs/model.md).",
    ),
    rename_names: str = typer.Option(
        None,
        "--rename-names",
        help="A file of character names, one per line: each training clip's characters are "
        "renamed at random from it, so a name can only be learnt from the dialogue and "
        "earlier AD, not by memorising the films' casts (docs/training.md).",
    ),
    seed: int = typer.Option(2023, "--seed", help="Random seed."),
    mixed_precision: str = typer.Option(
        "auto", "--mixed-precision", help="auto | no | fp16 | bf16 (auto: bf16 on GPU)."
    ),
    eval_batch_size: int = typer.Option(8, "--eval-batch-size", help="Clips per validation batch."),
    val_max_clips: int = typer.Option(
        None, "--val-max-clips", help="Validate on the first N val clips.", show_default="all"
    ),
    num_workers: int = typer.Option(2, "--num-workers", help="Data loader workers."),
    threads: str = THREADS_OPTION,
    strict: bool = typer.Option(
        False,
        "--strict",
        help="Refuse malformed annotation rows (without it: skip and report them).",
    ),
    cache_dir: str = typer.Option(
        None, "--cache-dir", help="CLIP text-feature cache folder.", show_default="beside the data"
    ),
    log_every: int = typer.Option(10, "--log-every", help="A metrics.jsonl line every N steps."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    tensorboard: bool = typer.Option(
        False, "--tensorboard", help="Also log to RUN_DIR/tensorboard."
    ),
) -> None:
    """Train stage 1 or 2 (plain, one GPU, or under `accelerate launch` for DDP/FSDP)."""
    params = dict(locals())
    from locomad_cli.threads import torch_threads
    from locomad_cli.train.loop import TrainConfig, train

    n_threads = threads_arg(threads)
    cfg = from_params(TrainConfig, params)
    with torch_threads(n_threads, decoding=False, device="auto"):
        result = train(cfg)
    if result.is_main:
        typer.echo(f"trained to step {result.step}: {result.run_dir / 'model'}", err=True)


@app.command("evaluate")
@one_line_errors
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
        help="Comma list of cider,bleu,rouge,meteor,spice,bertscore,recall, or all.",
    ),
    output: str = typer.Option(None, "--output", "-o", help="Write the JSON report here."),
    min_iou: float = typer.Option(
        0.5, "--min-iou", help="Time overlap needed to pair a prediction."
    ),
    bert_model: str = typer.Option("bert-base-uncased", "--bert-model", help="BertScore model."),
    bert_rescale: bool = typer.Option(
        False,
        "--bert-rescale",
        help="Rescale BertScore with bert-score's baseline (AutoAD-II; the paper does not).",
    ),
    recall_model: str = typer.Option(
        "roberta-large", "--recall-model", help="R@k/N BertScore model."
    ),
    device: str = typer.Option("cpu", "--device", help="BertScore device."),
    threads: str = THREADS_OPTION,
    corenlp: str = typer.Option(
        None,
        "--corenlp",
        help="Folder with Stanford CoreNLP 3.6.0's jars for SPICE.",
        show_default="$LOCOMAD_CORENLP, else pycocoevalcap's own download",
    ),
    allow_missing: bool = typer.Option(
        False,
        "--allow-missing",
        help="Exit 0 even when a requested metric cannot be computed (without it: exit 1).",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Nothing on stderr but errors."),
) -> None:
    """Score an AD track against references: CIDEr, BLEU, ROUGE-L, METEOR, SPICE, BertScore,
    R@5/16. Exit code 1 when a requested metric is unavailable (unless --allow-missing)."""
    params = dict(locals())
    from locomad_cli.evaluate.report import evaluate, missing_line, report_table, write_report

    report = from_params(evaluate, params, threads=threads_arg(threads))
    if output:
        write_report(report, output)
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
@one_line_errors
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
        None, "--subs-encoding", help="Encoding of --subs, e.g. cp1250.", show_default="detected"
    ),
    ad_times: str = typer.Option(
        None,
        "--ad-times",
        help="AD slot times (SRT/WebVTT/CSV/JSON). One film only; with several, each film's "
        "NAME.ad-times.* beside it.",
        show_default="proposed between subtitles",
    ),
    model: str = MODEL_OPTION,
    overrides: list[str] = SET_OPTION,
    weights: str = typer.Option(
        None, "--weights", help="Trained weights folder or HF repo id.", show_default="the card's"
    ),
    setting: str = typer.Option(
        "recurrent",
        "--setting",
        help="recurrent (earlier generated AD as context) | oracle (--reference as context) | "
        "local (none).",
    ),
    reference: str = typer.Option(
        None,
        "--reference",
        help="Reference AD (SRT/WebVTT/CSV/JSON) for --setting oracle. One film only; with "
        "several, each film's NAME.ad-times.*.",
    ),
    output_dir: str = typer.Option(
        None, "--output-dir", "-o", help="Output folder.", show_default="beside the video"
    ),
    formats: str = typer.Option(
        "srt,vtt,json",
        "--format",
        "-f",
        help="srt, vtt, json, dapt (comma list) or all (srt, vtt, json).",
    ),
    features: str = typer.Option(
        None,
        "--features",
        help="Precomputed NAME.features.safetensors (one film only).",
        show_default="the one beside the film, else extract (cached, reused)",
    ),
    device: str = DEVICE_OPTION,
    threads: str = THREADS_OPTION,
    cast: str = typer.Option(
        None,
        "--cast",
        help="The film's character names, one per line: a description names a character only "
        "once the film has said the name (with several films: FILM.cast.txt beside each).",
        show_default="the card's names, if any",
    ),
    batch_size: int = typer.Option(
        8, "--batch-size", help="Slots per call for oracle/local (recurrent: 1)."
    ),
    resume: bool = typer.Option(
        False,
        "--resume",
        help="Continue an interrupted run after its last slot; films already described by "
        "the same card and setting (their tracks written, json among them) are kept.",
    ),
    min_gap: float = typer.Option(
        2.0, "--min-gap", help="Shortest gap between speech to describe (s)."
    ),
    margin: float = typer.Option(
        0.3, "--margin", help="Silence kept around subtitles and speech (s)."
    ),
    max_len: float = typer.Option(
        8.0, "--max-len", help="Longest slot; longer shots are split (s)."
    ),
    vad: str = typer.Option(
        "auto",
        "--vad",
        help="Keep slots off the speech the soundtrack holds (silero-vad): auto (when the film "
        "has audio) | on | off.",
    ),
    shots: str = typer.Option(
        "on", "--shots", help="Cut slots at shot changes (PySceneDetect): on | off."
    ),
    cut_margin: float = typer.Option(
        0.5, "--cut-margin", help="How far a slot may run across a cut (s)."
    ),
    then_voice: bool = typer.Option(
        False,
        "--voice",
        help="Then voice, mix and deliver the track (locomad voice with its defaults, same "
        "output folder and -f).",
    ),
    quiet: bool = typer.Option(
        False,
        "--quiet",
        "-q",
        help="Nothing on stderr but warnings and errors (the descriptions still go to stdout).",
    ),
) -> None:
    """Write an audio-description track (SRT, WebVTT, JSON) for a film or several. Each
    description is printed on stdout as it is made (one line: start --> end  text, after the
    film's name with several films); progress on stderr. Under `accelerate launch` each
    process describes its share of the films."""
    params = dict(locals())
    from locomad_cli.describe.film import DescribeOptions
    from locomad_cli.describe.many import describe_films, several

    opts = from_params(DescribeOptions, params, threads=threads_arg(threads))
    described, done = _film_printers(several(videos), quiet)
    then = _then_voice(opts) if then_voice else None
    _end_of_films(describe_films(videos, opts, described, done, then))


def _film_printers(many: bool, quiet: bool) -> tuple[Callable, Callable]:
    """describe's two callbacks: each description as a line on stdout (after the film's name
    with several films), and each film's end: its error, voiced summary, files written."""

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

    return described, done


def _then_voice(opts) -> Callable:
    """describe --voice: what voices each described film. A missing espeak-ng is said before
    the model runs, not after."""
    from locomad_cli.voice.tts import make_engine

    make_engine()
    from locomad_cli.voice.fit import voice_described

    return functools.partial(voice_described, formats=opts.formats, progress=opts.progress)


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
@one_line_errors
def voice_cmd(
    video: str = typer.Argument(..., help="The film the AD track was written for."),
    ad: str = typer.Option(
        None,
        "--ad",
        help="The AD track (FILM.ad.json from describe).",
        show_default="beside the film",
    ),
    output_dir: str = typer.Option(
        None, "--output-dir", "-o", help="Output folder.", show_default="the AD track's folder"
    ),
    tts: str = typer.Option("espeak-ng", "--tts", help="Speech engine: espeak-ng | piper."),
    voice: str = typer.Option(
        None,
        "--voice",
        help="espeak-ng voice (espeak-ng --voices) or piper voice file (.onnx).",
        show_default="the --language's espeak-ng voice",
    ),
    rate: float = typer.Option(170.0, "--rate", help="Speaking rate in heard words per minute."),
    max_rate: float = typer.Option(
        200.0, "--max-rate", help="Fastest rate a description is sped up to."
    ),
    overflow: str = typer.Option(
        None,
        "--overflow",
        help="A description that fits neither sped up nor by another candidate: extend | drop | "
        "keep.",
        show_default="extend with --extended, else drop with a warning",
    ),
    extended: bool = typer.Option(
        False,
        "--extended",
        help="Extended AD: hold the picture for what does not fit (the video is re-encoded).",
    ),
    subs: str = typer.Option(
        None, "--subs", help="Dialogue to keep off.", show_default="the subtitles the track names"
    ),
    duck_db: float = typer.Option(-12.0, "--duck", help="Programme gain under the AD (dB)."),
    ramp: float = typer.Option(0.2, "--duck-ramp", help="Fade into and out of the dip (s)."),
    loudness: float = typer.Option(
        -23.0, "--loudness", help="Integrated loudness of the mix (LUFS; -23 is EBU R128)."
    ),
    ad_level: float = typer.Option(
        0.0, "--ad-level", help="AD loudness relative to the programme (LU)."
    ),
    language: str = typer.Option(
        "en", "--language", help="Language of the descriptions (track tags)."
    ),
    container: str = typer.Option("mkv", "--container", help="The described film: mkv | mp4."),
    formats: str = typer.Option(
        "srt,vtt,json",
        "--format",
        "-f",
        help="Voiced text tracks: srt, vtt, json, dapt (comma list) or all. The JSON is always "
        "written.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or file list."),
) -> None:
    """Voice an AD track: fit each description to its slot (measured), speak it, duck the film
    under it, and write FILM.ad.wav, FILM.ad-mix.wav, FILM.described.mkv and FILM.metrics.json.
    The summary line goes to stdout."""
    params = dict(locals())
    from locomad_cli.voice import fit
    from locomad_cli.voice.mix import MixOptions

    ad = ad or str(Path(video).with_name(f"{Path(video).stem}.ad.json"))
    opts = from_params(fit.VoiceOptions, params, ad=ad, mix=from_params(MixOptions, params))
    voiced, paths = fit.voice(video, opts)
    result_line(voiced["voice"]["summary"])
    if not quiet:
        for p in paths:
            typer.echo(f"wrote {p}", err=True)


app.add_typer(demo_app, name="demo")


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
