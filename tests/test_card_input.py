"""Hostile model cards and `--set` overrides: each is refused in one clear line naming what is
wrong (LocomadError: `locomad: error: ...`, exit 2), never an internal error. The cases are
those a sweep found ending in exit 70: values that are not YAML, YAML nested past Python's
recursion, integers past Python's 4300-digit limit, numbers PyYAML reads as text, a proposal
the DSM cannot run on, a prompt past the LLM's positions, a clip.config open_clip cannot
build; and `locomad review` checking the card, its overrides and --device when it starts."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from helpers.cli import one_error, run_cli

from locomad_cli.card import MODELS_DIR, card_from_dict, load_card, tiny_card
from locomad_cli.utils import LocomadError


def refused(*args, **kwargs) -> str:
    """load_card's one-line message for a card or override it must refuse."""
    with pytest.raises(LocomadError) as err:
        load_card(*args, **kwargs)
    text = str(err.value)
    assert "\n" not in text and len(text) < 400, text
    return text


def demo_with(tmp_path: Path, text: str) -> Path:
    """The demo card with lines appended (later keys win in PyYAML), in tmp_path."""
    path = tmp_path / "card.yaml"
    path.write_text((MODELS_DIR / "demo.yaml").read_text() + text)
    return path


@pytest.mark.parametrize(
    "value, said",
    [
        ("[unclosed", "flow sequence"),
        ("!!python/object/apply:os.system ['id']", "constructor"),
        ("1\n---\n2", "single document"),
        ("[" * 3000, "nested too deep"),
        ("9" * 5000, "number too large"),
    ],
)
def test_override_values_that_are_not_yaml(value, said):
    text = refused("demo", [f"llm.num_beams={value}"])
    assert text.startswith("override 'llm.num_beams=") and "not a YAML value" in text
    assert said in text


def test_override_fills_a_section_left_empty(tmp_path):
    data = tiny_card().to_dict()
    data["dsm"] = None  # `dsm:` with nothing under it
    path = tmp_path / "card.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_card(path, ["dsm.num_heads=2"]).dsm.num_heads == 2


@pytest.mark.parametrize(
    "text",
    [
        "".join("  " * i + f"k{i}:\n" for i in range(3000)),
        "a: " + "[" * 5000 + "]" * 5000 + "\n",
        "name: x\nclip:\n  config: &c {embed_dim: 8, vision_cfg: [*c]}\n",  # refers to itself
    ],
)
def test_card_files_nested_too_deep(tmp_path, text):
    path = tmp_path / "deep.yaml"
    path.write_text(text)
    said = refused(path)
    assert str(path) in said and "not valid YAML" in said and "deep" in said


def test_a_huge_integer_in_a_card_file(tmp_path):
    said = refused(demo_with(tmp_path, "seed: " + "9" * 5000 + "\n"))
    assert "number too large" in said


def test_proposal_len_needs_one_item():
    assert "dsm.proposal_len must be greater than 0" in refused("demo", ["dsm.proposal_len=0"])
    data = tiny_card().to_dict()
    data["dsm"]["proposal_len"] = 0
    with pytest.raises(LocomadError, match="dsm.proposal_len must be greater than 0"):
        card_from_dict(data)
    assert load_card("demo", ["dsm.proposal_len=1"]).dsm.proposal_len == 1


def test_prompt_must_fit_the_llm_positions():
    long = " ".join(["word"] * 3000)
    assert "at most 200 words" in refused("demo", [f"llm.prompt={long}"])
    # the demo's OPT has 256 positions: 3 + 8 queries + 120 context + 24 target leave 101
    said = refused("demo", ["llm.prompt=" + " ".join(["word"] * 102)])
    assert "256 positions" in said and "leave 101" in said and "max_position_embeddings" in said
    assert load_card("demo", ["llm.prompt=" + " ".join(["word"] * 101)])
    # a longer context leaves no room even for the shipped instruction
    assert "leave 0" in refused("demo", ["llm.max_context_tokens=300"])
    # a pretrained LLM named only: its positions are not known here, the word cap holds
    assert load_card("opt-2.7b", ["llm.prompt=" + " ".join(["word"] * 150)])


def test_numbers_yaml_reads_as_text(tmp_path):
    said = refused(demo_with(tmp_path, "endpoint: {timeout: 1e9}\n"))
    assert "endpoint.timeout must be a finite number, got the string '1e9'" in said
    assert "write 1.0e+9 or 1000000000" in said
    said = refused(demo_with(tmp_path, "llm: {length_weight: 1e-300}\n"))
    assert "string" in said and "1.0e-300" in said
    said = refused("demo", ["llm.num_beams=1e1"])
    assert "must be an integer, got the string '1e1'" in said and "write 10" in said
    # the forms suggested are the ones PyYAML reads as numbers
    assert yaml.safe_load("1.0e+9") == 1e9 and yaml.safe_load("1.0e-300") == 1e-300
    assert load_card("demo", ["endpoint.timeout=1.0e+9"]).endpoint.timeout == 1e9


@pytest.mark.parametrize(
    "override, said",
    [
        ("clip.config.vision_cfg=nope", "clip.config.vision_cfg must be a mapping"),
        ("clip.config.text_cfg=[1, 2]", "clip.config.text_cfg must be a mapping"),
        ("clip.config.embed_dim=wide", "clip.config.embed_dim must be an integer"),
        ("clip.config.model_cfg=3", "clip.config.model_cfg must be a mapping"),
    ],
)
def test_clip_config_shape_checked_where_the_card_is_read(override, said):
    assert said in refused("demo", [override])


@pytest.mark.parametrize(
    "override, said",
    [
        ("clip.config.vision_cfg.bogus=1", "clip.config.vision_cfg: unknown key(s) bogus"),
        ("clip.config.bogus=1", "clip.config: unknown key(s) bogus"),
        ("clip.config.vision_cfg.layers=two", "clip.config cannot build a CLIP"),
    ],
)
def test_clip_config_names_checked_where_the_clip_is_built(override, said):
    from locomad_cli.features.clip import load_clip

    card = load_card("demo", [override])
    with pytest.raises(LocomadError) as err:
        load_clip(card, load_weights=False)
    assert said in str(err.value) and "\n" not in str(err.value)


# --- locomad review: the card that regenerates, and --device, checked at start -----------


@pytest.fixture
def film(tmp_path, monkeypatch):
    from helpers.reviewfilm import fake_probe, make_film

    import locomad_cli.features.video as video

    monkeypatch.setattr(video, "probe", fake_probe)
    return make_film(tmp_path / "film")


@pytest.mark.parametrize(
    "opts, said",
    [
        ({"overrides": ["llm.num_beams=["]}, "not a YAML value"),
        ({"overrides": ["foo=1"]}, "unknown key(s) foo"),
        ({"overrides": ["dsm.proposal_len=0"]}, "dsm.proposal_len must be greater than 0"),
        ({"device": "zzz"}, "--device 'zzz' is no device"),
    ],
)
def test_review_checks_regenerate_settings_at_start(film, opts, said):
    from locomad_cli.review.session import Review, ReviewOptions

    with pytest.raises(LocomadError) as err:
        Review(film, ReviewOptions(who="tester", **opts))
    assert said in str(err.value)


def test_review_starts_with_good_settings(film):
    from locomad_cli.review.session import Review, ReviewOptions

    Review(film, ReviewOptions(who="tester", overrides=["llm.num_beams=2"]))


@pytest.mark.slow
def test_cli_bad_set_is_one_line(tmp_path):
    nines = "9" * 5000
    res = run_cli(["doctor", "-m", "demo", "--set", f"llm.num_beams={nines}"], timeout=120)
    one_error(res, "override 'llm.num_beams=", "number too large")
    res = run_cli(["doctor", "-m", "demo", "--set", "llm.num_beams=" + "[" * 3000], timeout=120)
    one_error(res, "not a YAML value", "nested too deep")


@pytest.mark.slow
def test_cli_review_refuses_bad_settings_before_serving(tmp_path):
    from helpers.adfilm import short_film

    video, _ = short_film(tmp_path)
    for extra, words in (
        (["--set", "foo=1"], "unknown key(s) foo"),
        (["--device", "zzz"], "--device 'zzz'"),
    ):
        res = run_cli(["review", video, "--no-browser", *extra], timeout=120)
        one_error(res, *words)


def test_review_starts_when_the_tracks_card_is_not_found(film, caplog):
    """A user's card that moved only costs Regenerate: the review itself needs no card."""
    import json

    from locomad_cli.review.session import Review, ReviewOptions

    ad = film.with_name("demo.ad.json")
    ad.write_text(json.dumps({**json.loads(ad.read_text()), "card": "moved-away"}))
    Review(film, ReviewOptions(who="tester", overrides=["llm.num_beams=2"]))
    assert "Regenerate will not work" in caplog.text and "moved-away" in caplog.text
