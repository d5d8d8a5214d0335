import functools
import html
import json
import re
import shutil
import subprocess
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pysrt
import pytest
import webvtt
from helpers.browser import FLAGS
from helpers.media import make_video

from locomad_cli.tracks.readers import read_cues
from locomad_cli.tracks.writers import format_timestamp, get_writer, parse_formats
from locomad_cli.utils import LocomadError

TRACK = {
    "film": "test film",
    "card": "tiny",
    "setting": "recurrent",
    "tool": "locomad",
    "version": "0.1.0",
    "slots": [
        {"index": 0, "start": 0.5, "end": 1.5, "text": "A man & his <dog> walk.", "selected": []},
        {
            "index": 1,
            "start": 2.0,
            "end": 3.25,
            "text": "He sits --> down\n\nslowly.",
            "selected": [{"text": "A man & his <dog> walk.", "score": 0.7}],
            "subtitles": "Hello.",
        },
        {"index": 2, "start": 3.3, "end": 3.9, "text": "Café au lait.", "selected": []},
    ],
}
TEXTS = ["A man & his <dog> walk.", "He sits -> down slowly.", "Café au lait."]
TIMES = [(0.5, 1.5), (2.0, 3.25), (3.3, 3.9)]
FLAT_TIMES = [t for pair in TIMES for t in pair]


@pytest.fixture
def written(tmp_path):
    paths = get_writer("all", tmp_path)(TRACK, "film")
    return {p.suffix[1:]: p for p in paths}


def test_timestamps():
    assert format_timestamp(3723.4567) == "01:02:03.457"
    assert format_timestamp(59.9999, ",") == "00:01:00,000"


def test_formats():
    assert parse_formats("all") == ["srt", "vtt", "json"]
    assert parse_formats("vtt, srt,vtt") == ["vtt", "srt"]
    with pytest.raises(LocomadError, match="unknown output format 'txt'"):
        parse_formats("srt,txt")


def test_srt_round_trip_pysrt(written):
    text = written["srt"].read_text(encoding="utf-8")
    assert text.startswith("1\n00:00:00,500 --> 00:00:01,500\nA man & his <dog> walk.\n\n2\n")
    subs = pysrt.open(str(written["srt"]), encoding="utf-8")
    assert [s.index for s in subs] == [1, 2, 3]
    assert [(s.start.ordinal / 1000, s.end.ordinal / 1000) for s in subs] == TIMES
    assert [s.text for s in subs] == TEXTS


def test_vtt_round_trip_webvtt(written):
    text = written["vtt"].read_text(encoding="utf-8")
    assert text.startswith("WEBVTT\n\nNOTE\nAudio description of test film")
    assert 'kind="descriptions"' in text and "model card tiny" in text
    vtt = webvtt.read(str(written["vtt"]))
    assert [c.identifier for c in vtt] == ["ad-1", "ad-2", "ad-3"]
    assert [(c.start, c.end) for c in vtt] == [
        ("00:00:00.500", "00:00:01.500"),
        ("00:00:02.000", "00:00:03.250"),
        ("00:00:03.300", "00:00:03.900"),
    ]
    assert [html.unescape(c.text) for c in vtt] == TEXTS
    # and our own reader gets the same back from both files
    assert [(c.start, c.end, c.text) for c in read_cues(written["vtt"])] == [
        (*t, x) for t, x in zip(TIMES, TEXTS, strict=True)
    ]


def test_json_keeps_provenance(written):
    data = json.loads(written["json"].read_text(encoding="utf-8"))
    assert data == TRACK


def test_no_partial_file_when_writing_fails(tmp_path):
    bad = dict(
        TRACK,
        slots=[{"start": 1.0, "end": 2.0, "text": "ok"}, {"start": -1, "end": 0, "text": "x"}],
    )
    with pytest.raises(ValueError):
        get_writer("srt", tmp_path)(bad, "film")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_ffprobe_reads_the_vtt_muxed_into_the_film(tmp_path, written):
    video = make_video(tmp_path / "film.mp4", duration=4.0)
    out = tmp_path / "film.ad.mkv"
    cmd = ["ffmpeg", "-v", "error", "-y", "-i", str(video), "-i", str(written["vtt"])]
    cmd += ["-map", "0", "-map", "1", "-c", "copy", "-c:s", "webvtt", str(out)]
    subprocess.run(cmd, check=True)
    probe = ["ffprobe", "-v", "error", "-of", "json", "-show_streams", "-show_packets"]
    info = json.loads(subprocess.run(probe + [str(out)], capture_output=True, check=True).stdout)
    subs = [s for s in info["streams"] if s["codec_type"] == "subtitle"]
    assert len(subs) == 1 and subs[0]["codec_name"] == "webvtt"
    packets = [p for p in info["packets"] if p["stream_index"] == subs[0]["index"]]
    got = [
        (float(p["pts_time"]), float(p["pts_time"]) + float(p["duration_time"])) for p in packets
    ]
    assert [t for pair in got for t in pair] == pytest.approx(FLAT_TIMES)


PAGE = """<!doctype html><html><body>
<video id="v" src="film.mp4" muted preload="auto">
<track id="t" kind="descriptions" default src="film.ad.vtt" srclang="en"></video>
<pre id="out">pending</pre>
<script>
const el = document.getElementById('t');
el.track.mode = 'hidden';
el.addEventListener('load', () => {
  const cues = Array.from(el.track.cues || []);
  document.getElementById('out').textContent = JSON.stringify({kind: el.track.kind,
    cues: cues.map(c => [c.id, c.startTime, c.endTime, c.getCueAsHTML().textContent])});
});
el.addEventListener('error', () => { document.getElementById('out').textContent = 'error'; });
</script></body></html>"""


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium")
def test_chromium_reads_the_descriptions_track(tmp_path, written):
    make_video(tmp_path / "film.mp4", duration=4.0)
    (tmp_path / "index.html").write_text(PAGE, encoding="utf-8")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    flags = [
        *FLAGS,
        f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000",
        "--dump-dom",
    ]
    try:
        run = subprocess.run(
            ["chromium", *flags, url], capture_output=True, text=True, timeout=120, check=True
        )
    finally:
        server.shutdown()
        server.server_close()
    m = re.search(r'<pre id="out">(.*?)</pre>', run.stdout, re.S)
    assert m, run.stdout[-500:]
    data = json.loads(html.unescape(m.group(1)))
    assert data["kind"] == "descriptions"
    assert [c[0] for c in data["cues"]] == ["ad-1", "ad-2", "ad-3"]
    assert [t for c in data["cues"] for t in c[1:3]] == pytest.approx(FLAT_TIMES)
    assert [c[3] for c in data["cues"]] == TEXTS
