"""The AD script as DAPT (`-f dapt`): well-formed XML in W3C's DAPT profile of TTML2, read back
by a real TTML reader (ttconv, converting to SRT) to the same cue times and texts; a voiced
script carries its audio references and extended-AD pauses."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pysrt
import pytest
from helpers.adfilm import make_track, write_track
from helpers.media import make_video

from locomad_cli.tracks.writers import get_writer
from locomad_cli.voice.fit import VoiceOptions, voice

TT = "{http://www.w3.org/ns/ttml}"
DAPTM = "{http://www.w3.org/ns/ttml/profile/dapt#metadata}"
TTP = "{http://www.w3.org/ns/ttml#parameter}"

TRACK = {
    "film": "film",
    "card": "demo",
    "setting": "recurrent",
    "tool": "locomad",
    "version": "0.1.0",
    "slots": [
        {"index": 1, "start": 5.25, "end": 7.5, "text": 'He says "stop" & <runs> off.'},
        {"index": 0, "start": 0.5, "end": 2.125, "text": "Café au lait, at dawn."},
        {"index": 2, "start": 3661.001, "end": 3663.4, "text": "An hour later."},
        {"index": 3, "start": 9.0, "end": 11.0, "text": ""},  # nothing said: no event
        {"index": 4, "start": 12.0, "end": 13.0, "text": "A stray\x11 byte."},  # not XML
    ],
}


def ttconv_cues(path):
    """What ttconv's TTML reader makes of the file, as (start, end, text) via its SRT writer."""
    import ttconv.imsc.reader
    import ttconv.srt.writer

    doc = ttconv.imsc.reader.to_model(ET.parse(path))
    srt = pysrt.from_string(ttconv.srt.writer.from_model(doc))
    return [(c.start.ordinal / 1000, c.end.ordinal / 1000, c.text) for c in srt]


def test_dapt_of_a_described_track_reads_back_to_the_same_cues(tmp_path):
    (path,) = get_writer("dapt", tmp_path)(TRACK, "film")
    assert path.name == "film.ad.dapt.ttml"
    root = ET.parse(path).getroot()  # well-formed
    assert root.tag == f"{TT}tt"
    assert root.get(f"{TTP}contentProfiles") == "http://www.w3.org/ns/ttml/profile/dapt1.0/content"
    assert root.get(f"{DAPTM}scriptType") == "preRecording"
    assert root.get(f"{DAPTM}scriptRepresents") == "visual.nonText"
    assert root.get("{http://www.w3.org/XML/1998/namespace}lang") == "en"
    divs = root.findall(f"{TT}body/{TT}div")
    assert [d.get(f"{DAPTM}represents") for d in divs] == ["visual.nonText"] * 4
    assert not root.findall(f".//{TT}audio")
    texts = [s["text"].replace("\x11", "") for s in TRACK["slots"]]
    want = sorted(
        (s["start"], s["end"], t) for s, t in zip(TRACK["slots"], texts, strict=True) if t
    )
    assert ttconv_cues(path) == want


@pytest.fixture(scope="module")
def voiced(tmp_path_factory):
    """A real voice run on a 10 s film: one description that fits, one that cannot (extended)."""
    folder = tmp_path_factory.mktemp("dapt")
    film = make_video(folder / "clip.mp4", duration=10.0, audio=True)
    slots = [
        (1.0, 4.0, ["A man & his dog walk in."]),
        (5.0, 6.5, ["The dog jumps onto the old sofa and falls asleep at once."]),
    ]
    ad = write_track(make_track(film, None, slots), folder / "clip.ad.json")
    opts = VoiceOptions(ad=str(ad), formats="dapt", extended=True, progress=False)
    track, paths = voice(film, opts)
    return track, folder / "clip.ad.dapt.ttml"


@pytest.mark.slow
def test_dapt_of_a_voiced_track_carries_audio_and_pauses(voiced):
    track, path = voiced
    root = ET.parse(path).getroot()
    assert root.get(f"{DAPTM}scriptType") == "asRecorded"
    rows = [s["voice"] for s in track["slots"]]
    assert [r["decision"] for r in rows] == ["fitted", "extended"]
    audio = root.findall(f".//{TT}span/{TT}audio")
    assert [a.get("src") for a in audio] == ["clip.ad.wav", "clip.ad.wav"]
    for a, r in zip(audio, rows, strict=True):
        begin, end = (_seconds(a.get(k)) for k in ("clipBegin", "clipEnd"))
        assert begin == pytest.approx(r["audio"]["begin"], abs=1e-3)
        assert end == pytest.approx(r["audio"]["end"], abs=1e-3)
    pause = root.find(f".//{TT}metadata/{{urn:locomad:dapt-metadata}}pause")
    assert _seconds(pause.get("at")) == pytest.approx(rows[1]["pause"]["at"])
    assert float(pause.get("dur").rstrip("s")) == pytest.approx(rows[1]["pause"]["duration"])
    # read back: each description from where its audio starts to where it ends (the extended
    # one to where the picture holds)
    want = [(r["start"], r["end"], r["text"]) for r in rows[:1]]
    want.append((rows[1]["start"], rows[1]["pause"]["at"], rows[1]["text"]))
    got = ttconv_cues(path)
    assert [t for *_, t in got] == [t for *_, t in want]
    for (a, b, _), (c, d, _) in zip(got, want, strict=True):
        assert a == pytest.approx(c, abs=1e-3) and b == pytest.approx(d, abs=1e-3)
    saved = json.loads((path.parent / "clip.ad.json").read_text())
    assert saved["voice"]["pauses"] == [rows[1]["pause"]]


def test_describe_writes_dapt(tmp_path):
    """`describe -f dapt` with the tiny random model, whose texts hold bytes XML cannot carry:
    they are left out, the file stays well-formed and the times read back."""
    import torch
    from safetensors.torch import save_file

    from locomad_cli.card import tiny_card
    from locomad_cli.describe.film import DescribeOptions, describe
    from locomad_cli.features.clip import load_clip
    from locomad_cli.model.locomad import LoCoMAD

    card = tiny_card()
    card.llm.max_new_tokens = 6
    torch.manual_seed(0)
    feats = torch.randn(int(10 * card.fps), card.clip.dim).half()
    meta = {"fps": f"{card.fps:g}", "duration": "10.0", "clip_model": card.clip.model}
    meta["frames"] = str(feats.shape[0])
    save_file({"features": feats}, str(tmp_path / "film.features.safetensors"), metadata=meta)
    (tmp_path / "times.srt").write_text(
        "1\n00:00:01,000 --> 00:00:03,000\n\n\n2\n00:00:04,500 --> 00:00:08,250\n\n"
    )
    opts = DescribeOptions(
        ad_times=str(tmp_path / "times.srt"),
        features=str(tmp_path / "film.features.safetensors"),
        output_dir=str(tmp_path / "out"),
        formats="dapt",
        device="cpu",
        progress=False,
    )
    model = LoCoMAD.from_card(card, pretrained=False)
    track, paths = describe(
        tmp_path / "film.mp4", opts, model=model, encode_text=load_clip(card).encode_text
    )
    assert [p.name for p in paths] == ["film.ad.dapt.ttml"]
    ET.parse(paths[0])  # well-formed, whatever the model wrote
    got = ttconv_cues(paths[0])
    assert [(a, b) for a, b, _ in got] == [(1.0, 3.0), (4.5, 8.25)]


def _seconds(clock: str) -> float:
    h, m, s = clock.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)
