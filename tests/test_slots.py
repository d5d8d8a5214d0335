import pytest

from locomad_cli.slots import dialogue_spans, propose_slots, slots_from_times
from locomad_cli.subtitles import Cue
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
    with pytest.raises(LocomadError, match="min_gap"):
        propose_slots([], 10.0, min_gap=5.0, max_len=2.0)
    with pytest.raises(LocomadError, match="no duration"):
        propose_slots([], 0.0)


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
