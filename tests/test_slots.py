import logging

import pytest

from locomad_cli.slots.plan import dialogue_spans, propose_slots, slots_from_times
from locomad_cli.tracks.readers import Cue
from locomad_cli.utils import LocomadError


def _times(slots):
    return [(s.start, s.end) for s in slots]


def test_gaps_with_margins_and_film_edges():
    cues = [Cue(3.0, 5.0, "a"), Cue(9.0, 10.0, "b")]
    slots = propose_slots(cues, duration=14.0, min_gap=2.0, margin=0.3, max_len=8.0)
    # film start needs no margin; 5.3..8.7 between cues; 10.3..14 up to the film's end
    assert _times(slots) == [(0.0, 2.7), (5.3, 8.7), (10.3, 14.0)]
    assert [s.index for s in slots] == [0, 1, 2]
    assert all(s.source == "gap" for s in slots)


def test_touching_and_overlapping_cues_merge():
    cues = [Cue(1.0, 3.0, "a"), Cue(3.0, 4.0, "touch"), Cue(3.5, 6.0, "overlap"), Cue(2, 2.5, "in")]
    assert dialogue_spans(cues) == [(1.0, 6.0)]
    slots = propose_slots(cues, duration=9.0, min_gap=2.0, margin=0.3)
    assert _times(slots) == [(6.3, 9.0)]  # 0..0.7 too short


def test_short_gaps_are_left_alone():
    cues = [Cue(0.0, 2.0, "a"), Cue(4.5, 6.0, "b"), Cue(8.7, 9.0, "c")]
    # 2.3..4.2 = 1.9 s < 2; 6.3..8.4 = 2.1 s kept; after 9.0 the film ends at 10.5: 9.3..10.5
    assert _times(propose_slots(cues, 10.5)) == [(6.3, 8.4)]


def test_long_gap_split_evenly_not_past_end():
    cues = [Cue(0.0, 1.7, "a"), Cue(40.0, 42.0, "b")]
    slots = propose_slots(cues, duration=41.0, max_len=8.0)
    # 2.0 .. 39.7 = 37.7 s → 5 slots of 7.54 s; the cue past the end is ignored
    assert len(slots) == 5
    assert slots[0].start == 2.0 and slots[-1].end == 39.7
    assert all(abs((s.end - s.start) - 7.54) < 0.002 for s in slots)
    assert all(
        b.start == pytest.approx(a.end, abs=0.001) for a, b in zip(slots, slots[1:], strict=False)
    )
    for s in slots:
        assert not any(s.start < c.end and c.start < s.end for c in cues)
        assert s.end <= 41.0


def test_no_subtitles_fills_the_film_and_no_slot_in_dialogue():
    assert _times(propose_slots([], 10.0, max_len=4.0)) == [
        (0.0, 3.333),
        (3.334, 6.666),
        (6.667, 10.0),
    ]
    assert propose_slots([Cue(0.0, 10.0, "talk")], 10.0) == []


def test_bad_sizes_refused():
    with pytest.raises(LocomadError, match="--min-gap"):
        propose_slots([], 10.0, min_gap=5.0, max_len=2.0)
    with pytest.raises(LocomadError, match="no duration"):
        propose_slots([], 0.0)
    # sizes past what a slot can be overflowed the planner's arithmetic (ZeroDivisionError)
    with pytest.raises(LocomadError, match=r"--max-len 1e\+10 s: at most 600 s"):
        propose_slots([], 100.0, max_len=1e10)


def test_describe_checks_planner_options_and_the_device_before_any_work(tmp_path):
    """A bad --max-len, --cut-margin, --shots or --device was found only after speech and
    shots were computed (their caches written), or deep in torch (exit 70)."""
    from locomad_cli.describe.film import DescribeOptions, check_options

    for kw, words in (
        ({"max_len": 1e10}, "--max-len"),
        ({"cut_margin": float("nan")}, "--cut-margin"),
        ({"shots": "zzz"}, "unknown --shots"),
        ({"vad": "zzz"}, "unknown --vad"),
        ({"device": "zzz"}, "--device 'zzz' is no device"),
        ({"device": "meta"}, "runs on cpu, cuda or mps"),
        ({"device": "cuda:0"}, "cuda"),  # no GPU here; on a GPU machine cuda:0 passes
    ):
        opts = DescribeOptions(output_dir=str(tmp_path / "out"), **kw)
        try:
            check_options(opts)
        except LocomadError as e:
            assert words in str(e), (kw, str(e))
        else:
            import torch

            assert kw.get("device") == "cuda:0" and torch.cuda.is_available(), kw
    assert not (tmp_path / "out").exists()


def test_slots_from_times_sorted_and_checked(tmp_path):
    srt = tmp_path / "ad.srt"
    srt.write_text(
        "1\n00:00:05,000 --> 00:00:07,000\nHe sits.\n\n2\n00:00:01,000 --> 00:00:03,000\nDawn.\n"
    )
    slots = slots_from_times(srt, duration=10.0)
    assert [(s.start, s.end, s.index, s.text, s.source) for s in slots] == [
        (1.0, 3.0, 0, "Dawn.", f"{srt}:5"),
        (5.0, 7.0, 1, "He sits.", f"{srt}:1"),
    ]
    past = tmp_path / "past.csv"
    past.write_text("start,end\n1,2\n8,12.5\n")
    with pytest.raises(LocomadError, match=f"{past}:3: slot ends at 12.500s, past the film's end"):
        slots_from_times(past, duration=10.0)
    inv = tmp_path / "inv.vtt"
    inv.write_text("WEBVTT\n\n00:01.000 --> 00:02.000\n\n00:05.000 --> 00:04.000\n")
    with pytest.raises(LocomadError, match=f"{inv}:5: slot ends"):
        slots_from_times(inv, duration=10.0)
    js = tmp_path / "t.json"
    js.write_text('[{"start": 2, "end": 2}]')
    with pytest.raises(LocomadError, match=f"{js}: entry 1: slot ends"):
        slots_from_times(js)


# --- speech and shots join the plan ---------------------------------------------------------


def test_speech_and_subtitles_block_together():
    cues = [Cue(3.0, 5.0, "a", line=1)]
    speech = [(4.5, 6.0), (12.0, 13.0)]  # one line the subtitles have, one they miss
    slots = propose_slots(cues, 20.0, speech=speech, subtitles_name="f.srt")
    assert _times(slots) == [(0.0, 2.7), (6.3, 11.7), (13.3, 20.0)]
    first, middle, last = slots
    assert first.why["start_by"] == "film start" and first.why["after"] == []
    assert first.why["before"] == [
        {"kind": "subtitle", "start": 3.0, "end": 5.0, "ref": "f.srt:1", "text": "a"}
    ]
    # the gap starts where the speech (not the subtitle) ends, and ends at the speech the
    # subtitles miss
    assert middle.why["after"] == [{"kind": "speech", "start": 4.5, "end": 6.0, "ref": "speech 1"}]
    assert middle.why["before"] == [
        {"kind": "speech", "start": 12.0, "end": 13.0, "ref": "speech 2"}
    ]
    assert (middle.why["start_by"], middle.why["end_by"]) == ("dialogue", "dialogue")
    assert last.why["end_by"] == "film end" and last.why["before"] == []
    assert "one slot" in middle.why["reason"]
    # speech alone (no subtitles) places the same gaps
    assert _times(propose_slots([], 20.0, speech=[(3.0, 6.0), (12.0, 13.0)])) == _times(slots)


def test_long_gaps_split_at_cuts_not_evenly():
    # 0.3 .. 29.7 free; cuts at 10 and 13 split it into shots of 9.7, 3 and 16.7 s
    slots = propose_slots([Cue(29.0, 30.0, "end")], 30.0, cuts=[10.0, 13.0])
    assert _times(slots) == [(0.0, 5.0), (5.0, 10.0), (10.0, 13.0), (13.0, 20.85), (20.85, 28.7)]
    assert [(s.why["start_by"], s.why["end_by"]) for s in slots] == [
        ("film start", "split"),
        ("split", "cut"),
        ("cut", "cut"),
        ("cut", "split"),
        ("split", "dialogue"),
    ]
    assert slots[0].shots == [(0.0, 10.0)] and slots[2].shots == [(10.0, 13.0)]
    assert slots[4].shots == [(13.0, 30.0)]
    assert "cut into 3 pieces at shot changes" in slots[3].why["reason"]
    assert "split evenly into 2 slots" in slots[3].why["reason"]


def test_cut_near_a_gap_edge_is_crossed_short_shots_join_the_next():
    skipped = []
    # dialogue ends at 4.0 (gap from 4.3); a cut at 4.6 is within cut_margin of the gap's
    # start: the slot crosses it by 0.3 s. Cuts at 9.0 and 10.0 leave a 1 s shot: it joins
    # the shot after it (a slot across the cut at 10.0) instead of going undescribed.
    slots = propose_slots(
        [Cue(0.0, 4.0, "a"), Cue(15.3, 16.0, "b")],
        16.0,
        cuts=[4.6, 9.0, 10.0],
        cut_margin=0.5,
        skipped=skipped,
    )
    assert _times(slots) == [(4.3, 9.0), (9.0, 15.0)]
    assert slots[0].shots == [(0.0, 4.6), (4.6, 9.0)]  # runs 0.3 s across the cut at 4.6
    assert slots[1].shots == [(9.0, 10.0), (10.0, 16.0)]
    assert slots[1].why["cuts_crossed"] == [10.0] and "cuts_crossed" not in slots[0].why
    assert "shorter than min_gap 2 s" in slots[1].why["reason"]
    assert (slots[1].why["start_by"], slots[1].why["end_by"]) == ("cut", "dialogue")
    assert skipped == []


def test_fast_cuts_join_into_slots_of_at_least_min_gap_never_across_speech():
    # shots of 1.2-1.8 s between lines at 10-11 and 25-26.5: every gap piece alone is shorter
    # than min_gap, so cuts are crossed, yet each slot starts or ends at a cut where it can
    cuts = [1.5, 3.0, 4.2, 6.0, 7.5, 9.0, 12.3, 13.8, 15.0, 16.6, 18.4, 20.0, 21.5, 23.0, 28.0]
    cues = [Cue(10.0, 11.0, "a"), Cue(25.0, 26.5, "b")]
    skipped = []
    slots = propose_slots(cues, 30.0, cuts=cuts, skipped=skipped)
    assert skipped == []
    free = [(0.0, 9.7), (11.3, 24.7), (26.8, 30.0)]
    assert sum(s.end - s.start for s in slots) == pytest.approx(sum(b - a for a, b in free))
    for s in slots:
        assert 2.0 - 1e-9 <= s.end - s.start <= 8.0
        assert any(a - 1e-9 <= s.start and s.end <= b + 1e-9 for a, b in free)
        assert s.start in (0.0, 11.3, 26.8) or s.start in cuts
        assert s.end in (9.7, 24.7, 30.0) or s.end in cuts
        for c in s.why.get("cuts_crossed", []):
            assert s.start < c < s.end
    assert _times(slots)[:3] == [(0.0, 3.0), (3.0, 6.0), (6.0, 9.7)]


def test_cut_margin_checked():
    with pytest.raises(LocomadError, match="cut margin"):
        propose_slots([], 10.0, cut_margin=float("nan"))


# --- on real demo films: their voiced dialogue, detected by silero-vad ---------------------

MIN_GAP, MARGIN = 2.0, 0.3


def _overlap(a, b):
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def _speech_free_targets(voiced, duration):
    """Stretches without voiced dialogue long enough for a slot (min_gap + both margins),
    margins taken off: what a good plan covers."""
    edges = [(0.0, 0.0), *sorted(voiced), (duration, duration)]
    return [
        (e + MARGIN, s - MARGIN)
        for (_, e), (s, _) in zip(edges, edges[1:], strict=False)
        if s - e >= MIN_GAP + 2 * MARGIN
    ]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One folder for the speech and cut caches of the module: each film is listened to once."""
    return tmp_path_factory.mktemp("slot-caches")


def _plan(film, cues, out, **kw):
    from locomad_cli.slots.plan import plan_film

    return plan_film(film.mp4, cues, film.duration, out, min_gap=MIN_GAP, margin=MARGIN, **kw)


@pytest.mark.slow
def test_without_subtitles_slots_keep_off_voiced_dialogue(demo_films, cache):
    """The issue's measure: subtitles withheld, AD over voiced dialogue <= 1 % of AD time,
    speech-free gaps of at least min_gap + margins covered >= 90 %."""
    ad = over = target = covered = 0.0
    for film in demo_films:
        plan = _plan(film, [], cache)
        assert plan.vad == "on" and len(plan.speech.intervals) >= len(film.voiced) // 2
        for s in plan.slots:
            ad += s.end - s.start
            over += sum(_overlap((s.start, s.end), v) for v in film.voiced)
        for g in _speech_free_targets(film.voiced, film.duration):
            target += g[1] - g[0]
            covered += sum(_overlap((s.start, s.end), g) for s in plan.slots)
    assert ad > 0 and over / ad <= 0.01
    assert covered / target >= 0.90


@pytest.mark.slow
def test_subtitles_missing_lines_still_keep_slots_off_every_voiced_line(demo_films, cache):
    from locomad_cli.tracks.readers import read_cues

    for film in demo_films:
        cues = read_cues(film.srt)
        kept = [c for i, c in enumerate(cues) if i % 3 != 1]  # a third of the lines deleted
        assert len(kept) < len(cues)
        plan = _plan(film, kept, cache)
        for s in plan.slots:
            for v in film.voiced:
                assert _overlap((s.start, s.end), v) == 0, (film.film.name, s, v)
        # and the subtitles-only plan would have talked over the deleted lines
        blind = propose_slots(kept, film.duration, MIN_GAP, MARGIN)
        assert any(_overlap((s.start, s.end), v) > 0 for s in blind for v in film.voiced)


@pytest.mark.slow
def test_slots_cross_cuts_only_to_keep_short_shots(demo_films, cache):
    for film in demo_films:
        plan = _plan(film, [], cache)
        assert plan.shots is not None
        for c in film.cuts:
            assert any(abs(c - x) <= 0.2 for x in plan.shots.cuts), (c, plan.shots.cuts)
        for s in plan.slots:
            assert s.shots and s.shots[0][0] <= s.start and s.end <= s.shots[-1][1]
            crossed = s.why.get("cuts_crossed", [])
            for c in plan.shots.cuts:  # crossed only when a piece would be too short, and said
                if s.start + 0.5 < c < s.end - 0.5:
                    assert any(abs(c - x) < 1e-3 for x in crossed), (s, c)
                    assert "shorter than min_gap" in s.why["reason"]


@pytest.mark.slow
def test_plan_json_explains_every_slot(demo_films, cache):
    import json

    film = demo_films[0]
    plan = _plan(film, [], cache)
    data = json.loads(json.dumps(plan.as_json()))
    assert data["vad"] == "on" and data["speech_model"].startswith("silero-vad")
    assert data["speech"] == [[round(a, 3), round(b, 3)] for a, b in plan.speech.intervals]
    assert data["shot_detector"].startswith("pyscenedetect") and data["cuts"]
    for s in plan.slots:
        why = s.why
        assert why["gap"][0] <= s.start < s.end <= why["gap"][1]
        assert why["start_by"] in ("film start", "dialogue", "cut", "split")
        for iv in why["after"]:
            assert iv["kind"] == "speech" and iv["end"] + MARGIN == pytest.approx(why["gap"][0])
        assert why["reason"]


@pytest.mark.slow
def test_vad_off_without_subtitles_tiles_the_film(demo_films, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="locomad_cli")  # whatever others set
    film = demo_films[0]
    plan = _plan(film, [], tmp_path, vad="off", shots="off")
    assert plan.vad == "off" and plan.speech is None
    assert plan.slots[0].start == 0.0 and plan.slots[-1].end == pytest.approx(film.duration)
    assert "may fall on dialogue" in caplog.text


# --- films that cannot be listened to ------------------------------------------------------


@pytest.mark.slow
def test_film_without_audio_uses_subtitles_and_says_so_once(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="locomad_cli")  # whatever others set
    from helpers.media import make_video

    from locomad_cli.slots.plan import plan_film

    silent = make_video(tmp_path / "silent.mp4", duration=12.0, size="64x48")
    cues = [Cue(4.0, 5.0, "Hi.", line=1)]
    plan = plan_film(silent, cues, 12.0, tmp_path, shots="off")
    assert plan.vad == "no audio" and _times(plan.slots) == [(0.0, 3.7), (5.3, 12.0)]
    assert caplog.text.count("has no audio stream: slots from the subtitles alone") == 1
    with pytest.raises(LocomadError, match="--vad on: .*silent.mp4 has no audio stream"):
        plan_film(silent, cues, 12.0, tmp_path, vad="on")
    with pytest.raises(LocomadError, match="unknown --vad 'maybe'"):
        plan_film(silent, cues, 12.0, tmp_path, vad="maybe")


@pytest.mark.slow
def test_undecodable_audio_warns_and_falls_back_or_refuses(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="locomad_cli")  # whatever others set
    from helpers.demo_films import undecodable_audio

    from locomad_cli.slots.plan import plan_film

    film = undecodable_audio(tmp_path / "broken.mkv")
    cues = [Cue(0.5, 1.0, "Hi.", line=1)]
    plan = plan_film(film, cues, 4.0, tmp_path, shots="off")
    assert plan.vad == "failed" and _times(plan.slots) == [(1.3, 4.0)]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "audio stream cannot be decoded" in warnings[0]
    assert warnings[0].endswith("slots from the subtitles alone")
    with pytest.raises(LocomadError, match="no --subs was given: nothing tells where"):
        plan_film(film, [], 4.0, tmp_path, shots="off")
    with pytest.raises(LocomadError, match=r"cannot be decoded .*\(--vad on\)"):
        plan_film(film, cues, 4.0, tmp_path, vad="on", shots="off")


@pytest.mark.slow
def test_describe_over_undecodable_audio_writes_a_subtitles_only_track(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="locomad_cli")  # whatever others set
    import json

    import torch
    from helpers.demo_films import undecodable_audio
    from safetensors.torch import save_file

    from locomad_cli.card import tiny_card
    from locomad_cli.describe.film import DescribeOptions, describe
    from locomad_cli.features.clip import load_clip
    from locomad_cli.model.locomad import LoCoMAD

    card = tiny_card()
    card.llm.max_new_tokens = 3
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card, pretrained=False)
    film = undecodable_audio(tmp_path / "broken.mkv")
    feats = torch.randn(20, card.clip.dim).half()
    meta = {"fps": "5", "duration": "4.0", "clip_model": card.clip.model, "frames": "20"}
    save_file({"features": feats}, str(tmp_path / "f.safetensors"), metadata=meta)
    (tmp_path / "broken.srt").write_text("1\n00:00:00,500 --> 00:00:01,000\nHi.\n")
    opts = DescribeOptions(
        subs=str(tmp_path / "broken.srt"),
        features=str(tmp_path / "f.safetensors"),
        output_dir=str(tmp_path / "out"),
        formats="json",
        device="cpu",
        progress=False,
    )
    track, paths = describe(film, opts, model=model, encode_text=load_clip(card).encode_text)
    assert [(s["start"], s["end"]) for s in track["slots"]] == [(1.3, 4.0)]
    written = json.loads(paths[0].read_text())
    assert written["slot_plan"]["vad"] == "failed" and "speech" not in written["slot_plan"]
    assert written["slots"][0]["why"]["after"][0]["ref"] == "broken.srt:1"
    assert written["slots"][0]["shots"] == [[0.0, 4.0]]
    assert sum("cannot be decoded" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.slow
def test_cli_vad_on_over_a_silent_film_is_one_line(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    from helpers.media import make_video

    silent = make_video(tmp_path / "silent.mp4", duration=3.0, size="64x48")
    exe = Path(sys.executable).with_name("locomad")
    run = subprocess.run(
        [str(exe), "describe", str(silent), "--vad", "on", "--model", "demo", "-o"]
        + [str(tmp_path / "out"), "-q"],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        f"locomad: error: --vad on: {silent} has no audio stream"
    ]
    assert not (tmp_path / "out").exists()
