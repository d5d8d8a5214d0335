"""`locomad describe` over several films: one model start-up, each film's files found beside
it, a bad film reported while the others go on, and films shared among the processes of
`accelerate launch` (describe/many.py, films.py)."""

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.ports import free_port
from helpers.srt import srt_text
from typer.testing import CliRunner

import locomad_cli.describe.film
import locomad_cli.features.clip
from locomad_cli.card import tiny_card
from locomad_cli.cli import app
from locomad_cli.describe.film import DescribeOptions, describe
from locomad_cli.describe.many import describe_films
from locomad_cli.model.checkpoint import save_model
from locomad_cli.model.locomad import LoCoMAD
from locomad_cli.utils import LocomadError

REPO = Path(__file__).resolve().parents[1]
SLOTS = {"a": [(0.5, 1.5), (2.0, 3.5)], "b": [(0.2, 1.0), (1.5, 2.5), (3.0, 3.8)], "c": [(1, 3)]}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random model saved as trained weights, and its card as a YAML file."""
    root = tmp_path_factory.mktemp("tiny")
    card = tiny_card()
    card.llm.max_new_tokens = 4
    torch.manual_seed(0)
    save_model(LoCoMAD.from_card(card, pretrained=False), root / "weights")
    (root / "tiny.yaml").write_text(card.to_yaml())
    return root


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from helpers.media import make_video

    root = tmp_path_factory.mktemp("videos")
    for name in SLOTS:
        make_video(root / f"{name}.mp4", duration=4.0, size="64x48")
    return root


@pytest.fixture
def films(videos, tmp_path):
    """A folder of three 4 s films, each with its AD times beside it; a also has subtitles."""
    folder = tmp_path / "films"
    folder.mkdir()
    for name, slots in SLOTS.items():
        os.link(videos / f"{name}.mp4", folder / f"{name}.mp4")
        text = [(a, b, f"{name} reference {i}") for i, (a, b) in enumerate(slots)]
        (folder / f"{name}.ad-times.srt").write_text(srt_text(text))
    (folder / "a.srt").write_text(srt_text([(1.6, 1.9, "Hello.")]))
    return folder


def _opts(tiny, out, **kw):
    base = dict(
        model=str(tiny / "tiny.yaml"),
        weights=str(tiny / "weights"),
        output_dir=str(out),
        formats="json",
        device="cpu",
        progress=False,
    )
    return DescribeOptions(**{**base, **kw})


def _counting(monkeypatch, module, name):
    calls = []
    real = getattr(module, name)

    def wrapper(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return calls


def _texts(track):
    return [(s["start"], s["end"], s["text"]) for s in track["slots"]]


@pytest.mark.slow
def test_one_start_up_for_all_films_and_tracks_as_one_by_one(tiny, films, tmp_path, monkeypatch):
    loads = _counting(monkeypatch, locomad_cli.describe.film, "_load_model")
    text_encoders = _counting(monkeypatch, locomad_cli.features.clip, "load_clip")
    outcomes = describe_films([films], _opts(tiny, tmp_path / "out"))
    assert [(o.video.name, o.error) for o in outcomes] == [("a.mp4", None), ("b.mp4", None)] + [
        ("c.mp4", None)
    ]
    assert len(loads) == 1 and len(text_encoders) == 1
    for o in outcomes:  # each film's slots are its own AD times
        assert [(s["start"], s["end"]) for s in o.track["slots"]] == SLOTS[o.video.stem]
    assert outcomes[0].track["subtitles_file"] == str(films / "a.srt")
    assert outcomes[1].track["subtitles_file"] is None
    assert sorted(p.name for p in (tmp_path / "out").glob("*.ad.*")) == [
        "a.ad.json",
        "b.ad.json",
        "c.ad.json",
    ]
    # the same film described alone, its files named by flags, gives the same track
    alone, _ = describe(
        films / "a.mp4",
        _opts(
            tiny,
            tmp_path / "alone",
            subs=str(films / "a.srt"),
            ad_times=str(films / "a.ad-times.srt"),
        ),
    )
    assert _texts(alone) == _texts(outcomes[0].track)


@pytest.mark.slow
def test_a_bad_film_is_one_line_and_the_others_are_written(tiny, films, tmp_path):
    (films / "b.ad-times.srt").write_text(srt_text([(1.0, 9.0, "")]))  # past the 4 s film's end
    out = tmp_path / "out"
    outcomes = describe_films([films], _opts(tiny, out))
    assert [o.error is None for o in outcomes] == [True, False, True]
    assert outcomes[1].error.startswith(f"{films / 'b.mp4'}: {films / 'b.ad-times.srt'}:1:")
    assert outcomes[1].paths == [] and not list(out.glob("b.*"))  # nothing half written

    args = ["describe", str(films), "--model", str(tiny / "tiny.yaml"), "--weights"]
    args += [str(tiny / "weights"), "-o", str(tmp_path / "cli"), "-f", "srt", "--device", "cpu"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("locomad: error:")]
    assert len(errors) == 2 and "b.ad-times.srt:1: slot ends at 9.000s" in errors[0]
    assert errors[1] == "locomad: error: 1 of 3 films failed: b.mp4; the others are written"
    assert sorted(p.name for p in (tmp_path / "cli").glob("*.ad.*")) == ["a.ad.srt", "c.ad.srt"]
    # stdout: each description once, after its film's name
    lines = res.stdout.splitlines()
    assert [ln.split()[0] for ln in lines] == ["a.mp4"] * 2 + ["c.mp4"]
    assert "Traceback" not in res.output


@pytest.mark.slow
def test_a_flag_naming_one_films_file_is_refused_with_several(tiny, films, tmp_path):
    out = tmp_path / "out"
    for flag in ("--subs", "--ad-times", "--reference", "--features"):
        args = ["describe", str(films / "a.mp4"), str(films / "b.mp4"), flag, str(films / "a.srt")]
        res = CliRunner().invoke(app, [*args, "--model", str(tiny / "tiny.yaml"), "-o", str(out)])
        assert res.exit_code == 2
        assert res.stderr.splitlines() == [
            f"locomad: error: {flag} names one film's file, but several films are given: each "
            "film's files are found beside it instead (FILM.srt, FILM.ad-times.srt, "
            "FILM.features.safetensors)"
        ]
    assert not out.exists()


@pytest.mark.slow
def test_two_films_that_would_write_the_same_track_are_refused(tiny, films, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    os.link(films / "a.mp4", other / "a.mp4")
    with pytest.raises(LocomadError, match=r"a\.mp4 would both write .*out/a\.ad\.\*"):
        describe_films([films, other / "a.mp4"], _opts(tiny, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_model_that_cannot_load_stops_every_film(tiny, films, tmp_path, monkeypatch):
    loads = _counting(monkeypatch, locomad_cli.describe.film, "_load_model")
    empty = tmp_path / "empty-weights"
    empty.mkdir()
    with pytest.raises(LocomadError):
        describe_films([films], _opts(tiny, tmp_path / "out", weights=str(empty)))
    assert len(loads) == 1  # not tried again for b and c


@pytest.mark.slow
def test_oracle_takes_each_films_reference_from_its_ad_times(tiny, films, tmp_path):
    (films / "c.ad-times.srt").unlink()
    outcomes = describe_films([films], _opts(tiny, tmp_path / "out", setting="oracle"))
    assert [o.error is None for o in outcomes] == [True, True, False]
    assert "needs the film's reference AD beside it (c.ad-times.srt" in outcomes[2].error
    # b's second slot sees b's first reference description, nobody else's
    selected = outcomes[1].track["slots"][1]["selected"]
    assert [s["text"] for s in selected] == ["b reference 0"]


@pytest.mark.slow
def test_voice_follows_each_films_track(tiny, films, tmp_path, monkeypatch):
    import locomad_cli.voice.fit
    from locomad_cli.voice.fit import voice_described

    heard = []

    def fake_voice(video, vopts, track=None):
        heard.append((Path(video).name, Path(vopts.ad).name, track["film"]))
        return {"voice": {"summary": f"voiced {track['film']}"}}, [Path(vopts.ad)]

    monkeypatch.setattr(locomad_cli.voice.fit, "voice", fake_voice)
    (films / "b.ad-times.srt").write_text(srt_text([(1.0, 9.0, "")]))  # b fails: not voiced
    then = functools.partial(voice_described, formats="srt,vtt,json", progress=False)
    outcomes = describe_films([films], _opts(tiny, tmp_path / "out"), then=then)
    assert heard == [("a.mp4", "a.ad.json", "a"), ("c.mp4", "c.ad.json", "c")]
    assert [o.voiced for o in outcomes] == ["voiced a", None, "voiced c"]


@pytest.mark.slow
def test_resume_keeps_films_already_described_and_continues_the_rest(tiny, films, tmp_path):
    """The same command rerun with --resume after a crash: a described film is kept as it
    is, the interrupted one continues after its last slot, the rest are described, all as an
    uninterrupted run; a track of another setting is not taken for this run's."""
    whole = describe_films([films], _opts(tiny, tmp_path / "whole", formats="srt,json"))
    out = tmp_path / "out"

    def crash_in_b(video, row):
        if video.stem == "b":  # Ctrl-C after b's first description
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        describe_films([films], _opts(tiny, out, formats="srt,json"), crash_in_b)
    assert sorted(p.name for p in out.glob("*.ad.*")) == [
        "a.ad.json",
        "a.ad.srt",
        "b.ad.progress.jsonl",
    ]
    a_json, a_mtime = (out / "a.ad.json").read_bytes(), (out / "a.ad.srt").stat().st_mtime_ns

    again = describe_films([films], _opts(tiny, out, formats="srt,json", resume=True))
    assert [(o.video.name, o.skipped, o.error) for o in again] == [
        ("a.mp4", True, None),
        ("b.mp4", False, None),
        ("c.mp4", False, None),
    ]
    assert (out / "a.ad.json").read_bytes() == a_json
    assert (out / "a.ad.srt").stat().st_mtime_ns == a_mtime  # not rewritten
    assert again[0].track == json.loads(a_json)
    assert [p.name for p in again[0].paths] == ["a.ad.srt", "a.ad.json"]
    assert [_texts(o.track) for o in again] == [_texts(o.track) for o in whole]
    assert not list(out.glob("*.progress.jsonl"))

    # another setting's tracks are not this run's: described again; the command says which
    # films it kept, on stderr, and stdout holds only the descriptions it wrote
    args = ["describe", str(films), "--model", str(tiny / "tiny.yaml"), "--weights"]
    args += [str(tiny / "weights"), "-o", str(out), "-f", "srt,json", "--device", "cpu"]
    res = CliRunner().invoke(app, [*args, "--setting", "local", "--resume"])
    assert res.exit_code == 0, res.output
    assert len(res.stdout.splitlines()) == 6  # 2 + 3 + 1 slots
    assert "already described" not in res.stderr
    res = CliRunner().invoke(app, [*args, "--setting", "local", "--resume"])
    assert res.exit_code == 0, res.output
    assert res.stdout == ""
    assert [ln for ln in res.stderr.splitlines() if "already described" in ln] == [
        f"{films / n}.mp4: already described, kept {n}.ad.srt, {n}.ad.json (--resume)"
        for n in "abc"
    ]
    # without json among the formats nothing says who wrote a track: described again
    srt_only = describe_films([films], _opts(tiny, out, formats="srt", resume=True))
    assert [o.skipped for o in srt_only] == [False, False, False]
    # nor is a track written without a cast list this run's, which has one
    (tmp_path / "cast.txt").write_text("Tom\n")
    kw = dict(
        formats="srt,json", setting="local", resume=True, ad_times=str(films / "c.ad-times.srt")
    )
    cast = describe_films(
        [films / "c.mp4"], _opts(tiny, out, cast=str(tmp_path / "cast.txt"), **kw)
    )
    assert [o.skipped for o in cast] == [False]
    assert json.loads((out / "c.ad.json").read_text())["cast_file"] == str(tmp_path / "cast.txt")
    assert describe_films([films / "c.mp4"], _opts(tiny, out, **kw))[0].skipped is False


@pytest.mark.slow
def test_a_cast_beside_a_film_keeps_its_unheard_names_out(tiny, films, tmp_path):
    """FILM.cast.txt beside a film (or --cast for one): a description may use a cast name
    only once the film has said it; the other films are described as before."""
    free = describe_films([films], _opts(tiny, tmp_path / "free"))
    said = "".join(s["text"] for s in free[0].track["slots"])
    # the tiny model's vocabulary is bytes: a letter it writes stands in for a name
    word = next(c for c in said if c.strip() and c != "\ufffd")
    (films / "a.cast.txt").write_text(f"# a's cast\n\n{word}\n")
    ruled = describe_films([films], _opts(tiny, tmp_path / "ruled"))
    assert word not in "".join(s["text"] for s in ruled[0].track["slots"]), word
    assert _texts(ruled[1].track) == _texts(free[1].track)  # b has no cast file
    # one film: --cast; a file that names nobody is one line, nothing written
    (tmp_path / "none.txt").write_text("# nobody\n")
    args = ["describe", str(films / "a.mp4"), "--ad-times", str(films / "a.ad-times.srt")]
    args += ["--subs", str(films / "a.srt"), "--model", str(tiny / "tiny.yaml")]
    args += ["--weights", str(tiny / "weights")]
    args += ["-o", str(tmp_path / "cli"), "-f", "json", "--device", "cpu", "-q"]
    res = CliRunner().invoke(app, [*args, "--cast", str(tmp_path / "none.txt")])
    assert res.exit_code == 2
    assert res.stderr.splitlines() == [
        f"locomad: error: {tmp_path / 'none.txt'}: names no character (one name per line)"
    ]
    assert not (tmp_path / "cli").exists() or not list((tmp_path / "cli").glob("*.ad.*"))
    res = CliRunner().invoke(app, [*args, "--cast", str(films / "a.cast.txt")])
    assert res.exit_code == 0, res.output
    track = json.loads((tmp_path / "cli" / "a.ad.json").read_text())
    assert _texts(track) == _texts(ruled[0].track)


@pytest.mark.slow
def test_each_process_describes_its_share(tiny, films, tmp_path, monkeypatch):
    """Process 1 of 2 takes b (of a, b, c) and extracts its features itself (not split again)."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    outcomes = describe_films([films], _opts(tiny, tmp_path / "out"))
    assert [(o.video.name, o.error) for o in outcomes] == [("b.mp4", None)]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "b.ad.json",
        "b.features.safetensors",
    ]


@pytest.mark.slow
def test_extract_features_takes_a_folder(tiny, films, tmp_path):
    out = tmp_path / "feats"
    res = CliRunner().invoke(
        app, ["extract-features", str(films), "--model", str(tiny / "tiny.yaml"), "-o", str(out)]
    )
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == [f"{n}.features.safetensors" for n in SLOTS]


# --- two processes under accelerate launch ------------------------------------------------


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    """Four short films cut from the demo film, features extracted beside them; d's AD times
    run past its end (bad input)."""
    from helpers.demo_cuts import cut_demo

    from locomad_cli.card import load_card
    from locomad_cli.features.extract import extract_features

    root = tmp_path_factory.mktemp("demo-films")
    cuts = [("a", 0, 14), ("b", 40, 12), ("c", 70, 14), ("d", 98, 12)]
    films = [cut_demo(root, name, start, seconds) for name, start, seconds in cuts]
    extract_features(films, load_card("demo"), device="cpu")
    (root / "d.ad-times.srt").write_text(srt_text([(1.0, 30.0, "")]))
    return root


def _run(cmd, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_two_processes_describe_each_film_once_as_one_process_does(demo_folder, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2` on a machine without a GPU (torchrun
    underneath; `--cpu` alone would start a single process): films a, c go to process 0 and
    b, d to process 1. d is bad: process 1 reports it, waits for process 0, and every good
    film's track is written once and equals a one-process run of the same folder."""
    args = ["describe", str(demo_folder), "--model", "demo", "--device", "cpu", "-f", "srt,json"]
    one = _run([sys.executable, "-m", "locomad_cli", *args, "-o", str(tmp_path / "one")], tmp_path)
    assert one.returncode == 2, one.stderr[-3000:]
    assert one.stderr.splitlines()[-1] == (
        "locomad: error: 1 of 4 films failed: d.mp4; the others are written"
    )

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu"]
    launch += ["--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no"]
    launch += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
    two = _run([*launch, "-m", "locomad_cli", *args, "-o", str(tmp_path / "two")], tmp_path)
    assert two.returncode != 0  # the launcher's own exit code: a process failed
    mine = [ln for ln in two.stderr.splitlines() if ln.startswith("locomad: error:")]
    assert len(mine) == 2 and "d.ad-times.srt:1: slot ends at 30.000s" in mine[0]
    assert (
        mine[1]
        == "locomad: error: 1 of 2 films (process 1 of 2) failed: d.mp4; the others are written"
    )

    # each track written once (one `wrote` line each), each description printed once
    wrote = sorted(ln for ln in two.stderr.splitlines() if ln.startswith("wrote "))
    assert wrote == sorted(
        f"wrote {tmp_path / 'two'}/{n}.ad.{x}" for n in "abc" for x in ("srt", "json")
    )
    for name in "abc":
        track = json.loads((tmp_path / "one" / f"{name}.ad.json").read_text())
        printed = [ln for ln in two.stdout.splitlines() if ln.startswith(f"{name}.mp4  ")]
        assert len(printed) == len(track["slots"]) > 0, two.stdout
        same = (tmp_path / "two" / f"{name}.ad.json").read_text()
        assert json.loads(same) == track
        assert (tmp_path / "two" / f"{name}.ad.srt").read_bytes() == (
            tmp_path / "one" / f"{name}.ad.srt"
        ).read_bytes()
    assert not list((tmp_path / "two").glob("d.*"))
