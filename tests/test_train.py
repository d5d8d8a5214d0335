"""`locomad train` on the tiny card: schedule, batches, stage 1 → stage 2, resume, DDP."""

from __future__ import annotations

import json
import math
import os
import pickle
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from helpers.datasets import simple_films, tiny_train_config, write_film_folder, write_splits
from helpers.ports import free_port
from safetensors.torch import load_file

from locomad_cli.card import tiny_card
from locomad_cli.train.loop import (
    StepBatches,
    TrainConfig,
    WarmupCosine,
    global_micro_batches,
    param_groups,
    train,
)
from locomad_cli.train.state import PICKLE_SUFFIXES as PICKLED
from locomad_cli.utils import LocomadError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def films(tmp_path) -> tuple[Path, Path]:
    root = write_film_folder(tmp_path / "films", simple_films(3, 8), frames=100)
    write_splits(root, {"train": ["film0", "film1"], "val": ["film2"]})
    card_path = tmp_path / "tiny.yaml"
    card_path.write_text(tiny_card().to_yaml())
    return root, card_path


def _cfg(root: Path, card: Path | None, out: Path, **kw) -> TrainConfig:
    return tiny_train_config(root, card, out, **kw)


def _losses(history: list[dict], key: str = "loss") -> dict[int, float]:
    return {h["step"]: h[key] for h in history if key in h}


def test_warmup_cosine_schedule():
    s = WarmupCosine(peak=1e-5, warmup=500, total=1500, warmup_lr=1e-8, min_lr=0.0)
    assert s(0) * 1e-5 == pytest.approx(1e-8)
    assert s(250) * 1e-5 == pytest.approx(1e-8 + (1e-5 - 1e-8) / 2)
    assert s(500) == pytest.approx(1.0)
    assert s(1000) == pytest.approx(0.5)
    assert s(1500) == pytest.approx(0.0, abs=1e-12)
    assert s(1250) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))


def test_weight_decay_skips_norms_biases_and_embeddings():
    named = [
        ("pme.layer.0.attention.query.weight", torch.nn.Parameter(torch.zeros(4, 4))),
        ("pme.layer.0.attention.query.bias", torch.nn.Parameter(torch.zeros(4))),
        ("pme.layernorm.weight", torch.nn.Parameter(torch.zeros(4))),
        ("pme.query_tokens", torch.nn.Parameter(torch.zeros(1, 4, 4))),
        ("decoder.llm.model.decoder.embed_tokens.weight", torch.nn.Parameter(torch.zeros(9, 4))),
        ("dsm.sampler.weight", torch.nn.Parameter(torch.zeros(1, 4))),
    ]
    decay, no_decay = param_groups(named, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert [p is named[0][1] or p is named[5][1] for p in decay["params"]] == [True, True]
    assert len(no_decay["params"]) == 4


def test_step_batches_are_fixed_by_seed_and_step_not_by_process_count():
    n = 24
    one = list(StepBatches(n, 2, 2, 1, 0, 7, 0, 6))  # 1 process, 2 micro-batches per step
    two = [list(StepBatches(n, 2, 1, 2, r, 7, 0, 6)) for r in range(2)]  # 2 processes
    assert one[0::2] == two[0] and one[1::2] == two[1]
    # an epoch (6 steps of 4) sees every clip once; the next epoch reshuffles
    first_epoch = [i for b in one for i in b]
    assert sorted(first_epoch) == list(range(n))
    assert global_micro_batches(6, n, 2, 2, 7) != global_micro_batches(0, n, 2, 2, 7)
    assert global_micro_batches(3, n, 2, 2, 7) == one[6:8]
    assert global_micro_batches(0, n, 2, 2, 8) != one[0:2]
    # resuming at step 3 yields what the uninterrupted run had left
    assert list(StepBatches(n, 2, 2, 1, 0, 7, 3, 6)) == one[6:]


def test_refusals(films, tmp_path):
    root, card = films
    with pytest.raises(LocomadError, match="stage 2 starts from a stage-1 checkpoint"):
        train(_cfg(root, card, tmp_path / "r", stage=2))
    with pytest.raises(LocomadError, match="--stage 3"):
        train(_cfg(root, card, tmp_path / "r", stage=3))
    with pytest.raises(LocomadError, match="16 clips, fewer than one global batch"):
        train(_cfg(root, card, tmp_path / "r", batch_size=8, grad_accum=3))
    with pytest.raises(LocomadError, match="nothing is not a folder"):  # asked-for val data
        train(_cfg(root, card, tmp_path / "r", val_data=f"folder:{tmp_path / 'nothing'}"))
    with pytest.raises(LocomadError, match="--visual-contrast is a weight >= 0, got -1"):
        train(_cfg(root, card, tmp_path / "v", visual_contrast=-1.0))
    assert not (tmp_path / "v").exists()


def test_cli_errors_are_one_line(films, tmp_path):
    from typer.testing import CliRunner

    from locomad_cli.cli import app

    root, card = films
    args = ["train", "--stage", "2", "--data", str(root), "-o", str(tmp_path / "r")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert result.output.strip() == (
        "locomad: error: stage 2 starts from a stage-1 checkpoint: pass --init STAGE1_RUN_DIR"
    )


def test_tensorboard_is_optional(films, tmp_path, one_thread):
    import importlib.util

    root, card = films
    cfg = _cfg(root, card, tmp_path / "tb", max_steps=1, tensorboard=True)
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(LocomadError, match="--tensorboard needs the tensorboard package"):
            train(cfg)
    else:
        train(cfg)
        assert list((tmp_path / "tb" / "tensorboard").rglob("events.out.tfevents.*"))


@pytest.mark.slow
def test_stage1_then_stage2_learn_and_validate(films, tmp_path, one_thread):
    root, card = films
    run1 = tmp_path / "run1"
    r1 = train(_cfg(root, card, run1, max_steps=8, eval_every=4, val_data=None, keep_last=1))
    loss = _losses(r1.history)
    assert sorted(loss) == list(range(1, 9))
    assert loss[7] + loss[8] < loss[1] + loss[2]  # it learns
    val = _losses(r1.history, "val/loss")
    assert sorted(val) == [4, 8] and all(math.isfinite(v) for v in val.values())
    assert json.loads((run1 / "best" / "best.json").read_text())["val/loss"] == min(val.values())
    assert [p.name for p in (run1 / "checkpoints").iterdir()] == ["step-0000008"]  # keep_last=1
    assert (run1 / "metrics.jsonl").read_text().count("\n") == 10

    run2 = tmp_path / "run2"
    r2 = train(_cfg(root, None, run2, stage=2, init=str(run1), max_steps=8, val_data=None))
    loss2 = _losses(r2.history)
    assert loss2[7] + loss2[8] < loss2[1] + loss2[2]
    cider = _losses(r2.history, "val/CIDEr")
    rouge = _losses(r2.history, "val/ROUGE-L")
    assert list(cider) == [4, 8] and list(rouge) == [4, 8]  # 2 steps per epoch: eval each epoch
    assert all(0.0 <= v < 1000 for v in cider.values()) and rouge[8] > 0
    assert r2.best == max(cider.values())
    # stage 2 froze the PME: its weights are stage 1's; the DSM moved
    w1 = load_file(str(run1 / "best" / "model.safetensors"))
    w2 = load_file(str(run2 / "model" / "model.safetensors"))
    pme = [k for k in w1 if k.startswith("pme.")]
    assert pme and all(torch.equal(w1[k], w2[k]) for k in pme)
    dsm = [k for k in w1 if k.startswith("dsm.")]
    assert any(not torch.equal(w1[k], w2[k]) for k in dsm)
    with pytest.raises(LocomadError, match="already holds a run"):
        train(_cfg(root, None, run2, stage=2, init=str(run1)))


@pytest.mark.slow
def test_resume_after_ctrl_c_continues_the_same_run(films, tmp_path, one_thread):
    root, card = films
    acc = dict(batch_size=2, grad_accum=2)  # accumulation's counter must survive the resume too
    full = train(_cfg(root, card, tmp_path / "full", **acc))
    lrs = _losses(full.history, "lr")  # the rate each step used: warm-up from 1e-8, then cosine
    assert lrs[1] == pytest.approx(1e-8) and lrs[2] == pytest.approx((1e-8 + 1e-3) / 2)
    assert lrs[3] == pytest.approx(1e-3) and lrs[6] == pytest.approx(
        1e-3 * (1 + math.cos(0.75 * math.pi)) / 2
    )

    def interrupt(step, logs):
        if step == 3:
            raise KeyboardInterrupt

    run = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(root, card, run, save_every=100, **acc), callback=interrupt)
    assert (run / "checkpoints" / "step-0000003" / "state").is_dir()  # written by the Ctrl-C
    assert not (run / "checkpoints" / "step-0000006").exists()
    with pytest.raises(LocomadError, match="batch_size was 2"):
        train(_cfg(root, card, run, resume=True))
    resumed = train(_cfg(root, card, run, resume=True, **acc))
    assert resumed.step == 6
    a, b = _losses(full.history), _losses(resumed.history)
    assert sorted(b) == [4, 5, 6]
    assert [b[step] for step in (4, 5, 6)] == [a[step] for step in (4, 5, 6)]  # bit-equal
    weights = Path("model", "model.safetensors")
    wa, wb = load_file(tmp_path / "full" / weights), load_file(run / weights)
    assert sorted(wa) == sorted(wb) and all(torch.equal(wa[k], wb[k]) for k in wa)
    # a longer run from there: the cosine stretches to the new end
    longer = train(_cfg(root, card, run, resume=True, max_steps=8, **acc))
    lr7 = _losses(longer.history, "lr")[7]
    assert lr7 == pytest.approx(1e-3 * (1 + math.cos(math.pi * 4 / 6)) / 2)
    # the resume state is safetensors + JSON: no pickle anywhere in either run folder
    for folder in (tmp_path / "full", run):
        files = [p.relative_to(folder) for p in folder.rglob("*") if p.is_file()]
        assert files and not [p for p in files if p.suffix in PICKLED], files
    state = Path("checkpoints", "step-0000006", "state")
    assert sorted(p.name for p in (run / state).iterdir()) == [
        "optimizer.json",
        "optimizer.safetensors",
        "rng-0.json",
        "rng-0.safetensors",
        "scheduler.json",
    ]
    wa = load_file(tmp_path / "full" / state / "optimizer.safetensors")
    wb = load_file(run / state / "optimizer.safetensors")
    assert "state/0/exp_avg" in wa and sorted(wa) == sorted(wb)
    for key in wa:
        assert torch.allclose(wa[key], wb[key], atol=1e-6), key
    # a pickle planted in the newest checkpoint: refused before anything is loaded
    (run / "checkpoints" / "step-0000008" / "state" / "random_states_0.pkl").write_bytes(b"x")
    with pytest.raises(LocomadError, match="older locomad with pickled state"):
        train(_cfg(root, card, run, resume=True, max_steps=9, **acc))


@pytest.mark.slow
def test_stage2_resumed_equals_uninterrupted(films, tmp_path, one_thread):
    """Stage 2 with context dropout, the visual contrast, accumulation and CIDEr validation
    at every step, cut by Ctrl-C after step 2 and resumed: the same metrics.jsonl, best/ and
    final weights, bit for bit, as the run that was never stopped (the best score so far
    travels in the checkpoint)."""
    root, card = films
    init = tmp_path / "s1"
    train(_cfg(root, card, init, max_steps=1))
    s2 = dict(stage=2, init=str(init), max_steps=4, eval_every=1, val_data=None)
    s2 |= dict(val_max_clips=3, context_dropout=0.5, visual_contrast=0.5, batch_size=2)
    s2 |= dict(grad_accum=2)
    full = train(_cfg(root, None, tmp_path / "full", **s2))
    assert len(_losses(full.history, "visual")) > 0  # the term is trained and logged

    def interrupt(step, logs):
        if step == 2:
            raise KeyboardInterrupt

    run = tmp_path / "cut"
    with pytest.raises(KeyboardInterrupt):
        train(_cfg(root, None, run, **s2), callback=interrupt)
    resumed = train(_cfg(root, None, run, resume=True, **s2))
    assert resumed.step == 4 and resumed.best == full.best
    assert sorted(_losses(resumed.history, "val/CIDEr")) == [3, 4]
    assert (run / "metrics.jsonl").read_text() == (tmp_path / "full" / "metrics.jsonl").read_text()
    assert (run / "best" / "best.json").read_text() == (
        tmp_path / "full" / "best" / "best.json"
    ).read_text()
    for weights in (Path("model", "model.safetensors"), Path("best", "model.safetensors")):
        wa, wb = load_file(tmp_path / "full" / weights), load_file(run / weights)
        assert sorted(wa) == sorted(wb) and all(torch.equal(wa[k], wb[k]) for k in wa), weights


def test_rename_names_trains_on_freshly_named_characters(tmp_path, one_thread, monkeypatch):
    """--rename-names: what the model is trained on names characters from the pool, drawn
    afresh step by step, never the film's own cast; a bad names file stops before anything."""
    from locomad_cli.train.loop import StageModule

    cast = {"film0": ("Tom", "Mira"), "film1": ("Omar", "Lena")}
    films = {
        f: [(2.0 * k + 0.5, 2.0 * k + 2.0, f"{a} hands {b} the cup {k}") for k in range(8)]
        for f, (a, b) in cast.items()
    }
    root = write_film_folder(tmp_path / "named", films, frames=100)
    card = tmp_path / "tiny.yaml"
    card.write_text(tiny_card().to_yaml())
    pool = ["Ivo", "Rosa", "Ugo", "Vera", "Tom", "Mira", "Omar", "Lena"]
    names = tmp_path / "names.txt"
    names.write_text("\n".join(pool) + "\n")
    seen: list[str] = []
    forward = StageModule.forward

    def spy(self, batch):
        seen.extend(batch.texts)
        return forward(self, batch)

    monkeypatch.setattr(StageModule, "forward", spy)
    train(_cfg(root, card, tmp_path / "r", max_steps=6, rename_names=str(names)))
    assert len(seen) == 6 * 4
    pairs = set()
    for text in seen:
        a, _, b, *_ = text.split()
        assert a in pool and b in pool and a != b, text
        pairs.add((a, b))
    originals = set(cast.values())
    assert len(pairs - originals) >= 10  # fresh pairs, not the films' casts
    bad = tmp_path / "bad.txt"
    bad.write_text("Tom\n")
    with pytest.raises(LocomadError, match="at least two names"):
        train(_cfg(root, card, tmp_path / "r2", rename_names=str(bad)))
    assert not (tmp_path / "r2").exists()


class _Planted:
    """Unpickling this creates a folder: proof, if it ever exists, that a pickle was opened."""

    def __init__(self, sentinel: Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.mkdir, (str(self.sentinel),))


def test_old_pickled_run_folder_is_refused_in_one_line(films, tmp_path):
    """A run folder as accelerate.save_state left it (older locomad): exit 2, one line, and
    none of its pickles opened."""
    from typer.testing import CliRunner

    from locomad_cli.cli import app

    root, card = films
    run = tmp_path / "old"
    ckpt = run / "checkpoints" / "step-0000004"
    (ckpt / "state").mkdir(parents=True)
    (ckpt / "model").mkdir()
    trainer = {"step": 4, "best": None, "stage": 1, "seed": 2023, "batch_size": 4}
    (ckpt / "trainer.json").write_text(json.dumps({**trainer, "grad_accum": 1, "world": 1}))
    sentinel = tmp_path / "unpickled"
    for name in ("optimizer.bin", "scheduler.bin", "random_states_0.pkl"):
        (ckpt / "state" / name).write_bytes(pickle.dumps(_Planted(sentinel)))
    args = ["train", "--stage", "1", "--model", str(card), "--data", str(root), "-o", str(run)]
    args += ["--resume", "--batch-size", "4", "--val-data", "none", "-q"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("locomad: error: "), result.output
    assert "written by an older locomad with pickled state (state/optimizer.bin)" in lines[0]
    assert f"--init {ckpt / 'model'}" in lines[0]
    assert not sentinel.exists()


@pytest.mark.slow
def test_two_processes_follow_the_single_process_loss_curve(films, tmp_path, one_thread):
    """`accelerate launch --multi_gpu --num_processes 2` on a machine without a GPU (torchrun
    underneath, gloo on the CPU), 2 clips each, against one process with 2 micro-batches of
    2: the same global batch of 4 at every step. (`--cpu` alone starts a single process
    unless mpirun is set up.) The two-process run stops after 2 steps and resumes: each
    process writes and reads back its own RNG state."""
    root, card = films
    single = train(_cfg(root, card, tmp_path / "one", batch_size=2, grad_accum=2, max_steps=4))
    # validation at the end, 7 clips over 2 processes in batches of 3: uneven batch counts
    val = dict(val_data=None, val_max_clips=7, eval_batch_size=3)
    script = tmp_path / "run_train.py"
    script.write_text(
        "import json, sys\n"
        "from locomad_cli.train.loop import TrainConfig, train\n"
        "r = train(TrainConfig(**json.loads(sys.argv[1])))\n"
        "if r.history:\n"
        "    json.dump(r.history, open(sys.argv[2], 'w'))\n"
    )
    two: list[dict] = []
    for max_steps, resume in ((2, False), (4, True)):
        cfg = _cfg(root, card, tmp_path / "two", batch_size=2, max_steps=max_steps, **val)
        cfg.resume = resume
        out = tmp_path / f"history-{max_steps}.json"
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2"]
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", "no"]
        cmd += ["--dynamo_backend", "no", "--main_process_port", str(free_port())]
        cmd += [str(script), json.dumps(asdict(cfg)), str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        two += json.loads(out.read_text())
        if not resume:
            state = tmp_path / "two" / "checkpoints" / "step-0000002" / "state"
            assert sorted(p.name for p in state.glob("rng-*")) == [
                "rng-0.json",
                "rng-0.safetensors",
                "rng-1.json",
                "rng-1.safetensors",
            ]
    assert json.loads((tmp_path / "two" / "config.json").read_text())["world"] == 2
    a, b = _losses(single.history), _losses(two)
    assert sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-4)
    val_loss = _losses(two, "val/loss")
    assert list(val_loss) == [2, 4] and 0 < val_loss[4] < 100  # validated at each run's end
