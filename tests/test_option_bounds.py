"""Option values and data a user hands to `train`, `demo make-data` and `evaluate`: each bad
one is refused in one line (LocomadError, exit 2) before anything runs, never an internal
error, a hang or a silently wrong run."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers.cli import one_error, run_cli
from helpers.datasets import simple_films, tiny_train_config, write_film_folder, write_splits

from locomad_cli.card import tiny_card
from locomad_cli.demo.data import DemoDataConfig, make_data
from locomad_cli.evaluate.report import check_options, evaluate
from locomad_cli.train.loop import TrainConfig, train
from locomad_cli.utils import LocomadError

NAN, INF = math.nan, math.inf


def _train_cfg(tmp_path: Path, **kw) -> TrainConfig:
    """A valid tiny stage-1 run (nothing read until train() is called)."""
    kw = {"max_steps": 1, "warmup_steps": 0, **kw}
    return tiny_train_config(tmp_path / "films", tmp_path / "tiny.yaml", tmp_path / "run", **kw)


@pytest.fixture
def films(tmp_path: Path) -> Path:
    root = write_film_folder(tmp_path / "films", simple_films(3, 8), frames=100)
    write_splits(root, {"train": ["film0", "film1"], "val": ["film2"]})
    (tmp_path / "tiny.yaml").write_text(tiny_card().to_yaml())
    return root


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("lr", NAN, "--lr is a number > 0, got nan"),
        ("lr", -1.0, "--lr is a number > 0, got -1"),
        ("lr", 0.0, "--lr is a number > 0, got 0"),
        ("lr", INF, "--lr is a number > 0, got inf"),
        ("log_every", 0, "--log-every is a whole number >= 1, got 0"),
        ("seed", -1, "--seed is a whole number in [0, 4294967295], got -1"),
        ("seed", 99999999999999999999, "got 99999999999999999999"),
        ("num_workers", -1, "--num-workers is a whole number in [0, 256]"),
        ("weight_decay", NAN, "--weight-decay is a number >= 0, got nan"),
        ("visual_contrast", NAN, "--visual-contrast is a weight >= 0, got nan"),
        ("context_dropout", 1.5, "--context-dropout is a chance in [0, 1], got 1.5"),
        ("max_grad_norm", -1.0, "--max-grad-norm is a number >= 0, got -1"),
        ("warmup_steps", -5, "--warmup-steps is a whole number >= 0, got -5"),
        ("max_steps", -1, "--max-steps is a whole number >= 1, got -1"),
        ("max_steps", 0, "--max-steps is a whole number >= 1, got 0"),
        ("epochs", 0, "--epochs is a whole number >= 1"),
        ("batch_size", 0, "--batch-size is a whole number >= 1"),
        ("eval_every", -3, "--eval-every"),
        ("val_max_clips", 0, "--val-max-clips"),
        ("min_lr", -INF, "--min-lr is a number >= 0, got -inf"),
        ("warmup_lr", NAN, "--warmup-lr"),
        ("grad_accum", 0, "--grad-accum"),
        ("keep_last", 0, "--keep-last"),
        ("eval_batch_size", 0, "--eval-batch-size"),
        ("betas", (0.9, 1.0), "betas is a number in [0, 1), got 1"),
    ],
)
def test_train_numbers_out_of_range_are_refused(tmp_path, field, value, words):
    with pytest.raises(LocomadError) as e:
        _train_cfg(tmp_path, **{field: value}).check()
    assert words in str(e.value)
    assert "\n" not in str(e.value)


def test_train_defaults_and_edges_pass(tmp_path):
    TrainConfig(stage=1, data="d", out="o").check()
    edges = dict(seed=0, num_workers=0, max_grad_norm=0.0, warmup_steps=0, context_dropout=1.0)
    _train_cfg(tmp_path, **edges, epochs=None, max_steps=None).check()
    _train_cfg(tmp_path, seed=2**32 - 1).check()


def test_train_refuses_before_writing_anything(films, tmp_path):
    with pytest.raises(LocomadError, match="--log-every"):
        train(_train_cfg(tmp_path, log_every=0))
    assert not (tmp_path / "run").exists()


def test_deeply_nested_splits_json_is_one_line(films, tmp_path):
    (films / "splits.json").write_text("[" * 100_000)
    with pytest.raises(LocomadError, match="splits.json: not JSON .*nested too deeply"):
        train(_train_cfg(tmp_path))
    (films / "splits.json").write_text('{"train": "film0"}')
    with pytest.raises(LocomadError, match=r"expected \{split: \[film names\]\}"):
        train(_train_cfg(tmp_path))
    (films / "splits.json").write_bytes(b'{"train": \xff}')
    with pytest.raises(LocomadError, match="splits.json: not JSON"):
        train(_train_cfg(tmp_path))
    assert not (tmp_path / "run").exists()


def test_garbage_features_file_is_one_line(films, tmp_path, capsys):
    (films / "film1.features.safetensors").write_bytes(b"garbage")
    with pytest.raises(LocomadError, match="film1.features.safetensors: not a features file"):
        train(_train_cfg(tmp_path, resume=True))
    # the --resume note is only for a run that starts: the refusal is the one line
    assert "nothing to resume" not in capsys.readouterr().err


def test_resume_note_still_comes_when_the_run_starts(films, tmp_path, capsys, one_thread):
    result = train(_train_cfg(tmp_path, resume=True))
    assert result.step == 1
    assert "nothing to resume" in capsys.readouterr().err


@pytest.mark.parametrize(
    "field,value,words",
    [
        ("fps", NAN, "--fps is a number in [1, 60], got nan"),
        ("fps", 1e9, "--fps is a number in [1, 60], got 1e+09"),
        ("fps", 0.0, "--fps"),
        ("seed", -1, "--seed is a whole number in [0, 4294967295], got -1"),
        ("films", 100_000_000_000, "--films is a whole number in [1, 10000]"),
        ("films", 0, "--films"),
        ("val", -1, "--val is a whole number"),
        ("test", 10**12, "--test is a whole number"),
        ("cast", 5, "--cast is a whole number in [1, 4], got 5"),
        ("dialogue_intro", NAN, "--dialogue-intro is a chance in [0, 1], got nan"),
        ("extra_train", 10**9, "--extra-films is a whole number in [0, 10000]"),
        ("scenes", 0, "--scenes"),
        ("window", 0, "--window"),
    ],
)
def test_demo_data_numbers_out_of_range_are_refused(tmp_path, field, value, words):
    cfg = DemoDataConfig(**{field: value})
    with pytest.raises(LocomadError) as e:
        cfg.check()
    assert words in str(e.value)
    with pytest.raises(LocomadError):  # make-data checks first: nothing is written
        make_data(tmp_path / "d", cfg, features=False)
    assert not (tmp_path / "d").exists()


def test_demo_data_defaults_pass():
    DemoDataConfig().check()
    DemoDataConfig(seed=2**32 - 1, films=3, val=1, test=1, fps=60.0).check()


def _track(path: Path, *texts: str) -> Path:
    cues = [
        f"{i}\n00:00:{2 * i:02d},000 --> 00:00:{2 * i + 1:02d},000\n{t}\n"
        for i, t in enumerate(texts, 1)
    ]
    path.write_text("\n".join(cues), encoding="utf-8")
    return path


@pytest.mark.parametrize("value", [NAN, 2.0, -1.0, INF])
def test_evaluate_min_iou_outside_0_1_is_refused(tmp_path, value):
    pred = _track(tmp_path / "p.srt", "a man walks")
    ref = _track(tmp_path / "r.srt", "a man walks")
    with pytest.raises(LocomadError, match=r"--min-iou is an overlap in \[0, 1\]"):
        evaluate(pred, ref, metrics="cider", min_iou=value)


def test_evaluate_device_and_corenlp_are_checked(tmp_path):
    check_options(0.5, "cpu")
    check_options(0.0, "auto", tmp_path)
    check_options(1.0, "cpu:0")
    with pytest.raises(LocomadError, match="--device zzz: not a device"):
        check_options(0.5, "zzz")
    regular = tmp_path / "file.txt"
    regular.write_text("x")
    with pytest.raises(LocomadError, match="--corenlp .*file.txt is not a folder"):
        check_options(0.5, "cpu", regular)
    with pytest.raises(LocomadError, match="--corenlp .* is not a folder"):
        check_options(0.5, "cpu", tmp_path / "nowhere")
    with pytest.raises(LocomadError, match="1 <= k <= N"):
        check_options(0.5, "cpu", recall_k=20, recall_n=16)


@pytest.mark.slow
def test_cli_bad_options_are_one_line(films, tmp_path):
    base = ["train", "--stage", "1", "--data", str(films), "-o", str(tmp_path / "run")]
    base += ["-m", str(tmp_path / "tiny.yaml"), "--val-data", "none"]
    one_error(run_cli([*base, "--lr", "nan"]), "--lr is a number > 0, got nan")
    one_error(run_cli([*base, "--max-steps", "-1"]), "--max-steps")
    (films / "film0.features.safetensors").write_bytes(b"garbage")
    res = run_cli([*base, "--resume", "--num-workers", "0"])
    one_error(res, "film0.features.safetensors: not a features file")
    assert not (tmp_path / "run").exists()
    one_error(run_cli(["demo", "make-data", tmp_path / "d", "--fps", "1e9"]), "--fps")
    one_error(run_cli(["demo", "make-data", tmp_path / "d", "--films", "100000000000"]), "--films")
    assert not (tmp_path / "d").exists()
    pred = _track(tmp_path / "p.srt", "a man walks")
    ref = _track(tmp_path / "r.srt", "a man walks")
    for extra, words in (
        (["--min-iou", "nan"], "--min-iou"),
        (["--device", "zzz", "--metrics", "bertscore"], "--device zzz"),
        (["--corenlp", str(pred)], "--corenlp"),
    ):
        one_error(run_cli(["evaluate", pred, "-r", ref, *extra]), words)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("s2_epochs", 0, "--s2-epochs is a whole number"),
        ("s1_lr", NAN, "--s1-lr is a number > 0, got nan"),
        ("s2_visual_contrast", -1.0, "--visual-contrast"),
        ("s2_context_dropout", 1.5, "--s2-context-dropout"),
        ("clip_batch", 1, "--clip-batch"),
        ("extra_train", -1, "--extra-films"),
        ("seed", -1, "--seed"),
    ],
)
def test_demo_train_refuses_bad_numbers_before_any_work(tmp_path, field, value, words):
    """A bad stage-2 value was found only when stage 2 began, hours in (after the data, the
    CLIP and stage 1); now before anything is written."""
    from locomad_cli.demo.pipeline import DemoTrainConfig, train_demo

    cfg = DemoTrainConfig(work=str(tmp_path / "work"), weights=str(tmp_path / "w"))
    setattr(cfg, field, value)
    with pytest.raises(LocomadError, match=words):
        train_demo(cfg)
    assert list(tmp_path.iterdir()) == []
