"""`locomad review` as a process: the printed address, 403 without its token, a warning for
another host, Ctrl-C stops it cleanly; SIGKILL in the middle of saves leaves a valid
FILM.ad.json equal to a saved state, and a restarted server undoes from there."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest
from helpers.reviewfilm import SLOTS, make_film, start_review

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_serves_behind_its_token_and_stops_on_ctrl_c(tmp_path):
    film = make_film(tmp_path / "film")
    p, url = start_review(film, "--host", "127.0.0.2")
    try:
        base = url.rsplit("/", 2)[0]
        token = url.rstrip("/").rsplit("/", 1)[1]
        assert base.startswith("http://127.0.0.2:") and len(token) >= 24
        assert httpx.get(base + "/").status_code == 403
        assert httpx.get(base + "/api/track").status_code == 403
        assert httpx.get(url).status_code == 200
        assert httpx.get(url + "api/track").json()["film"] == "demo.mp4"
    finally:
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=20)
    assert p.returncode == 0, err
    assert "anyone who can reach" in err and "Traceback" not in err


def test_sigkill_during_saves_leaves_a_saved_state(tmp_path):
    film = make_film(tmp_path / "film")
    ad = film.with_name("demo.ad.json")
    track = json.loads(ad.read_text())
    track["slots"][0]["padding"] = "x" * 8_000_000  # a save takes long enough to be hit
    ad.write_text(json.dumps(track), encoding="utf-8")
    sent = [SLOTS[0][2]]
    for round_ in range(3):
        p, url = start_review(film)
        stop = threading.Event()

        def edit(url=url, round_=round_, stop=stop):
            with httpx.Client(timeout=30) as c:
                v = c.get(url + "api/track").json()["version"]
                k = 0
                while not stop.is_set():
                    text = f"Round {round_} edit {k}."
                    sent.append(text)
                    try:
                        r = c.put(url + "api/cues/0", json={"version": v, "text": text})
                    except httpx.HTTPError:
                        return
                    v = r.json()["version"]
                    k += 1

        t = threading.Thread(target=edit)
        t.start()
        time.sleep(1.5 + 0.37 * round_)
        p.send_signal(signal.SIGKILL)
        p.wait()
        stop.set()
        t.join()
        saved = json.loads(ad.read_text(encoding="utf-8"))  # valid JSON
        assert saved["tool"] == "locomad" and len(saved["slots"]) == len(SLOTS)
        first = next(s for s in saved["slots"] if s["index"] == 0)
        assert first["text"] in sent and len(first["padding"]) == 8_000_000
    # a restarted server reads it, and its journal agrees with it: undo works
    p, url = start_review(film)
    try:
        s = httpx.get(url + "api/track", timeout=30).json()
        assert s["can_undo"]
        r = httpx.post(url + "api/undo", json={"version": s["version"]}, timeout=30)
        assert r.status_code == 200, r.text
    finally:
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=20)
