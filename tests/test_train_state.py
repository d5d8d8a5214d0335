"""The pickle-free resume state: optimizer, scheduler and RNG states come back exactly.

Run as a script under torchrun (see test_fsdp_optimizer_state_is_gathered_and_resharded),
this file is also the FSDP worker."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.ports import free_port
from torch import nn

from locomad_cli.train.loop import WarmupCosine
from locomad_cli.train.state import (
    load_optimizer_state,
    optimizer_state,
    read_state,
    refuse_pickles,
    rng_state,
    set_rng_state,
    write_state,
)
from locomad_cli.utils import LocomadError

REPO = Path(__file__).resolve().parent.parent


def _same(a, b) -> bool:
    """Equal values of the same types all the way down (tuples stay tuples, int keys ints)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, torch.Tensor):
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return a == b


def test_structures_come_back_exactly(tmp_path):
    big = torch.arange(10, dtype=torch.float32)
    shared = torch.randn(3)
    obj = {
        "state": {
            0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 3)},
            7: {
                "m": torch.ones(4, dtype=torch.bfloat16),
                "ids": torch.tensor([1, -2], dtype=torch.int8),
            },
        },
        "param_groups": [{"params": [0, 7], "betas": (0.9, 0.999), "lr": 1e-3, "foreach": None}],
        "odd floats": [float("nan"), float("-inf"), 0.1 + 0.2],
        "looks like a tag": {"__tensor__": "not a reference"},
        "view": big[2:5],  # part of a larger buffer
        "twice": [shared, shared],  # one storage under two names
        "numpy": ("MT19937", np.arange(5, dtype=np.uint32), np.int64(3)),
        "empty": torch.zeros(0),
    }
    write_state(tmp_path / "s", obj)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.json", "s.safetensors"]
    back = read_state(tmp_path / "s")
    expected = {**obj, "numpy": ("MT19937", obj["numpy"][1], 3)}  # numpy scalars: Python ints
    assert _same(back, expected)
    assert not _same(
        back, {**expected, "param_groups": [{**obj["param_groups"][0], "betas": [0.9, 0.999]}]}
    )
    # nothing but numbers: JSON only
    write_state(tmp_path / "plain", {"last_epoch": 3, "base_lrs": [1e-5, 1e-5]})
    assert not (tmp_path / "plain.safetensors").exists()
    assert read_state(tmp_path / "plain") == {"last_epoch": 3, "base_lrs": [1e-5, 1e-5]}


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    """Two groups as in training, decay on the weights; chosen by name, since FSDP's flat
    views hide the parameters' shapes."""
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if n.endswith("weight")], "weight_decay": 0.05},
        {"params": [p for n, p in named if n.endswith("bias")], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=1e-2)


def _step(model: nn.Module, optimizer: torch.optim.Optimizer, i: int, rank: int = 0) -> None:
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(100 * i + rank))
    model(x).pow(2).sum().backward()
    optimizer.step()
    optimizer.zero_grad()


@pytest.mark.parametrize("full", [False, True], ids=["state_dict", "by-name"])
def test_optimizer_state_resumes_adamw_exactly(tmp_path, full):
    a = _model()
    opt_a = _optimizer(a)
    for i in range(3):
        _step(a, opt_a, i)
    write_state(tmp_path / "optimizer", optimizer_state(a, opt_a, full))
    doc = json.loads((tmp_path / "optimizer.json").read_text())
    names = ["0.weight", "2.weight"] if full else [0, 1]  # by index, or by name (FSDP's way)
    assert doc["state"]["param_groups"][0]["params"] == names

    b = _model()
    b.load_state_dict(a.state_dict())
    opt_b = _optimizer(b)
    load_optimizer_state(b, opt_b, read_state(tmp_path / "optimizer"), full)
    restored = opt_b.state_dict()
    if full:  # torch's set_optimizer_state_dict makes the betas a list; AdamW unpacks either
        for group in restored["param_groups"]:
            group["betas"] = tuple(group["betas"])
    assert _same(restored, opt_a.state_dict())
    for i in range(3, 6):
        _step(a, opt_a, i)
        _step(b, opt_b, i)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))


def test_scheduler_state_is_plain_json(tmp_path):
    def make():
        opt = torch.optim.AdamW(nn.Linear(2, 2).parameters(), lr=1e-3)
        return torch.optim.lr_scheduler.LambdaLR(opt, WarmupCosine(1e-3, 2, 8, 1e-8, 0.0))

    a = make()
    for _ in range(3):
        a.optimizer.step()
        a.step()
    write_state(tmp_path / "scheduler", a.state_dict())
    assert not (tmp_path / "scheduler.safetensors").exists()
    b = make()
    b.load_state_dict(read_state(tmp_path / "scheduler"))
    assert _same(b.state_dict(), a.state_dict())
    b.optimizer.step()
    b.step()
    a.optimizer.step()
    a.step()
    assert b.get_last_lr() == a.get_last_lr() == [1e-3 * (1 + math.cos(math.pi * 2 / 6)) / 2]


@pytest.fixture
def keep_global_rng():
    state = rng_state()
    yield
    set_rng_state(state)


def _draws() -> list:
    # random.gauss and numpy's normal cache a second value: that cache is state too
    return [
        random.random(),
        random.gauss(0, 1),
        np.random.standard_normal(3).tolist(),
        np.random.randint(0, 2**31, 4).tolist(),
        torch.rand(4).tolist(),
        torch.randint(0, 1000, (3,)).tolist(),
    ]


def test_rng_states_come_back_bit_for_bit(tmp_path, keep_global_rng):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)
    np.random.standard_normal(1)
    write_state(tmp_path / "rng-0", rng_state())
    first = _draws()
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    assert _draws() != first
    set_rng_state(read_state(tmp_path / "rng-0"))
    assert _draws() == first


def test_damaged_state_is_one_clear_error(tmp_path):
    with pytest.raises(LocomadError, match=r"cannot read the training state .*optimizer\.json"):
        read_state(tmp_path / "optimizer")
    (tmp_path / "other.json").write_text('{"format": "something-else", "state": {}}')
    with pytest.raises(LocomadError, match="format 'something-else'"):
        read_state(tmp_path / "other")
    write_state(tmp_path / "opt", {"t": torch.ones(100)})
    data = (tmp_path / "opt.safetensors").read_bytes()
    (tmp_path / "opt.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(LocomadError, match=r"cannot read the training state .*opt\.json"):
        read_state(tmp_path / "opt")


def test_pickled_state_is_refused_not_opened(tmp_path):
    ckpt = tmp_path / "step-0000004"
    (ckpt / "state").mkdir(parents=True)
    write_state(ckpt / "state" / "optimizer", {"t": torch.ones(2)})
    refuse_pickles(ckpt)  # safetensors and JSON only: fine
    for name in ("random_states_0.pkl", "optimizer.bin", "pytorch_model_fsdp.bin"):
        (ckpt / "state" / name).write_bytes(b"\x80\x04N.")
        with pytest.raises(LocomadError) as e:
            refuse_pickles(ckpt)
        msg = str(e.value)
        assert "written by an older locomad with pickled state" in msg and "\n" not in msg
        assert f"--init {ckpt / 'model'}" in msg
        (ckpt / "state" / name).unlink()


@pytest.mark.slow
def test_fsdp_optimizer_state_is_gathered_and_resharded(tmp_path):
    """Two CPU processes (gloo) with the optimizer state sharded by FSDP: the state is gathered
    into one file by parameter name, loaded into a new sharded optimizer, and training goes
    on exactly as without the round trip. (accelerate refuses FSDP without a GPU, so this
    runs torch's FSDP directly, the way accelerate wraps it: use_orig_params, FULL_SHARD.)"""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    cmd += ["--master_port", str(free_port()), __file__, str(tmp_path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["names"] == ["0.bias", "0.weight", "2.bias", "2.weight"]
    # each process held a shard: the 24 + 8 + 16 + 2 values were split between them
    assert sorted(result["local_numel"]) == [25, 25]
    assert result["max_difference_after_resume"] == 0.0
    assert result["exp_avg_differs_from_exp_avg_sq"]


def _fsdp_worker(out: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

    dist.init_process_group("gloo")
    rank = dist.get_rank()

    def make():
        model = FSDP(_model(), device_id=torch.device("cpu"), use_orig_params=True)
        return model, _optimizer(model)

    a, opt_a = make()
    for i in range(3):
        _step(a, opt_a, i, rank)
    state = optimizer_state(a, opt_a, full=True)  # collective
    if rank == 0:
        write_state(out / "optimizer", state)
    with FSDP.summon_full_params(a):
        weights = {n: p.detach().clone() for n, p in a.named_parameters()}
    dist.barrier()
    b, opt_b = make()
    with FSDP.summon_full_params(b):
        for n, p in b.named_parameters():
            p.data.copy_(weights[n])
    load_optimizer_state(b, opt_b, read_state(out / "optimizer"), full=True)
    local = sum(v["exp_avg"].numel() for v in opt_b.state_dict()["state"].values())
    for i in range(3, 6):
        _step(a, opt_a, i, rank)
        _step(b, opt_b, i, rank)
    with FSDP.summon_full_params(a), FSDP.summon_full_params(b):
        pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
        diff = max(float((pa[n] - pb[n]).abs().max()) for n in pa)
    numels = [None, None]
    dist.all_gather_object(numels, local)
    if rank == 0:
        saved = read_state(out / "optimizer")["state"]
        result = {
            "names": sorted(saved),
            "local_numel": numels,
            "max_difference_after_resume": diff,
            "exp_avg_differs_from_exp_avg_sq": all(
                not torch.equal(v["exp_avg"], v["exp_avg_sq"]) for v in saved.values()
            ),
        }
        (out / "result.json").write_text(json.dumps(result))
    # Every rank reaches here before any tears gloo down: a rank that destroyed the group
    # while the other still used it aborted in CI ("terminate called without an active
    # exception", SIGABRT), a teardown race under load, not a fault of the state code.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    _fsdp_worker(Path(sys.argv[1]))
    # Skip the interpreter's teardown: gloo's threads racing the exit are what aborted.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
