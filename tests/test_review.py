"""`locomad review`'s API and store: token on every route, nothing outside the folder, stale
versions and malformed bodies refused with nothing written, undo/redo across a restart, a
journal line that never reached the JSON dropped. In-process (FastAPI's TestClient), no
subprocess: ffprobe is replaced by the film's known duration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers.reviewfilm import SLOTS, fake_probe, make_film

from locomad_cli.review.regenerate import context_for
from locomad_cli.review.server import make_app
from locomad_cli.review.session import Review, ReviewOptions
from locomad_cli.review.store import journal_path

TOKEN = "t0ken-for-tests"


@pytest.fixture
def film(tmp_path, monkeypatch):
    import locomad_cli.features.video as video

    monkeypatch.setattr(video, "probe", fake_probe)
    return make_film(tmp_path / "film")


def client(film: Path) -> TestClient:
    return TestClient(make_app(Review(film, ReviewOptions(who="tester")), TOKEN))


def files(film: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in film.parent.iterdir() if p.is_file()}


def test_every_route_needs_the_token(film):
    c = client(film)
    schema = c.get(f"/{TOKEN}/openapi.json").json()
    paths = [p.replace("{index}", "1") for p in schema["paths"]]
    paths += [f"/{TOKEN}/", f"/{TOKEN}", f"/{TOKEN}/static/app.js", f"/{TOKEN}/openapi.json"]
    assert len(paths) > 12
    for path in paths:
        bare = path.replace(f"/{TOKEN}", "", 1) or "/"
        for method in ("get", "post", "put", "delete"):
            for p in (bare, path.replace(TOKEN, "wrong-token"), path.replace(TOKEN, TOKEN[:-1])):
                r = c.request(method, p, json={"version": "x"})
                assert r.status_code == 403, (method, p)
                assert b"slots" not in r.content
    assert c.get("/").status_code == 403
    assert c.get("/openapi.json").status_code == 403
    assert c.get(f"/{TOKEN}/api/track").status_code == 200
    assert c.get(f"/{TOKEN}/static/app.js").status_code == 200


def test_no_path_climbs_out_of_the_folder(film):
    c = client(film)
    secret = film.parent.parent / "secret.txt"
    secret.write_text("do not serve", encoding="utf-8")
    for path in (
        f"/{TOKEN}/static/../store.py",
        f"/{TOKEN}/static/..%2Fstore.py",
        f"/{TOKEN}/static/..%2F..%2F..%2Fsecret.txt",
        f"/{TOKEN}/static/%2Fetc%2Fpasswd",
        f"/{TOKEN}/media/../../secret.txt",
        f"/{TOKEN}/media/film/../../secret.txt",
        f"/{TOKEN}/../secret.txt",
        f"/{TOKEN}/media/speech/..%2F..%2Fsecret.txt",
    ):
        r = c.get(path)
        assert r.status_code in (403, 404, 422), path
        assert b"do not serve" not in r.content and b"import" not in r.content
    # the film itself is served with range requests
    r = c.get(f"/{TOKEN}/media/film", headers={"Range": "bytes=0-99"})
    assert r.status_code == 206 and len(r.content) == 100
    assert r.headers["content-range"].startswith("bytes 0-99/")


def test_edit_saved_at_once_with_journal(film):
    c = client(film)
    v = c.get(f"/{TOKEN}/api/track").json()["version"]
    r = c.put(f"/{TOKEN}/api/cues/2", json={"version": v, "text": "Luis hands Ben the letter."})
    assert r.status_code == 200
    saved = json.loads(film.with_name("demo.ad.json").read_text())
    assert [s["text"] for s in saved["slots"]][2] == "Luis hands Ben the letter."
    assert r.json()["version"] != v
    (line,) = journal_path(film.with_name("demo.ad.json")).read_text().splitlines()
    e = json.loads(line)
    assert e["who"] == "tester" and e["when"] and e["op"] == "edit"
    assert e["old"]["text"] == SLOTS[2][2] and e["new"]["text"] == "Luis hands Ben the letter."


def test_stale_version_refused_nothing_written(film):
    c = client(film)
    v = c.get(f"/{TOKEN}/api/track").json()["version"]
    assert c.post(f"/{TOKEN}/api/cues/1/approve", json={"version": v}).status_code == 200
    before = files(film)
    for method, path, body in (
        ("put", "api/cues/2", {"version": v, "text": "stale"}),
        ("put", "api/cues/2", {"version": v, "start": 9.5}),  # stale before refused times
        ("post", "api/cues/2/delete", {"version": v}),
        ("post", "api/cues/2/approve", {"version": v}),
        ("post", "api/cues", {"version": v, "start": 21, "end": 23, "text": "x"}),
        ("post", "api/undo", {"version": v}),
    ):
        r = c.request(method, f"/{TOKEN}/{path}", json=body)
        assert r.status_code == 409, path
        assert "changed elsewhere" in r.json()["error"]
    assert files(film) == before


def test_malformed_bodies_refused_nothing_written(film):
    c = client(film)
    v = c.get(f"/{TOKEN}/api/track").json()["version"]
    before = files(film)
    bad = [
        b"{not json",
        b"[1, 2]",
        b'"text"',
        b"{}",
        json.dumps({"version": v, "start": "soon"}).encode(),
        json.dumps({"version": v, "text": 5}).encode(),
        json.dumps({"version": v, "start": -3}).encode(),
        json.dumps({"version": v, "sneaky": 1}).encode(),
        b"\xff\xfe",
    ]
    for body in bad:
        r = c.put(
            f"/{TOKEN}/api/cues/2", content=body, headers={"content-type": "application/json"}
        )
        assert 400 <= r.status_code < 500, body
        msg = r.json()["error"]
        assert isinstance(msg, str) and "\n" not in msg and msg
    assert c.put(f"/{TOKEN}/api/cues/abc", json={"version": v}).status_code == 422
    assert c.put(f"/{TOKEN}/api/cues/99", json={"version": v, "text": "x"}).status_code == 404
    assert files(film) == before


def test_times_refused_with_the_reason(film):
    c = client(film)
    v = c.get(f"/{TOKEN}/api/track").json()["version"]
    before = files(film)
    r = c.put(f"/{TOKEN}/api/cues/2", json={"version": v, "start": 9.5})
    assert r.status_code == 422 and "dialogue" in r.json()["error"]
    assert "I'm Leo." in r.json()["error"]
    r = c.put(f"/{TOKEN}/api/cues/2", json={"version": v, "end": 16.5})
    assert r.status_code == 422  # into "Hello, Amy." and the next cue
    r = c.post(f"/{TOKEN}/api/cues", json={"version": v, "start": 13, "end": 14.9, "text": "x"})
    assert r.status_code == 422 and "neighbouring cue" in r.json()["error"]
    assert files(film) == before
    # a nudge that keeps clear is saved
    r = c.put(f"/{TOKEN}/api/cues/2", json={"version": v, "start": 10.4})
    assert r.status_code == 200
    cue = next(x for x in r.json()["cues"] if x["index"] == 2)
    assert cue["start"] == pytest.approx(10.4) and cue["edited"]


def test_add_delete_approve(film):
    c = client(film)
    v = c.get(f"/{TOKEN}/api/track").json()["version"]
    r = c.post(
        f"/{TOKEN}/api/cues", json={"version": v, "start": 21, "end": 23.5, "text": "Amy waves."}
    )
    assert r.status_code == 200
    s = r.json()
    new = next(x for x in s["cues"] if x["text"] == "Amy waves.")
    assert new["index"] == len(SLOTS) and [x["start"] for x in s["cues"]] == sorted(
        x["start"] for x in s["cues"]
    )
    s = c.post(f"/{TOKEN}/api/cues/0/delete", json={"version": s["version"]}).json()
    assert 0 not in [x["index"] for x in s["cues"]]
    s = c.post(f"/{TOKEN}/api/cues/1/approve", json={"version": s["version"]}).json()
    assert next(x for x in s["cues"] if x["index"] == 1)["approved"]
    saved = json.loads(film.with_name("demo.ad.json").read_text())
    assert len(saved["slots"]) == len(SLOTS) and saved["slots"][0]["approved"] is True


def test_undo_redo_across_restart(film):
    c = client(film)
    v = c.get(f"/{TOKEN}/api/track").json()["version"]
    v = c.put(f"/{TOKEN}/api/cues/3", json={"version": v, "text": "Carl and Eva embrace."})
    v = c.post(f"/{TOKEN}/api/cues/3/approve", json={"version": v.json()["version"]}).json()
    assert v["can_undo"] and not v["can_redo"]

    c2 = client(film)  # a new server on the same film
    s = c2.get(f"/{TOKEN}/api/track").json()
    assert s["can_undo"]
    s = c2.post(f"/{TOKEN}/api/undo", json={"version": s["version"]}).json()
    s = c2.post(f"/{TOKEN}/api/undo", json={"version": s["version"]}).json()
    cue = next(x for x in s["cues"] if x["index"] == 3)
    assert cue["text"] == SLOTS[3][2] and not cue["approved"] and not s["can_undo"]
    assert c2.post(f"/{TOKEN}/api/undo", json={"version": s["version"]}).status_code == 422

    c3 = client(film)
    s = c3.get(f"/{TOKEN}/api/track").json()
    assert s["can_redo"]
    s = c3.post(f"/{TOKEN}/api/redo", json={"version": s["version"]}).json()
    assert next(x for x in s["cues"] if x["index"] == 3)["text"] == "Carl and Eva embrace."
    # a new edit clears what could be redone
    s = c3.put(f"/{TOKEN}/api/cues/0", json={"version": s["version"], "text": "Quiet."}).json()
    assert not s["can_redo"] and s["can_undo"]
    saved = json.loads(film.with_name("demo.ad.json").read_text())
    assert next(x for x in saved["slots"] if x["index"] == 3)["text"] == "Carl and Eva embrace."


def test_a_journal_line_that_never_reached_the_json_is_dropped(film):
    c = client(film)
    v = c.get(f"/{TOKEN}/api/track").json()["version"]
    v = c.put(f"/{TOKEN}/api/cues/0", json={"version": v, "text": "Quiet."}).json()["version"]
    ad = film.with_name("demo.ad.json")
    j = journal_path(ad)
    good = j.read_text()
    # killed after the journal line, before the JSON's rename
    ghost = json.loads(good.splitlines()[-1]) | {"seq": 2, "before": v, "after": "0" * 16}
    j.write_text(good + json.dumps(ghost) + "\n" + '{"seq": 3, "torn', encoding="utf-8")
    s = client(film).get(f"/{TOKEN}/api/track").json()
    assert j.read_text() == good and s["version"] == v
    s = client(film).post(f"/{TOKEN}/api/undo", json={"version": v}).json()
    assert next(x for x in s["cues"] if x["index"] == 0)["text"] == SLOTS[0][2]


def test_page_and_descriptions_track(film):
    c = client(film)
    page = c.get(f"/{TOKEN}/")
    assert page.status_code == 200 and 'kind="descriptions"' in page.text
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    vtt = c.get(f"/{TOKEN}/media/descriptions.vtt")
    assert vtt.text.startswith("WEBVTT") and SLOTS[1][2] in vtt.text
    s = c.get(f"/{TOKEN}/api/track").json()
    cue = next(x for x in s["cues"] if x["index"] == 2)
    assert cue["dialogue_before"]["text"] == "I'm Leo."
    assert cue["dialogue_after"]["text"] == "Hello, Amy."
    assert c.get(f"/{TOKEN}/media/speech/2").status_code == 404  # not voiced yet


def test_context_is_earlier_cues_approved_first():
    track = {
        "slots": [
            {"index": i, "start": float(i), "end": i + 0.5, "text": f"c{i}", "approved": i == 0}
            for i in range(6)
        ]
    }
    got = [c["text"] for c in context_for(track, track["slots"][4], 2)]
    assert got == ["c0", "c3"]
    assert [c["text"] for c in context_for(track, track["slots"][2], 8)] == ["c0", "c1"]


def test_cli_refuses_bad_input_in_one_line(tmp_path):
    from typer.testing import CliRunner

    from locomad_cli.cli import app

    runner = CliRunner()
    for args in (
        [str(tmp_path / "none.mp4"), "--no-browser"],
        [str(tmp_path / "none.mp4"), "--no-browser", "--port", "70000"],
    ):
        r = runner.invoke(app, ["review", *args])
        assert r.exit_code == 2
        assert "Traceback" not in r.output and "error:" in r.output


def test_a_save_while_a_run_writes_the_film_is_refused_naming_it(film, monkeypatch):
    """describe and voice hold the film's output lock while they write; a save meanwhile is
    refused (423, the holder named, nothing written) and the page still reads the track."""
    import os

    import locomad_cli.review.store as store
    from locomad_cli.lock import lock_path, output_lock

    monkeypatch.setattr(store, "LOCK_WAIT", 0.3)
    c = client(film)
    v = c.get(f"/{TOKEN}/api/track").json()["version"]
    with output_lock(lock_path(film.parent, "demo")):  # what `locomad voice demo.mp4` takes
        before = files(film)
        r = c.put(f"/{TOKEN}/api/cues/2", json={"version": v, "text": "Ben reads the letter."})
        assert r.status_code == 423
        assert f"locomad process {os.getpid()}" in r.json()["error"]
        assert "nothing was saved" in r.json()["error"]
        assert files(film) == before
        assert c.get(f"/{TOKEN}/api/track").json()["version"] == v  # reading goes on
        with pytest.raises(store.InUse, match=f"locomad process {os.getpid()}"):
            Review(film, ReviewOptions(who="late"))  # `locomad review` started meanwhile
    r = c.put(f"/{TOKEN}/api/cues/2", json={"version": v, "text": "Ben reads the letter."})
    assert r.status_code == 200
    assert not lock_path(film.parent, "demo").exists()  # let go after the save


@pytest.mark.slow
def test_voice_is_refused_while_the_review_exports(film):
    """The export holds the film's lock for the whole voice run it makes: a `locomad voice` on
    the same film meanwhile is one line naming the server's process, and writes nothing."""
    import os
    import subprocess
    import sys

    review = Review(film, ReviewOptions(who="tester"))
    v = review.store.read().version
    root = Path(__file__).resolve().parents[1]
    with review.store.exclusive(v):
        before = files(film)
        res = subprocess.run(
            [sys.executable, "-m", "locomad_cli", "voice", str(film), "--ad",
             str(film.with_name("demo.ad.json"))],
            capture_output=True, text=True, cwd=root, timeout=300,
            env={**os.environ, "PYTHONPATH": str(root)},
        )  # fmt: skip
        assert files(film) == before
    assert res.returncode == 2, res.stderr
    (line,) = res.stderr.strip().splitlines()
    assert f"being written by locomad process {os.getpid()}" in line
