"""Hostile input through the real command line, as a user (or an attacker) would give it.

Every case runs `locomad` as a subprocess and must end in exactly one line on stderr, a
non-zero exit code, no traceback, and nothing written: no output folder, no partial file, no
progress file, and the shared inputs untouched. The cases include every one of issue 13's
table. They are checked before torch is imported where possible (see describe.py), so most
cost a fraction of a second; they run two at a time.

Disk full is real: a small tmpfs (root's `mount -t tmpfs -o size=...`) as the output folder,
filled to the page; the run must refuse cleanly and its rerun, with space again, finish.
"""

from __future__ import annotations

import concurrent.futures
import json
import math
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from helpers.cli import fill, one_error, run_cli, small_disk
from helpers.datasets import saved_tiny_card
from helpers.media import make_video
from helpers.srt import srt_text
from safetensors.torch import save_file

from locomad_cli.features.extract import extract_features
from locomad_cli.slots.plan import propose_slots
from locomad_cli.utils import LocomadError

DURATION = 10.0


SUBS = [(0.5, 1.5, "Hello."), (4.0, 5.0, "Where is she?")]
AD_TIMES = [(2.0, 3.8), (5.5, 7.0), (7.5, 9.5)]


@dataclass
class World:
    """Inputs shared by every case (made once): two films, their features, a tiny card with
    trained-shaped weights, subtitles and AD times."""

    root: Path
    film: Path
    other: Path
    features: Path
    other_features: Path
    card: Path
    weights: Path
    subs: Path
    ad_times: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("hostile-world")
    film = make_video(root / "film.mp4", duration=DURATION, size="96x64")
    other = make_video(root / "other.mp4", duration=6.0, size="64x48")
    card, card_path, weights = saved_tiny_card(root)
    feats = root / "feats"
    extract_features([film, other], card, out_dir=feats, device="cpu")
    subs = root / "film.srt"
    subs.write_text(srt_text(SUBS))
    ad_times = root / "film.ad-times.srt"
    ad_times.write_text(srt_text([(a, b, "") for a, b in AD_TIMES]))
    return World(
        root,
        film,
        other,
        feats / "film.features.safetensors",
        feats / "other.features.safetensors",
        card_path,
        weights,
        subs,
        ad_times,
    )


def _write(d: Path, name: str, content: str | bytes) -> Path:
    p = d / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def _features_with(d: Path, name: str, tensor: torch.Tensor, **meta: str) -> Path:
    p = d / name
    base = {"fps": "5", "duration": str(DURATION), "clip_model": "locomad-tiny-clip"}
    save_file({"features": tensor}, str(p), metadata={**base, **meta})
    return p


# --- the cases --------------------------------------------------------------------------------


@dataclass
class Case:
    name: str
    expect: str
    """A piece of the one stderr line."""
    args: Callable[[World, Path], list]
    """(shared inputs, the case's own folder) → command-line arguments; may write files."""
    code: int = 2
    cmd: list[str] | None = None


def describe(w: World, d: Path, *extra, subs: bool = True) -> list:
    """A describe call that would work, plus `extra`; output into the case's folder."""
    base = ["describe", w.film, "--model", w.card, "-o", d / "out", "--device", "cpu", "-q"]
    return base + (["--subs", w.subs] if subs else []) + list(extra)


def times(w: World, d: Path, name: str, content: str | bytes, *extra) -> list:
    return describe(w, d, "--ad-times", _write(d, name, content), *extra)


def card_with(w: World, d: Path, old: str, new: str) -> Path:
    text = w.card.read_text()
    assert old in text, old
    return _write(d, "card.yaml", text.replace(old, new, 1))


ASS = (
    "[Script Info]\nTitle: x\nScriptType: v4.00+\n\n[Events]\n"
    "Dialogue: 0,0:00:01.00,0:00:02.00,Default,,0,0,0,,Hi\n"
)
SIXTEEN_BAD = "".join(f"{i}\n00:00:0x,000 --> 00:00:02,000\nbad\n\n" for i in range(1, 17))

CASES = [
    # issue 13's table
    Case("ad_csv_nan", "ad.csv:2: time nan is not a finite number",
         lambda w, d: times(w, d, "ad.csv", "start,end\nnan,2\n")),
    Case("set_num_beams_banana", "llm.num_beams must be an integer, got 'banana'",
         lambda w, d: describe(w, d, "--set", "llm.num_beams=banana")),
    Case("card_fps_fast", "fps must be a finite number, got 'fast'",
         lambda w, d: ["describe", w.film, "--model", card_with(w, d, "fps: 5.0", "fps: fast"),
                       "-o", d / "out"]),
    Case("features_of_another_film", "features of another film (other.mp4",
         lambda w, d: describe(w, d, "--features", w.other_features)),
    Case("ad_json_one_timestamp", "entry 1: 'timestamps' must be [start, end], got 1",
         lambda w, d: times(w, d, "ad.json", '{"a": {"timestamps": [1]}}')),
    Case("ad_json_nested_3000", "JSON nested too deeply",
         lambda w, d: times(w, d, "ad.json", "[" * 3000)),
    Case("ad_csv_400_digits", "ad.csv:2: not a time",
         lambda w, d: times(w, d, "ad.csv", f"start,end\n{'9' * 400},2\n")),
    Case("ad_json_400_digits", "entry 1: time",
         lambda w, d: times(w, d, "ad.json", f'[{{"start": {"9" * 400}, "end": 2}}]')),
    Case("features_duration_nan", "metadata duration=nan is not a positive number",
         lambda w, d: describe(w, d, "--features", _features_with(
             d, "f.features.safetensors", torch.zeros(50, 32).half(), duration="nan"))),
    Case("subs_binary", "no readable cue: binary data",
         lambda w, d: describe(w, d, "--subs", _write(d, "x.srt", bytes(range(256)) * 8),
                               subs=False)),
    Case("subs_ass", "ASS/SSA subtitles are not read here",
         lambda w, d: describe(w, d, "--subs", _write(d, "x.ass", ASS), subs=False)),
    Case("subs_is_the_video", "film.mp4:1: no readable cue: binary data",
         lambda w, d: describe(w, d, "--subs", w.film, subs=False)),
    # subtitles
    Case("subs_missing", "cannot read (No such file or directory)",
         lambda w, d: describe(w, d, "--subs", d / "nope.srt", subs=False)),
    Case("subs_empty", "empty.srt:1: no readable cue",
         lambda w, d: describe(w, d, "--subs", _write(d, "empty.srt", ""), subs=False)),
    Case("subs_folder", "is a folder, not a file",
         lambda w, d: describe(w, d, "--subs", d, subs=False)),
    Case("subs_encoding_unknown", "cannot decode as klingon",
         lambda w, d: describe(w, d, "--subs-encoding", "klingon")),
    Case("subs_sixteen_bad_blocks",
         "no readable cue (is it SRT?; 16 malformed block(s), first at line 1)",
         lambda w, d: describe(w, d, "--subs", _write(d, "bad.srt", SIXTEEN_BAD), subs=False)),
    Case("subs_vtt_without_header", "a WebVTT file starts with 'WEBVTT'",
         lambda w, d: describe(w, d, "--subs", _write(d, "x.vtt", "00:01.000 --> 00:02.000\nx\n"),
                               subs=False)),
    # AD times
    Case("ad_inverted", "ad.csv:2: slot ends (2.000s) at or before its start",
         lambda w, d: times(w, d, "ad.csv", "start,end\n5,2\n")),
    Case("ad_negative", "slot starts before the film",
         lambda w, d: times(w, d, "ad.csv", "start,end\n-3,2\n")),
    Case("ad_past_end", "past the film's end (10.000s)",
         lambda w, d: times(w, d, "ad.csv", "start,end\n1,99\n")),
    Case("ad_csv_empty", "empty CSV", lambda w, d: times(w, d, "ad.csv", "")),
    Case("ad_csv_no_start", "needs a start and an end",
         lambda w, d: times(w, d, "ad.csv", "a,b\n1,2\n")),
    Case("ad_json_number", "expected a list of {start, end, text} objects",
         lambda w, d: times(w, d, "ad.json", "42")),
    Case("ad_json_infinity", "is not a finite number",
         lambda w, d: times(w, d, "ad.json", '[{"start": Infinity, "end": 2}]')),
    Case("ad_csv_1e400", "is not a finite number",
         lambda w, d: times(w, d, "ad.csv", "start,end\n1e400,2\n")),
    Case("ad_clock_huge", "longer than any film",
         lambda w, d: times(w, d, "ad.csv", "start,end\n99999999:00:00,99999999:00:01\n")),
    Case("ad_srt_huge_hours", "no readable cue",
         lambda w, d: times(w, d, "ad.srt", "1\n999999999:00:01,000 --> 999999999:00:02,000\nx\n")),
    Case("ad_json_text_object", "the text must be a string",
         lambda w, d: times(w, d, "ad.json", '[{"start": 1, "end": 2, "text": {"a": 1}}]')),
    Case("ad_csv_field_too_large", "not a readable CSV",
         lambda w, d: times(w, d, "ad.csv", 'start,end,text\n1,2,"' + "x" * 200_000 + '"\n')),
    # model cards and --set
    Case("card_not_a_mapping", "a model card is a mapping",
         lambda w, d: describe(w, d, "--model", _write(d, "c.yaml", "- a\n- b\n"))),
    Case("card_bad_yaml", "not valid YAML",
         lambda w, d: describe(w, d, "--model", _write(d, "c.yaml", "name: [unclosed\n"))),
    Case("card_unknown_key", "unknown key(s) nonsense",
         lambda w, d: describe(w, d, "--set", "llm.nonsense=1")),
    Case("set_fps_nan", "fps must be a finite number, got nan",
         lambda w, d: describe(w, d, "--set", "fps=.nan")),
    Case("set_max_new_tokens_float", "llm.max_new_tokens must be an integer, got 1.5",
         lambda w, d: describe(w, d, "--set", "llm.max_new_tokens=1.5")),
    Case("set_dim_bool", "clip.dim must be an integer, got True",
         lambda w, d: describe(w, d, "--set", "clip.dim=true")),
    Case("set_no_equals", "is not of the form key=value",
         lambda w, d: describe(w, d, "--set", "llm.num_beams")),
    Case("set_name_list", "llm.name must be a string, got [1, 2]",
         lambda w, d: describe(w, d, "--set", "llm.name=[1, 2]")),
    Case("set_heads_not_dividing", "must be a multiple of dsm.num_heads (7)",
         lambda w, d: describe(w, d, "--set", "dsm.num_heads=7")),
    Case("set_beams_zero", "llm.num_beams must be greater than 0, got 0",
         lambda w, d: describe(w, d, "--set", "llm.num_beams=0")),
    Case("set_train_unknown", "llm.train must be one of none, new-tokens, all",
         lambda w, d: describe(w, d, "--set", "llm.train=some")),
    Case("model_missing", "model card 'no-such-card' not found",
         lambda w, d: describe(w, d, "--model", "no-such-card")),
    # options
    Case("setting_bogus", "unknown setting 'bogus'",
         lambda w, d: describe(w, d, "--setting", "bogus")),
    Case("oracle_without_reference", "--setting oracle needs --reference",
         lambda w, d: describe(w, d, "--setting", "oracle")),
    Case("oracle_reference_without_text", "no reference description with text",
         lambda w, d: describe(w, d, "--setting", "oracle", "--reference", w.ad_times)),
    Case("batch_size_zero", "--batch-size must be at least 1",
         lambda w, d: describe(w, d, "--batch-size", "0")),
    Case("format_bogus", "unknown output format 'mp3'", lambda w, d: describe(w, d, "-f", "mp3")),
    Case("min_gap_negative", "slot sizes must satisfy",
         lambda w, d: describe(w, d, "--min-gap", "-1")),
    Case("min_gap_nan", "slot sizes must be finite numbers",
         lambda w, d: describe(w, d, "--min-gap", "nan")),
    Case("video_missing", "no such video file",
         lambda w, d: ["describe", d / "nope.mp4", "--model", w.card, "-o", d / "out"]),
    # weights and features
    Case("weights_missing", "no such folder",
         lambda w, d: describe(w, d, "--weights", d / "nowhere")),
    Case("no_trained_weights", "no trained LoCo-MAD weights for model card 'opt-2.7b'",
         lambda w, d: ["describe", w.film, "--subs", w.subs, "-o", d / "out"]),
    Case("features_not_safetensors", "not a features file",
         lambda w, d: describe(w, d, "--features", w.subs)),
    Case("features_wrong_width", "features are 16 wide, model card 'tiny' wants 32",
         lambda w, d: describe(w, d, "--features", _features_with(
             d, "f.features.safetensors", torch.zeros(50, 16).half()))),
    Case("extract_fps_nan", "--fps must be positive",
         lambda w, d: ["extract-features", w.film, "-o", d / "out", "-m", w.card, "--fps", "nan"]),
    Case("extract_card_fps_fast", "fps must be a finite number, got 'fast'",
         lambda w, d: ["extract-features", w.film, "-o", d / "out",
                       "-m", card_with(w, d, "fps: 5.0", "fps: fast")]),
    # evaluate
    Case("evaluate_missing", "cannot read",
         lambda w, d: ["evaluate", d / "none.json", "-r", w.subs, "-o", d / "out.json"]),
    Case("evaluate_reference_without_text", "no reference with text",
         lambda w, d: ["evaluate", w.subs, "-r", w.ad_times, "-o", d / "out.json"]),
    Case("evaluate_metric_bogus", "unknown metric 'blue'",
         lambda w, d: ["evaluate", w.subs, "-r", w.subs, "--metrics", "blue"]),
    Case("evaluate_nested_json", "JSON nested too deeply",
         lambda w, d: ["evaluate", _write(d, "p.json", "[" * 3000), "-r", w.subs]),
    Case("doctor_bad_card", "model card 'nope' not found", lambda w, d: ["doctor", "-m", "nope"]),
    Case("convert_not_weights_only", "is not a weights-only PyTorch file",
         lambda w, d: ["convert-weights", _write(d, "x.pth", b"\x80\x04K\x01."),
                       d / "x.safetensors"]),
    Case("internal_error",
         "internal error (a bug in locomad, not in your input): RuntimeError: planted",
         lambda w, d: ["boom"], code=70,
         cmd=[sys.executable, "-c",
              "import locomad_cli.cli as c\n"
              "@c.app.command('boom')\n"
              "def boom():\n    raise RuntimeError('planted')\n"
              "c.main()"]),
]  # fmt: skip


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def results(world, tmp_path_factory):
    """Every case run once, two at a time; (case, result, files before, files after)."""
    shared_before = _snapshot(world.root)
    prepared = []
    for case in CASES:
        d = tmp_path_factory.mktemp(case.name)
        args = case.args(world, d)
        prepared.append((case, d, args, _snapshot(d)))

    def run(item):
        case, d, args, before = item
        return case.name, (case, run_cli(args, cmd=case.cmd), before, _snapshot(d), d)

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        out = dict(pool.map(run, prepared))
    assert _snapshot(world.root) == shared_before, "a case changed the shared inputs"
    return out


def test_enough_cases():
    assert len(CASES) >= 40
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.slow
@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_hostile_case(results, name):
    case, res, before, after, d = results[name]
    lines = res.stderr.strip().splitlines()
    assert res.returncode == case.code, res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    assert len(lines) == 1, res.stderr
    prefix = "locomad: internal error" if case.code == 70 else "locomad: error: "
    assert lines[0].startswith(prefix), lines[0]
    assert case.expect in lines[0], lines[0]
    assert after == before, "the case wrote files"
    assert not (d / "out").exists()


@pytest.mark.slow
def test_internal_error_traceback_on_request(tmp_path):
    case = next(c for c in CASES if c.name == "internal_error")
    res = run_cli(["boom"], env={"LOCOMAD_DEBUG": "1"}, cmd=case.cmd)
    assert res.returncode == 70
    assert "Traceback" in res.stderr and "RuntimeError: planted" in res.stderr
    res = run_cli(["--debug", "boom"], cmd=case.cmd)
    assert res.returncode == 70 and "Traceback" in res.stderr


@pytest.mark.parametrize("duration", [math.nan, math.inf, -math.inf, 1e300])
def test_unusable_film_durations(duration):
    with pytest.raises(LocomadError, match="is not usable"):
        propose_slots([], duration)


@pytest.mark.parametrize(
    "meta, words",
    [
        ({"duration": "inf"}, "metadata duration=inf is not a positive number"),
        ({"duration": "-1"}, "metadata duration=-1.0 is not a positive number"),
        ({"fps": "fast"}, "metadata fps='fast' is not a number"),
        ({"fps": "0"}, "metadata fps=0.0 is not a positive number"),
        ({"frames": "many"}, "metadata frames='many' is not a number"),
    ],
)
def test_feature_metadata_is_checked(tmp_path, meta, words):
    """The features cases the subprocess table leaves out (each would cost a torch import)."""
    from locomad_cli.features.extract import load_features

    path = _features_with(tmp_path, "f.features.safetensors", torch.zeros(5, 32).half(), **meta)
    with pytest.raises(LocomadError, match=re.escape(words)):
        load_features(path)


# --- mismatches: one warning line, the run goes on --------------------------------------------


@pytest.mark.slow
def test_warnings_for_inputs_of_another_film(world, tmp_path):
    """Subtitles of a 95-minute film on a 10-second one, and --ad-times whose times are the
    subtitles' (the dialogue file given twice): each one warning line on stderr, and the run
    goes on; the descriptions, one per line, on stdout (-q silences chatter, not results)."""
    french = [(0.5 + 30.0 * i, 2.0 + 30.0 * i, f"Réplique {i}.") for i in range(190)]
    subs = _write(tmp_path, "francais.srt", srt_text(french))
    wrong = _write(tmp_path, "wrong.srt", srt_text(french[:1]))  # the in-film line, as AD times
    args = [
        "describe", world.film, "--model", world.card, "--features", world.features,
        "--subs", subs, "--ad-times", wrong, "-o", tmp_path / "out", "--device", "cpu", "-q",
    ]  # fmt: skip
    res = run_cli(args)
    assert res.returncode == 0, res.stderr
    assert res.stderr.strip().splitlines() == [
        f"locomad: warning: {subs}: subtitles run to 01:34:32.000, far past the film's end "
        "(00:00:10.000): they may belong to another film",
        f"locomad: warning: --ad-times {wrong} holds the same times as the subtitles {subs}: "
        "the descriptions would be spoken over the dialogue (the wrong file?)",
    ]
    track = json.loads((tmp_path / "out" / "film.ad.json").read_text())
    lines = res.stdout.splitlines()
    assert len(lines) == len(track["slots"]) == 1
    assert lines[0] == f"00:00:00.500 --> 00:00:02.000  {track['slots'][0]['text']}"


# --- a full disk ------------------------------------------------------------------------------


def _describe_to(world: World, out: Path, *extra) -> list:
    return [
        "describe", world.film, "--model", world.card, "--features", world.features,
        "--subs", world.subs, "--ad-times", world.ad_times, "-o", out, "-f", "all",
        "--device", "cpu", "-q", *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_disk_full_describe(world, tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "out"
        out.mkdir()
        # no page free: the first line of the progress file cannot be written
        filler = fill(disk, 0)
        res = run_cli(_describe_to(world, out))
        assert res.returncode == 2
        line = one_error(res)
        assert line.startswith(f"locomad: error: cannot write {out / 'film.ad.progress.jsonl'}")
        assert "the disk is full" in line
        assert sorted(p.name for p in out.iterdir()) == []  # no progress file, no track
        # one page free: every slot reaches the progress file, the tracks do not fit
        filler.unlink()
        filler = fill(disk, 1)
        res = run_cli(_describe_to(world, out))
        assert res.returncode == 2
        line = one_error(res)
        assert "the disk is full" in line and "3 of 3 descriptions are kept" in line
        assert "run the same command with --resume" in line
        progress = out / "film.ad.progress.jsonl"
        rows = [json.loads(x) for x in progress.read_text().splitlines()]  # no torn line
        assert len(rows) == 4 and "identity" in rows[0]
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
        # space again: the rerun finishes from the progress file
        filler.unlink()
        res = run_cli(_describe_to(world, out, "--resume"))
        assert res.returncode == 0, res.stderr
        assert sorted(p.name for p in out.iterdir()) == [
            "film.ad.json",
            "film.ad.srt",
            "film.ad.vtt",
        ]
        track = json.loads((out / "film.ad.json").read_text())
        assert [s["text"] for s in track["slots"]] == [r["text"] for r in rows[1:]]
        assert len(res.stdout.splitlines()) == 0  # resumed slots were printed the first time


@pytest.mark.slow
def test_disk_full_extract_features(world, tmp_path):
    args = ["extract-features", world.film, "-m", world.card, "--device", "cpu", "-q"]
    with small_disk(tmp_path / "disk") as disk:
        out = disk / "feats"
        filler = fill(disk, 0)
        res = run_cli([*args, "-o", out])
        assert res.returncode == 2
        line = one_error(res)
        assert line.startswith(f"locomad: error: cannot write {out / 'film.features.safetensors'}")
        assert "the disk is full" in line
        assert not out.exists() or list(out.iterdir()) == []  # no partial folder
        filler.unlink()
        filler = fill(disk, 2)  # the state file and the one chunk fit, the final file not
        res = run_cli([*args, "-o", out])
        assert res.returncode == 2 and "the disk is full" in one_error(res)
        partial = out / "film.features.partial"
        assert sorted(p.name for p in partial.iterdir()) == [
            "chunk-00000.safetensors",
            "state.json",
        ]
        filler.unlink()
        res = run_cli([*args, "-o", out])
        assert res.returncode == 0, res.stderr
        assert sorted(p.name for p in out.iterdir()) == ["film.features.safetensors"]
        from locomad_cli.features.extract import load_features

        mine, _ = load_features(out / "film.features.safetensors")
        reference, _ = load_features(world.features)
        assert torch.equal(mine, reference)  # the resumed file equals an uninterrupted one


# --- the help tells the truth -----------------------------------------------------------------


def _options():
    import typer

    from locomad_cli.cli import app

    def walk(cmd, prefix=""):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                yield from walk(sub, f"{prefix} {name}")
        else:
            for p in cmd.params:
                if p.param_type_name == "option" and p.help:
                    yield prefix.strip(), p

    return list(walk(typer.main.get_command(app)))


def test_help_defaults_come_from_the_code():
    """No help text writes a default by hand (Typer shows the code's own: `[default: X]`), so
    the two cannot disagree; an option whose default is None says in words what it means."""
    from typer.testing import CliRunner

    from locomad_cli.cli import app

    options = _options()
    assert len(options) > 100
    for command, p in options:
        assert "Default:" not in p.help, f"{command} {p.opts[0]}"
    text = " ".join(CliRunner().invoke(app, ["describe", "--help"]).stdout.split())
    assert "--min-gap <float> Shortest gap between speech to describe (s). [default: 2.0]" in text
    assert "Output folder. [default: (beside the video)]" in text


def test_flags_show_as_flags():
    for command, p in _options():
        if isinstance(p.default, bool) and p.is_flag and not p.secondary_opts:
            assert p.metavar in (None, ""), f"{command} {p.opts[0]}"
    from typer.testing import CliRunner

    from locomad_cli.cli import app

    text = CliRunner().invoke(app, ["describe", "--help"], env={"COLUMNS": "200"}).stdout
    line = next(x for x in text.splitlines() if "--resume" in x)
    assert "<bool>" not in line and "BOOLEAN" not in line, line


@pytest.mark.slow
def test_documented_mux_marks_the_track_as_descriptions(world, tmp_path):
    """The ffmpeg line of docs/describe.md, run as written: the text stream comes out with
    the `descriptions` disposition and a language (ffprobe reads both back)."""
    import shlex

    doc = (Path(__file__).parent.parent / "docs" / "describe.md").read_text()
    line = next(x for x in doc.split("`") if x.startswith("ffmpeg -i movie.mp4 -i movie.ad.vtt"))
    vtt = _write(
        tmp_path, "movie.ad.vtt", "WEBVTT\n\nad-1\n00:00:00.500 --> 00:00:02.000\nA man.\n"
    )
    args = shlex.split(line)
    args = [{"movie.mp4": str(world.film), "movie.ad.vtt": str(vtt)}.get(a, a) for a in args]
    args[-1] = str(tmp_path / "movie.ad.mp4")
    subprocess.run([args[0], "-v", "error", "-y", *args[1:]], check=True)
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "s", "-of", "json", "-show_entries",
         "stream=codec_type:stream_disposition=descriptions:stream_tags=language", args[-1]],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    (stream,) = json.loads(probe.stdout)["streams"]
    assert stream["disposition"]["descriptions"] == 1
    assert stream["tags"]["language"] == "eng"
