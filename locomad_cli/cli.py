"""The `locomad` command: a thin Typer layer over the pipeline's functions.

Every command turns a LocomadError (bad input, missing weights, offline hub) into one line
on stderr and exit code 2; nothing here holds logic that tests cannot reach directly.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from locomad_cli import __version__
from locomad_cli.utils import LocomadError

app = typer.Typer(
    name="locomad",
    help="Write audio-description tracks for films with the LoCo-MAD model.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)

MODEL_HELP = "Model card: a shipped name (opt-2.7b, opt-1.3b, opt-350m, demo) or a YAML path."
SET_HELP = "Override a card field, e.g. --set llm.num_beams=1 (repeatable)."


def fail(message: str) -> None:
    """One clear line on stderr, exit code 2."""
    typer.echo(f"locomad: error: {message}", err=True)
    raise typer.Exit(2)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"locomad {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version."
    ),
) -> None:
    """locomad: audio description for films (LoCo-MAD)."""


@app.command()
def doctor(
    model: str = typer.Option("opt-2.7b", "--model", "-m", help=MODEL_HELP),
) -> None:
    """Report what this machine has: ffmpeg, decord, torch device, Java, model hub, weights."""
    from locomad_cli.doctor import run_checks

    try:
        rows = run_checks(model)
    except LocomadError as e:
        fail(str(e))
    from rich.table import Table

    table = Table(title=f"locomad {__version__} doctor")
    table.add_column("check")
    table.add_column("status")
    table.add_column("details")
    for name, ok, details in rows:
        table.add_row(name, "[green]ok[/]" if ok else "[yellow]missing[/]", details)
    Console().print(table)


@app.command("extract-features")
def extract_features_cmd(
    videos: list[str] = typer.Argument(..., help="Film files (any format ffmpeg reads)."),
    out_dir: str = typer.Option(
        None, "--out-dir", "-o", help="Output folder. Default: beside each video."
    ),
    model: str = typer.Option("opt-2.7b", "--model", "-m", help=MODEL_HELP),
    overrides: list[str] = typer.Option([], "--set", help=SET_HELP),
    fps: float = typer.Option(None, "--fps", help="Frames per second. Default: the card's (5)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Frames per CLIP batch. Default: 64."),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda. Default: auto."),
    dtype: str = typer.Option(
        "auto", "--dtype", help="auto | fp32 | fp16 | bf16. Default: auto (bf16 on GPUs, fp32 CPU)."
    ),
    h5: str = typer.Option(
        None, "--h5", help="Also add the films to this MAD-layout HDF5 (key = file stem)."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo films whose features exist. Default: skip them."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars. Default: shown."),
) -> None:
    """CLIP frame features at exact 1/fps timestamps into NAME.features.safetensors."""
    from locomad_cli.card import load_card
    from locomad_cli.features import extract_features, summary_line

    try:
        card = load_card(model, overrides)
        results = extract_features(
            videos,
            card,
            out_dir=out_dir,
            fps=fps,
            batch_size=batch_size,
            device=device,
            dtype=dtype,
            h5=h5,
            overwrite=overwrite,
            progress=not quiet,
        )
    except LocomadError as e:
        fail(str(e))
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


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except LocomadError as e:  # raised outside a command's own handling
        typer.echo(f"locomad: error: {e}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("locomad: interrupted", err=True)
        sys.exit(130)
