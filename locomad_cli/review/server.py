"""The review web application: FastAPI routes over session.Review, the page from the package,
served by uvicorn on loopback.

Safe by default: every route lives under a random token (`/TOKEN/...`, the printed URL);
anything else gets 403 and nothing. No route takes a path: the film, its track, the cues'
speech and the page's three files are the only things read, so nothing outside the film's
folder (and the package) can be reached, whatever the request."""

from __future__ import annotations

import contextlib
import hmac
import logging
import secrets
import socket
import sys
import threading
import webbrowser
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from pydantic import BaseModel, ConfigDict, Field

from locomad_cli.review.session import Review, ReviewOptions
from locomad_cli.review.store import ReviewError
from locomad_cli.utils import LocomadError

log = logging.getLogger(__name__)
STATIC = {"app.js": "text/javascript", "style.css": "text/css", "index.html": "text/html"}
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class Versioned(BaseModel):
    """Every write names the version of the track it was made against."""

    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=64)


class Edit(Versioned):
    text: str | None = Field(default=None, max_length=2000)
    start: float | None = Field(default=None, ge=0, le=1e6)
    end: float | None = Field(default=None, ge=0, le=1e6)


class NewCue(Versioned):
    start: float = Field(ge=0, le=1e6)
    end: float = Field(ge=0, le=1e6)
    text: str = Field(min_length=1, max_length=2000)


class Approval(Versioned):
    approved: bool = True


class TokenGate:
    """Pure ASGI middleware: a request whose path does not start with /TOKEN gets 403."""

    def __init__(self, app, token: str):
        self.app = app
        self.token = token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        path = scope.get("raw_path") or scope["path"].encode()
        first = path.split(b"?")[0].lstrip(b"/").split(b"/")[0]
        if not hmac.compare_digest(first, self.token):
            if scope["type"] == "http":
                body = b"403 forbidden: open the address locomad review printed\n"
                await send(
                    {
                        "type": "http.response.start",
                        "status": 403,
                        "headers": [
                            (b"content-type", b"text/plain; charset=utf-8"),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
            return None
        return await self.app(scope, receive, send)


def make_app(review: Review, token: str) -> Any:
    """The ASGI application (the FastAPI app behind the token gate)."""
    p = f"/{token}"
    api = FastAPI(
        title="locomad review",
        version="1",
        docs_url=None,
        redoc_url=None,
        openapi_url=f"{p}/openapi.json",
    )

    @api.exception_handler(ReviewError)
    async def _refused(_: Request, e: ReviewError):
        return JSONResponse({"error": str(e)}, status_code=e.status)

    @api.exception_handler(LocomadError)
    async def _failed(_: Request, e: LocomadError):
        return JSONResponse({"error": str(e)}, status_code=422)

    @api.exception_handler(RequestValidationError)
    async def _bad_body(_: Request, e: RequestValidationError):
        errs = e.errors()
        first = errs[0] if errs else {}
        where = ".".join(str(x) for x in first.get("loc", ()) if x != "body")
        msg = first.get("msg", "bad request")
        if first.get("type") == "json_invalid":
            msg, where = "the body is not valid JSON", ""
        elif first.get("type") in ("model_attributes_type", "dict_type") and not where:
            msg = "the body must be a JSON object"
        return JSONResponse({"error": f"{where}: {msg}" if where else msg}, status_code=422)

    _page_routes(api, review, p)
    _edit_routes(api, review, p)
    _media_routes(api, review, p)
    return TokenGate(api, token)


def _page_routes(api: Any, review: Review, p: str) -> None:
    """The page, its static files and the track as the page reads it."""

    @api.get(p, include_in_schema=False)
    def _root() -> RedirectResponse:
        return RedirectResponse(f"{p}/")

    @api.get(f"{p}/", include_in_schema=False)
    def page() -> Response:
        return _static("index.html")

    @api.get(f"{p}/static/{{name}}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in STATIC or name == "index.html":
            return JSONResponse({"error": "no such file"}, status_code=404)
        return _static(name)

    @api.get(f"{p}/api/track", summary="The cue list, with dialogue and fit")
    def track() -> dict[str, Any]:
        return review.view(None)


def _edit_routes(api: Any, review: Review, p: str) -> None:
    """Every change to the track: each answers with the track as saved."""
    state = review.view

    @api.put(f"{p}/api/cues/{{index}}", summary="Change a cue's text or times")
    def edit(index: int, body: Edit) -> dict[str, Any]:
        return state(review.edit(body.version, index, body.text, body.start, body.end))

    @api.post(f"{p}/api/cues", summary="Add a cue in a gap")
    def add(body: NewCue) -> dict[str, Any]:
        return state(review.add(body.version, body.start, body.end, body.text))

    @api.post(f"{p}/api/cues/{{index}}/delete", summary="Delete a cue")
    def delete(index: int, body: Versioned) -> dict[str, Any]:
        return state(review.delete(body.version, index))

    @api.post(f"{p}/api/cues/{{index}}/approve", summary="Mark a cue approved (or not)")
    def approve(index: int, body: Approval) -> dict[str, Any]:
        return state(review.approve(body.version, index, body.approved))

    @api.post(f"{p}/api/cues/{{index}}/revoice", summary="Speak one cue as voice would")
    def revoice(index: int, body: Versioned) -> dict[str, Any]:
        return state(review.revoice(body.version, index))

    @api.post(
        f"{p}/api/cues/{{index}}/alternatives",
        summary="The model's n-best for this slot, each with its fit (nothing is saved)",
    )
    def alternatives(index: int) -> dict[str, Any]:
        return {"index": index, "alternatives": review.alternatives(index)}

    @api.post(f"{p}/api/undo", summary="Undo the last change")
    def undo(body: Versioned) -> dict[str, Any]:
        return state(review.undo(body.version))

    @api.post(f"{p}/api/redo", summary="Redo the last undone change")
    def redo(body: Versioned) -> dict[str, Any]:
        return state(review.redo(body.version))


def _media_routes(api: Any, review: Review, p: str) -> None:
    """Export, and what the page plays: the film (ranges), the cues as WebVTT, each speech."""

    @api.post(f"{p}/api/export", summary="Write SRT, WebVTT, JSON and voice's deliverables")
    def export(body: Versioned) -> dict[str, Any]:
        snap, files = review.export(body.version)
        return {**review.view(snap), "files": files}

    @api.get(f"{p}/media/film", summary="The film (HTTP range requests)")
    def film() -> FileResponse:
        return FileResponse(review.video, media_type=_video_type(review.video.suffix))

    @api.get(f"{p}/media/descriptions.vtt", summary="The cues as WebVTT descriptions")
    def vtt() -> Response:
        return Response(review.descriptions_vtt(), media_type="text/vtt; charset=utf-8")

    @api.get(f"{p}/media/speech/{{index}}", summary="A cue's speech as last voiced")
    def speech(index: int) -> FileResponse:
        return FileResponse(review.speech(index), media_type="audio/wav")


def _static(name: str) -> Response:
    data = resources.files("locomad_cli.review").joinpath("static", name).read_bytes()
    return Response(data, media_type=STATIC[name], headers={"Cache-Control": "no-store"})


def _video_type(suffix: str) -> str:
    return {".mp4": "video/mp4", ".webm": "video/webm", ".mkv": "video/x-matroska"}.get(
        suffix.lower(), "application/octet-stream"
    )


def new_token() -> str:
    return secrets.token_urlsafe(24)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket: `port` 0 picks a free one."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise LocomadError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


def serve(
    review: Review,
    host: str = "127.0.0.1",
    port: int = 0,
    open_browser: bool = True,
    token: str | None = None,
    on_url=None,
) -> None:
    """Run the server until Ctrl-C (or SIGTERM); the page's address goes to `on_url`
    (stdout by default) as soon as the socket listens. Returns once it has stopped."""
    import uvicorn

    if host not in LOOPBACK:
        log.warning(
            "listening on %s: anyone who can reach this machine and learns the address can "
            "read the film and change its track",
            host,
        )
    token = token or new_token()
    sock = bind(host, port)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}/{token}/"
    (on_url or _print_url)(url)
    config = uvicorn.Config(
        make_app(review, token), log_level="warning", access_log=False, lifespan="off"
    )
    server = uvicorn.Server(config)
    if open_browser:
        opener = threading.Timer(0.5, lambda: _open(url))
        opener.daemon = True
        opener.start()
    try:
        server.run(sockets=[sock])  # stops gracefully on Ctrl-C, then re-raises the signal
    except KeyboardInterrupt:
        pass  # the normal way to stop a server: not an error
    finally:
        with contextlib.suppress(OSError):
            sock.close()


def _print_url(url: str) -> None:
    sys.stdout.write(url + "\n")
    sys.stdout.flush()


def _open(url: str) -> None:
    with contextlib.suppress(Exception):
        webbrowser.open(url)


def review(
    video: str,
    opts: ReviewOptions,
    host: str = "127.0.0.1",
    port: int = 0,
    open_browser: bool = True,
) -> None:
    """Serve the review page of one film until Ctrl-C; its address goes to stdout."""
    serve(Review(video, opts), host=host, port=port, open_browser=open_browser)
