"""`locomad train`: stage 1 (the PME, L_s1) and stage 2 (DSM + projection + LLM tokens, L_s2).

One loop, nanoGPT-style, on Hugging Face Accelerate: the same code runs plain on a CPU, on
one GPU, and under `accelerate launch` (DDP or FSDP, one machine or many). Accelerate does
the devices, mixed precision, gradient accumulation and synchronisation; this file does the
data order, the schedule, validation and checkpoints.

Determinism, which `--resume` and multi-process runs rely on: optimizer step s always uses
the same global batch (a permutation of the training split seeded by seed + epoch), cut into
micro-batches of `batch_size` that are spread over processes and accumulation steps; before
each micro-batch the torch RNG is re-seeded from (seed, s, micro-batch number), so dropout
and hard-negative sampling do not depend on how many processes ran or where a run resumed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import math
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from locomad_cli.card import ModelCard, load_card
from locomad_cli.data import load_split
from locomad_cli.data.dataset import ClipDataset, report_problems
from locomad_cli.data.records import collate
from locomad_cli.data.rename import Renamer, read_names
from locomad_cli.progress import progress_bar
from locomad_cli.train.bounds import MAX_SEED, WHOLE, Bound, check_fields, check_number
from locomad_cli.train.state import FORMAT as TRAIN_STATE_FORMAT
from locomad_cli.train.state import (
    load_optimizer_state,
    optimizer_state,
    read_state,
    refuse_pickles,
    rng_state,
    set_rng_state,
    write_state,
)
from locomad_cli.utils import LocomadError, atomic_open, check_writable_dir, replace_dir

if TYPE_CHECKING:  # imported where used: `locomad --help` should not wait for them
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer
    from accelerate.scheduler import AcceleratedScheduler

# The authors' settings (REFERENCE-NOTES.md): 10 epochs at batch 64 for stage 1, 5 epochs at
# batch 32 per GPU for stage 2; AdamW (0.9, 0.999), wd 0.05; warm-up 500 steps from 1e-8 to
# 1e-5, then cosine to 0; seed 2023.
STAGE_DEFAULTS = {1: {"epochs": 10, "batch_size": 64}, 2: {"epochs": 5, "batch_size": 32}}
# the score best/ keeps: the lowest validation loss in stage 1, the highest CIDEr in stage 2
BEST_KEY = {1: "val/loss", 2: "val/CIDEr"}
NO_DECAY = ("bias", "norm", "ln_", "layer_norm", "embed", "query_tokens", "temp", "position")


@dataclass
class TrainConfig:
    """Everything a run needs; `locomad train` flags map one to one onto these fields."""

    stage: int
    data: str
    """Data SPEC: folder:PATH, mad:ROOT, lsmdc:ROOT or a folder (see data/__init__.py)."""
    out: str
    """RUN_DIR: checkpoints, best/, model/, metrics.jsonl, config.json."""
    model: str | None = None
    """Card name or YAML; None in stage 2 = the --init checkpoint's card."""
    overrides: list[str] = field(default_factory=list)
    init: str | None = None
    """Stage-1 run dir or model dir to start from (required for stage 2)."""
    resume: bool = False
    val_data: str | None = None
    """Validation SPEC (default: the val split of `data`; 'none' skips validation)."""
    epochs: int | None = None
    max_steps: int | None = None
    """Optimizer steps in all (default: epochs × steps per epoch)."""
    batch_size: int | None = None
    """Clips per process per micro-batch (default 64 in stage 1, 32 in stage 2)."""
    grad_accum: int = 1
    lr: float = 1e-5
    warmup_steps: int = 500
    warmup_lr: float = 1e-8
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    max_grad_norm: float = 1.0
    """Gradient clipping (0 = off)."""
    context_dropout: float = 0.0
    """Stage 2: chance a clip's prompt leaves out its context items (see forward_stage2)."""
    visual_contrast: float = 0.0
    """Stage 2: weight of a loss asking each description to be likelier under its own visual
    prompt than under another clip's (see forward_stage2; 0 = the paper's loss alone)."""
    rename_names: str | None = None
    """A file of character names, one per line: every training clip's characters are renamed
    at random from it, step by step (data/rename.py), so a name cannot be memorised."""
    seed: int = 2023
    mixed_precision: str = "auto"
    """auto (bf16 where the GPU has it, else fp16; none on CPU) | no | fp16 | bf16."""
    eval_every: int | None = None
    """Validate (and checkpoint) every N steps (default: once per epoch) and at the end."""
    save_every: int | None = None
    """Checkpoint every N steps (default: eval_every)."""
    keep_last: int = 2
    eval_batch_size: int = 8
    val_max_clips: int | None = None
    """Validate on the first N clips of the val split in film order (default: all)."""
    num_workers: int = 2
    strict: bool = False
    cache_dir: str | None = None
    """Where the CLIP text-feature cache goes (default: beside the data)."""
    log_every: int = 10
    progress: bool = True
    tensorboard: bool = False
    """Also log to TensorBoard in RUN_DIR/tensorboard (needs the tensorboard package)."""

    def check(self) -> None:
        """Refuse, in one line naming the flag, a number outside its range (NaN and
        infinities included): each would otherwise fail deep in the run, or train wrongly."""
        check_fields(self, BOUNDS, OPTIONAL)
        for beta in self.betas:
            check_number("betas", beta, Bound(0.0, 1.0, high_open=True))


BOUNDS: dict[str, Bound] = {
    "epochs": Bound(1, what=WHOLE),
    "max_steps": Bound(1, what=WHOLE),
    "batch_size": Bound(1, what=WHOLE),
    "grad_accum": Bound(1, what=WHOLE),
    "lr": Bound(0.0, low_open=True),
    "warmup_steps": Bound(0, what=WHOLE),
    "warmup_lr": Bound(0.0),
    "min_lr": Bound(0.0),
    "weight_decay": Bound(0.0),
    "max_grad_norm": Bound(0.0),
    "context_dropout": Bound(0.0, 1.0, what="a chance"),
    "visual_contrast": Bound(0.0, what="a weight"),
    "seed": Bound(0, MAX_SEED, what=WHOLE),
    "eval_every": Bound(1, what=WHOLE),
    "save_every": Bound(1, what=WHOLE),
    "keep_last": Bound(1, what=WHOLE),
    "eval_batch_size": Bound(1, what=WHOLE),
    "val_max_clips": Bound(1, what=WHOLE),
    "num_workers": Bound(0, 256, what=WHOLE),
    "log_every": Bound(1, what=WHOLE),
}
"""The range of every numeric TrainConfig field."""
OPTIONAL = {"epochs", "max_steps", "batch_size", "eval_every", "save_every", "val_max_clips"}
"""Fields whose None means 'the default' (see _plan)."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    best: float | None
    history: list[dict[str, Any]]
    """Every line written to metrics.jsonl by this call (main process; empty elsewhere)."""
    is_main: bool = True


class WarmupCosine:
    """Linear warm-up from `warmup_lr` to the peak, then cosine to `min_lr` (as a LambdaLR
    factor of the peak). Hand-written because transformers' schedules warm up from 0, not
    from the authors' 1e-8; a class, not a lambda, so its settings land in the state dict."""

    def __init__(self, peak: float, warmup: int, total: int, warmup_lr: float, min_lr: float):
        self.peak, self.warmup, self.total = peak, warmup, total
        self.warmup_lr, self.min_lr = warmup_lr, min_lr

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            lr = self.warmup_lr + (self.peak - self.warmup_lr) * step / self.warmup
        else:
            progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
            lr = self.min_lr + (self.peak - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        return lr / self.peak


class StageModule(nn.Module):
    """Routes `forward` to the stage's loss so DDP/FSDP wrap a plain forward()."""

    def __init__(
        self,
        model: nn.Module,
        stage: int,
        context_dropout: float = 0.0,
        visual_contrast: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.stage = stage
        self.context_dropout = context_dropout
        self.visual_contrast = visual_contrast

    def forward(self, batch: Any) -> dict[str, torch.Tensor]:
        if self.stage == 1:
            return self.model.forward_stage1(batch)
        return self.model.forward_stage2(batch, self.context_dropout, self.visual_contrast)


def param_groups(named: list[tuple[str, nn.Parameter]], weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices, none on norms, biases and embedding-likes
    (query tokens, position and token embeddings, temperatures)."""
    decay, no_decay = [], []
    for name, p in named:
        lower = name.lower()
        if p.ndim < 2 or any(k in lower for k in NO_DECAY):
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def global_micro_batches(step: int, n: int, batch: int, count: int, seed: int) -> list[list[int]]:
    """The `count` micro-batches (dataset indices) of optimizer step `step`: consecutive
    slices of an epoch-wise permutation seeded by (seed, epoch)."""
    per_step = batch * count
    steps_per_epoch = n // per_step
    epoch, pos = divmod(step, steps_per_epoch)
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=g)[pos * per_step : (pos + 1) * per_step].tolist()
    return [order[j * batch : (j + 1) * batch] for j in range(count)]


def micro_seed(seed: int, step: int, micro: int) -> int:
    return ((seed * 1_000_003 + step) * 4099 + micro) % (2**63 - 1)


class StepBatches(torch.utils.data.Sampler):
    """This process's micro-batches from `start` to `total` steps, in the order the loop uses
    them (micro-batch j of a step goes to process j % world, accumulation slot j // world)."""

    def __init__(self, n, batch, accum, world, rank, seed, start, total):
        self.args = (n, batch, accum, world, rank, seed, start, total)

    def __iter__(self):
        n, batch, accum, world, rank, seed, start, total = self.args
        for step in range(start, total):
            micro = global_micro_batches(step, n, batch, accum * world, seed)
            for a in range(accum):
                yield micro[a * world + rank]

    def __len__(self) -> int:
        n, batch, accum, world, rank, seed, start, total = self.args
        return max(0, total - start) * accum


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        if choice not in ("no", "fp16", "bf16"):
            raise LocomadError(f"--mixed-precision {choice}: choose auto, no, fp16 or bf16")
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def _model_dir(path: str) -> Path:
    """A model dir from a run dir (best/ if it has one, else model/) or the path itself."""
    p = Path(path).expanduser()
    for sub in ("best", "model"):
        if (p / sub / "card.yaml").is_file():
            return p / sub
    if not (p / "card.yaml").is_file():
        raise LocomadError(f"--init {path}: not a model dir or a run dir with best/ or model/")
    return p


def build_model(
    cfg: TrainConfig, device: str = "cpu", weights: Path | None = None
) -> tuple[nn.Module, ModelCard]:
    """The model to train: from the card (stage 1), or from the --init checkpoint (stage 2;
    with --model, that card's runtime settings apply and its architecture must match), or
    from `weights` (the model folder of the checkpoint a --resume continues)."""
    from locomad_cli.model.checkpoint import load_model
    from locomad_cli.model.locomad import LoCoMAD

    if cfg.stage == 2 and not cfg.init:
        raise LocomadError("stage 2 starts from a stage-1 checkpoint: pass --init STAGE1_RUN_DIR")
    source = _model_dir(cfg.init) if cfg.init else None
    source = weights if weights is not None else source
    if cfg.model is None:
        if source is None:
            raise LocomadError("pass --model CARD (or --init CHECKPOINT to reuse its card)")
        if cfg.overrides:
            raise LocomadError("--set needs --model (the card to override)")
        model = load_model(source, device)
        return model, model.card
    card = load_card(cfg.model, cfg.overrides)
    if source is None:
        return LoCoMAD.from_card(card, device), card
    card.weights = str(source.resolve())
    return load_model(card, device), card


def _checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    found = []
    for p in (run_dir / "checkpoints").glob("step-*"):
        m = re.fullmatch(r"step-(\d+)", p.name)
        if m and (p / "trainer.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def _resumable(ckpt: Path, expected: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's trainer.json, once its state is known to be pickle-free and its
    settings are the ones this run has."""
    refuse_pickles(ckpt)
    try:
        state = json.loads((ckpt / "trainer.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise LocomadError(f"--resume: cannot read {ckpt / 'trainer.json'}: {e}") from None
    if state.get("format") != TRAIN_STATE_FORMAT:
        raise LocomadError(f"--resume: {ckpt} has no training state this locomad can read")
    for key, value in expected.items():
        if state.get(key) != value:
            raise LocomadError(
                f"--resume: {key} was {state.get(key)} in {ckpt}; resume with the same value"
            )
    return state


class _Gathered:
    """The model as save_model sees it, with FSDP's gathered full weights: under FSDP the
    live modules hold only shards, so state_dict() answers from the gathered copy and every
    other attribute (card, tokenizers, LLM config) from the model itself."""

    def __init__(self, model: nn.Module, state: dict[str, torch.Tensor]):
        self._model, self._state = model, state

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def _model_to_save(
    accelerator: Any, wrapped: nn.Module, scalars: dict[str, torch.Size] | None = None
) -> Any:
    """The LoCoMAD to hand to save_model (all processes must call this under FSDP)."""
    inner = accelerator.unwrap_model(wrapped).model
    if accelerator.distributed_type.name != "FSDP":
        return inner
    state = accelerator.get_state_dict(wrapped)  # full weights, on the main process only
    state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    for name, shape in (scalars or {}).items():
        if name in state:
            state[name] = state[name].reshape(shape)
    return _Gathered(inner, state)


def _unscalar(model: nn.Module) -> dict[str, torch.Size]:
    """FSDP cannot shard 0-dim parameters (the PME's and DSM's learnable temperatures): under
    FSDP they train as 1-element vectors (they only divide, so broadcasting is unchanged) and
    get their own shape back in the saved model folder."""
    shapes: dict[str, torch.Size] = {}
    for mod_name, module in model.named_modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if p.ndim == 0:
                new = nn.Parameter(p.detach().reshape(1), requires_grad=p.requires_grad)
                setattr(module, name, new)
                shapes[f"{mod_name}.{name}" if mod_name else name] = p.shape
    return shapes


def _validate(cfg, accelerator, wrapped, model, val: ClipDataset, card, step) -> dict[str, float]:
    """Stage 2: generate on the val split (oracle context: the reference descriptions) and
    score CIDEr and ROUGE-L; stage 1: the validation loss."""
    from accelerate.utils import gather_object

    n = len(val) if cfg.val_max_clips is None else min(len(val), cfg.val_max_clips)
    mine = list(range(accelerator.process_index, n, accelerator.num_processes))
    make = functools.partial(
        collate, max_frames=card.pme.max_frames, proposal_len=card.dsm.proposal_len
    )
    results: list[tuple[int, Any]] = []
    wrapped.eval()
    fsdp = accelerator.distributed_type.name == "FSDP"
    # Every process runs the same number of batches (DDP may sync buffers in a forward, FSDP
    # gathers shards): a process with fewer clips runs one-clip batches that are thrown away.
    ebs = cfg.eval_batch_size
    batches = [mine[i : i + ebs] for i in range(0, len(mine), ebs)]
    most = math.ceil(math.ceil(n / accelerator.num_processes) / ebs)
    batches += [None] * (most - len(batches))
    with torch.no_grad():
        for idx in batches:
            dummy = idx is None
            idx = [mine[-1] if mine else 0] if dummy else idx
            batch = make([val[j] for j in idx]).to(accelerator.device)
            torch.manual_seed(micro_seed(cfg.seed, step, idx[0]))
            if cfg.stage == 1:
                with accelerator.autocast():
                    out = wrapped(batch)
                if not dummy:
                    results.append((idx[0], (len(idx), {k: float(v) for k, v in out.items()})))
            else:
                ctx = contextlib.nullcontext()
                if fsdp:
                    # generate() bypasses the root's forward: gather the root's own shards
                    # (PME, DSM, embeddings); wrapped layers still gather theirs as they run
                    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

                    ctx = FSDP.summon_full_params(wrapped, recurse=False, writeback=False)
                with ctx, accelerator.autocast():
                    gens = model.generate(batch, setting="context")
                if not dummy:
                    results += [(j, g.text) for j, g in zip(idx, gens, strict=True)]
    wrapped.train()
    if accelerator.num_processes > 1:
        results = gather_object(results)
    if not accelerator.is_main_process:
        return {}
    if cfg.stage == 1:
        total = sum(c for _, (c, _) in results)
        keys = results[0][1][1].keys()
        return {f"val/{k}": sum(c * d[k] for _, (c, d) in results) / total for k in keys}
    from locomad_cli.evaluate.metrics import Unavailable, coco_scores

    preds = dict(results)
    order = sorted(preds)
    # an empty prediction would divide by zero inside ROUGE-L; it scores as a wrong word
    hyps = [preds[j].strip() or "<empty>" for j in order]
    refs = [val.anns[j].text for j in order]
    scores = coco_scores(hyps, refs, metrics=("cider", "rouge"))
    # a metric that cannot run here (no Java for the PTB tokenizer) is logged with its reason
    out: dict[str, Any] = {
        f"val/{k}": f"unavailable: {v.reason}" if isinstance(v, Unavailable) else v
        for k, v in scores.items()
    }
    out["val/clips"] = len(order)
    out["val/example"] = f"{hyps[0]} || {refs[0]}"
    return out


@dataclass
class _Plan:
    """The run's sizes, fixed once the training split is known: the micro-batch size, and when
    the loop logs epochs, validates, checkpoints and stops (in optimizer steps)."""

    batch_size: int
    steps_per_epoch: int
    total: int
    eval_every: int
    save_every: int


@dataclass
class _Run:
    """A prepared run, as the training step, validation and checkpoints share it, and where
    it stands (`step`, `best`); one per train() call, passed along, never global."""

    cfg: TrainConfig
    plan: _Plan
    run_dir: Path
    accelerator: Accelerator
    model: nn.Module
    """The LoCoMAD itself: validation generates with it."""
    card: ModelCard
    wrapped: nn.Module
    """The StageModule as Accelerate prepared it (DDP/FSDP-wrapped with several processes)."""
    optimizer: AcceleratedOptimizer
    scheduler: AcceleratedScheduler
    schedule: WarmupCosine
    renamer: Renamer | None
    """`--rename-names`' pool (None: names are left as they are)."""
    fsdp: bool
    """FSDP shards the optimizer state: gathered to write it, re-sharded to load it."""
    scalars: dict[str, torch.Size]
    """0-dim parameters trained as 1-element vectors under FSDP (see _unscalar)."""
    step: int = 0
    best: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def _checked_batch_size(cfg: TrainConfig) -> int:
    """The clips per process per micro-batch, once the settings are known to make sense:
    refused before anything starts or is written."""
    if cfg.stage not in (1, 2):
        raise LocomadError(f"--stage {cfg.stage}: choose 1 or 2")
    cfg.check()
    batch_size = cfg.batch_size or STAGE_DEFAULTS[cfg.stage]["batch_size"]
    if cfg.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise LocomadError("--tensorboard needs the tensorboard package (pip install tensorboard)")
    return batch_size


def _make_accelerator(cfg: TrainConfig, run_dir: Path) -> Accelerator:
    """Accelerate owns devices, mixed precision, accumulation and the process group."""
    from accelerate import Accelerator

    # No GPU: say so, so that processes started by `accelerate launch --multi_gpu` (torchrun)
    # join a gloo process group on the CPU instead of each running alone.
    no_gpu = not torch.cuda.is_available() and not torch.backends.mps.is_available()
    return Accelerator(
        cpu=no_gpu,
        log_with="tensorboard" if cfg.tensorboard else None,
        project_dir=str(run_dir),
        mixed_precision=_mixed_precision(cfg.mixed_precision),
        gradient_accumulation_steps=cfg.grad_accum,
        step_scheduler_with_optimizer=False,
    )


def _claim_run_dir(cfg: TrainConfig, run_dir: Path, main: bool) -> None:
    """A new run never writes over an old one's checkpoints: --resume it or pick another -o."""
    if main:
        check_writable_dir(run_dir)
        if not cfg.resume and _checkpoints(run_dir):
            raise LocomadError(f"{run_dir} already holds a run: pass --resume or another -o")


def _run_settings(cfg: TrainConfig, batch_size: int, world: int, fsdp: bool) -> dict[str, Any]:
    """What fixes the data order and the state's layout: a resume must have the same."""
    return {
        "stage": cfg.stage,
        "seed": cfg.seed,
        "batch_size": batch_size,
        "grad_accum": cfg.grad_accum,
        "world": world,
        "fsdp": fsdp,
    }


def _resume_point(
    cfg: TrainConfig, run_dir: Path, settings: dict[str, Any], notes: list[str]
) -> tuple[int, Path | None, dict[str, Any]]:
    """(step, checkpoint, its trainer.json) to continue from: the newest checkpoint under
    --resume, else (0, None, {}). What to tell the user goes to `notes`, printed once the run
    is known to start (a refusal later on is then the only line)."""
    if not cfg.resume:
        return 0, None, {}
    found = _checkpoints(run_dir)
    if not found:
        notes.append(f"locomad: nothing to resume in {run_dir}; starting at step 0")
        return 0, None, {}
    step, ckpt = found[-1]
    return step, ckpt, _resumable(ckpt, settings)


def _load_data(
    cfg: TrainConfig, card: ModelCard, accelerator: Accelerator, notes: list[str]
) -> tuple[ClipDataset, ClipDataset | None]:
    """The train and val splits; the main process fills the text-feature cache first, the
    others then read it. A val split that cannot be read is noted in `notes`."""
    main = accelerator.is_main_process
    val_spec = cfg.val_data or cfg.data
    datasets: dict[str, ClipDataset | None] = {}
    for turn in (True, False):
        if main == turn:
            train_ds = load_split(cfg.data, card, "train", cfg.strict, cfg.cache_dir)
            val_ds = None
            if val_spec != "none":
                try:
                    val_ds = load_split(val_spec, card, "val", cfg.strict, cfg.cache_dir)
                except LocomadError as e:
                    if cfg.val_data:  # asked for explicitly: its problems are errors
                        raise
                    notes.append(f"locomad: no validation ({e})")
            datasets = {"train": train_ds, "val": val_ds}
        accelerator.wait_for_everyone()
    train_ds, val_ds = datasets["train"], datasets["val"]
    if main:
        report_problems(train_ds.split.skipped)
        if val_ds is not None:
            report_problems(val_ds.split.skipped)
    return train_ds, val_ds


def _plan(cfg: TrainConfig, n: int, batch_size: int, world: int) -> _Plan:
    """Steps per epoch from the split's size; the defaults of --max-steps, --eval-every and
    --save-every follow from it."""
    steps_per_epoch = n // (batch_size * cfg.grad_accum * world)
    if steps_per_epoch == 0:
        raise LocomadError(
            f"the training split has {n} clips, fewer than one global batch ({batch_size} × "
            f"{cfg.grad_accum} accumulation × {world} processes); lower --batch-size"
        )
    epochs = cfg.epochs or STAGE_DEFAULTS[cfg.stage]["epochs"]
    eval_every = cfg.eval_every or steps_per_epoch
    return _Plan(
        batch_size=batch_size,
        steps_per_epoch=steps_per_epoch,
        total=cfg.max_steps or epochs * steps_per_epoch,
        eval_every=eval_every,
        save_every=cfg.save_every or eval_every,
    )


def _select_trainable(model: nn.Module, stage: int) -> dict[str, nn.Parameter]:
    """Only what the stage trains gets gradients (and, later, an optimizer slot)."""
    trainable = dict(model.trainable_parameters(stage))
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    return trainable


def _build_optimizer(
    cfg: TrainConfig, trainable: dict[str, nn.Parameter], total: int
) -> tuple[torch.optim.AdamW, WarmupCosine, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters, warm-up then cosine over `total` steps."""
    optimizer = torch.optim.AdamW(
        param_groups(list(trainable.items()), cfg.weight_decay), lr=cfg.lr, betas=cfg.betas
    )
    schedule = WarmupCosine(cfg.lr, cfg.warmup_steps, total, cfg.warmup_lr, cfg.min_lr)
    return optimizer, schedule, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)


def _prepare(
    cfg: TrainConfig,
    accelerator: Accelerator,
    model: nn.Module,
    card: ModelCard,
    plan: _Plan,
    run_dir: Path,
    step: int,
    renamer: Renamer | None = None,
) -> _Run:
    """The model, optimizer and scheduler as Accelerate wraps them for the devices and
    processes it runs on."""
    fsdp = accelerator.distributed_type.name == "FSDP"
    scalars = _unscalar(model) if fsdp else {}
    trainable = _select_trainable(model, cfg.stage)
    if renamer is not None and cfg.stage == 2 and card.llm.train == "all":
        model.decoder.hold_words(renamer.names)  # see Decoder.hold_words
    model.train()
    stage_module = StageModule(model, cfg.stage, cfg.context_dropout, cfg.visual_contrast)
    optimizer, schedule, scheduler = _build_optimizer(cfg, trainable, plan.total)
    wrapped, optimizer, scheduler = accelerator.prepare(stage_module, optimizer, scheduler)
    return _Run(
        cfg=cfg,
        plan=plan,
        run_dir=run_dir,
        accelerator=accelerator,
        model=model,
        card=card,
        wrapped=wrapped,
        optimizer=optimizer,
        scheduler=scheduler,
        schedule=schedule,
        renamer=renamer,
        fsdp=fsdp,
        scalars=scalars,
        step=step,
    )


def _restore(run: _Run, ckpt: Path, trainer: dict[str, Any]) -> None:
    """Continue exactly where the checkpoint stopped (its weights are already loaded): the
    optimizer, schedule, loss scaler, RNG streams, accumulation counter and best score."""
    accelerator = run.accelerator
    state_dir = ckpt / "state"
    opt_state = read_state(state_dir / "optimizer")
    load_optimizer_state(run.wrapped, run.optimizer.optimizer, opt_state, run.fsdp)
    run.scheduler.scheduler.load_state_dict(read_state(state_dir / "scheduler"))
    if accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(read_state(state_dir / "scaler"))
    set_rng_state(read_state(state_dir / f"rng-{accelerator.process_index}"))
    accelerator.step = trainer["micro_step"]  # accumulation's micro-batch counter
    # a new --max-steps moves the schedule's end: recompute the rate of the next step
    run.schedule.total = run.plan.total
    inner = run.scheduler.scheduler
    for group, base in zip(run.optimizer.param_groups, inner.base_lrs, strict=True):
        group["lr"] = base * run.schedule(inner.last_epoch)
    run.best = trainer.get("best")
    if run.main:
        print(f"locomad: resuming {run.run_dir} at step {run.step}", file=sys.stderr)


def _write_config(run: _Run) -> None:
    """RUN_DIR/config.json: the settings and card this run (or resume) used."""
    if run.main:
        with atomic_open(run.run_dir / "config.json") as f:
            world = run.accelerator.num_processes
            json.dump({**asdict(run.cfg), "card": run.card.to_dict(), "world": world}, f, indent=1)


def _loader(run: _Run, train_ds: ClipDataset) -> torch.utils.data.DataLoader:
    """This process's micro-batches from the run's step to its end, in the loop's order."""
    cfg, accelerator, card = run.cfg, run.accelerator, run.card
    sampler = StepBatches(
        len(train_ds),
        run.plan.batch_size,
        cfg.grad_accum,
        accelerator.num_processes,
        accelerator.process_index,
        cfg.seed,
        run.step,
        run.plan.total,
    )
    return torch.utils.data.DataLoader(
        train_ds,
        batch_sampler=sampler,
        collate_fn=functools.partial(
            collate, max_frames=card.pme.max_frames, proposal_len=card.dsm.proposal_len
        ),
        num_workers=cfg.num_workers,
        pin_memory=accelerator.device.type == "cuda",
    )


def _train_step(run: _Run, batches: Iterator[Any]) -> tuple[dict[str, float], float]:
    """One optimizer step over `grad_accum` micro-batches, each seeded by (seed, step,
    micro-batch) so that dropout and negatives do not depend on the process count or a
    resume; returns the losses averaged over processes and the rate the step used."""
    cfg, accelerator, wrapped, optimizer = run.cfg, run.accelerator, run.wrapped, run.optimizer
    world, rank = accelerator.num_processes, accelerator.process_index
    parts: dict[str, float] = {}
    for a in range(cfg.grad_accum):
        batch = next(batches).to(accelerator.device)
        seed = micro_seed(cfg.seed, run.step, a * world + rank)
        torch.manual_seed(seed)
        if run.renamer is not None:
            batch = run.renamer(batch, torch.Generator().manual_seed(seed))
        with accelerator.accumulate(wrapped):
            out = wrapped(batch)
            accelerator.backward(out["loss"])
            if accelerator.sync_gradients and cfg.max_grad_norm > 0:
                accelerator.clip_grad_norm_(wrapped.parameters(), cfg.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad()
        for k, v in out.items():
            parts[k] = parts.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
    lr = optimizer.param_groups[0]["lr"]  # the rate this step used
    run.scheduler.step()
    run.step += 1
    reduced = accelerator.reduce(
        torch.tensor(list(parts.values()), device=accelerator.device), "mean"
    )
    return {k: float(v) for k, v in zip(parts, reduced, strict=True)}, lr


def _due(step: int, every: int, total: int) -> bool:
    """Whether a periodic log, validation or checkpoint falls on `step`: the last one does."""
    return step % every == 0 or step == total


def _log(run: _Run, entry: dict[str, Any]) -> None:
    """One line of RUN_DIR/metrics.jsonl (and TensorBoard's numbers), main process only."""
    if not run.main:
        return
    run.history.append(entry)
    with open(run.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
    if run.cfg.tensorboard:
        numbers = {k: v for k, v in entry.items() if k != "step" and isinstance(v, float)}
        run.accelerator.log(numbers, step=entry["step"])


def _evaluate(run: _Run, val_ds: ClipDataset) -> bool:
    """Validate and log at this step; True where the score beats the run's best (stage 1:
    lower val/loss, stage 2: higher val/CIDEr), which only the main process knows."""
    metrics = _validate(
        run.cfg, run.accelerator, run.wrapped, run.model, val_ds, run.card, run.step
    )
    if not run.main:
        return False
    _log(run, {"step": run.step, **metrics})
    value = metrics.get(BEST_KEY[run.cfg.stage])
    higher_is_better = run.cfg.stage == 2
    if isinstance(value, float) and (
        run.best is None or (value > run.best if higher_is_better else value < run.best)
    ):
        run.best = value
        return True
    return False


def _write_checkpoint(run: _Run, tmp: Path, at: int) -> None:
    """The checkpoint's files into `tmp` (every process takes part).

    No accelerate.save_state: it pickles (see train_state.py). Each process writes its RNG
    streams; the main process the optimizer (gathered first under FSDP), scheduler, loss
    scaler and the model folder, from which a resume takes the weights."""
    accelerator, wrapped, optimizer = run.accelerator, run.wrapped, run.optimizer
    state_dir = tmp / "state"
    write_state(state_dir / f"rng-{accelerator.process_index}", rng_state())
    opt_state = (
        optimizer_state(wrapped, optimizer.optimizer, run.fsdp) if run.fsdp or run.main else None
    )
    to_save = _model_to_save(accelerator, wrapped, run.scalars)  # collective under FSDP
    if run.main:
        from locomad_cli.model.checkpoint import save_model

        write_state(state_dir / "optimizer", opt_state)
        write_state(state_dir / "scheduler", run.scheduler.scheduler.state_dict())
        if accelerator.scaler is not None:
            write_state(state_dir / "scaler", accelerator.scaler.state_dict())
        save_model(to_save, tmp / "model")
        trainer = {
            "format": TRAIN_STATE_FORMAT,
            "step": at,
            "best": run.best,
            "micro_step": accelerator.step,
            **_run_settings(run.cfg, run.plan.batch_size, accelerator.num_processes, run.fsdp),
        }
        (tmp / "trainer.json").write_text(json.dumps(trainer))


def _publish_checkpoint(run: _Run, tmp: Path, at: int, is_best: bool) -> None:
    """Swap the finished checkpoint in (main process): best/ updated, only the last
    --keep-last checkpoints kept."""
    ckpts = run.run_dir / "checkpoints"
    replace_dir(tmp, ckpts / f"step-{at:07d}")
    if is_best:
        best_tmp = run.run_dir / ".best.tmp"
        shutil.rmtree(best_tmp, ignore_errors=True)
        shutil.copytree(ckpts / f"step-{at:07d}" / "model", best_tmp)
        best = {"step": at, BEST_KEY[run.cfg.stage]: run.best}
        (best_tmp / "best.json").write_text(json.dumps(best))
        replace_dir(best_tmp, run.run_dir / "best")
    for _, old in _checkpoints(run.run_dir)[: -run.cfg.keep_last]:
        shutil.rmtree(old, ignore_errors=True)


def _save_checkpoint(run: _Run, at: int, is_best: bool = False, collective: bool = True) -> None:
    """RUN_DIR/checkpoints/step-N, written aside and swapped in whole, so a crash mid-save
    leaves the previous one intact; `collective=False` where other processes may be gone."""
    tmp = run.run_dir / "checkpoints" / f".tmp-step-{at:07d}"
    if run.main:
        shutil.rmtree(tmp, ignore_errors=True)
        (tmp / "state").mkdir(parents=True)
    if collective:
        run.accelerator.wait_for_everyone()
    _write_checkpoint(run, tmp, at)
    if collective:
        run.accelerator.wait_for_everyone()  # every process's RNG file is in before the rename
    if run.main:
        _publish_checkpoint(run, tmp, at, is_best)
    if collective:
        run.accelerator.wait_for_everyone()


def _save_on_interrupt(run: _Run) -> None:
    """Ctrl-C. One process: write the checkpoint now. Several: the others may already be
    gone, and a collective save could hang, so point at the last periodic checkpoint."""
    if run.accelerator.num_processes == 1:
        if all(s != run.step for s, _ in _checkpoints(run.run_dir)):
            print(f"locomad: interrupted at step {run.step}; saving a checkpoint", file=sys.stderr)
            # a half-accumulated step is dropped: its gradients are not part of the state,
            # and accelerate's micro-batch counter must restart at a step boundary
            run.accelerator.step = 0
            _save_checkpoint(run, run.step, collective=False)
    elif run.main:
        last = _checkpoints(run.run_dir)
        print(
            "locomad: interrupted; resume from the last checkpoint "
            f"(step {last[-1][0] if last else 0}) with --resume",
            file=sys.stderr,
        )


def _finish(run: _Run) -> None:
    """The final weights in RUN_DIR/model; trackers closed. No end_training(): it tears down
    the process group, and a script may call train() again (stage 1, then stage 2)."""
    to_save = _model_to_save(run.accelerator, run.wrapped, run.scalars)
    if run.main:
        from locomad_cli.model.checkpoint import save_model

        save_model(to_save, run.run_dir / "model")
    for tracker in run.accelerator.trackers:
        tracker.finish()
    run.accelerator.wait_for_everyone()


def train(cfg: TrainConfig, callback: Callable[[int, dict], None] | None = None) -> TrainResult:
    """Run (or resume) one training stage; returns where it ended. `callback(step, logs)` is
    called on the main process after every optimizer step (progress for library users)."""
    from accelerate.utils import set_seed

    batch_size = _checked_batch_size(cfg)
    # a bad names file is refused here, before anything is written
    renamer = Renamer(read_names(cfg.rename_names)) if cfg.rename_names else None
    run_dir = Path(cfg.out)
    created = not run_dir.exists()
    accelerator = _make_accelerator(cfg, run_dir)
    main, world = accelerator.is_main_process, accelerator.num_processes
    try:
        _claim_run_dir(cfg, run_dir, main)
        fsdp = accelerator.distributed_type.name == "FSDP"
        settings = _run_settings(cfg, batch_size, world, fsdp)
        notes: list[str] = []
        step, ckpt, trainer = _resume_point(cfg, run_dir, settings, notes)

        set_seed(cfg.seed)
        # a resumed run's weights are its checkpoint's model folder (safetensors)
        model, card = build_model(cfg, str(accelerator.device), ckpt / "model" if ckpt else None)
        train_ds, val_ds = _load_data(cfg, card, accelerator, notes)
        plan = _plan(cfg, len(train_ds), batch_size, world)
        run = _prepare(cfg, accelerator, model, card, plan, run_dir, step, renamer)
        if ckpt is not None:
            _restore(run, ckpt, trainer)
    except LocomadError:
        # refused input (no data, a bad card) leaves no run folder behind, only one it made
        if created and main and run_dir.is_dir() and not _checkpoints(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    for note in notes if main else []:
        print(note, file=sys.stderr)
    _write_config(run)
    if cfg.tensorboard:
        accelerator.init_trackers("tensorboard")

    loader = _loader(run, train_ds)
    bar = progress_bar(f"stage {cfg.stage}", plan.total, main and cfg.progress, "it")
    batches = iter(loader)
    try:
        with bar as show:
            show(run.step)
            while run.step < plan.total:
                logs, lr = _train_step(run, batches)
                show(run.step, note=f"loss {logs['loss']:.4f}  lr {lr:.2e}")
                if main and _due(run.step, cfg.log_every, plan.total):
                    epoch = run.step / plan.steps_per_epoch
                    _log(run, {"step": run.step, "epoch": epoch, "lr": lr, **logs})
                is_best, evaluated = False, False
                if val_ds is not None and _due(run.step, plan.eval_every, plan.total):
                    is_best, evaluated = _evaluate(run, val_ds), True
                # every process takes part in a save: decide it from what all of them know
                if _due(run.step, plan.save_every, plan.total) or evaluated:
                    _save_checkpoint(run, run.step, is_best)
                if main and callback is not None:
                    callback(run.step, logs)
    except KeyboardInterrupt:
        _save_on_interrupt(run)
        raise
    _finish(run)
    return TrainResult(
        run_dir=run_dir, step=run.step, best=run.best, history=run.history, is_main=main
    )
