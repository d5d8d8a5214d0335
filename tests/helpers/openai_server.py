"""A tiny OpenAI-compatible chat-completions server for the tests, on 127.0.0.1 in a thread.

It answers every request with a description made from the request itself (the slot's start
as the prompt gives it), so that two runs over the same slots get the same answers, and it
records every request decoded: its prompt text and its images. `plan` is a list of what to
do with the next requests, in order, before answering normally: "500", "429", "malformed",
"sleep:SECONDS", "long", "nothing", "refuse", "block" (wait until `release` is set), "pair"
(answer only once a second "pair" request is in flight too; 400 if none comes).
"""

from __future__ import annotations

import base64
import io
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeVLM:
    def __init__(self, model: str = "fake-vlm", key: str | None = None):
        self.model, self.key = model, key
        self.plan: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.answered: list[str] = []
        """The prompt's slot clock of every request answered normally, in order."""
        self.release = threading.Event()
        self.pair = threading.Barrier(2, timeout=30)
        self.in_flight = self.most_in_flight = 0
        self.blocked = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    server._send(self, 200, {"object": "list", "data": [{"id": server.model}]})
                else:
                    server._send(self, 404, {"error": "no such path"})

            def do_POST(self):
                n = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(n))
                if not self.path.endswith("/v1/chat/completions"):
                    server._send(self, 404, {"error": {"message": f"no {self.path}"}})
                elif server.key and self.headers.get("authorization") != f"Bearer {server.key}":
                    server._send(self, 401, {"error": {"message": "bad key"}})
                else:
                    server._handle(self, body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def __enter__(self) -> FakeVLM:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    # -- answering --------------------------------------------------------------------------

    def _send(self, h, status: int, payload: Any, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        try:
            h.send_response(status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _handle(self, h, body: dict[str, Any]) -> None:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            self._answer(h, body)
        finally:
            with self.lock:
                self.in_flight -= 1

    def _answer(self, h, body: dict[str, Any]) -> None:
        request = decode(body, h.headers.get("authorization"))
        with self.lock:
            self.requests.append(request)
            step = self.plan.pop(0) if self.plan else "ok"
        if step == "pair":
            try:
                self.pair.wait()
            except threading.BrokenBarrierError:
                self._send(h, 400, {"error": {"message": "no second request in flight"}})
                return
            step = "ok"
        if step == "block":
            self.blocked.set()
            self.release.wait(60)
            return  # the client has gone (killed) or gives up
        if step.startswith("sleep:"):
            time.sleep(float(step.split(":")[1]))
            step = "ok"
        if step in ("500", "429"):
            self._send(h, int(step), {"error": {"message": "busy"}})
            return
        if step == "malformed":
            self._send(h, 200, None, raw=b'{"id": "x", "object": "chat.completion"}')
            return
        text = self.answer(request, step)
        with self.lock:
            self.answered.append(request["clock"])
        self._send(
            h, 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}
        )

    def answer(self, request: dict[str, Any], step: str) -> str:
        if step == "nothing":
            return "NOTHING_NEW"
        if step == "refuse":
            return "I'm sorry, I can't help with that."
        clock = (request["clock"] or "").replace(":", "")
        if step == "long":
            return "The image shows " + " ".join(["a very long and winding description"] * 12)
        words = re.search(r"at most (\d+) words", request["text"])
        short = words and int(words.group(1)) < 6
        return f'"A woman waits at {clock}."' if short else f"We see a woman walk in at {clock}."


def decode(body: dict[str, Any], authorization: str | None) -> dict[str, Any]:
    """A chat-completions request as the tests check it: model, system, prompt text, the
    images decoded (PIL), the prompt's slot clock."""
    from PIL import Image

    messages = body["messages"]
    user = messages[-1]["content"]
    text = " ".join(p["text"] for p in user if p["type"] == "text")
    images = []
    for p in user:
        if p["type"] == "image_url":
            url = p["image_url"]["url"]
            assert url.startswith("data:image/jpeg;base64,")
            img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
            img.load()
            images.append(img)
    clock = re.search(r"from (\d\d:\d\d:\d\d)", text)
    return {
        "model": body["model"],
        "system": messages[0]["content"],
        "text": text,
        "images": images,
        "clock": clock.group(1) if clock else None,
        "authorization": authorization,
    }
