"""The dialogue that goes with an AD slot: one rule for training data and for `describe`.

AD sits in the gaps between lines, so a slot rarely overlaps dialogue; the lines said since
the previous slot ended belong to it (and reach the LLM as `[b_s s e_s]`)."""

from locomad_cli.data.dataset import Annotation, SubtitleIndex, attach_subtitles
from locomad_cli.describe.film import Film
from locomad_cli.slots.plan import Slot
from locomad_cli.tracks.readers import Cue, dialogue_windows

SLOTS = [(2.0, 4.0), (10.0, 12.0), (12.5, 14.0), (40.0, 42.0)]
CUES = [
    (0.0, 1.0, "Hello."),  # before the first slot, within the look-back
    (5.0, 6.0, "This is Tom."),  # in the gap after slot 0: goes with slot 1
    (11.5, 12.8, "Careful!"),  # overlaps slots 1 and 2
    (20.0, 21.0, "Too early."),  # more than 10 s before slot 3 begins
    (35.0, 36.0, "Now."),  # in the look-back of slot 3
]
EXPECTED = ["Hello.", "This is Tom. Careful!", "Careful!", "Now."]


def test_windows_start_at_the_previous_slot_end_or_the_lookback():
    assert dialogue_windows(SLOTS) == [-8.0, 4.0, 12.0, 30.0]


def test_training_data_attaches_the_gap_dialogue():
    anns = [Annotation("f", a, b, f"ad {i}") for i, (a, b) in enumerate(SLOTS)]
    anns.reverse()  # order of rows in a file must not matter
    attach_subtitles(anns, {"f": SubtitleIndex(CUES)})
    assert [a.subtitle for a in sorted(anns, key=lambda a: a.start)] == EXPECTED


def test_describe_sees_the_same_dialogue_as_training():
    slots = [Slot(a, b, i) for i, (a, b) in enumerate(SLOTS)]
    refs = [Cue(a, b, f"ad {i}") for i, (a, b) in enumerate(SLOTS)]
    film = Film("f", slots, [Cue(a, b, t) for a, b, t in CUES], refs)
    assert [film.dialogue(s) for s in slots] == EXPECTED
    assert [film.dialogue(r) for r in refs] == EXPECTED
