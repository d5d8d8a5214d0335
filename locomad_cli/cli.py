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
