"""The demo film world: deterministic, names learnable only from context, AD between dialogue,
real decodable films and parseable SRTs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pysrt
import pytest
from typer.testing import CliRunner

from locomad_cli.cli import app
from locomad_cli.demo.data import DemoDataConfig, make_data, make_film, world_json
from locomad_cli.demo.render import HEIGHT, WIDTH, film_frames
from locomad_cli.demo.world import NAMES
from locomad_cli.utils import LocomadError

CFG = DemoDataConfig(seed=3, films=3, val=1, test=1)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    make_data(root, CFG, features=False)
    return root


def _ffprobe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-show_streams", "-show_format", "-of", "json", str(path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@pytest.mark.slow
def test_same_seed_same_film_other_seed_other_film():
    a, b = make_film(5, CFG), make_film(5, CFG)
    assert world_json(a) == world_json(b)
    other = make_film(5, DemoDataConfig(seed=4))
    assert world_json(other)["slots"] != world_json(a)["slots"]
    # a film does not depend on how many films the set has
    assert world_json(make_film(5, DemoDataConfig(seed=3, films=50))) == world_json(a)


@pytest.mark.slow
def test_rendering_and_encoding_are_deterministic(data_dir, tmp_path):
    film = make_film(0, CFG)
    frames = film_frames(film, 10.0)
    assert np.array_equal(frames, film_frames(film, 10.0))
    assert frames.shape == (int(round(film.duration * 10)), HEIGHT, WIDTH, 3)
    again = make_data(tmp_path, CFG, features=False)
    first = data_dir / "train" / "film0000.mp4"
    assert again["train"][0].read_bytes() == first.read_bytes()


@pytest.mark.slow
def test_frames_show_the_action():
    """Something moves during an action slot, and the picture holds still between slots."""
    film = make_film(1, CFG)
    frames = film_frames(film, 10.0).astype(int)
    enter = next(s for s in film.slots if s.action.kind == "enter")
    a, b = int(enter.start * 10) + 1, int(enter.end * 10) - 1
    assert np.abs(frames[b] - frames[a]).sum() > 2000
    slot, nxt = film.slots[0], film.slots[1]
    still = [i for i in range(int(slot.end * 10) + 1, int(nxt.start * 10))]
    assert np.abs(frames[still[0]] - frames[still[-1]]).max() == 0


@pytest.mark.slow
def test_names_are_drawn_afresh_per_film():
    casts = [tuple(c.name for c in make_film(i, CFG).cast) for i in range(12)]
    assert len(set(casts)) == 12
    named = {n for c in casts for n in c}
    assert len(named) >= 18 and named <= set(NAMES)
    # the same look gets different names in different films
    by_look: dict[str, set[str]] = {}
    for i in range(12):
        for c in make_film(i, CFG).cast:
            by_look.setdefault(c.look.phrase, set()).add(c.name)
    assert max(len(v) for v in by_look.values()) >= 3


@pytest.mark.slow
def test_every_name_is_introduced_earlier_in_context():
    for i in range(20):
        film = make_film(i, CFG)
        cast = {c.name for c in film.cast}
        known: dict[str, int] = {}
        line_binds = {ln.start: ln.binds for ln in film.lines}
        stale = 0
        for j, s in enumerate(film.slots):
            assert set(s.names) <= cast
            for n in s.names:
                introduces_itself = n in s.binds and f", {n}," in s.text
                if introduces_itself:
                    continue
                assert n in known, f"{film.name} slot {j}: {s.text!r} uses {n} before any intro"
                stale += j - known[n] > CFG.window
            for n in s.binds:
                known[n] = j
            for start, names in line_binds.items():
                if s.end <= start < (film.slots[j + 1].start if j + 1 < len(film.slots) else 1e9):
                    for n in names:
                        assert n in s.binds  # a greeting names the one who just came in
        mentions = sum(len(s.names) for s in film.slots)
        assert stale <= 0.15 * mentions
        # someone must be named at all, or there is nothing to learn
        assert mentions >= 5


@pytest.mark.slow
def test_names_appear_only_after_their_introduction_in_time():
    film = make_film(2, CFG)
    intro = film.introductions()
    for s in film.slots:
        for n in s.names:
            assert intro[n] <= s.end
    for ln in film.lines:
        for n in NAMES:
            if n in ln.text.replace(",", " ").replace(".", " ").replace("!", " ").split():
                assert intro[n] <= ln.end


@pytest.mark.slow
def test_ad_never_overlaps_dialogue_and_srts_parse(data_dir):
    for split in ("train", "val", "test"):
        for mp4 in (data_dir / split).glob("*.mp4"):
            ad = pysrt.open(str(mp4.with_suffix(".ad.srt")))
            subs = pysrt.open(str(mp4.with_suffix(".srt")))
            world = json.loads(mp4.with_suffix(".world.json").read_text())
            assert [a.text for a in ad] == [s["text"] for s in world["slots"]]
            assert len(subs) == len(world["lines"]) and len(subs) > 0
            for a in ad:
                for s in subs:
                    assert a.end.ordinal <= s.start.ordinal or s.end.ordinal <= a.start.ordinal
            starts = [a.start.ordinal for a in ad]
            assert starts == sorted(starts)
            for a in ad:
                assert 2000 <= a.end.ordinal - a.start.ordinal <= 4000


@pytest.mark.slow
def test_mp4_is_h264_with_the_films_duration(data_dir):
    mp4 = data_dir / "test" / "film0002.mp4"
    info = _ffprobe(mp4)
    video = next(s for s in info["streams"] if s["codec_type"] == "video")
    assert video["codec_name"] == "h264"
    assert (video["width"], video["height"]) == (WIDTH, HEIGHT)
    world = json.loads(mp4.with_suffix(".world.json").read_text())
    assert abs(float(info["format"]["duration"]) - world["duration"]) < 0.15
    assert 60 <= world["duration"] <= 180
    assert mp4.stat().st_size < 1_000_000


@pytest.mark.slow
def test_split_layout(data_dir):
    assert sorted(p.name for p in (data_dir / "train").glob("*.mp4")) == ["film0000.mp4"]
    assert sorted(p.name for p in (data_dir / "val").glob("*.mp4")) == ["film0001.mp4"]
    assert sorted(p.name for p in (data_dir / "test").glob("*.mp4")) == ["film0002.mp4"]


@pytest.mark.slow
def test_extra_training_films_come_after_the_held_out_ones(tmp_path):
    cfg = DemoDataConfig(seed=3, films=3, val=1, test=1, extra_train=2)
    out = make_data(tmp_path, cfg, features=False)
    assert [p.name for p in out["train"]] == ["film0000.mp4", "film0003.mp4", "film0004.mp4"]
    assert [p.name for p in out["test"]] == ["film0002.mp4"]
    # the held-out films are the same films as without the extra ones
    assert world_json(make_film(2, cfg)) == world_json(make_film(2, CFG))


@pytest.mark.slow
def test_bad_split_sizes_are_refused(tmp_path):
    with pytest.raises(LocomadError, match="at least one training film"):
        make_data(tmp_path, DemoDataConfig(films=2, val=1, test=1), features=False)
    with pytest.raises(LocomadError, match="--extra-films must be 0 or more"):
        bad = DemoDataConfig(films=3, val=1, test=1, extra_train=-1)
        make_data(tmp_path / "d", bad, features=False)
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_cli_make_data(tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        app,
        [
            "demo",
            "make-data",
            str(tmp_path),
            "--films",
            "3",
            "--val",
            "1",
            "--test",
            "1",
            "--no-features",
        ],
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "test" / "film0002.ad.srt").is_file()
    res = runner.invoke(app, ["demo", "make-data", str(tmp_path / "x"), "--films", "1"])
    assert res.exit_code == 2
    assert "training film" in res.output


@pytest.mark.slow
def test_the_name_pool_is_written_for_rename_names(data_dir):
    """make-data writes the world's names where `locomad train --rename-names` reads them: every
    name a film's cast was given is in it."""
    from locomad_cli.data.rename import read_names
    from locomad_cli.demo.world import NAMES

    pool = read_names(data_dir / "names.txt")
    assert pool == list(NAMES) and len(pool) == 48
    for world in data_dir.rglob("*.world.json"):
        cast = json.loads(world.read_text(encoding="utf-8"))["cast"]
        assert cast and all(c["name"] in pool for c in cast)
