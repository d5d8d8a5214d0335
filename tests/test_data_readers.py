"""Dataset readers on small fixtures in the upstream layouts, bad rows included."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.datasets import (
    fake_encode,
    simple_films,
    write_film_folder,
    write_mad,
    write_splits,
)

from locomad_cli.data import load_split, parse_spec, read_split
from locomad_cli.data.dataset import H5Frames
from locomad_cli.data.lsmdc import clip_time
from locomad_cli.data.textcache import cache_path
from locomad_cli.utils import LocomadError

# MAD-eval's public schema, plus rows that must be refused: end <= start (line 6), a film
# without features (line 7), a slot past the end of its film (line 8), a non-time (line 9).
MAD_AD = [
    "movie,sentence,movie_duration,start,end,imdb,lsmdc_filename,start_hms,end_hms",
    "1001,He opens the door.,20,1.0,3.0,tt1,x,00:00:01,00:00:03",
    "1001,She looks up.,20,4.0,6.5,tt1,x,00:00:04,00:00:06",
    "2002,A car drives past.,30,2.0,4.0,tt2,x,00:00:02,00:00:04",
    "3003,Rain falls.,10,0.0,2.0,tt3,x,00:00:00,00:00:02",
    "1001,Broken row.,20,8.0,8.0,tt1,x,00:00:08,00:00:08",
    "9999,No features.,20,1.0,2.0,tt9,x,00:00:01,00:00:02",
    "1001,Too late.,20,25.0,27.0,tt1,x,00:00:25,00:00:27",
    "2002,Bad time.,30,abc,4.0,tt2,x,,",
]
MAD_SUBS = [
    "movie,start,end,text",
    "1001,0.5,1.5,Hello there.",
    "1001,2.5,4.5,Who is it?",
    "2002,10.0,11.0,Later.",
]
FILMS = {"1001": 100, "2002": 150, "3003": 50}  # frames at 5 FPS: 20 s, 30 s, 10 s


def _mad(tmp_path, split_file=True):
    root = write_mad(tmp_path / "mad", FILMS, MAD_AD, MAD_SUBS)
    if split_file:
        (root / "autoad_split.json").write_text(
            json.dumps({"TRAIN": [1001, 2002, 9999], "EVAL": [3003]})
        )
    return root


def test_mad_reads_slots_frames_and_subtitles(tmp_path, card):
    root = _mad(tmp_path)
    ds = load_split(f"mad:{root}", card, "train", encode=fake_encode)
    assert [(r.film, r.start, r.end) for r in ds.anns] == [
        ("1001", 1.0, 3.0),
        ("1001", 4.0, 6.5),
        ("2002", 2.0, 4.0),
    ]
    rec = ds[1]
    # 4.0-6.5 s at 5 FPS: frames 20..32 of film 1001 (the first film in the file)
    assert rec.features[:, 0].tolist() == list(range(20, 33))
    assert torch.all(rec.features[:, 1] == 1)
    assert rec.text == "She looks up."
    assert rec.subtitle == "Who is it?"
    assert ds[0].subtitle == "Hello there. Who is it?"
    assert ds[2].subtitle == ""
    assert [c.text for c in rec.context] == ["He opens the door."]
    assert ds[0].context == [] and ds[0].context_features is None
    assert torch.allclose(
        rec.context_features[0], fake_encode(["He opens the door."])[0], atol=1e-2
    )
    skipped = "\n".join(ds.split.skipped)
    assert "mad-v2-ad-unnamed.csv:6: end 8 s is not after start 8 s" in skipped
    assert "mad-v2-ad-unnamed.csv:7: no frame features for '9999'" in skipped
    assert "mad-v2-ad-unnamed.csv:8: slot 25-27 s starts outside the film (20 s)" in skipped
    assert "mad-v2-ad-unnamed.csv:9: start/end 'abc'/'4.0' not times" in skipped


def test_mad_eval_split_doubles_as_val_and_test(tmp_path, card):
    root = _mad(tmp_path)
    for split in ("val", "test"):
        ds = load_split(f"mad:{root}", card, split, encode=fake_encode)
        assert [(r.film, r.text) for r in ds.anns] == [("3003", "Rain falls.")]


def test_mad_strict_refuses_the_first_bad_row(tmp_path, card):
    root = _mad(tmp_path)
    with pytest.raises(LocomadError, match=r"mad-v2-ad-unnamed.csv:6: end 8 s .*drop --strict"):
        read_split(f"mad:{root}", card, "train", strict=True)


def test_mad_other_column_names_are_detected(tmp_path, card):
    rows = ["text,start,end,movie,scaled_start,scaled_end,imdbid"]
    rows += ["A man runs.,00:00:01.0,00:00:02.5,1001,0,0,tt1", "He stops.,3,4,1001,0,0,tt1"]
    root = write_mad(tmp_path / "m", FILMS, rows, ["movie_id,start_time,end_time,subtitle"])
    ds = load_split(f"mad:{root}", card, "train", encode=fake_encode)
    assert [(a.text, a.start, a.end) for a in ds.anns] == [
        ("A man runs.", 1.0, 2.5),
        ("He stops.", 3.0, 4.0),
    ]
    with pytest.raises(LocomadError, match="val"):
        load_split(f"mad:{root}", card, "val", encode=fake_encode)


def test_mad_unknown_columns_are_listed(tmp_path, card):
    root = write_mad(tmp_path / "m", FILMS, ["film_name,caption,t0,t1", "1001,x,1,2"], ["a,b"])
    with pytest.raises(LocomadError) as e:
        read_split(f"mad:{root}", card, "train")
    assert "mad-v2-ad-unnamed.csv: no film column" in str(e.value)
    assert "columns found: film_name, caption, t0, t1" in str(e.value)


def test_mad_v1_json(tmp_path, card):
    root = write_mad(tmp_path / "m", FILMS, ["movie,sentence,start,end"], ["movie,start,end,text"])
    v1 = {
        "a1": {"movie": "2002", "movie_duration": 30, "timestamps": [1.0, 2.0], "sentence": "X."},
        "a2": {"movie": "2002", "movie_duration": 30, "timestamps": [5.0, 4.0], "sentence": "Y."},
    }
    (root / "MAD_val.json").write_text(json.dumps(v1))
    data = read_split(f"mad:{root}?ad=v1", card, "val")
    assert [(a.film, a.text) for a in data.annotations] == [("2002", "X.")]
    assert data.skipped == [f"{root / 'MAD_val.json'}:a2: end 4 s is not after start 5 s"]


def test_h5_frames_are_read_lazily_per_process(tmp_path):
    root = _mad(tmp_path)
    frames = H5Frames(root / "CLIP_L14_frames_features_5fps.h5", 5.0)
    assert frames.read("2002", 3, 5)[:, 0].tolist() == [3.0, 4.0]
    state = frames.__getstate__()
    assert state["_file"] is None  # a pickled copy (DataLoader worker) opens its own handle


def test_h5_frames_in_dataloader_workers(tmp_path, card):
    from functools import partial

    from locomad_cli.data.records import collate

    ds = load_split(f"mad:{_mad(tmp_path)}", card, "train", encode=fake_encode)
    make = partial(collate, max_frames=64, proposal_len=10)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=2, collate_fn=make)
    (batch,) = list(loader)
    assert batch.frames[1, :13, 0].tolist() == list(range(20, 33))  # slot 4.0-6.5 s, film 1001
    assert batch.frame_mask.sum(1).tolist() == [10, 13, 10]  # [start*5, ceil(end*5))
    assert batch.context_mask[1].tolist() == [True] + [False] * 9


LSMDC_ROWS = [
    "0001_Movie_A_00.00.01.000-00.00.03.000\t00.00.01.000\t00.00.03.000\t00.00.01.000"
    "\t00.00.03.000\tSOMEONE walks in.",
    "0001_Movie_A_00.00.04.000-00.00.05.500\t0\t0\t0\t0\tSOMEONE sits.",
    "0001_Movie_A_00.00.06.000-00.00.07.000\t0\t0\t0\t0\tA phone rings.",
    "0001_Movie_A_00.00.08.000-00.00.09.000\t0\t0\t0\t0\tSOMEONE answers.",
    "0001_Movie_A_00.00.10.000-00.00.11.000\t0\t0\t0\t0\tSOMEONE hangs up.",
    "0001_Movie_A_00.00.12.000-00.00.13.000\t0\t0\t0\t0\tSOMEONE leaves.",
    "0002_Movie_B_00.01.00.000-00.01.02.000\t0\t0\t0\t0\tSnow falls.",
    "0002_Movie_B_00.01.03.000-00.01.02.000\t0\t0\t0\t0\tBackwards clip.",
    "not_a_clip_id\tSOMEONE.",
]


def _lsmdc(tmp_path):
    from safetensors.torch import save_file

    root = tmp_path / "lsmdc"
    (root / "features").mkdir(parents=True)
    (root / "LSMDC16_annos_training_someone.csv").write_text("\n".join(LSMDC_ROWS) + "\n")
    (root / "LSMDC16_annos_training.csv").write_text(
        "0001_Movie_A_00.00.01.000-00.00.03.000\t0\t0\t0\t0\tJohn walks in.\n"
    )
    for n, row in enumerate(LSMDC_ROWS[:8]):
        clip = row.split("\t")[0]
        x = torch.zeros(10, 32)
        x[:, 0] = n
        save_file({"features": x}, str(root / "features" / f"{clip}.features.safetensors"))
    return root


def test_lsmdc_sets_of_five_and_context(tmp_path, card):
    root = _lsmdc(tmp_path)
    ds = load_split(f"lsmdc:{root}", card, "train", encode=fake_encode)
    assert [a.text for a in ds.anns][:2] == ["SOMEONE walks in.", "SOMEONE sits."]
    assert len(ds) == 7
    assert clip_time("00.01.02.500") == 62.5
    assert (ds.anns[1].film, ds.anns[1].start, ds.anns[1].end) == ("0001_Movie_A", 4.0, 5.5)
    assert ds[1].features[:, 0].tolist() == [1.0] * 8  # 1.5 s at 5 FPS, its own clip's rows
    # clip 5 of Movie_A closes the first set; clip 6 starts a new one with no context
    assert [c.text for c in ds[4].context] == [
        "SOMEONE walks in.",
        "SOMEONE sits.",
        "A phone rings.",
        "SOMEONE answers.",
    ]
    assert ds[5].context == []
    assert ds[6].film == "0002_Movie_B" and ds[6].context == []
    skipped = "\n".join(ds.split.skipped)
    assert "someone.csv:8: end 62 s is not after start 63 s" in skipped
    assert "someone.csv:9: expected CLIP_ID" in skipped
    named = load_split(f"lsmdc:{root}?names=1", card, "train", encode=fake_encode)
    assert [a.text for a in named.anns] == ["John walks in."]


def test_folder_reads_films_and_splits(tmp_path, card):
    films = simple_films(3, 4)
    root = write_film_folder(tmp_path / "films", films, frames=50)
    (root / "film0.ad.csv").write_text(
        "start,end,text\n0.5,2.0,a man walks slowly\n3,2,backwards\n20,21,too late\n"
    )
    (root / "film1.srt").write_text("1\n00:00:00,600 --> 00:00:01,000\n<i>Hi!</i>\n")
    write_splits(root, {"train": ["film0", "film1"], "val": ["film2"]})
    ds = load_split(str(root), card, "train", encode=fake_encode)  # auto-detected as a folder
    assert [(a.film, a.start) for a in ds.anns] == [("film0", 0.5)] + [
        ("film1", s) for s, _, _ in films["film1"]
    ]
    assert ds[1].subtitle == "Hi!" and ds[2].subtitle == ""
    assert torch.all(ds[1].features[:, 1] == 2)
    assert any("film0.ad.csv:3: end 2 s is not after start 3 s" in p for p in ds.split.skipped)
    assert any("film0.ad.csv:4: slot 20-21 s starts outside" in p for p in ds.split.skipped)
    val = load_split(f"folder:{root}", card, "val", encode=fake_encode)
    assert {a.film for a in val.anns} == {"film2"}
    assert cache_path(root, card).is_file()


def test_folder_fps_and_dimension_mismatches_are_refused(tmp_path, card):
    root = write_film_folder(tmp_path / "films", simple_films(1, 2), frames=30)
    card.fps = 2.0
    with pytest.raises(LocomadError, match="features at 5 FPS, the card wants 2"):
        read_split(f"folder:{root}", card, "train")
    card.fps = 5.0
    card.clip.dim = 768
    with pytest.raises(LocomadError, match="32-d, the card 'tiny' expects clip.dim=768"):
        read_split(f"folder:{root}", card, "train")
    with pytest.raises(LocomadError, match="no 'val' split"):
        read_split(f"folder:{root}", card, "val")


def test_spec_parsing():
    with pytest.raises(LocomadError, match="unknown kind 'foo'"):
        parse_spec("foo:/nowhere")
    kind, path, options = parse_spec("mad:/data/mad?ad=named&split=/x/split.json")
    assert (kind, str(path), options) == (
        "mad",
        "/data/mad",
        {"ad": "named", "split": "/x/split.json"},
    )
