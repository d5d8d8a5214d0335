"""The resume state of a training run, written without pickle.

`--resume RUN_DIR` reads a folder that someone may have handed us, and unpickling runs
whatever code the file names. So nothing in a checkpoint is a pickle: tensors go into
safetensors files, everything else (param groups, step counts, the scheduler, numpy's and
Python's RNG states) into JSON, and a small tagged encoding keeps what JSON would lose —
tuples, integer dict keys, numpy arrays — so the state dicts come back exactly as they were.
Hand-written because accelerate's save_state/load_state and torch.save/torch.load pickle
these objects, and torch.distributed.checkpoint writes its own pickled metadata file.

    state/optimizer.json (+ .safetensors)   optimizer.state_dict(): tensors out, rest in
    state/scheduler.json                    the LR scheduler's state_dict (plain numbers)
    state/scaler.json                       the fp16 GradScaler's state_dict, when there is one
    state/rng-RANK.json (+ .safetensors)    each process's torch CPU/CUDA, numpy, random states
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from locomad_cli.utils import LocomadError

FORMAT = "locomad-train-state-1"
# what torch.save / pickle / accelerate.save_state write; never opened, only refused
PICKLE_SUFFIXES = (".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt")
_TAGS = ("__tensor__", "__tuple__", "__items__", "__ndarray__", "__float__")


def _join(path: str, key: Any) -> str:
    return f"{path}/{key}" if path else str(key)


def flatten(obj: Any, tensors: dict[str, torch.Tensor], path: str = "") -> Any:
    """`obj` as JSON-able data; its tensors move into `tensors` (CPU, contiguous) under a
    name that the returned data refers to."""
    if isinstance(obj, torch.Tensor):
        name = path or "tensor"
        if name in tensors:
            name = f"{name}#{len(tensors)}"
        t = obj.detach().to("cpu")
        if t.storage_offset() or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()  # a view into a larger buffer (FSDP's gathered state): its own copy
        tensors[name] = t.contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, np.generic):
        return flatten(obj.item(), tensors, path)
    if isinstance(obj, float) and not math.isfinite(obj):
        return {"__float__": repr(obj)}  # inf / nan: not valid JSON
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [flatten(v, tensors, _join(path, i)) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [flatten(v, tensors, _join(path, i)) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k in _TAGS for k in obj):
            return {k: flatten(v, tensors, _join(path, k)) for k, v in obj.items()}
        # integer keys (optimizer state by parameter index) would turn into strings in JSON
        return {
            "__items__": [
                [flatten(k, tensors, _join(path, "key")), flatten(v, tensors, _join(path, k))]
                for k, v in obj.items()
            ]
        }
    raise TypeError(f"cannot store a {type(obj).__name__} in the training state ({path})")


def unflatten(data: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of `flatten`."""
    if isinstance(data, list):
        return [unflatten(v, tensors) for v in data]
    if not isinstance(data, dict):
        return data
    if "__tensor__" in data:
        return tensors[data["__tensor__"]]
    if "__tuple__" in data:
        return tuple(unflatten(v, tensors) for v in data["__tuple__"])
    if "__items__" in data:
        return {unflatten(k, tensors): unflatten(v, tensors) for k, v in data["__items__"]}
    if "__ndarray__" in data:
        return np.asarray(data["__ndarray__"], dtype=np.dtype(data["dtype"]))
    if "__float__" in data:
        return float(data["__float__"])
    return {k: unflatten(v, tensors) for k, v in data.items()}


def write_state(path: Path, obj: Any) -> None:
    """`obj` into PATH.json, and its tensors (if any) into PATH.safetensors."""
    tensors: dict[str, torch.Tensor] = {}
    data = flatten(obj, tensors)
    seen: set[int] = set()
    for name, t in tensors.items():  # safetensors refuses two names for one storage
        ptr = t.untyped_storage().data_ptr()
        if t.numel() and ptr in seen:
            tensors[name] = t.clone()
        seen.add(ptr)
    if tensors:
        save_file(tensors, str(path.with_suffix(".safetensors")), metadata={"format": FORMAT})
    doc = {"format": FORMAT, "tensors": bool(tensors), "state": data}
    path.with_suffix(".json").write_text(json.dumps(doc), encoding="utf-8")


def read_state(path: Path) -> Any:
    """What `write_state(path, obj)` wrote, rebuilt; a LocomadError if it is missing or
    damaged. Only JSON and safetensors are read."""
    where = path.with_suffix(".json")
    try:
        doc = json.loads(where.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT:
            raise ValueError(f"format {doc.get('format')!r}, expected {FORMAT}")
        tensors = load_file(str(path.with_suffix(".safetensors"))) if doc["tensors"] else {}
        return unflatten(doc["state"], tensors)
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise LocomadError(f"cannot read the training state {where}: {e}") from None


def refuse_pickles(checkpoint: Path) -> None:
    """Resume state from before this format was pickled: say so and stop, never load it."""
    found = sorted(p for p in checkpoint.rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES)
    if found:
        raise LocomadError(
            f"{checkpoint}: this run folder was written by an older locomad with pickled state "
            f"({found[0].relative_to(checkpoint)}), which is never loaded (unpickling can run "
            f"code); start a new run from its weights with --init {checkpoint / 'model'}"
        )


def rng_state() -> dict[str, Any]:
    """This process's random number generators, as accelerate.save_state collects them."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available():
        for device, s in enumerate(state.get("cuda", [])[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(s, device)


def optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, full: bool):
    """The optimizer's state dict to write. `full` (FSDP, where every process holds a shard):
    gathered into one un-sharded state keyed by parameter name, on the main process only (the
    others get {}); all processes must call it. Otherwise the plain state_dict(), keyed by
    parameter index, the same on every process."""
    if not full:
        return optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    # cpu_offload: gathered to the main process's CPU one tensor at a time. Not for weights
    # already on the CPU: there torch's "offload" is a no-op and the gathered tensors stay
    # views of one reused buffer (exp_avg came back equal to exp_avg_sq); without it every
    # process gets its own full copy, which is right, and only the main process writes it.
    on_cpu = next(model.parameters()).device.type == "cpu"
    options = StateDictOptions(full_state_dict=True, cpu_offload=not on_cpu)
    return get_optimizer_state_dict(model, optimizer, options=options)


def load_optimizer_state(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict, full: bool
) -> None:
    """Put a state from `optimizer_state` back. `full`: every process passes the whole
    state and keeps its own shard of it."""
    if not full:
        optimizer.load_state_dict(state)
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model, optimizer, state, options=StateDictOptions(full_state_dict=True)
    )
