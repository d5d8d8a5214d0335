"""The issue's "done when" on a real film with programme audio (helpers/adfilm.py): real espeak-ng
speech, real ffmpeg mixing and muxing, measured on the delivered files.

- ffprobe lists the AD audio track (language, visual_impaired) and the text track (language;
  descriptions: read by ffprobe in MP4, by mkvtoolnix in MKV, since ffmpeg 5.1 neither writes
  nor reads Matroska's FlagTextDescriptions); the video stream is bit-identical to the input's;
- the AD stem is below -60 dBFS outside its cues' slots; the programme under each cue is at
  least 10 dB below its own level just outside;
- the mix's integrated loudness is within 1 LU of the target (pyloudnorm, not the meter
  locomad itself uses);
- no cue's audio runs past its slot unless extended, and none overlaps dialogue;
- the extended cut holds the picture for the pause and carries it in JSON and WebVTT.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from types import SimpleNamespace

import numpy as np
import pytest
from helpers.adfilm import SLOTS, make_film, make_track, read_wav, write_track

from locomad_cli.features.video import probe
from locomad_cli.tracks.readers import read_cues
from locomad_cli.voice.fit import VoiceOptions, voice
from locomad_cli.voice.mix import MixOptions

SILENT = 10 ** (-60 / 20)


def _run_voice(film, ad, out, **kw):
    mix = kw.pop("mix", MixOptions())
    opts = VoiceOptions(ad=str(ad), output_dir=str(out), progress=False, mix=mix, **kw)
    track, paths = voice(film, opts)
    return SimpleNamespace(film=film, out=out, track=track, paths=paths, opts=opts)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    root = tmp_path_factory.mktemp("mix")
    film, srt = make_film(root / "film")
    ad = write_track(make_track(film, srt), root / "film" / "film.ad.json")
    run = _run_voice(film, ad, root / "out", formats="srt,vtt,json,dapt")
    run.srt, run.ad, run.duration = srt, ad, probe(film).duration
    return run


@pytest.fixture(scope="module")
def extended(made, tmp_path_factory):
    out = tmp_path_factory.mktemp("extended")
    shutil.copytree(made.out / "film.voice-cache", out / "film.voice-cache")  # same speech
    return _run_voice(made.film, made.ad, out, extended=True, mix=MixOptions(container="mp4"))


def _streams(path):
    cmd = ["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)]
    return json.loads(subprocess.run(cmd, capture_output=True, check=True).stdout)["streams"]


def _hash(path, stream):
    cmd = ["ffmpeg", "-v", "error", "-i", str(path), "-map", f"0:{stream}", "-c", "copy"]
    cmd += ["-f", "streamhash", "-hash", "sha256", "-"]
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split("=")[-1]


def _voiced(track):
    return [s for s in track["slots"] if "text" in s.get("voice", {})]


@pytest.mark.slow
def test_described_mkv_lists_the_ad_and_text_tracks(made, tmp_path):
    streams = _streams(made.out / "film.described.mkv")
    assert [s["codec_type"] for s in streams] == ["video", "audio", "audio", "subtitle"]
    original, ad, text = streams[1], streams[2], streams[3]
    assert original["disposition"]["default"] == 1
    assert ad["tags"]["language"] == "eng" and ad["tags"]["title"] == "Audio description"
    assert ad["disposition"]["visual_impaired"] == 1 and ad["disposition"]["default"] == 0
    assert text["codec_name"] == "webvtt" and text["tags"]["language"] == "eng"
    # Matroska's FlagTextDescriptions, read by mkvtoolnix (ffprobe 5.1 does not read it)
    info = subprocess.run(
        ["mkvmerge", "-J", str(made.out / "film.described.mkv")], capture_output=True, check=True
    )
    tracks = json.loads(info.stdout)["tracks"]
    assert tracks[3]["properties"]["flag_text_descriptions"] is True
    assert tracks[2]["properties"]["flag_visual_impaired"] is True
    # the text track holds the spoken descriptions at their times
    vtt = tmp_path / "muxed.vtt"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(made.out / "film.described.mkv"), "-map", "0:s:0",
         str(vtt)],
        check=True,
    )  # fmt: skip
    # ffmpeg shifts every stream by the AAC priming of the copied audio (21 ms) in the MKV:
    # times count from the first picture
    t0 = float(streams[0]["start_time"])
    cues = [(c.start - t0, c.end - t0, c.text) for c in read_cues(vtt)]
    want = [
        (s["voice"]["start"], s["voice"]["end"], s["voice"]["text"]) for s in _voiced(made.track)
    ]
    assert [(round(a, 2), round(b, 2), t) for a, b, t in cues] == [
        (round(a, 2), round(b, 2), t) for a, b, t in want
    ]


@pytest.mark.slow
def test_video_and_original_audio_are_bit_identical(made):
    out = made.out / "film.described.mkv"
    assert _hash(out, "v:0") == _hash(made.film, "v:0")
    assert _hash(out, "a:0") == _hash(made.film, "a:0")


@pytest.mark.slow
def test_ad_stem_is_silent_outside_the_slots(made):
    stem, rate = read_wav(made.out / "film.ad.wav")
    assert rate == 48000 and stem.shape[1] == 1
    assert abs(len(stem) / rate - made.duration) < 0.01
    inside = np.zeros(len(stem), dtype=bool)
    for s in made.track["slots"]:
        inside[int(s["start"] * rate) : int(np.ceil(s["end"] * rate)) + 1] = True
    assert np.abs(stem[~inside, 0]).max() < SILENT
    # and each voiced cue's sound lies in its own window (the slot kept off dialogue)
    loud = np.flatnonzero(np.abs(stem[:, 0]) >= SILENT) / rate
    for s in _voiced(made.track):
        a, b = s["voice"]["window"]
        mine = loud[(loud >= s["start"] - 0.5) & (loud <= s["end"] + 0.5)]
        assert len(mine) and mine[0] >= a - 1e-3 and mine[-1] <= b + 1e-3, s["index"]


@pytest.mark.slow
def test_programme_is_ducked_at_least_10_db_under_each_cue(made):
    mix, rate = read_wav(made.out / "film.ad-mix.wav")
    stem, _ = read_wav(made.out / "film.ad.wav")
    n = min(len(mix), len(stem))
    programme = mix[:n, 0] - 0.70711 * stem[:n, 0]  # the AD sits in each channel at -3 dB
    ramp = made.opts.mix.ramp
    depths = []
    for s in _voiced(made.track):
        a, b = s["voice"]["start"], s["voice"]["end"]
        under = programme[int((a + 0.05) * rate) : int((b - 0.05) * rate)]
        before = programme[int((a - ramp - 0.5) * rate) : int((a - ramp) * rate)]
        level = 10 * np.log10(np.mean(under**2)), 10 * np.log10(np.mean(before**2))
        depths.append(level[1] - level[0])
        assert level[0] <= level[1] - 10, (s["index"], level)
    assert 11 < np.median(depths) < 14  # the -12 dB asked for, over a steady bed


@pytest.mark.slow
def test_mix_loudness_is_on_target(made):
    import pyloudnorm

    mix, rate = read_wav(made.out / "film.ad-mix.wav")
    assert rate == 48000 and mix.shape[1] == 2
    measured = pyloudnorm.Meter(rate).integrated_loudness(mix)
    assert abs(measured - made.opts.mix.loudness) <= 1.0
    metrics = json.loads((made.out / "film.metrics.json").read_text())
    assert abs(metrics["loudness"]["measured"]["integrated"] - measured) < 0.5


@pytest.mark.slow
def test_every_decision_is_recorded_and_no_cue_runs_past_its_slot(made):
    rows = made.track["slots"]
    decisions = [r["voice"]["decision"] for r in rows]
    assert decisions[0] == "substituted" and rows[0]["voice"]["candidate"] == 2
    assert rows[0]["voice"]["text"] == SLOTS[0][2][2]
    assert decisions[5] == "dropped" and "200 wpm" in rows[5]["voice"]["reason"]
    assert set(decisions[1:5] + decisions[6:]) <= {"fitted", "sped_up"}
    assert "sped_up" in decisions and "fitted" in decisions
    assert rows[7]["voice"]["window"] == [37.8, 39.5]  # kept off the line that ends at 37.8
    dialogue = [(c.start, c.end) for c in read_cues(made.srt)]
    for r in _voiced(made.track):
        v = r["voice"]
        assert v["end"] <= v["window"][1] + 1e-3 and v["start"] >= v["window"][0] - 1e-3
        assert v["window"][0] >= r["start"] and v["window"][1] <= r["end"]
        assert v["wpm"] <= 200 * 1.005 and abs(v["end"] - v["start"] - v["duration"]) < 2e-3
        assert all(min(v["end"], e) <= max(v["start"], s) for s, e in dialogue)
        if v["decision"] == "fitted":
            assert abs(v["wpm"] - 170) <= 0.05 * 170
    metrics = json.loads((made.out / "film.metrics.json").read_text())
    assert metrics["ad_over_dialogue_seconds"] == 0.0
    assert metrics["counts"]["dropped"] == 1 and metrics["voiced"] == 7
    assert sum(metrics["counts"].values()) == len(SLOTS)
    assert metrics["wpm"]["max"] <= 201 and metrics["dialogue_known"]
    summary = made.track["voice"]["summary"]
    assert summary.startswith("film: voiced 7 of 8 descriptions") and "1 dropped" in summary
    # the input track is untouched; the voiced one keeps every field describe wrote
    saved = json.loads((made.out / "film.ad.json").read_text())
    assert saved == made.track
    assert all("candidates" in r and "voice" in r for r in saved["slots"])
    assert "voice" not in json.loads(made.ad.read_text())["slots"][0]


@pytest.mark.slow
def test_nothing_is_left_half_written(made):
    names = sorted(p.name for p in made.out.iterdir())
    assert names == [
        "film.ad-mix.wav", "film.ad.dapt.ttml", "film.ad.json", "film.ad.srt", "film.ad.vtt",
        "film.ad.wav", "film.described.mkv", "film.metrics.json", "film.voice-cache",
    ]  # fmt: skip
    assert sorted(str(p) for p in made.paths) == sorted(
        str(made.out / n) for n in names if n != "film.voice-cache"
    )
    assert not [p for p in made.out.rglob("*") if p.name.startswith(".")]


@pytest.mark.slow
def test_a_second_run_synthesizes_nothing(made, tmp_path):
    from locomad_cli.voice.tts import SpeechCache, make_engine

    cache = SpeechCache(made.out / "film.voice-cache", make_engine())
    for r in _voiced(made.track):
        cache.synth(r["voice"]["text"], r["voice"]["engine_rate"])
    assert cache.synthesized == 0 and cache.reused == len(_voiced(made.track))


@pytest.mark.slow
def test_extended_cut_holds_the_picture_for_the_overrun(extended, made):
    rows = extended.track["slots"]
    v = rows[5]["voice"]
    assert v["decision"] == "extended" and v["overrun"] > 0.2
    pause = v["pause"]
    assert pause == {"at": v["window"][1], "duration": v["overrun"]}
    assert extended.track["voice"]["pauses"] == [pause]
    assert extended.track["voice"]["added_time"] == pause["duration"]
    # everything else as in the plain run
    assert [r["voice"]["decision"] for r in rows if r["index"] != 5] == [
        r["voice"]["decision"] for r in made.track["slots"] if r["index"] != 5
    ]
    # cues after the pause are later by the added time on the delivered timeline
    assert rows[6]["voice"]["output_start"] == pytest.approx(
        rows[6]["voice"]["start"] + pause["duration"], abs=2e-3
    )
    stem, rate = read_wav(extended.out / "film.ad.wav")
    assert len(stem) / rate == pytest.approx(made.duration + pause["duration"], abs=0.01)
    streams = _streams(extended.out / "film.described.mp4")
    assert [s["codec_type"] for s in streams] == ["video", "audio", "audio", "subtitle"]
    length = made.duration + pause["duration"]
    assert float(streams[0]["duration"]) == pytest.approx(length, abs=0.15)
    ad, text = streams[2], streams[3]
    assert ad["tags"]["language"] == "eng" and ad["disposition"]["visual_impaired"] == 1
    assert text["codec_name"] == "mov_text" and text["disposition"]["descriptions"] == 1
    # the held frames are one picture; the programme is silent while it holds
    frames = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(extended.out / "film.described.mp4"), "-map", "0:v",
         "-f", "framemd5", "-"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    tb = next(ln for ln in frames.splitlines() if ln.startswith("#tb 0:")).split()[-1]
    num, den = (int(x) for x in tb.split("/"))
    rows = [ln.split(",") for ln in frames.splitlines() if not ln.startswith("#")]
    end = pause["at"] + pause["duration"] - 0.1  # the film resumes on the next frame
    held = [r[-1].strip() for r in rows if pause["at"] <= int(r[2]) * num / den <= end]
    assert len(held) >= 2 and len(set(held)) == 1
    mix, _ = read_wav(extended.out / "film.ad-mix.wav")
    n = min(len(mix), len(stem))
    programme = mix[:n, 0] - 0.70711 * stem[:n, 0]
    a, b = int((pause["at"] + 0.05) * rate), int((pause["at"] + pause["duration"] - 0.05) * rate)
    assert np.abs(programme[a:b]).max() < 2 * SILENT
    # the pause point is in the WebVTT of the film's timeline and in the DAPT-free JSON
    vtt = (extended.out / "film.ad.vtt").read_text()
    assert f"pauses the picture at 00:00:{pause['at']:06.3f}" in vtt
    metrics = json.loads((extended.out / "film.metrics.json").read_text())
    assert metrics["pauses"] == 1 and metrics["added_time"] == pause["duration"]
    assert metrics["ad_over_dialogue_seconds"] == 0.0


@pytest.mark.slow
def test_film_without_audio_gets_the_ad_track_alone(made, tmp_path, caplog):
    import pyloudnorm

    film, srt = make_film(tmp_path / "silent", audio=False)
    ad = write_track(make_track(film, srt), tmp_path / "silent" / "film.ad.json")
    shutil.copytree(made.out / "film.voice-cache", tmp_path / "out" / "film.voice-cache")
    with caplog.at_level("WARNING", logger="locomad_cli"):
        run = _run_voice(film, ad, tmp_path / "out")
    said = [r for r in caplog.records if "has no audio" in r.getMessage()]
    assert len(said) == 1
    assert not (tmp_path / "out" / "film.ad-mix.wav").exists()
    streams = _streams(tmp_path / "out" / "film.described.mkv")
    assert [s["codec_type"] for s in streams] == ["video", "audio", "subtitle"]
    assert streams[1]["disposition"]["visual_impaired"] == 1
    assert streams[1]["disposition"]["default"] == 1
    stem, rate = read_wav(tmp_path / "out" / "film.ad.wav")
    measured = pyloudnorm.Meter(rate).integrated_loudness(stem[:, 0])
    assert abs(measured - run.opts.mix.loudness) <= 1.0
    assert _hash(tmp_path / "out" / "film.described.mkv", "v:0") == _hash(film, "v:0")
