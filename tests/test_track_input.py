"""A damaged AD track given to `voice --ad` (or `review`, which reads it the same way) is
refused in one line naming the slot or field and what is wrong with it: found by a hostile
sweep, each of these was an internal error (exit 70) or a misleading message before.
In-process `load_track` on a copy of the demo film (no subprocess), and the CLI twice."""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

import pytest
from helpers.adfilm import DEMO, make_track, write_track
from helpers.cli import one_error, run_cli

from locomad_cli.utils import LocomadError
from locomad_cli.voice.fit import load_track

DURATION = 40.0
SLOTS = [(1.0, 3.9, ["A wide view of the kitchen."]), (5.1, 8.3, ["Leo enters.", "Leo."])]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, dict]:
    """(demo.mp4 copied, a valid two-slot track for it)."""
    folder = tmp_path_factory.mktemp("track")
    film = folder / "demo.mp4"
    shutil.copy(DEMO, film)
    return film, make_track(film, None, SLOTS)


def refused(film: Path, track: dict | str, tmp_path: Path) -> str:
    """load_track's one line on `track` (a dict, or the file's raw text)."""
    path = tmp_path / "demo.ad.json"
    if isinstance(track, str):
        path.write_text(track, encoding="utf-8")
    else:
        write_track(track, path)
    with pytest.raises(LocomadError) as e:
        load_track(path, film, DURATION)
    line = str(e.value)
    assert "\n" not in line and line.startswith(f"--ad {path}"), line
    return line


def changed(track: dict, slot: int | None = None, **fields) -> dict:
    """A copy of `track` with `fields` set at the top, or in slot number `slot`."""
    out = copy.deepcopy(track)
    (out if slot is None else out["slots"][slot]).update(fields)
    return out


def test_a_valid_track_loads(base, tmp_path):
    film, track = base
    path = write_track(track, tmp_path / "demo.ad.json")
    assert load_track(path, film, DURATION)["slots"][1]["text"] == "Leo enters."
    # a voiced track read back (voice and review write these records) loads too
    voiced = changed(track, 0, voice={"decision": "fitted", "start": 1.0, "end": 2.0})
    voiced = changed(voiced, voice={"engine": "espeak-ng", "summary": "demo: 1 fitted"})
    assert load_track(write_track(voiced, path), film, DURATION)["voice"]["engine"]


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("start", "1.5", "slot 1: start '1.5' is not a number"),
        ("start", True, "slot 1: start true is not a number"),
        ("end", None, "slot 1: end null is not a number"),
        ("start", float("nan"), "slot 1: start nan is not a finite number"),
        ("end", float("inf"), "slot 1: end inf is not a finite number"),
        ("start", -1.0, "slot 1: starts before the film does (-1.000 s)"),
        ("end", 2.0, "slot 1: ends (2.000 s) before it starts (5.100 s)"),
        ("end", 5.1, "slot 1: ends (5.100 s) where it starts (5.100 s)"),
        ("start", 1e30, "slot 1: ends (8.300 s) before it starts (1e+30 s)"),
    ],
)
def test_slot_times_refused_naming_the_slot(base, tmp_path, field, value, words):
    film, track = base
    line = refused(film, changed(track, 1, **{field: value}), tmp_path)
    assert f"damaged track: {words}" in line, line


def test_a_time_too_large_for_a_float_and_one_past_the_film(base, tmp_path):
    film, track = base
    text = json.dumps(track).replace('"start": 5.1', '"start": 1' + "0" * 400)
    assert "slot 1: start a 401-digit number is too large" in refused(film, text, tmp_path)
    line = refused(film, changed(track, 1, end=1e30), tmp_path)
    assert "slot 1 ends at 1e+30 s, past the end of demo.mp4" in line


def test_a_slot_without_index_is_named_by_its_place(base, tmp_path):
    film, track = base
    bad = changed(track, 1, start="x")
    del bad["slots"][1]["index"]
    assert "slot number 2 in the list: start 'x'" in refused(film, bad, tmp_path)
    bad = changed(track, slots=[*track["slots"], 5])
    assert "slot number 3 in the list: is a number, not an object" in refused(film, bad, tmp_path)
    assert "slots is a string, not a list" in refused(film, changed(track, slots="x"), tmp_path)
    assert "slot 0: has no end" in refused(film, changed(track, slots=[{"index": 0, "start": 1}]),
                                           tmp_path)  # fmt: skip


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("abc", "candidates is a string, not a list"),
        ({"text": "a"}, "candidates is an object, not a list"),
        (["abc", 1], "candidates item 0 is a string, not an object with a text"),
        ([{"text": "a"}, 1], "candidates item 1 is a number, not an object with a text"),
        ([None], "candidates item 0 is null, not an object with a text"),
        ([{"text": 1}], "candidates item 0 has text 1, not a string"),
        ([{"score": -0.1}], "candidates item 0 has no text"),
    ],
)
def test_candidates_refused(base, tmp_path, value, words):
    film, track = base
    line = refused(film, changed(track, 1, candidates=value), tmp_path)
    assert f"damaged track: slot 1: {words}" in line, line


@pytest.mark.parametrize(
    ("slot", "fields", "words"),
    [
        (0, {"text": None}, "slot 0: text is null, not a string"),
        (0, {"text": 5}, "slot 0: text is a number, not a string"),
        (1, {"why": "x"}, "slot 1: why is a string, not an object"),
        (1, {"why": {"after": 5}}, "slot 1: why.after is a number, not a list"),
        (1, {"voice": "x"}, "slot 1: voice is a string, not an object"),
        (1, {"voice": {"start": "1"}}, "slot 1: voice.start '1' is not a number"),
        (None, {"film_source": "x"}, "film_source is a string, not an object"),
        (None, {"voice": 3}, "voice is a number, not an object"),
        (None, {"subtitles_file": 5}, "subtitles_file is a number, not a string"),
        (None, {"subtitles_file": ["a"]}, "subtitles_file is a list, not a string"),
        (None, {"subtitles_file": {"a": 1}}, "subtitles_file is an object, not a string"),
    ],
)
def test_fields_of_the_wrong_type_refused(base, tmp_path, slot, fields, words):
    film, track = base
    line = refused(film, changed(track, slot, **fields), tmp_path)
    assert f"damaged track: {words}" in line, line


@pytest.mark.parametrize("size", ["abc", "1.5", [1], -3, True])
def test_a_source_size_not_a_byte_count_refused(base, tmp_path, size):
    film, track = base
    bad = copy.deepcopy(track)
    bad["film_source"]["source_size"] = size
    line = refused(film, bad, tmp_path)
    assert "damaged track: film_source.source_size" in line and "not a number of bytes" in line


def test_not_json_nested_too_deeply(base, tmp_path):
    film, _ = base
    assert refused(film, "[" * 100000, tmp_path).endswith("not JSON (nested too deeply)")


def test_messages_that_said_the_wrong_thing(base, tmp_path):
    film, track = base
    # no version: not "written by locomad None"
    bad = copy.deepcopy(track)
    del bad["version"]
    line = refused(film, bad, tmp_path)
    assert "names no locomad version" in line and "None" not in line
    # a folder: not "no such file"
    with pytest.raises(LocomadError, match="is a folder"):
        load_track(tmp_path, film, DURATION)


def test_same_name_and_size_but_other_content(base, tmp_path):
    film = tmp_path / "demo.mp4"
    shutil.copy(base[0], film)
    track = make_track(film, None, SLOTS)
    data = bytearray(film.read_bytes())
    data[1000] ^= 0xFF  # another encode of the film: same name, same size, other bytes
    film.write_bytes(bytes(data))
    os.utime(film, ns=(0, 10**9))  # a new stamp whatever the clock's resolution
    line = refused(film, track, tmp_path)
    size = film.stat().st_size
    assert f"same name and size ({size} bytes) but different content" in line, line
    assert "another cut or encode" in line


@pytest.mark.slow
def test_cli_voice_refuses_a_damaged_track_in_one_line(base, tmp_path):
    film, track = base
    ad = write_track(changed(track, 1, start="1.5"), tmp_path / "demo.ad.json")
    res = run_cli(["voice", film, "--ad", ad, "-o", tmp_path / "out"])
    one_error(res, "slot 1: start '1.5' is not a number")
    (tmp_path / "deep.json").write_text("[" * 100000)
    res = run_cli(["voice", film, "--ad", tmp_path / "deep.json", "-o", tmp_path / "out"])
    one_error(res, "nested too deeply")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_cli_review_refuses_a_damaged_track_in_one_line(base, tmp_path):
    film, track = base
    ad = write_track(changed(track, 0, candidates=[None]), tmp_path / "demo.ad.json")
    res = run_cli(["review", film, "--ad", ad, "--no-browser", "--port", "0"], timeout=120)
    one_error(res, "slot 0: candidates item 0 is null")


def test_per_slot_warnings_are_counted_past_the_first_ten(caplog):
    """A track of 300 slots voice drops printed 300 warning lines; now ten and one count."""
    from locomad_cli.voice.fit import _Warnings

    said = _Warnings()
    with caplog.at_level("WARNING"):
        for i in range(300):
            said.warn("dropped", "dropped the description of slot %s", i)
        said.warn("said", "slot %s starts while ...", 7)
        said.summary({"dropped": "dropped", "said": "overlapping"})
    lines = [r.getMessage() for r in caplog.records]
    assert lines[:10] == [f"dropped the description of slot {i}" for i in range(10)]
    assert lines[10:] == [
        "slot 7 starts while ...",
        "... and 290 more dropped (300 in all; see the voiced JSON track)",
    ]


@pytest.mark.slow
def test_voice_refuses_bad_subtitles_before_making_its_output_folder(tmp_path):
    """Bad --subs were read after the output folder was made: an empty folder stayed."""
    from helpers.adfilm import short_film

    video, ad = short_film(tmp_path)
    subs = tmp_path / "bad.srt"
    subs.write_bytes(b"garbage\x00\x01\x02")
    out = tmp_path / "out"
    one_error(run_cli(["voice", video, "--ad", ad, "--subs", subs, "-o", out, "-q"]), str(subs))
    assert not out.exists()
