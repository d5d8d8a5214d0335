"""The vision-language describer behind an OpenAI-compatible server (card `endpoint`),
against a test server on 127.0.0.1 (tests/openai_server.py)."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.openai_server import FakeVLM

from locomad_cli.describe.film import DescribeOptions, describe
from locomad_cli.utils import LocomadError

DEMO = Path(__file__).resolve().parent.parent / "demo"
SLOTS = "1\n00:00:01,000 --> 00:00:04,000\nx\n\n2\n00:00:09,300 --> 00:00:11,900\nx\n\n" \
    "3\n00:00:19,000 --> 00:00:22,000\nx\n\n4\n00:00:30,000 --> 00:00:32,000\nx\n"  # fmt: skip


@pytest.fixture
def film(tmp_path):
    for name in ("demo.mp4", "demo.srt"):
        shutil.copy(DEMO / name, tmp_path / name)
    (tmp_path / "slots.srt").write_text(SLOTS, encoding="utf-8")
    return tmp_path


@pytest.fixture
def server():
    with FakeVLM() as s:
        yield s


def _opts(film: Path, url: str, *more: str, **kw) -> DescribeOptions:
    sets = [
        f"endpoint.url={url}",
        "endpoint.model=fake-vlm",
        "endpoint.backoff=0",
        "context.select=recent",
        "describer.frames=3",
        "describer.frame_size=64",
        "describer.words_per_minute=400",
        *more,
    ]
    base = dict(
        model="endpoint",
        overrides=sets,
        subs=str(film / "demo.srt"),
        ad_times=str(film / "slots.srt"),
        output_dir=str(film / "out"),
        progress=False,
        formats="srt,json",
    )
    base.update(kw)
    return DescribeOptions(**base)


def test_every_slot_in_order_with_its_frames_dialogue_and_context(film, server):
    track, paths = describe(film / "demo.mp4", _opts(film, server.url))
    rows = track["slots"]
    assert [r["index"] for r in rows] == [0, 1, 2, 3]
    assert len(server.requests) == 4  # one per slot, nothing asked twice
    clocks = ["00:00:01", "00:00:09", "00:00:19", "00:00:30"]
    assert [q["clock"] for q in server.requests] == clocks
    for i, (q, row) in enumerate(zip(server.requests, rows, strict=True)):
        assert q["model"] == "fake-vlm"
        assert len(q["images"]) == 3  # describer.frames, decodable JPEGs
        assert all(im.format == "JPEG" and min(im.size) == 64 for im in q["images"])
        if row["subtitles"]:
            assert f'Dialogue during these seconds: "{row["subtitles"]}"' in q["text"]
        else:
            assert "No one speaks" in q["text"]
        # the cleaned answer ("We see" cut off), within its budget
        assert row["text"] == f"A woman walk in at {clocks[i].replace(':', '')}."
        if i:  # the previous description is in this slot's context (select: recent)
            assert f"described: {rows[i - 1]['text']}" in q["text"]
            assert rows[i - 1]["text"] in [c["text"] for c in row["selected"]]
    assert "I'm Leo." in server.requests[2]["text"]  # an earlier subtitle line as context
    assert track["describer"]["describer"] == "vlm"
    assert track["describer"]["model"] == "fake-vlm"
    assert track["describer"]["prompt_version"]
    srt = (film / "out" / "demo.ad.srt").read_text(encoding="utf-8")
    assert srt.count("-->") == 4
    assert not (film / "out" / "demo.ad.progress.jsonl").exists()


def test_frames_are_evenly_spaced_over_the_slot():
    from locomad_cli.describe.vlm import SlotFrames
    from locomad_cli.slots.plan import Slot

    frames = SlotFrames(Path("x.mp4"), 4, 64)
    assert frames.times(Slot(10.0, 12.0, 0)) == [10.25, 10.75, 11.25, 11.75]


def test_without_subtitles_it_describes_the_planned_slots(film, server):
    opts = _opts(film, server.url, subs=None, ad_times=None, shots="off")
    track, _ = describe(film / "demo.mp4", opts)
    assert track["slot_plan"]["vad"] in ("on", "auto", "off", "no audio") or track["slot_plan"]
    assert len(track["slots"]) >= 3
    assert len(server.requests) == len(track["slots"])
    starts = [r["start"] for r in track["slots"]]
    assert starts == sorted(starts)
    assert all(r["text"] for r in track["slots"])


def test_server_down_is_one_line_and_leaves_nothing(film):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    opts = _opts(film, f"http://127.0.0.1:{port}/v1", "endpoint.retries=1")
    with pytest.raises(LocomadError, match=r"cannot connect.*after 2 tries.*--resume"):
        describe(film / "demo.mp4", opts)
    assert not (film / "out" / "demo.ad.progress.jsonl").exists()


def test_timeout_then_success(film, server):
    server.plan = ["sleep:2"]
    opts = _opts(film, server.url, "endpoint.timeout=0.5", "endpoint.retries=1")
    track, _ = describe(film / "demo.mp4", opts)
    assert [q["clock"] for q in server.requests][:2] == ["00:00:01", "00:00:01"]
    assert all(r["text"] for r in track["slots"])


def test_429_and_500_then_success(film, server):
    server.plan = ["429", "500"]
    track, _ = describe(film / "demo.mp4", _opts(film, server.url))
    assert [q["clock"] for q in server.requests][:3] == ["00:00:01"] * 3
    assert len(server.requests) == 6
    assert all(r["text"] for r in track["slots"])


def test_malformed_answer_is_asked_again_then_fails_in_one_line(film, server):
    server.plan = ["malformed"]
    track, _ = describe(film / "demo.mp4", _opts(film, server.url))
    assert len(server.requests) == 5 and all(r["text"] for r in track["slots"])
    shutil.rmtree(film / "out")
    server.plan = ["malformed"] * 3
    with pytest.raises(LocomadError, match="no chat completion.*after 3 tries"):
        describe(film / "demo.mp4", _opts(film, server.url, "endpoint.retries=2"))


def test_retries_spent_mid_film_keep_progress_and_resume_asks_the_rest(film, server):
    server.plan = ["ok", "ok", "500", "500"]
    opts = _opts(film, server.url, "endpoint.retries=1")
    with pytest.raises(LocomadError, match="HTTP 500 after 2 tries"):
        describe(film / "demo.mp4", opts)
    progress = film / "out" / "demo.ad.progress.jsonl"
    assert len(progress.read_text().splitlines()) == 3  # identity + 2 slots
    with FakeVLM() as other:  # the server came back at another address
        track, _ = describe(film / "demo.mp4", _opts(film, other.url, resume=True))
    assert [q["clock"] for q in other.requests] == ["00:00:19", "00:00:30"]
    assert [r["index"] for r in track["slots"]] == [0, 1, 2, 3]
    assert track["describer"]["url"] == other.url


def test_other_4xx_stops_at_once(film, server, monkeypatch):
    server.key = "right"
    monkeypatch.setenv("LOCOMAD_API_KEY", "wrong")
    with pytest.raises(LocomadError, match="HTTP 401.*LOCOMAD_API_KEY"):
        describe(film / "demo.mp4", _opts(film, server.url))
    with pytest.raises(LocomadError, match="HTTP 404"):
        describe(film / "demo.mp4", _opts(film, server.url.replace("/v1", "/v2")))
    assert not server.requests  # neither was tried again


def test_the_key_is_sent_from_the_environment(film, server, monkeypatch):
    monkeypatch.setenv("LOCOMAD_API_KEY", "sekrit")
    describe(film / "demo.mp4", _opts(film, server.url))
    assert {q["authorization"] for q in server.requests} == {"Bearer sekrit"}


def test_over_budget_is_asked_again_shorter(film, server):
    server.plan = ["long"]
    opts = _opts(film, server.url, "describer.words_per_minute=160")
    track, _ = describe(film / "demo.mp4", opts)
    first = track["slots"][0]
    # a 3 s slot at 160 wpm: 8 words; the second ask names the first answer's length
    assert first["budget"] == 8 and first["asked"] == 2
    assert "has 72 words" in server.requests[1]["text"]
    assert "at most 8 words" in server.requests[1]["text"]
    assert "The 3 frames are evenly spaced" in server.requests[1]["text"]
    assert len(server.requests[1]["images"]) == 3
    assert first["text"] == "A woman walk in at 000001."
    assert "over_budget" not in first
    assert len(first["candidates"]) == 2


def test_always_over_budget_keeps_the_shortest_and_marks_it(film, server):
    server.plan = ["long", "long", "long"]
    opts = _opts(film, server.url, "describer.words_per_minute=160")
    track, _ = describe(film / "demo.mp4", opts)
    first = track["slots"][0]
    assert first["asked"] == 3  # once, then describer.shorter_tries (2) more
    assert first["over_budget"] == {"words": 72, "budget": 8}
    assert first["text"].startswith("A very long")


def test_nothing_new_and_refusals_leave_the_slot_empty_and_say_why(film, server):
    server.plan = ["nothing", "refuse"]
    track, _ = describe(film / "demo.mp4", _opts(film, server.url))
    a, b = track["slots"][:2]
    assert a["text"] == "" and a["empty"].startswith("nothing new")
    assert b["text"] == "" and b["empty"].startswith("refused")
    assert all(r["text"] for r in track["slots"][2:])
    srt = (film / "out" / "demo.ad.srt").read_text(encoding="utf-8")
    assert srt.count("-->") == 2


def test_a_repeat_of_the_last_three_is_asked_again_then_left_empty(film, server):
    server.answer = lambda request, step: "A door opens."
    track, _ = describe(film / "demo.mp4", _opts(film, server.url))
    texts = [r["text"] for r in track["slots"]]
    assert texts == ["A door opens.", "", "", ""]
    assert track["slots"][1]["empty"].startswith("repeats one of the last")
    assert "repeats an earlier description" in server.requests[2]["text"]


def test_local_setting_asks_several_slots_at_once_and_writes_them_in_order(film, server):
    server.plan = ["pair", "pair"]  # the first two are answered only when both are in flight
    opts = _opts(film, server.url, "endpoint.concurrency=2", setting="local")
    track, _ = describe(film / "demo.mp4", opts)
    assert server.most_in_flight == 2  # endpoint.concurrency
    assert [r["index"] for r in track["slots"]] == [0, 1, 2, 3]
    assert all(r["text"] and not r["selected"] for r in track["slots"])  # local: no context


def test_cast_names_only_once_heard(film, server):
    (film / "cast.txt").write_text("Leo\nAmy\n", encoding="utf-8")
    server.answer = lambda request, step: f"Leo waves at {request['clock'].replace(':', '')}."
    track, _ = describe(film / "demo.mp4", _opts(film, server.url, cast=str(film / "cast.txt")))
    first, second = server.requests[0]["text"], server.requests[-3]["text"]
    assert "No character's name has been said yet: use no name." in first
    assert "names Leo, whom the film has not named yet" in server.requests[1]["text"]
    assert "Names said so far: Leo." in second  # "I'm Leo." at 7.6 s, before slot 2
    rows = track["slots"]
    assert rows[0]["text"] == "" and rows[0]["empty"] == "names Leo before the film has said it"
    assert rows[0]["asked"] == 3 and len(server.requests) == 6
    assert rows[1]["text"] == "Leo waves at 000009."


def test_card_without_a_server_is_one_line(film):
    opts = DescribeOptions(model="endpoint", ad_times=str(film / "slots.srt"), progress=False)
    with pytest.raises(LocomadError, match="needs endpoint.url and endpoint.model"):
        describe(film / "demo.mp4", opts)


def _cli(*args: str, **kw) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    return subprocess.Popen(
        [sys.executable, "-m", "locomad_cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def _sets(url: str) -> list[str]:
    sets = []
    for s in (
        f"endpoint.url={url}",
        "endpoint.model=fake-vlm",
        "context.select=recent",
        "describer.frames=2",
        "describer.frame_size=64",
    ):
        sets += ["--set", s]
    return sets


@pytest.mark.slow
def test_cli_describes_every_slot_then_voice_voices_it(film, server):
    out = film / "out"
    video, subs = str(film / "demo.mp4"), str(film / "demo.srt")
    sets = _sets(server.url)
    p = _cli(
        "describe",
        video,
        "--subs",
        subs,
        "--model",
        "endpoint",
        *sets,
        "-f",
        "all",
        "-o",
        str(out),
        "-q",
    )
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr
    track = json.loads((out / "demo.ad.json").read_text(encoding="utf-8"))
    assert len(track["slots"]) == len(server.requests) >= 3
    assert [q["clock"] for q in server.requests] == [
        time.strftime("%H:%M:%S", time.gmtime(int(r["start"]))) for r in track["slots"]
    ]
    assert f"sent to {server.url}" in stderr
    for ext in ("srt", "vtt", "json"):
        assert (out / f"demo.ad.{ext}").is_file()
    v = _cli(
        "voice", str(film / "demo.mp4"), "--ad", str(out / "demo.ad.json"), "-o", str(out / "v")
    )
    _, verr = v.communicate(timeout=600)
    assert v.returncode == 0, verr
    assert any((out / "v").iterdir())


@pytest.mark.slow
def test_kill_9_then_resume_asks_no_slot_twice(film, server):
    args = ["describe", str(film / "demo.mp4"), "--subs", str(film / "demo.srt"),
            "--ad-times", str(film / "slots.srt"), "--model", "endpoint", *_sets(server.url),
            "-f", "srt,json", "-q"]  # fmt: skip
    # the uninterrupted track, for comparison
    whole = _cli(*args, "-o", str(film / "whole"))
    assert whole.wait(timeout=600) == 0
    reference = json.loads((film / "whole" / "demo.ad.json").read_text(encoding="utf-8"))
    server.requests.clear()
    server.answered.clear()
    server.plan = ["ok", "ok", "block"]
    p = _cli(*args, "-o", str(film / "out"))
    assert server.blocked.wait(300)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    server.release.set()
    assert server.answered == ["00:00:01", "00:00:09"]
    r = _cli(*args, "-o", str(film / "out"), "--resume")
    _, err = r.communicate(timeout=600)
    assert r.returncode == 0, err
    # slots 0 and 1 were answered once; 2 (asked when the run was killed) and 3 after
    assert server.answered == ["00:00:01", "00:00:09", "00:00:19", "00:00:30"]
    track = json.loads((film / "out" / "demo.ad.json").read_text(encoding="utf-8"))
    assert [s["text"] for s in track["slots"]] == [s["text"] for s in reference["slots"]]
    srt = (film / "out" / "demo.ad.srt").read_bytes()
    assert srt == (film / "whole" / "demo.ad.srt").read_bytes()


def _films(folder: Path, slots_per_film: list[int]) -> list[Path]:
    """Copies of the demo film in `folder`, film i with its subtitles and its own AD times:
    the first n of SLOTS moved i seconds later, so a request's clock says whose it is."""
    from helpers.srt import srt_text

    starts = [(1.0, 4.0), (9.3, 11.9), (19.0, 22.0), (30.0, 32.0)]
    folder.mkdir()
    films = []
    for i, n in enumerate(slots_per_film):
        video = folder / f"film{i}.mp4"
        shutil.copy(DEMO / "demo.mp4", video)
        shutil.copy(DEMO / "demo.srt", folder / f"film{i}.srt")
        times = [(a + i, b + i, "x") for a, b in starts[:n]]
        (folder / f"film{i}.ad-times.srt").write_text(srt_text(times), encoding="utf-8")
        films.append(video)
    return films


def test_films_at_once_within_the_bound_each_in_its_own_order(film, server):
    """With an endpoint, several films are described at once (a film's slots go in order,
    so only other films keep a server busy): at most endpoint.concurrency requests in flight,
    each film's slots asked in film order, tracks equal to describing one film at a time."""
    from locomad_cli.card import load_card
    from locomad_cli.describe.many import describe_films, films_at_once

    _films(film / "films", [4, 4, 4])
    server.plan = ["pair", "pair"]  # answered only when two films ask at the same time
    opts = _opts(film, server.url, "endpoint.concurrency=2", subs=None, ad_times=None)
    done = []
    outcomes = describe_films([film / "films"], opts, on_film=done.append)
    assert [o.error for o in outcomes] == [None] * 3 and len(done) == 3
    assert server.most_in_flight == 2  # endpoint.concurrency, over all films
    clocks = [q["clock"] for q in server.requests]
    assert len(clocks) == 12
    for i in range(3):  # film i's slots start at 1+i, 9+i, 19+i, 30+i seconds
        own = [c for c in clocks if int(c[-2:]) in (1 + i, 9 + i, 19 + i, 30 + i)]
        assert own == sorted(own) and len(own) == 4
    one = _opts(film, server.url, "endpoint.concurrency=1", subs=None, ad_times=None,
                output_dir=str(film / "one"))  # fmt: skip
    server.plan = []
    assert [o.error for o in describe_films([film / "films"], one)] == [None] * 3
    for i in range(3):
        a, b = (film / d / f"film{i}.ad.srt" for d in ("out", "one"))
        assert a.read_bytes() == b.read_bytes()
    assert films_at_once(load_card("endpoint", ["endpoint.concurrency=3"]), 2) == 2
    assert films_at_once(load_card("demo"), 5) == 1  # a describer that computes here


def test_films_at_once_stop_after_their_slot_on_ctrl_c_and_resume(film, server):
    """Ctrl-C while films are described at once: the others stop after the slot they are
    asking, their progress kept; --resume asks only what is left."""
    from locomad_cli.describe.many import describe_films

    _films(film / "films", [1, 4, 4])
    server.plan = [f"sleep:{0.3}"] * 12
    opts = _opts(film, server.url, "endpoint.concurrency=3", subs=None, ad_times=None)

    def interrupt(outcome):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        describe_films([film / "films"], opts, on_film=interrupt)
    asked = len(server.requests)
    assert asked < 9  # not every slot of every film
    left = sorted((film / "out").glob("*.ad.progress.jsonl"))
    assert left  # a film stopped part way keeps its progress, and has no track yet
    assert not any(p.with_name(p.name.replace(".progress.jsonl", ".srt")).exists() for p in left)
    server.plan = []
    outcomes = describe_films([film / "films"], dataclasses.replace(opts, resume=True))
    assert [o.error for o in outcomes] == [None] * 3
    assert len(server.requests) == 9  # each slot asked once over both runs
    assert not list((film / "out").glob("*.ad.progress.jsonl"))
