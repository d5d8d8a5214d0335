"""Generated hostile input for the readers users feed files to: subtitles (SRT/WebVTT, any
encoding, any bytes), AD-times and references as SRT/WebVTT/CSV/JSON. Whatever comes in, a
reader returns cues with finite times of sane size or raises LocomadError (one line for the
CLI); any other exception is a bug. 500 examples per reader here (2,000 in all), 2,500 per
reader (10,000) in the slow variant."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from locomad_cli.tracks.readers import parse_time, read_cues, read_timed
from locomad_cli.utils import MAX_SECONDS, LocomadError

FAST = settings(
    max_examples=500,
    deadline=None,
    derandomize=True,  # the same examples on every CI run: a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SLOW = settings(FAST, max_examples=2500, derandomize=False)

# --- pieces of real and broken files --------------------------------------------------------

NUMBERS = st.one_of(
    st.integers(0, 99).map(str),
    st.integers(-(10**6), 10**6).map(str),
    st.integers(0, 10**12).map(str),
    st.just("9" * 400),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e400", "-0", "", "x", "٣", "00", "1_0"]),
)


@st.composite
def timing_lines(draw) -> str:
    def stamp() -> str:
        h, m, s, ms = (draw(NUMBERS) for _ in range(4))
        sep = draw(st.sampled_from([",", ".", ":", ""]))
        return f"{h}:{m}:{s}{sep}{ms}" if draw(st.booleans()) else f"{m}:{s}{sep}{ms}"

    arrow = draw(st.sampled_from([" --> ", "-->", " -> ", " --> --> ", "  -->  "]))
    tail = draw(st.sampled_from(["", " align:start", " position:10%", " X"]))
    return stamp() + arrow + stamp() + tail


LINES = st.one_of(
    timing_lines(),
    st.sampled_from(
        [
            "",
            "1",
            "WEBVTT",
            "NOTE a note",
            "STYLE",
            "REGION",
            "[Script Info]",
            "{\\an8}text",
            "<i>it</i>",
            "-->",
            "00:00:01,000 --> 00:00:02,000",
            "00:01.000 --> 00:02.000",
            "\ufeff1",
            "\x00",
        ]
    ),
    st.text(max_size=40),
)


@st.composite
def subtitle_bytes(draw) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=400))
    text = "\n".join(draw(st.lists(LINES, max_size=30)))
    if draw(st.booleans()):
        text = text.replace("\n", "\r\n")
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "cp1252"]))
    return text.encode(encoding, errors="replace")


VALUES = st.one_of(
    NUMBERS,
    st.sampled_from(["00:00:01.500", "1:02:03,25", "99999999:00:00", "01:02", "12.5", "1,5"]),
    st.text(max_size=20),
)
KEYS = st.sampled_from(
    ["start", "end", "text", "Start", "END", "start_time", "end_hms", "sentence", "timestamps"]
)


@st.composite
def csv_text(draw) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=300))
    header = draw(st.lists(st.one_of(KEYS, st.text(max_size=8)), min_size=0, max_size=4))
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    for row in draw(st.lists(st.lists(VALUES, max_size=5), max_size=8)):
        writer.writerow(row)
    return out.getvalue()


def _json_leaves():
    return st.one_of(
        st.none(),
        st.booleans(),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(10**500), 10**500),
        VALUES,
    )


JSON_VALUES = st.recursive(
    _json_leaves(),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(KEYS, st.text(max_size=6)), inner, max_size=4),
    ),
    max_leaves=20,
)


@st.composite
def json_text(draw) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.sampled_from(["[", "{", '{"a":'])) * draw(st.integers(1, 5000))
    if kind == 1:
        return draw(st.text(max_size=200))
    if kind < 5:  # shaped like a times file: list, {"slots": [...]}, MAD-v1
        row = st.dictionaries(KEYS, JSON_VALUES, max_size=4)
        rows = draw(st.lists(row, max_size=6))
        shape = draw(st.sampled_from(["list", "slots", "mad"]))
        doc = {
            "list": rows,
            "slots": {"slots": rows},
            "mad": {str(i): r for i, r in enumerate(rows)},
        }
        return json.dumps(doc[shape])
    return json.dumps(draw(JSON_VALUES))


# --- the property -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _survives(read, path: Path) -> None:
    """`read(path)` returns sane cues or raises LocomadError; anything else fails the test."""
    log = logging.getLogger("locomad_cli")
    level = log.level
    log.setLevel(logging.ERROR)  # skipped-block warnings: noise here (restored for other tests)
    try:
        cues = read(path)
    except LocomadError as e:
        assert "\n" not in str(e)  # one line on stderr
        return
    finally:
        log.setLevel(level)
    for c in cues:
        for t in (c.start, c.end):
            assert isinstance(t, float) and math.isfinite(t) and abs(t) <= MAX_SECONDS
        assert isinstance(c.text, str)


def _subtitles(scratch: Path, data: bytes, suffix: str) -> None:
    path = scratch / f"subs{suffix}"
    path.write_bytes(data)
    _survives(read_cues, path)
    _survives(read_timed, path)


def _csv(scratch: Path, text: str) -> None:
    path = scratch / "times.csv"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _survives(read_timed, path)


def _json(scratch: Path, text: str) -> None:
    path = scratch / "times.json"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _survives(read_timed, path)


@FAST
@given(data=subtitle_bytes())
def test_fuzz_srt(scratch, data):
    _subtitles(scratch, data, ".srt")


@FAST
@given(data=subtitle_bytes())
def test_fuzz_vtt(scratch, data):
    _subtitles(scratch, b"WEBVTT\n\n" + data, ".vtt")


@FAST
@given(text=csv_text())
def test_fuzz_csv(scratch, text):
    _csv(scratch, text)


@FAST
@given(text=json_text())
def test_fuzz_json(scratch, text):
    _json(scratch, text)


@FAST
@given(value=st.one_of(JSON_VALUES, VALUES))
def test_fuzz_parse_time(value):
    try:
        t = parse_time(value)
    except ValueError:
        return
    assert math.isfinite(t) and abs(t) <= MAX_SECONDS


@pytest.mark.slow
@SLOW
@given(data=subtitle_bytes())
def test_fuzz_vtt_long(scratch, data):
    _subtitles(scratch, b"WEBVTT\n\n" + data, ".vtt")


@pytest.mark.slow
@SLOW
@given(data=subtitle_bytes())
def test_fuzz_srt_long(scratch, data):
    _subtitles(scratch, data, ".srt")


@pytest.mark.slow
@SLOW
@given(text=csv_text())
def test_fuzz_csv_long(scratch, text):
    _csv(scratch, text)


@pytest.mark.slow
@SLOW
@given(text=json_text())
def test_fuzz_json_long(scratch, text):
    _json(scratch, text)
