"""A vision-language model behind any OpenAI-compatible chat-completions server (vLLM,
SGLang, Ollama, llama.cpp's server, a hosted API): card `endpoint`.

Each slot is one POST to `{endpoint.url}/chat/completions` with the slot's frames as base64
JPEG `image_url` parts; the key, if any, is the environment variable LOCOMAD_API_KEY (sent
as a Bearer token). A connection error, a timeout, 429, 5xx or an answer that is no chat
completion is tried again after 1, 2, 4… s (endpoint.backoff, doubling; a 429's
Retry-After is honoured up to a minute), endpoint.retries times; then one line and exit 2,
with the slots described so far kept for `--resume`. Another 4xx (a wrong model name or
key) stops at once.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from locomad_cli.utils import LocomadError

if TYPE_CHECKING:
    from locomad_cli.card import ModelCard

log = logging.getLogger(__name__)
KEY_ENV = "LOCOMAD_API_KEY"


def jpeg_url(frame: np.ndarray, quality: int = 90) -> str:
    """A uint8 [H, W, 3] frame as a data: URL of a JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(frame).save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _headers() -> dict[str, str]:
    key = os.environ.get(KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _content(response: Any) -> str | None:
    """The answer's text, or None when the body is no chat completion."""
    try:
        message = response.json()["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    if not isinstance(message, dict):
        return None
    content = message.get("content")
    if content is None:  # a refusal field, or a reasoning model that said nothing
        return message.get("refusal") or ""
    if isinstance(content, list):  # some servers answer in parts
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else None


def check_endpoint(card: ModelCard) -> None:
    """The server's address and model name, before any work."""
    missing = [k for k in ("url", "model") if not getattr(card.endpoint, k)]
    if missing:
        sets = " ".join(f"--set endpoint.{k}=..." for k in missing)
        raise LocomadError(
            f"model card '{card.name}' needs endpoint.{' and endpoint.'.join(missing)}: "
            f"{sets} (the server's base URL up to /v1, and a model it serves)"
        )


class EndpointBackend:
    """Backend (describe/vlm.py) for an OpenAI-compatible server."""

    def __init__(self, card: ModelCard, sleep: Callable[[float], None] = time.sleep):
        import httpx

        check_endpoint(card)
        self.card, self.sleep = card, sleep
        self.base = str(card.endpoint.url).rstrip("/")
        self.concurrency = card.endpoint.concurrency
        self.in_flight = threading.BoundedSemaphore(self.concurrency)
        """At most endpoint.concurrency requests at once, over every film asking (a film's
        own batch in --setting local, and films described at once)."""
        self.client = httpx.Client(timeout=card.endpoint.timeout, headers=_headers())
        self.told: set[str] = set()

    def announce(self, film: str) -> None:
        """Says once, on stderr, where a film's frames go."""
        if film not in self.told:
            self.told.add(film)
            log.warning(
                "%s: frames and dialogue are sent to %s (model %s)",
                film,
                self.base,
                self.card.endpoint.model,
            )

    def complete(self, images: list[np.ndarray], system: str, user: str) -> str:
        ep = self.card.endpoint
        parts: list[dict[str, Any]] = [{"type": "text", "text": user}]
        parts += [{"type": "image_url", "image_url": {"url": jpeg_url(f)}} for f in images]
        body = {
            "model": ep.model,
            "messages": [
                {"role": "system", "content": system},
                {"role": "user", "content": parts},
            ],
            "max_tokens": self.card.vlm.max_new_tokens,
            "temperature": 0.0,
        }
        last = ""
        for attempt in range(ep.retries + 1):
            text, last, wait = self._post(body)
            if text is not None:
                return text
            if attempt < ep.retries:
                self.sleep(wait if wait is not None else ep.backoff * 2**attempt)
        raise LocomadError(
            f"{self.base}: {last} after {ep.retries + 1} tries; the slots described so far are "
            "kept: run the same command with --resume once the server answers"
        )

    def _post(self, body: dict[str, Any]) -> tuple[str | None, str, float | None]:
        """(text, "", None) or (None, what went wrong, seconds to wait or None)."""
        import httpx

        try:
            with self.in_flight:
                r = self.client.post(f"{self.base}/chat/completions", json=body)
        except httpx.TimeoutException:
            return None, f"no answer within {self.card.endpoint.timeout:g} s", None
        except httpx.TransportError as e:
            return None, f"cannot connect ({e.__class__.__name__})", None
        if r.status_code == 429 or r.status_code >= 500:
            return None, f"HTTP {r.status_code}", _retry_after(r)
        if r.status_code >= 400:
            raise LocomadError(
                f"{self.base}: HTTP {r.status_code} ({' '.join(r.text.split())[:160]}): check "
                f"endpoint.model ({self.card.endpoint.model}) and {KEY_ENV}"
            )
        text = _content(r)
        if text is None:
            return None, f"an answer that is no chat completion ({r.text[:80]!r})", None
        return text, "", None


def _retry_after(r: Any) -> float | None:
    try:
        return min(60.0, max(0.0, float(r.headers.get("retry-after", ""))))
    except ValueError:
        return None


def server_models(card: ModelCard, timeout: float = 5.0) -> list[str]:
    """The model names the server lists at /v1/models (doctor); LocomadError if it does not
    answer."""
    import httpx

    base = str(card.endpoint.url).rstrip("/")
    try:
        r = httpx.get(f"{base}/models", headers=_headers(), timeout=timeout)
        r.raise_for_status()
        return [m["id"] for m in r.json()["data"]]
    except httpx.HTTPError as e:
        raise LocomadError(f"{base}: unreachable ({e.__class__.__name__})") from None
    except (ValueError, KeyError, TypeError):
        raise LocomadError(f"{base}/models: not an OpenAI-compatible model list") from None
