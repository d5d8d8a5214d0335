"""`locomad review`: check, correct, re-voice and approve an AD track in the browser."""

from locomad_cli.review.server import make_app, serve
from locomad_cli.review.session import Review, ReviewOptions

__all__ = ["Review", "ReviewOptions", "make_app", "serve", "review"]


def review(
    video: str,
    opts: ReviewOptions,
    host: str = "127.0.0.1",
    port: int = 0,
    open_browser: bool = True,
) -> None:
    """Serve the review page of one film until Ctrl-C; its address goes to stdout."""
    serve(Review(video, opts), host=host, port=port, open_browser=open_browser)
