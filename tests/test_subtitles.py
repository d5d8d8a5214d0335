import json
import logging

import pytest

from locomad_cli.tracks.readers import (
    Cue,
    clean_text,
    decode_text,
    parse_time,
    read_cues,
    read_timed,
)
from locomad_cli.utils import LocomadError

SRT = (
    '1\n00:00:01,000 --> 00:00:02,500\n{\\an8}<i>Café</i> &amp; <font color="red">naïve</font>\n'
    "\n"
    "2\n00:00:05,000 --> 00:00:06,000\nÇa va? Où est l'hôtel?\n"
    "\n"
    "3\n00:00:03,000 --> 00:00:04,200\nSecond line\nof a cue\n"
)
EXPECTED = [
    (1.0, 2.5, "Café & naïve"),
    (3.0, 4.2, "Second line of a cue"),
    (5.0, 6.0, "Ça va? Où est l'hôtel?"),
]


def _triples(cues):
    return [(c.start, c.end, c.text) for c in cues]


@pytest.mark.parametrize(
    "encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "cp1252", "latin-1"]
)
def test_srt_every_encoding(tmp_path, encoding):
    path = tmp_path / "film.srt"
    path.write_bytes(SRT.replace("\n", "\r\n").encode(encoding))
    assert _triples(read_cues(path)) == EXPECTED


@pytest.mark.parametrize(
    "encoding, text",
    [
        ("cp1251", "Привет, как дела? Где ты был вчера вечером?"),
        ("shift_jis", "こんにちは、元気ですか？昨日の夜どこにいたの？"),
        ("cp1253", "Καλημέρα, τι κάνεις; Πού ήσουν χθες το βράδυ;"),
    ],
)
def test_non_latin_legacy_encodings(tmp_path, encoding, text):
    path = tmp_path / "film.srt"
    path.write_bytes(f"1\n00:00:01,000 --> 00:00:02,000\n{text}\n".encode(encoding))
    assert [c.text for c in read_cues(path)] == [text]


def test_explicit_encoding(tmp_path):
    path = tmp_path / "pl.srt"
    text = "Dzień dobry, gdzie byłeś wczoraj?"
    path.write_bytes(f"1\n00:00:01,000 --> 00:00:02,000\n{text}\n".encode("cp1250"))
    assert [c.text for c in read_cues(path, encoding="cp1250")] == [text]
    with pytest.raises(LocomadError, match="cannot decode as utf-8"):
        read_cues(path, encoding="utf-8")


def test_cp1252_only_characters_survive():
    # the em dash and curly quotes exist in cp1252 but not in latin-1
    text, enc = decode_text("“Déjà” — vu".encode("cp1252"))
    assert (text, enc) == ("“Déjà” — vu", "cp1252")
    assert decode_text("Die Größe der Straße.".encode("cp1252")) == (
        "Die Größe der Straße.",
        "cp1252",
    )
    # byte 0x81 is undefined in cp1252: latin-1 takes it
    assert decode_text(b"caf\xe9 \x81")[1] == "latin-1"


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "cp1252"])
def test_vtt_encodings_tags_and_settings(tmp_path, encoding):
    vtt = (
        "WEBVTT\nKind: captions\n\nNOTE a comment\n\nSTYLE\n::cue { color: red }\n\n"
        "cue-1\n00:01.000 --> 00:02.000 align:start line:0\n<v Bob><c.red>Hé</c></v> there\n\n"
        "01:00:04.250 --> 01:00:05.000\n<b>bold</b> &lt;ok&gt;\n"
    )
    path = tmp_path / "film.vtt"
    path.write_bytes(vtt.encode(encoding))
    assert _triples(read_cues(path)) == [(1.0, 2.0, "Hé there"), (3604.25, 3605.0, "bold <ok>")]


def test_malformed_blocks_are_skipped_with_file_line(tmp_path, caplog):
    text = (
        "1\n00:00:01,000 --> 00:00:02,000\none\n\n"
        "2\n00:00:0x,000 --> 00:00:04,000\nbad digits\n\n"  # line 5
        "garbage without timing\n\n"  # line 9
        "4\n00:00:05,000 --> 00:00:06,000\nfour\n"
        "5\n00:00:07,000 --> 00:00:08,000\nfive without blank line before\n\n"
        "6\n00:00:09,000 --> 00:00:08,000\nends before it starts\n"  # line 18
    )
    path = tmp_path / "bad.srt"
    path.write_text(text, encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="locomad_cli.tracks.readers"):
        cues = read_cues(path)
    assert _triples(cues) == [
        (1.0, 2.0, "one"),
        (5.0, 6.0, "four"),
        (7.0, 8.0, "five without blank line before"),
    ]
    # one warning line per kind of problem, naming the first place it happens
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: skipped 2 malformed cue blocks, first at line 5 "
        "(bad timing line '00:00:0x,000 --> 00:00:04,000')",
        f"{path}:18: skipped a cue that ends before it starts",
    ]


def test_vtt_malformed_block_skipped(tmp_path, caplog):
    path = tmp_path / "bad.vtt"
    path.write_text(
        "WEBVTT\n\n00:01.000 --> 00:02.000\na\n\n00:03.000 --> 00:0x.000\nb\n\n"
        "00:04.000 --> 00:05.000\nc\n"
    )
    with caplog.at_level(logging.WARNING, logger="locomad_cli.tracks.readers"):
        assert [c.text for c in read_cues(path)] == ["a", "c"]
    assert f"{path}:6: skipped" in caplog.text


def test_out_of_order_overlaps_and_duplicates(tmp_path):
    path = tmp_path / "o.srt"
    path.write_text(
        "1\n00:00:05,000 --> 00:00:07,000\nlate\n\n"
        "2\n00:00:01,000 --> 00:00:04,000\nearly\n\n"
        "3\n00:00:03,000 --> 00:00:06,000\noverlap\n\n"
        "4\n00:00:01,000 --> 00:00:04,000\nearly\n\n"
        "5\n00:00:08,000 --> 00:00:09,000\n<i></i>\n"
    )
    assert _triples(read_cues(path)) == [
        (1.0, 4.0, "early"),
        (3.0, 6.0, "overlap"),
        (5.0, 7.0, "late"),
    ]


def test_unreadable_subtitles_raise(tmp_path):
    with pytest.raises(LocomadError, match="cannot read"):
        read_cues(tmp_path / "missing.srt")
    junk = tmp_path / "junk.srt"
    junk.write_bytes(b"\x00\x01 not subtitles at all\n")
    with pytest.raises(LocomadError, match=f"{junk}:1: no readable cue"):
        read_cues(junk)
    vtt = tmp_path / "nohead.vtt"
    vtt.write_text("00:01.000 --> 00:02.000\nx\n")
    with pytest.raises(LocomadError, match=f"{vtt}:1: a WebVTT file starts with 'WEBVTT'"):
        read_cues(vtt)


def test_clean_text():
    assert clean_text("{\\an8}{\\i1}Hi\\Nthere{\\i0}") == "Hi there"
    assert clean_text('<font face="x">a</font>  <u>b</u>\n c &quot;d&quot;') == 'a b c "d"'
    assert clean_text("5 < 6 and 7 > 3") == "5 < 6 and 7 > 3"


def test_parse_time():
    assert parse_time("01:02:03.500") == 3723.5
    assert parse_time("02:03,25") == 123.25
    assert parse_time("12.5") == 12.5
    assert parse_time(7) == 7.0
    with pytest.raises(ValueError):
        parse_time("soon")


def test_timed_csv_and_json(tmp_path):
    csv_path = tmp_path / "ad.csv"
    csv_path.write_text("Start,End,Sentence\n1.5,3,He runs.\n00:00:04.000,00:00:06.500,\n")
    assert [(c.start, c.end, c.text, c.line) for c in read_timed(csv_path)] == [
        (1.5, 3.0, "He runs.", 2),
        (4.0, 6.5, "", 3),
    ]
    js = tmp_path / "ad.json"
    js.write_text(json.dumps([{"start": "00:00:01.000", "end": 2}, {"start": 3, "end": 4}]))
    assert [(c.start, c.end) for c in read_timed(js)] == [(1.0, 2.0), (3.0, 4.0)]
    mad = tmp_path / "mad.json"
    mad.write_text(json.dumps({"a1": {"timestamps": [5, 7], "sentence": "She waits."}}))
    assert read_timed(mad) == [Cue(5.0, 7.0, "She waits.", 1)]
    bad = tmp_path / "bad.csv"
    bad.write_text("start,end\n1,2\n3,later\n")
    with pytest.raises(LocomadError, match=f"{bad}:3: not a time"):
        read_timed(bad)
    nocol = tmp_path / "nocol.csv"
    nocol.write_text("a,b\n1,2\n")
    with pytest.raises(LocomadError, match=f"{nocol}:2: needs a start and an end"):
        read_timed(nocol)


def test_timed_srt_keeps_file_order_and_lines(tmp_path):
    path = tmp_path / "ad.srt"
    path.write_text("1\n00:00:05,000 --> 00:00:06,000\nb\n\n2\n00:00:01,000 --> 00:00:02,000\n\n")
    assert [(c.start, c.text, c.line) for c in read_timed(path)] == [(5.0, "b", 1), (1.0, "", 5)]
