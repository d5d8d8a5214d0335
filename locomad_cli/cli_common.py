"""What the commands of `locomad` (cli.py) and `locomad demo` (demo/cli.py) share: the options
written the same way everywhere, the one-line exit for bad input, and options dataclasses filled
from a command's parameters. Light on purpose: every help screen imports it."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import typer

from locomad_cli.utils import EXIT_USER, LocomadError

T = TypeVar("T")

MODEL_HELP = "Model card: a shipped name (opt-2.7b, opt-1.3b, opt-350m, demo) or a YAML path."
MODEL_OPTION = typer.Option("opt-2.7b", "--model", "-m", help=MODEL_HELP)
SET_OPTION = typer.Option(
    [], "--set", help="Override a card field, e.g. --set llm.num_beams=1 (repeatable)."
)
DEVICE_OPTION = typer.Option("auto", "--device", help="auto | cpu | cuda.")
THREADS_OPTION = typer.Option(
    None,
    "--threads",
    metavar="N",
    help="torch CPU threads.",
    show_default="$OMP_NUM_THREADS, else the cores the load average leaves free, one fewer "
    "while a film is decoded",
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


def one_line_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """A command whose LocomadError (bad input, missing weights, offline hub) ends in one line on
    stderr and exit code 2, also where the command runs without main() (Typer's test runner)."""

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except LocomadError as e:
            fail(str(e))

    return run


def threads_arg(value: str | None) -> int | None:
    """--threads as a number (None: the policy picks); a bad value raises LocomadError."""
    from locomad_cli.threads import parse_threads

    return parse_threads(value)


def from_params(target: Callable[..., T], params: Mapping[str, Any], **given: Any) -> T:
    """Call `target` (an options dataclass, or a function) with the command's parameters that
    have the names of its own, so each option is written once: in the command's signature.
    `--quiet` fills `progress` (as `not quiet`); `given` supplies or replaces the rest (values
    the command derives, such as --threads as a number)."""
    names = inspect.signature(target).parameters
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in params.items() if k in names}
    if "progress" in names and "quiet" in params:
        values["progress"] = not params["quiet"]
    return target(**{**values, **given})
