"""The `locomad` command: a thin Typer layer over the pipeline's functions. Results go to
stdout, progress and warnings to stderr; bad input is one line on stderr and exit code 2, a bug
of ours exit code 70 (cli_common.run). The demo's commands are in demo/cli.py."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import typer
from typer import Argument, Option

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
    print_result,
    result_line,
    run,
    setup_logging,
    threads_arg,
)
from locomad_cli.demo.cli import demo_app
from locomad_cli.review.cli import review_cmd
from locomad_cli.utils import DEBUG_ENV

app = typer.Typer(
    name="locomad",
    help="Write audio-description tracks for films with the LoCo-MAD model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags show as flags, no boxes in pipes and logs
)


def _version_callback(value: bool) -> None:
    if value:
        from locomad_cli import __version__

        result_line(f"locomad {__version__}", kept="nothing else was to be done")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
    debug: bool = Option(
        False, "--debug", help=f"Show the traceback of an internal error (or set {DEBUG_ENV}=1)."
    ),
    _help: bool = HELP_OPTION,
) -> None:
    """locomad: audio description for films (LoCo-MAD)."""
    if debug:
        os.environ[DEBUG_ENV] = "1"
        warnings.resetwarnings()
    setup_logging()


@app.command()
@one_line_errors
def doctor(model: str = MODEL_OPTION, overrides: list[str] = SET_OPTION) -> None:
    """What this machine has for a model card: tools, CLIP/BERT/OPT weights in the local caches,
    trained LoCo-MAD weights, Java, CoreNLP, espeak-ng. Exit code 1 when the card cannot describe
    a film here (a row needed for `describe` is missing), 0 otherwise."""
    from locomad_cli.doctor import blocking, checks_table, run_checks

    rows = run_checks(model, overrides)
    print_result(
        checks_table(rows, model),
        kept="the exit code still says whether the card can describe here",
    )
    if missing := ", ".join(r.name for r in blocking(rows)):
        what = f"model card '{model}' cannot describe a film on this machine: missing {missing}"
        typer.echo(f"locomad: error: {what}", err=True)
        raise typer.Exit(1)


@app.command("extract-features")
@one_line_errors
def extract_features_cmd(
    videos: list[str] = Argument(..., help="Films (any format ffmpeg reads) or folders of films."),
    out_dir: str = Option(
        None, "--out-dir", "-o", help="Output folder.", show_default="beside each video"
    ),
    model: str = MODEL_OPTION,
    overrides: list[str] = SET_OPTION,
    fps: float = Option(None, "--fps", help="Frames per second.", show_default="the card's"),
    batch_size: int = Option(64, "--batch-size", help="Frames per CLIP batch."),
    device: str = DEVICE_OPTION,
    dtype: str = Option(
        "auto", "--dtype", help="auto | fp32 | fp16 | bf16 (auto: bf16 on GPUs, fp32 on CPU)."
    ),
    threads: str = THREADS_OPTION,
    h5: str = Option(None, "--h5", help="Also add the films to this MAD-layout HDF5 file."),
    overwrite: bool = Option(False, "--overwrite", help="Redo films whose features exist."),
    quiet: bool = Option(False, "--quiet", "-q", help="No progress bars, no summary line."),
) -> None:
    """CLIP frame features at exact 1/fps timestamps into NAME.features.safetensors. Films
    whose features exist are skipped unless --overwrite; in --h5, a film's key is its file
    stem."""
    params = dict(locals())
    from locomad_cli.card import load_card

    n_threads = threads_arg(threads)
    card = load_card(model, overrides)  # before importing torch: a bad card fails fast
    from locomad_cli.features.extract import extract_features, summary_line
    from locomad_cli.films import expand_films

    films = expand_films(videos)  # this process's share of them is taken inside
    results = from_params(extract_features, params, videos=films, card=card, threads=n_threads)
    if not quiet:
        typer.echo(summary_line(results), err=True)


@app.command("convert-weights")
@one_line_errors
def convert_weights_cmd(
    src: str = Argument(..., help="A PyTorch state dict (.pth or .bin)."),
    dst: str = Argument(..., help="Output file; must end in .safetensors."),
) -> None:
    """Re-save a third-party .pth/.bin state dict as safetensors (read with weights_only=True)."""
    from locomad_cli.model.checkpoint import convert_weights

    out = convert_weights(src, dst)
    typer.echo(f"wrote {out}", err=True)


@app.command("train")
@one_line_errors
def train_cmd(
    stage: int = Option(..., "--stage", help="1 = the PME (L_s1); 2 = DSM + LLM (L_s2)."),
    data: str = Option(..., "--data", help="folder:PATH, mad:ROOT, lsmdc:ROOT or a folder."),
    out: str = Option(..., "--out", "-o", help="RUN_DIR for checkpoints and logs."),
    model: str = Option(
        None, "--model", "-m", help=MODEL_HELP, show_default="the --init checkpoint's card"
    ),
    overrides: list[str] = SET_OPTION,
    init: str = Option(None, "--init", help="Start from this run dir or model dir."),
    resume: bool = Option(False, "--resume", help="Continue RUN_DIR from its last checkpoint."),
    val_data: str = Option(
        None, "--val-data", help="Validation SPEC, or none.", show_default="--data's val split"
    ),
    epochs: int = Option(None, "--epochs", help="Passes over the data.", show_default="10 / 5"),
    max_steps: int = Option(
        None, "--max-steps", help="Optimizer steps in all.", show_default="epochs × steps per epoch"
    ),
    eval_every: int = Option(
        None, "--eval-every", help="Validate + checkpoint every N steps.", show_default="each epoch"
    ),
    save_every: int = Option(
        None, "--save-every", help="Checkpoint every N steps.", show_default="--eval-every"
    ),
    keep_last: int = Option(2, "--keep-last", help="Checkpoints kept."),
    batch_size: int = Option(
        None, "--batch-size", help="Clips per process per micro-batch.", show_default="64 / 32"
    ),
    grad_accum: int = Option(1, "--grad-accum", help="Micro-batches per step."),
    lr: float = Option(1e-5, "--lr", help="Peak learning rate."),
    warmup_steps: int = Option(500, "--warmup-steps", help="Linear warm-up steps from 1e-8."),
    weight_decay: float = Option(0.05, "--weight-decay", help="AdamW weight decay."),
    max_grad_norm: float = Option(1.0, "--max-grad-norm", help="Gradient clipping, 0 = off."),
    context_dropout: float = Option(
        0.0, "--context-dropout", help="Stage 2: chance a clip's prompt leaves out its context."
    ),
    visual_contrast: float = Option(
        0.0,
        "--visual-contrast",
        help="Stage 2: weight of a loss asking each description to be likelier under its own "
        "clip's visual prompt than under another clip's (docs/model.md).",
    ),
    rename_names: str = Option(
        None,
        "--rename-names",
        help="A file of character names, one per line: each training clip's characters are "
        "renamed at random from it, so that names are learnt from dialogue and earlier AD, "
        "not memorised with the films (docs/training.md).",
    ),
    seed: int = Option(2023, "--seed", help="Random seed."),
    mixed_precision: str = Option(
        "auto", "--mixed-precision", help="auto | no | fp16 | bf16 (auto: bf16 on GPU)."
    ),
    eval_batch_size: int = Option(8, "--eval-batch-size", help="Clips per validation batch."),
    val_max_clips: int = Option(
        None, "--val-max-clips", help="Validate on the first N val clips.", show_default="all"
    ),
    num_workers: int = Option(2, "--num-workers", help="Data loader workers."),
    threads: str = THREADS_OPTION,
    strict: bool = Option(False, "--strict", help="Refuse malformed annotation rows."),
    cache_dir: str = Option(
        None, "--cache-dir", help="CLIP text-feature cache folder.", show_default="beside the data"
    ),
    log_every: int = Option(10, "--log-every", help="A metrics.jsonl line every N steps."),
    quiet: bool = Option(False, "--quiet", "-q", help="No progress bar."),
    tensorboard: bool = Option(False, "--tensorboard", help="Also log to RUN_DIR/tensorboard."),
) -> None:
    """Train stage 1 or 2 (plain, one GPU, or under `accelerate launch` for DDP/FSDP). Stage 1
    trains 10 epochs of 64 clips per batch by default, stage 2 5 epochs of 32. Malformed
    annotation rows are skipped and reported unless --strict; for stage 2, --init names the
    stage-1 run."""
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
    prediction: str = Argument(
        ..., help="Our NAME.ad.json, any SRT/WebVTT AD track, or a folder of them (one per film)."
    ),
    reference: str = Option(
        ...,
        "--reference",
        "-r",
        help="Reference AD (SRT, WebVTT, CSV or JSON with texts), or a folder of NAME.ad.*.",
    ),
    metrics: str = Option(
        "all",
        "--metrics",
        help="Comma list of cider,bleu,rouge,meteor,spice,bertscore,recall, or all.",
    ),
    output: str = Option(None, "--output", "-o", help="Write the JSON report here."),
    min_iou: float = Option(0.5, "--min-iou", help="Time overlap needed to pair a prediction."),
    bert_model: str = Option("bert-base-uncased", "--bert-model", help="BertScore model."),
    bert_rescale: bool = Option(
        False,
        "--bert-rescale",
        help="Rescale BertScore with bert-score's baseline (AutoAD-II; the paper does not).",
    ),
    recall_model: str = Option("roberta-large", "--recall-model", help="R@k/N BertScore model."),
    device: str = Option("cpu", "--device", help="BertScore device."),
    threads: str = THREADS_OPTION,
    corenlp: str = Option(
        None,
        "--corenlp",
        help="Folder with Stanford CoreNLP 3.6.0's jars for SPICE.",
        show_default="$LOCOMAD_CORENLP, else pycocoevalcap's own download",
    ),
    allow_missing: bool = Option(
        False,
        "--allow-missing",
        help="Exit 0 even when a requested metric cannot be computed (without it: exit 1).",
    ),
    quiet: bool = Option(False, "--quiet", "-q", help="Nothing on stderr but errors."),
) -> None:
    """Score an AD track against references: CIDEr, BLEU, ROUGE-L, METEOR, SPICE, BertScore,
    R@5/16. Exit code 1 when a requested metric is unavailable (unless --allow-missing)."""
    params = dict(locals())
    from locomad_cli.evaluate import report as r

    report = from_params(r.evaluate, params, threads=threads_arg(threads))
    if output:
        r.write_report(report, output)
    kept = f"the report is written to {output}" if output else "write the report with --output"
    print_result(r.report_table(report), kept=kept)
    if not quiet and (unmatched := r.unmatched_line(report)):
        typer.echo(unmatched, err=True)
    line = r.missing_line(report)
    if line and not allow_missing:
        typer.echo(f"locomad: error: {line}", err=True)
        raise typer.Exit(1)


@app.command("describe")
@one_line_errors
def describe_cmd(
    videos: list[str] = Argument(..., help="Films (any format ffmpeg reads) or folders of films."),
    subs: str = Option(None, "--subs", help="Subtitles (SRT/WebVTT, any encoding) to keep off."),
    subs_encoding: str = Option(
        None, "--subs-encoding", help="Encoding of --subs, e.g. cp1250.", show_default="detected"
    ),
    ad_times: str = Option(
        None,
        "--ad-times",
        help="AD slot times (SRT/WebVTT/CSV/JSON).",
        show_default="proposed in the gaps between speech",
    ),
    model: str = MODEL_OPTION,
    overrides: list[str] = SET_OPTION,
    weights: str = Option(
        None, "--weights", help="Trained weights folder or HF repo id.", show_default="the card's"
    ),
    setting: str = Option(
        "recurrent",
        "--setting",
        help="recurrent (earlier generated AD as context) | oracle (--reference as context) | "
        "local (none).",
    ),
    reference: str = Option(
        None, "--reference", help="Reference AD (SRT/WebVTT/CSV/JSON) for --setting oracle."
    ),
    output_dir: str = Option(
        None, "--output-dir", "-o", help="Output folder.", show_default="beside the video"
    ),
    formats: str = Option(
        "srt,vtt,json", "--format", "-f", help="srt, vtt, json, dapt (comma list) or all."
    ),
    features: str = Option(
        None,
        "--features",
        help="Precomputed NAME.features.safetensors.",
        show_default="the one beside the film, else extracted and kept there",
    ),
    device: str = DEVICE_OPTION,
    threads: str = THREADS_OPTION,
    cast: str = Option(
        None,
        "--cast",
        help="The film's character names, one per line: a description names a character only "
        "once the film has said the name.",
        show_default="the card's names, if any",
    ),
    batch_size: int = Option(8, "--batch-size", help="Slots per call (recurrent: 1)."),
    resume: bool = Option(
        False, "--resume", help="Continue after the last slot; keep films already described."
    ),
    min_gap: float = Option(2.0, "--min-gap", help="Shortest gap between speech to describe (s)."),
    margin: float = Option(0.3, "--margin", help="Silence kept around subtitles and speech (s)."),
    max_len: float = Option(8.0, "--max-len", help="Longest slot; longer shots are split (s)."),
    vad: str = Option(
        "auto", "--vad", help="Keep slots off speech (silero-vad): auto (if audio) | on | off."
    ),
    shots: str = Option("on", "--shots", help="Cut slots at shot changes: on | off."),
    cut_margin: float = Option(0.5, "--cut-margin", help="How far a slot may run over a cut (s)."),
    then_voice: bool = Option(
        False, "--voice", help="Then voice it too (locomad voice, same output folder and -f)."
    ),
    quiet: bool = Option(False, "--quiet", "-q", help="Nothing on stderr but warnings and errors."),
) -> None:
    """Write an audio-description track (SRT, WebVTT, JSON) for a film or several. Each
    description goes to stdout as it is made (start --> end  text; after the film's name with
    several films), progress to stderr. With several films the model loads once, and the flags
    naming one film's file (--subs, --ad-times, --reference, --features, --cast) give way to
    each film's own beside it: FILM.srt/.vtt, FILM.ad-times.* (the reference too, with
    --setting oracle), FILM.features.safetensors, FILM.cast.txt. Under `accelerate launch`
    each process describes its share of the films. --resume keeps what an earlier run by the
    same card and setting wrote."""
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
    video: str = Argument(..., help="The film the AD track was written for."),
    ad: str = Option(None, "--ad", help="The AD track.", show_default="FILM.ad.json beside it"),
    output_dir: str = Option(
        None, "--output-dir", "-o", help="Output folder.", show_default="the AD track's folder"
    ),
    tts: str = Option("espeak-ng", "--tts", help="Speech engine: espeak-ng | piper."),
    voice: str = Option(
        None,
        "--voice",
        help="espeak-ng voice (espeak-ng --voices) or piper voice file (.onnx).",
        show_default="the --language's espeak-ng voice",
    ),
    rate: float = Option(170.0, "--rate", help="Speaking rate in heard words per minute."),
    max_rate: float = Option(200.0, "--max-rate", help="Fastest rate a description is sped up to."),
    overflow: str = Option(
        None,
        "--overflow",
        help="A description that fits nowhere: extend | drop | keep.",
        show_default="extend with --extended, else drop with a warning",
    ),
    extended: bool = Option(
        False,
        "--extended",
        help="Extended AD: hold the picture for what does not fit (the video is re-encoded).",
    ),
    subs: str = Option(
        None, "--subs", help="Dialogue to keep off.", show_default="the subtitles the track names"
    ),
    duck_db: float = Option(-12.0, "--duck", help="Programme gain under the AD (dB)."),
    ramp: float = Option(0.2, "--duck-ramp", help="Fade into and out of the dip (s)."),
    spec: str = Option(
        "ebu",
        "--spec",
        help="Loudness spec: ebu (R128: -23 LUFS integrated, -1 dBTP) | netflix (-27 LKFS "
        "dialogue-gated ±2, -2 dBTP).",
    ),
    loudness: float = Option(
        None, "--loudness", help="Loudness target of the mix (LUFS).", show_default="the --spec's"
    ),
    ad_level: float = Option(0.0, "--ad-level", help="AD loudness relative to the programme (LU)."),
    language: str = Option("en", "--language", help="Language of the descriptions (track tags)."),
    container: str = Option("mkv", "--container", help="The described film: mkv | mp4."),
    formats: str = Option(
        "srt,vtt,json",
        "--format",
        "-f",
        help="Voiced text tracks: srt, vtt, json, dapt (comma list) or all; json always.",
    ),
    quiet: bool = Option(False, "--quiet", "-q", help="No progress bar or file list."),
) -> None:
    """Voice an AD track (describe's FILM.ad.json): fit each description to its slot (measured;
    one that fits neither sped up nor by another candidate overflows), speak it, duck the film
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
app.command("review")(review_cmd)


def main() -> None:
    """Console-script entry point: `locomad` with its exit codes (cli_common.run)."""
    run(app)
