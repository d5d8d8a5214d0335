"""Speech and fitting (tts.py, voice.py), the decoder's n-best, and the voice command's bad input.

Real espeak-ng and ffmpeg throughout: rates and durations are measured on the audio written.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import torch
from helpers.adfilm import make_track, write_track
from helpers.media import make_video
from typer.testing import CliRunner

from locomad_cli.cli import app
from locomad_cli.utils import LocomadError
from locomad_cli.voice.fit import VoiceOptions, fit_description, speakable_window
from locomad_cli.voice.tts import SpeechCache, make_engine

runner = CliRunner()
TEXT = "A woman in an orange jacket walks slowly into the kitchen."


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return SpeechCache(tmp_path_factory.mktemp("speech"), make_engine())


def _measured(path: Path) -> tuple[float, int, int]:
    with wave.open(str(path), "rb") as w:
        return w.getnframes() / w.getframerate(), w.getframerate(), w.getnchannels()


# --- speech ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_speech_is_heard_at_the_rate_asked_and_synthesized_once(cache):
    s = cache.speak(TEXT, 170)
    seconds, rate, channels = _measured(s.path)
    assert (rate, channels) == (48000, 1) and seconds == pytest.approx(s.duration)
    heard = len(TEXT.split()) * 60 / seconds
    assert heard == pytest.approx(170, rel=0.04)
    # espeak-ng's own knob is far from it: the heard rate is aimed, not assumed
    assert abs(s.engine_rate - 170) > 10
    fresh = SpeechCache(cache.folder, make_engine())  # a rerun, or a resumed one
    again = fresh.speak(TEXT, 170)
    assert fresh.synthesized == 0 and again.path == s.path
    faster = cache.speak(TEXT, 195, at_most=200)
    assert faster.duration < s.duration and faster.wpm <= 200


@pytest.mark.slow
def test_another_voice_never_reuses_the_cache(cache):
    other = SpeechCache(cache.folder, make_engine(voice="en-us"))
    s = other.speak(TEXT, 170)
    assert other.synthesized >= 1 and s.path != cache.speak(TEXT, 170).path


# --- fitting --------------------------------------------------------------------------------


def _opts(**kw):
    return VoiceOptions(ad="unused.json", progress=False, **kw)


@pytest.mark.slow
def test_the_fitting_ladder(cache):
    calm = cache.speak(TEXT, 170)
    roomy = fit_description([TEXT], (10.0, 10.0 + calm.duration + 0.5), cache, _opts())
    assert roomy.decision == "fitted" and roomy.speech.path == calm.path

    tight = (10.0, 10.0 + calm.duration * 0.92)  # needs about 185 wpm
    fit = fit_description([TEXT], tight, cache, _opts())
    assert fit.decision == "sped_up" and fit.candidate == 0
    assert fit.speech.duration <= tight[1] - tight[0] and 170 < fit.speech.wpm <= 200

    short = "She walks in."
    tiny = (10.0, 10.0 + calm.duration * 0.6)  # needs about 280 wpm: not at 200
    subst = fit_description([TEXT, TEXT + " Again.", short], tiny, cache, _opts())
    assert subst.decision == "substituted" and subst.candidate == 2
    assert subst.speech.text == short and subst.speech.duration <= tiny[1] - tiny[0]

    dropped = fit_description([TEXT], tiny, cache, _opts())
    assert dropped.decision == "dropped" and dropped.speech is None and "200 wpm" in dropped.reason
    kept = fit_description([TEXT], tiny, cache, _opts(overflow="keep"))
    assert kept.decision == "kept" and kept.speech.wpm <= 200 * 1.005
    assert kept.overrun == pytest.approx(kept.speech.duration - (tiny[1] - tiny[0]))
    ext = fit_description([TEXT], tiny, cache, _opts(extended=True))
    assert ext.decision == "extended" and ext.speech.path == calm.path  # held: no hurry
    assert ext.overrun == pytest.approx(calm.duration - (tiny[1] - tiny[0]))
    # every reading tried is on record
    assert [t["candidate"] for t in subst.tried][:1] == [0] and len(subst.tried) >= 3
    # a text the engine makes no sound of is dropped, not a crash; so is a silent candidate
    mute = fit_description(["..."], (10.0, 13.0), cache, _opts())
    assert mute.decision == "dropped" and "no sound" in mute.reason
    skip = fit_description([TEXT, "?!", short], tiny, cache, _opts())
    assert skip.decision == "substituted" and skip.candidate == 2


def test_slots_are_kept_off_dialogue():
    dialogue = [(2.0, 3.0), (5.0, 6.0)]
    assert speakable_window(0.5, 1.9, dialogue) == (0.5, 1.9)
    assert speakable_window(2.5, 4.5, dialogue) == (3.0, 4.5)  # speech at its start
    assert speakable_window(3.5, 7.0, dialogue) == (3.5, 5.0)  # speech before its end
    assert speakable_window(5.2, 5.8, dialogue) == (6.0, 6.0)  # all dialogue: no room
    blocked = fit_description(["Hi there."], (6.0, 6.0), None, _opts())
    assert blocked.decision == "dropped" and "dialogue" in blocked.reason


def test_dialogue_includes_the_speech_describe_planned_around(tmp_path):
    """No subtitles, but describe's VAD found speech that bounds a slot (`why`): voice keeps
    off it too."""
    from locomad_cli.voice.fit import dialogue_of

    speech = {"kind": "speech", "start": 4.2, "end": 6.0, "ref": "speech 1"}
    track = {"slots": [{"start": 1.0, "end": 4.5, "text": "x", "why": {"before": [speech]}}]}
    (tmp_path / "film.srt").write_text("1\n00:00:08,000 --> 00:00:09,000\nHi.\n")
    dialogue = dialogue_of(track, _opts(subs=str(tmp_path / "film.srt")), tmp_path / "a.json")
    assert dialogue == [(4.2, 6.0), (8.0, 9.0)]
    assert speakable_window(1.0, 4.5, dialogue) == (1.0, 4.2)


def test_options_are_checked():
    for kw, match in [
        ({"rate": 20}, "--rate"),
        ({"rate": 190, "max_rate": 180}, "--max-rate"),
        ({"overflow": "squeeze"}, "unknown --overflow 'squeeze'"),
    ]:
        with pytest.raises(LocomadError, match=match):
            _opts(**kw).check()
    from locomad_cli.voice.mix import MixOptions

    for kw, match in [
        ({"container": "avi"}, "unknown --container 'avi'"),
        ({"language": "xx-nonsense"}, "--language 'xx-nonsense'"),
        ({"duck_db": 6}, "--duck"),
        ({"loudness": 0}, "--loudness"),
    ]:
        with pytest.raises(LocomadError, match=match):
            MixOptions(**kw).check()


# --- the model's n-best ---------------------------------------------------------------------


def test_decoder_keeps_its_n_best_with_scores(card, one_thread):
    from helpers.batches import batch_of

    from locomad_cli.model.locomad import LoCoMAD

    card.llm.max_new_tokens = 6
    card.llm.num_beams = 3
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card)
    gens = model.generate(batch_of(card, 2))
    for g in gens:
        texts = [t for t, _ in g.candidates]
        scores = [s for _, s in g.candidates]
        assert 1 <= len(g.candidates) <= 3 and texts[0] == g.text
        assert len(set(texts)) == len(texts)
        assert scores == sorted(scores, reverse=True) and all(s < 0 for s in scores)
    # the best beam is what plain beam search returns
    q = torch.randn(1, card.pme.num_queries, card.pme.hidden_size)
    best = model.decoder.generate_ids(q, [[]], ["hello"])[0]
    assert model.decoder.generate_nbest_ids(q, [[]], ["hello"])[0][0][0] == best
    card.llm.num_beams = 1  # greedy: one honest candidate, its mean log-probability
    (only,) = model.decoder.generate_nbest_ids(q, [[]], ["hello"])[0]
    assert only[1] < 0 and only[0] == model.decoder.generate_ids(q, [[]], ["hello"])[0]


# --- the command and its bad input ----------------------------------------------------------


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A 6 s film with a tone for programme and a one-slot track for it."""
    folder = tmp_path_factory.mktemp("small")
    film = make_video(folder / "small.mp4", duration=6.0, audio=True)
    slots = [(1.0, 4.5, ["A man walks in."])]
    ad = write_track(make_track(film, None, slots), folder / "small.ad.json")
    return film, ad


def _fails(args, match, cwd=None):
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("locomad: error: ") and match in lines[0]
    assert "Traceback" not in res.output


@pytest.mark.slow
def test_refuses_a_track_of_another_film_or_version(small, tmp_path):
    film, ad = small
    other = make_video(tmp_path / "other.mp4", duration=7.0, audio=True)
    out = tmp_path / "out"
    _fails(["voice", str(other), "--ad", str(ad), "-o", str(out)], "written for another film")
    track = json.loads(ad.read_text())
    for change, match in [
        ({"version": "0.0.1"}, "written by locomad 0.0.1"),
        ({"tool": "whisper"}, "not an AD track"),
        ({"slots": [{"start": 3, "end": 1, "text": "x"}]}, "damaged track"),
        ({"film_source": None, "film": "another"}, "the film 'another'"),
        ({"slots": [{"start": 1, "end": 60, "text": "x"}]}, "past the end"),
    ]:
        bad = write_track({**track, **change}, tmp_path / "bad.ad.json")
        _fails(["voice", str(film), "--ad", str(bad), "-o", str(out)], match)
    (tmp_path / "junk.json").write_text("{not json")
    _fails(["voice", str(film), "--ad", str(tmp_path / "junk.json"), "-o", str(out)], "not JSON")
    _fails(["voice", str(film), "--ad", str(tmp_path / "none.json"), "-o", str(out)], "no such")
    _fails(["voice", str(film), "--ad", str(ad), "--overflow", "x", "-o", str(out)], "--overflow")
    _fails(["voice", str(film), "--ad", str(ad), "--tts", "piper", "-o", str(out)], "piper")
    _fails(["voice", str(film), "--ad", str(ad), "--voice", "zz-qq", "-o", str(out)], "no voice")
    assert not out.exists()  # nothing written, not even the folder


@pytest.mark.slow
def test_without_espeak_ng_says_how_to_install_it(small, tmp_path):
    film, ad = small
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ffmpeg", "ffprobe"):
        os.symlink(shutil.which(tool), bin_dir / tool)
    env = {**os.environ, "PATH": str(bin_dir)}
    code = "from locomad_cli.cli import main; main()"
    cmd = [sys.executable, "-c", code, "voice", str(film), "--ad", str(ad), "-o", str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "locomad: error: espeak-ng not found: install it (apt-get install espeak-ng)"
    ]


@pytest.mark.slow
def test_voice_command_delivers(small, tmp_path):
    film, ad = small
    out = tmp_path / "out"
    res = runner.invoke(app, ["voice", str(film), "--ad", str(ad), "-o", str(out), "-q"])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip().startswith("small: voiced 1 of 1 descriptions (1 fitted)")
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "small.ad-mix.wav", "small.ad.json", "small.ad.srt", "small.ad.vtt", "small.ad.wav",
        "small.described.mkv", "small.metrics.json", "small.voice-cache",
    ]  # fmt: skip
    voiced = json.loads((out / "small.ad.json").read_text())
    assert voiced["slots"][0]["voice"]["decision"] == "fitted"
    assert not voiced["voice"]["extended"] and voiced["voice"]["added_time"] == 0


@pytest.mark.slow
def test_describe_then_voice(tmp_path):
    """`describe --voice` with the shipped demo model on 12 s of the demo film: the JSON keeps
    the n-best (the demo card's beams, ranked to fit each slot) and the film's fingerprint, then the
    voice stage delivers (the demo film has no sound: the AD track alone)."""
    demo = Path(__file__).resolve().parents[1] / "demo"
    film = tmp_path / "clip.mp4"
    subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(demo / "demo.mp4"), "-t", "12", "-c", "copy",
         str(film)],
        check=True,
    )  # fmt: skip
    (tmp_path / "clip.ad-times.srt").write_text(
        "1\n00:00:01,000 --> 00:00:03,900\n\n\n2\n00:00:05,100 --> 00:00:08,300\n\n"
    )
    args = ["describe", str(film), "--model", "demo", "--ad-times"]
    args += [str(tmp_path / "clip.ad-times.srt"), "--vad", "off", "--shots", "off"]
    args += ["--voice", "-f", "json,dapt", "-q", "--device", "cpu"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("clip: voiced ")
    track = json.loads((tmp_path / "clip.ad.json").read_text())
    assert track["film_source"]["source_name"] == "clip.mp4" and track["film_duration"] > 11
    for s in track["slots"]:  # the demo card's 4 beams, the one spoken first
        assert 1 <= len(s["candidates"]) and s["candidates"][0]["text"] == s["text"]
        assert s["candidates"][0]["score"] < 0 and "decision" in s["voice"]
    for name in ("clip.ad.wav", "clip.described.mkv", "clip.metrics.json", "clip.ad.dapt.ttml"):
        assert (tmp_path / name).is_file()
