"""`locomad review`: the Typer command over `review()` (cli.py adds it to the app)."""

from __future__ import annotations

from typer import Argument, Option

from locomad_cli.cli_common import SET_OPTION, fail, one_line_errors


@one_line_errors
def review_cmd(
    video: str = Argument(..., help="The film whose AD track to review."),
    ad: str = Option(None, "--ad", help="The AD track.", show_default="FILM.ad.json beside it"),
    port: int = Option(0, "--port", help="Port to listen on (0: a free one)."),
    host: str = Option(
        "127.0.0.1", "--host", help="Address to listen on (another than this machine warns)."
    ),
    no_browser: bool = Option(False, "--no-browser", help="Do not open the system browser."),
    overrides: list[str] = SET_OPTION,
    device: str = Option("cpu", "--device", help="Device for regenerating."),
) -> None:
    """Review an AD track in the browser: play the film with its descriptions, correct,
    regenerate, re-voice, approve, export. The page's address (with its token) goes to stdout;
    Ctrl-C stops the server."""
    from locomad_cli.review.server import review
    from locomad_cli.review.session import ReviewOptions

    if not 0 <= port <= 65535:
        fail(f"--port must be 0-65535, got {port}")
    options = ReviewOptions(ad=ad, overrides=list(overrides), device=device)
    review(video, options, host=host, port=port, open_browser=not no_browser)
