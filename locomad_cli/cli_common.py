"""What the commands of `locomad` (cli.py) and `locomad demo` (demo/cli.py) share: the options
written the same way everywhere, options dataclasses filled from a command's parameters, the
one-line exit for bad input, the warning lines, and the exit codes of a run (run()). Light on
purpose: every help screen imports it."""

from __future__ import annotations

import contextlib
import errno
import functools
import inspect
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import typer
from typer import Option

from locomad_cli.utils import (
    DEBUG_ENV,
    EXIT_INTERNAL,
    EXIT_USER,
    LocomadError,
    os_error_line,
    path_error_line,
)

T = TypeVar("T")

MODEL_HELP = "Model card: a shipped name (opt-2.7b, opt-1.3b, opt-350m, demo) or a YAML path."
MODEL_OPTION = Option("opt-2.7b", "--model", "-m", help=MODEL_HELP)
SET_OPTION = Option(
    [], "--set", help="Override a card field, e.g. --set llm.num_beams=1 (repeatable)."
)
DEVICE_OPTION = Option("auto", "--device", help="auto | cpu | cuda.")
THREADS_OPTION = Option(
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


HELP_OPTION = Option(
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


class _WarningLine(logging.Handler):
    """locomad's own warnings as `locomad: warning: ...` on the stderr of the moment (so that
    test runners that swap sys.stderr see them too)."""

    def emit(self, record: logging.LogRecord) -> None:
        typer.echo(f"locomad: warning: {record.getMessage()}", err=True)


def setup_logging() -> None:
    """locomad's warnings as one line each on stderr, never twice."""
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


def run(app: typer.Typer) -> None:
    """Run the `locomad` app with its exit codes: 0 done, 2 bad input or environment (one
    line), 70 an internal error (one line; the traceback with --debug or LOCOMAD_DEBUG=1), 130
    Ctrl-C. Libraries' Python warnings (deprecations, pickle protocols) are not for users:
    hidden unless debugging; locomad's own warnings are log lines and always shown."""
    if not debugging():
        warnings.simplefilter("ignore")
    hint = _dash_file_hint(app, sys.argv[1:])
    if hint:
        typer.echo(f"locomad: error: {hint}", err=True)
        sys.exit(EXIT_USER)
    try:
        code = _main(app)
    except LocomadError as e:  # raised outside a command's own handling
        typer.echo(f"locomad: error: {e}", err=True)
        sys.exit(EXIT_USER)
    except KeyboardInterrupt:
        typer.echo("locomad: interrupted", err=True)
        sys.exit(130)
    except OSError as e:
        line = os_error_line(e) or path_error_line(e)  # the machine's or a path's
        if line is None:
            _internal_error(e)
        if isinstance(e, BrokenPipeError):
            _lose_stdout(e, say=False)
        typer.echo(f"locomad: error: {line}", err=True)
        sys.exit(EXIT_USER)
    except UnicodeError as e:  # a text file in an encoding no reader expected
        typer.echo(f"locomad: error: {unicode_error_line(e)}", err=True)
        sys.exit(EXIT_USER)
    except Exception as e:
        _internal_error(e)
    sys.exit(code)


def _main(app: typer.Typer) -> int:
    """The app without click's standalone mode, so that a usage error (an unknown command or
    option, a missing argument, a value of the wrong type) is one line like every other
    error, not click's three (usage, hint, error); returns the exit code."""
    try:
        code = app(standalone_mode=False)
    except typer.Abort:  # end of input at a prompt
        typer.echo("locomad: interrupted", err=True)
        return 130
    except typer.TyperException as e:  # click's usage errors (typer vendors click)
        if type(e).__name__ == "NoArgsIsHelpError":  # `locomad demo`: its help, as click shows it
            e.show()
            return int(getattr(e, "exit_code", EXIT_USER))
        ctx = getattr(e, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        typer.echo(f"locomad: error: {message}{hint}", err=True)
        return int(getattr(e, "exit_code", EXIT_USER))
    return code if isinstance(code, int) else 0


def unicode_error_line(e: UnicodeError) -> str:
    what = " ".join(str(e).split())[:160]
    return (
        f"a text file is not in a readable encoding ({what}): save it as UTF-8 (subtitles: "
        "or name the encoding with --subs-encoding)"
    )


def _dash_file_hint(app: typer.Typer, argv: list[str]) -> str | None:
    """A file named like an option (`-dash.mp4`) given where a file goes: click would read it
    as options ('No such option: -d'). The line says how to pass it. Checked only when such a
    file exists, so the usual start-up pays one look at the arguments."""
    suspects = [a for a in argv if a.startswith("-") and len(a) > 1 and os.path.exists(a)]
    if not suspects or "--" in argv[: argv.index(suspects[0])]:
        return None
    import click

    cmd = typer.main.get_command(app)
    i = 0
    while isinstance(cmd, click.Group) and i < len(argv) and argv[i] in cmd.commands:
        cmd, i = cmd.commands[argv[i]], i + 1
    options = [p for p in cmd.params if isinstance(p, click.Option)]
    known = {o for p in options for o in (*p.opts, *p.secondary_opts)}
    takes_value = {o for p in options if not p.is_flag and not p.count for o in p.opts}
    prev = None
    for a in argv[i:]:
        if a == "--":
            return None
        if a in suspects and a not in known and prev not in takes_value:
            return (
                f"'{a}' is a file whose name starts with '-', which reads as an option: write "
                f"./{a} (or put -- before it)"
            )
        prev = a
    return None


def result_line(text: str, kept: str = "files are still written") -> None:
    """One result line on stdout in one write, flushed. print() writes the text and the
    newline separately, and with PYTHONUNBUFFERED (set in many containers and CI images)
    those are two writes: under a launcher, two processes sharing stdout then glue one's line
    onto the other's (seen in CI: a description lost inside another film's line).
    A stdout that is closed (`| head -1`) or full never stops the run: the tracks are still
    written, and one warning says the results are no longer printed."""
    if _stdout_lost.get("why"):
        return
    try:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    except (OSError, ValueError) as e:
        _lose_stdout(e, kept=kept)


def print_result(renderable: Any, kept: str = "files are still written") -> None:
    """A rich table (or text) on stdout, as result_line: a closed or full stdout (`| head`,
    `> /dev/full`) is one warning saying what is `kept`, and the command goes on to its own
    exit code (click would end it with a silent exit 1)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:  # rich's own ends the process with exit 1
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    if _stdout_lost.get("why"):
        return
    try:
        _Console(soft_wrap=False).print(renderable)
        sys.stdout.flush()
    except (OSError, ValueError) as e:
        _lose_stdout(e, kept=kept)


_stdout_lost: dict[str, str] = {}
"""Why stdout can no longer be written, once it cannot (this process's stdout is global)."""


def _lose_stdout(e: BaseException, say: bool = True, kept: str = "files are still written") -> None:
    """Stdout failed: point it at /dev/null (Python's exit flush would fail again) and say so
    once on stderr."""
    why = getattr(e, "strerror", None) or str(e)
    _stdout_lost["why"] = why
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    if not say:
        return
    typer.echo(
        f"locomad: warning: stdout cannot be written ({why}): results are no longer printed "
        f"there; {kept}",
        err=True,
    )


def debugging() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes", "on")


def _internal_error(e: BaseException) -> None:
    if debugging():
        traceback.print_exception(e)
    what = " ".join(f"{e.__class__.__name__}: {e}".split())[:300]
    typer.echo(
        f"locomad: internal error (a bug in locomad, not in your input): {what}; run again "
        f"with --debug or {DEBUG_ENV}=1 for the traceback, and please report it",
        err=True,
    )
    sys.exit(EXIT_INTERNAL)
