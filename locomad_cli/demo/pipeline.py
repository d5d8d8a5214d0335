"""`locomad demo train`: the whole demo model, from nothing, with the project's own tools.

1. render the demo films (`make_data`, no features yet);
2. train both tokenizers on the training films' text;
3. train the card's small CLIP on training frames (open_clip's contrastive loss);
4. extract frame features for every film with that CLIP (`locomad_cli.features.extract`);
5. `locomad train --stage 1` (PME) then `--stage 2` (DSM + OPT), the same `train()` users run;
6. copy the final stage-2 model into the weights folder and measure it on held-out films.

The shipped `weights/demo/` is this function's output with the defaults (scripts/train_demo.sh).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from locomad_cli.card import MODELS_DIR, load_card
from locomad_cli.demo.data import DEMO_BOUNDS
from locomad_cli.train.bounds import WHOLE, Bound, check_fields
from locomad_cli.utils import LocomadError, atomic_open

if TYPE_CHECKING:
    from locomad_cli.demo.data import DemoDataConfig

REPO = MODELS_DIR.parent


@dataclass
class DemoTrainConfig:
    work: str
    """Folder for the rendered data and the training runs."""
    weights: str = "weights/demo"
    """Where the CLIP, tokenizers and final checkpoint go."""
    card: str = "demo"
    seed: int = 0
    films: int = 60
    val: int = 6
    test: int = 6
    extra_train: int = 0
    """Training films beyond the first `films` (whose last 12 validate and test; they stay
    the same films). Tried with 96 (144 training films, stage 1 7 epochs, stage 2 10):
    rooms and actions up, looks and names down on held-out films; not shipped
    (docs/demo.md, "Props: seen, not written")."""
    clip_steps: int = 2000
    clip_batch: int = 64
    clip_hard_negatives: bool = False
    """Each CLIP training image also meets its caption with one prop, garment or room
    swapped (clip_train.hard_negative). Off in the shipped recipe: it raised only the probe
    of a prop in view (0.94 -> 0.99) and no model trained with it was better (docs/demo.md)."""
    s1_epochs: int = 20
    s1_batch: int = 32
    s1_lr: float = 5e-4
    s2_epochs: int = 30
    s2_batch: int = 16
    s2_lr: float = 1e-3
    s2_context_dropout: float = 0.5
    """Chance a stage-2 clip's prompt leaves out its context items (train.py): measured on
    the demo, it roughly halved how often the recurrent loop repeats itself (docs/demo.md)."""
    s2_visual_contrast: float = 0.0
    """Stage 2's visual-contrast weight (`locomad train --visual-contrast`; forward_stage2)."""
    rename_names: bool = False
    """Rename every training clip's characters at random from the world's name pool in both
    stages (`locomad train --rename-names`). Off: measured on the demo, the decoder then
    stopped writing the right names at all (it no longer memorises a film's cast, and in
    2,300 stage-2 steps it did not learn to copy them instead; docs/demo.md)."""
    s2_eval_epochs: int = 5
    """Validate (generate on val clips, CIDEr) every this many stage-2 epochs."""
    warmup_steps: int = 50
    val_clips: int = 48
    """Stage-2 validation generates for this many val clips (picks the best checkpoint)."""
    measure: bool = True
    progress: bool = False
    threads: int = 1
    """torch CPU threads. One: these models are so small that a second thread mostly waits,
    and on a shared machine two threads per process ran 30x slower than one (docs/demo.md)."""

    def check(self) -> None:
        """Every number in range before anything is rendered or trained: a bad stage-2 value
        was found only when stage 2 began, after the data, the CLIP and stage 1."""
        check_fields(
            self,
            TRAIN_BOUNDS,
            flags={"extra_train": "--extra-films", "s2_visual_contrast": "--visual-contrast"},
        )


TRAIN_BOUNDS: dict[str, Bound] = {
    **{k: DEMO_BOUNDS[k] for k in ("seed", "films", "val", "test", "extra_train")},
    "clip_steps": Bound(1, 1_000_000, what=WHOLE),
    "clip_batch": Bound(2, 4096, what=WHOLE),  # a contrastive batch needs two captions
    "s1_epochs": Bound(1, 10_000, what=WHOLE),
    "s1_batch": Bound(1, 4096, what=WHOLE),
    "s1_lr": Bound(0.0, low_open=True),
    "s2_epochs": Bound(1, 10_000, what=WHOLE),
    "s2_batch": Bound(1, 4096, what=WHOLE),
    "s2_lr": Bound(0.0, low_open=True),
    "s2_context_dropout": Bound(0.0, 1.0, what="a chance"),
    "s2_visual_contrast": Bound(0.0),
    "s2_eval_epochs": Bound(1, 10_000, what=WHOLE),
    "warmup_steps": Bound(0, 1_000_000, what=WHOLE),
    "val_clips": Bound(1, 100_000, what=WHOLE),
    "threads": Bound(1, 1024, what=WHOLE),
}
"""The range of every numeric DemoTrainConfig field."""


def _card_file(cfg: DemoTrainConfig, weights: Path) -> str:
    """The card to train with. For the shipped folder, the shipped card as it is (its paths
    are relative to the repository root); elsewhere a copy pointing at `weights`."""
    card = load_card(cfg.card)
    if weights.resolve() == (REPO / "weights" / "demo").resolve() and cfg.card == "demo":
        if Path.cwd().resolve() != REPO.resolve():
            raise LocomadError(f"train the shipped demo weights from the repository root ({REPO})")
        return cfg.card
    data = card.to_dict()
    data["clip"]["pretrained"] = str((weights / "clip.safetensors").resolve())
    data["pme"]["tokenizer"] = str((weights / "tokenizers" / "pme").resolve())
    data["llm"]["tokenizer"] = str((weights / "tokenizers" / "llm").resolve())
    data["weights"] = str(weights.resolve())
    path = Path(cfg.work) / "card.yaml"
    with atomic_open(path) as f:
        yaml.safe_dump(data, f, sort_keys=False)
    return str(path)


def train_demo(cfg: DemoTrainConfig) -> dict:
    """Run every step; returns what was measured (also written to WORK/measure.json)."""
    cfg.check()
    import torch

    from locomad_cli.demo.data import extract_demo_features
    from locomad_cli.demo.tokenizers import make_tokenizers

    torch.set_num_threads(cfg.threads)
    work, weights = Path(cfg.work), Path(cfg.weights)
    data = work / "data"
    weights.mkdir(parents=True, exist_ok=True)
    card_file = _card_file(cfg, weights)
    say = print if cfg.progress else (lambda *a, **k: None)

    dcfg = _films(cfg, work, data, say)
    say("[2/6] tokenizers", flush=True)
    make_tokenizers(data, weights)
    clip = _clip(cfg, dcfg, work, data, weights, card_file, say)
    say("[4/6] frame features", flush=True)
    # Features and the cached CLIP text features name the CLIP by its card, not by its
    # weights: after (re)training it, both are made again rather than trusted.
    for cache in data.glob("locomad-text-*.safetensors"):
        cache.unlink()
    extract_demo_features(data, card_file, overwrite=True)
    s1, s2 = _stages(cfg, work, data, card_file, say)
    _install(s2.run_dir / "model", weights, data)
    result: dict = {
        "clip": clip,
        "stage1_step": s1.step,
        "stage2_step": s2.step,
        "stage2_best_val_cider": s2.best,
        "config": dataclasses.asdict(cfg),
    }
    if cfg.measure:
        say("[6/6] measuring on held-out films", flush=True)
        result["test"] = _measure(card_file, s1.run_dir / "model", data)
    with atomic_open(work / "measure.json") as f:
        json.dump(result, f, indent=1)
    return result


def _films(cfg: DemoTrainConfig, work: Path, data: Path, say: Callable) -> DemoDataConfig:
    """Step 1: the demo films, rendered once for the same data settings."""
    from locomad_cli.demo.data import NAMES_FILE, DemoDataConfig, make_data, write_names

    dcfg = DemoDataConfig(
        seed=cfg.seed, films=cfg.films, val=cfg.val, test=cfg.test, extra_train=cfg.extra_train
    )
    made = sorted(p.name for s in ("train", "val", "test") for p in (data / s).glob("*.world.json"))
    if (
        len(made) == cfg.films + cfg.extra_train
        and (work / "data.json").is_file()
        and json.loads((work / "data.json").read_text()) == dataclasses.asdict(dcfg)
    ):
        say(f"[1/6] reusing the {len(made)} films in {data}", flush=True)
        write_names(data / NAMES_FILE)
    else:
        say(f"[1/6] rendering {cfg.films + cfg.extra_train} films into {data}", flush=True)
        make_data(data, dcfg, features=False)
        with atomic_open(work / "data.json") as f:
            json.dump(dataclasses.asdict(dcfg), f)
    return dcfg


def _clip(
    cfg: DemoTrainConfig,
    dcfg: DemoDataConfig,
    work: Path,
    data: Path,
    weights: Path,
    card_file: str,
    say: Callable,
) -> dict:
    """Step 3: the card's CLIP, trained once for the same settings, data and card; returns its
    caption->frame recall before and after training."""
    from locomad_cli.demo.clip_train import train_clip

    clip_key = {
        "steps": cfg.clip_steps,
        "batch": cfg.clip_batch,
        "hard_negatives": cfg.clip_hard_negatives,
        "seed": cfg.seed,
        "data": dataclasses.asdict(dcfg),
        "clip": dataclasses.asdict(load_card(card_file).clip),
    }
    clip_file, clip_done = weights / "clip.safetensors", work / "clip.json"
    done = json.loads(clip_done.read_text()) if clip_done.is_file() else {}
    fresh = not (clip_file.is_file() and done.get("key") == clip_key)
    if fresh:
        say(f"[3/6] CLIP: {cfg.clip_steps} steps", flush=True)
        clip = train_clip(
            data,
            load_card(card_file),
            clip_file,
            steps=cfg.clip_steps,
            batch_size=cfg.clip_batch,
            hard_negatives=cfg.clip_hard_negatives,
            seed=cfg.seed,
            log_every=100 if cfg.progress else 0,
        )
        with atomic_open(clip_done) as f:
            json.dump({"key": clip_key, "result": clip}, f)
    else:
        say(f"[3/6] reusing the CLIP trained before ({clip_file})", flush=True)
        clip = done["result"]
    say(
        f"      val caption->frame R@1: random {clip['val_r1_random']:.2f}, "
        f"trained {clip['val_r1_trained']:.2f}",
        flush=True,
    )
    return clip


def _stages(cfg: DemoTrainConfig, work: Path, data: Path, card_file: str, say: Callable):
    """Step 5: `locomad train --stage 1`, then `--stage 2` from it; both runs' results."""
    from locomad_cli.demo.data import NAMES_FILE
    from locomad_cli.train.loop import TrainConfig, train

    common = dict(
        data=f"folder:{data}",
        model=card_file,
        warmup_steps=cfg.warmup_steps,
        seed=cfg.seed,
        num_workers=0,
        progress=cfg.progress,
        mixed_precision="no",
        log_every=20,
        rename_names=str(data / NAMES_FILE) if cfg.rename_names else None,
    )
    say("[5/6] locomad train --stage 1", flush=True)
    s1 = train(
        TrainConfig(
            stage=1,
            out=str(work / "stage1"),
            epochs=cfg.s1_epochs,
            batch_size=cfg.s1_batch,
            lr=cfg.s1_lr,
            **common,
        )
    )
    say("[5/6] locomad train --stage 2", flush=True)
    clips = sum(
        len(json.loads(p.read_text(encoding="utf-8"))["slots"])
        for p in (data / "train").glob("*.world.json")
    )
    eval_every = max(1, clips // cfg.s2_batch) * cfg.s2_eval_epochs
    s2 = train(
        TrainConfig(
            stage=2,
            out=str(work / "stage2"),
            init=str(s1.run_dir),
            epochs=cfg.s2_epochs,
            batch_size=cfg.s2_batch,
            lr=cfg.s2_lr,
            val_max_clips=cfg.val_clips,
            eval_batch_size=16,
            eval_every=eval_every,
            context_dropout=cfg.s2_context_dropout,
            visual_contrast=cfg.s2_visual_contrast,
            **common,
        )
    )
    return s1, s2


def _install(final: Path, weights: Path, data: Path) -> None:
    """Step 6: the final stage-2 model into the weights folder, with what the training films
    look like (so describe can warn about other footage). The final model, not the best by
    validation CIDEr: on templated sentences CIDEr peaks early, while the visual path (room,
    look, prop) is still being learnt."""
    from locomad_cli.features import familiar
    from locomad_cli.features.video import probe

    for item in final.iterdir():
        target = weights / item.name
        if target.is_dir():
            shutil.rmtree(target)
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, target)
    train_films = sorted((data / "train").glob("*.mp4"))[:16]
    familiar.save(familiar.fit([(v, probe(v).duration) for v in train_films]), weights)


def _measure(card_file: str, stage1_model: Path, data: Path) -> dict:
    """Step 6: scores on the held-out films for every setting. Table 4's "Stage1" row is the
    stage-1 PME alone (stage 2 may train the PME on)."""
    from locomad_cli.demo.measure import SETTINGS, measure
    from locomad_cli.model.checkpoint import load_model

    model = load_model(load_card(card_file))
    scores = measure(model, data, [s for s in SETTINGS if s != "stage1"])
    return scores | measure(load_model(stage1_model), data, ["stage1"])
