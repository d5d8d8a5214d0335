"""The QC rules on candidates (tracks/rules.py), on exact inputs."""

from __future__ import annotations

import pytest

from locomad_cli.tracks import rules
from locomad_cli.tracks.rules import broken, choose, same_on_both_sides


@pytest.mark.parametrize(
    "text, name",
    [
        ("Luis hands Luis the white letter.", "Luis"),
        ("Carl and Carl embrace.", "Carl"),
        ("Amy shakes hands with Amy.", "Amy"),
        ("Leo gives the yellow book to Leo.", "Leo"),
        ("In the hall, Mary hugs Mary.", "Mary"),
        ("Leo enters. Amy and Amy shake hands.", "Amy"),
        ("Jean-Luc greets Jean-Luc warmly.", "Jean-Luc"),
        ("Sam waves at Sam.", "Sam"),
        ("Leo walks over to Leo.", "Leo"),
    ],
)
def test_one_character_on_both_sides_of_a_two_person_action(text, name):
    assert same_on_both_sides(text) == name
    assert broken(text) == "same_on_both_sides"


@pytest.mark.parametrize(
    "text",
    [
        "Luis hands Carl the white letter.",
        "Carl and Amy embrace.",
        "Amy gives Leo a book and Amy smiles.",  # someone else between: Leo is given to
        "Leo waves. Leo leaves the kitchen.",  # two sentences
        "Leo looks at himself in the mirror.",
        "The man hands the woman a letter.",
        "Leo jumps, and Leo laughs.",
        "Sam waves at the sea and Sam laughs.",
    ],
)
def test_two_people_or_one_person_alone_is_fine(text):
    assert same_on_both_sides(text) is None
    assert broken(text) is None


def test_cast_names_in_lower_case_are_found_too():
    assert same_on_both_sides("then mo hands mo a cup.", names=["mo"]) == "mo"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "...",
        "Leo picks up the",
        "Leo walks to",
        "Amy opens the door and",
        "Leo runs",
        "A man in a green coat enters,.",
    ],
)
def test_empty_or_truncated(text):
    assert broken(text) == "empty_or_truncated"


@pytest.mark.parametrize("text", ["Leo runs.", "Is it Amy?", 'He says "Go!"', "Amy waits…"])
def test_whole_sentences(text):
    assert broken(text) is None


def test_repeat_of_the_last_descriptions_case_and_spacing_aside():
    recent = ["Leo enters the kitchen.", "Amy sits down."]
    assert broken("leo  enters the   Kitchen.", recent) == "repeat"
    assert broken("Leo enters the hall.", recent) is None


def test_names_only_once_heard():
    assert broken("Leo waves to Amy.", unheard=["Amy"]) == "unheard_name"
    assert broken("Leo waves to Amyra.", unheard=["Amy"]) is None  # whole words only
    assert rules.names_heard(["Leo", "Amy"], "hello, amy!") == (["Leo"], ["Amy"])


def test_a_candidate_that_breaks_a_rule_gives_way_to_the_next():
    cands = ["Luis hands Luis the white letter.", "Luis hands", "Luis hands Carl a letter."]
    assert choose(cands) == (2, [(0, "same_on_both_sides"), (1, "empty_or_truncated")])
    # every candidate breaks a rule: the first whole sentence is kept
    assert choose(["Leo picks up the", "Leo sits.", "Leo sits"], recent=["Leo sits."]) == (
        1,
        [(0, "empty_or_truncated"), (1, "repeat"), (2, "empty_or_truncated")],
    )
    assert choose(["", "  "])[0] == 0


def test_apply_on_a_track_row_records_what_gave_way_and_summary_counts_it():
    row = {
        "text": "Carl and Carl embrace.",
        "subtitles": "Hello Amy.",
        "selected": [{"text": "Carl enters.", "subtitle": ""}],
        "candidates": [
            {"text": "Carl and Carl embrace.", "score": -0.1},
            {"text": "Carl and Ben embrace.", "score": -0.2},
            {"text": "Carl and Amy embrace.", "score": -0.3},
        ],
    }
    rules.apply(row, recent=[], names=["Carl", "Amy", "Ben"])
    # Ben is not heard yet (neither in the dialogue nor in the chosen context): Amy is
    assert row["text"] == "Carl and Amy embrace."
    assert [c["text"] for c in row["candidates"]][0] == "Carl and Amy embrace."
    assert row["rules"] == {
        "gave_way": [
            {"text": "Carl and Carl embrace.", "rule": "same_on_both_sides"},
            {"text": "Carl and Ben embrace.", "rule": "unheard_name"},
        ]
    }
    clean = rules.apply({"text": "Amy sits.", "subtitles": "Amy!", "candidates": []}, [], ["Amy"])
    assert "rules" not in clean
    stuck = rules.apply({"text": "Amy sits.", "candidates": []}, ["Amy sits."], [])
    assert stuck["rules"] == {"gave_way": [], "kept_breaking": "repeat"}
    total = rules.summary([row, clean, stuck])
    assert total["gave_way"] == {
        "empty_or_truncated": 0,
        "repeat": 0,
        "unheard_name": 1,
        "same_on_both_sides": 1,
    }
    assert total["slots_changed"] == 1 and total["kept_breaking"]["repeat"] == 1


def test_a_sentence_ending_in_a_number_is_whole():
    """A number is a word: "at 9." ends a sentence (a VLM's answer was dropped for it)."""
    from locomad_cli.tracks.rules import is_empty_or_truncated

    assert not is_empty_or_truncated("The train leaves at 9.")
    assert is_empty_or_truncated("The train leaves at.")
