"""`locomad doctor`: what this machine can and cannot do with a model card, before a long run
finds out.

Every row says what it is needed for: `describe` (the card cannot describe a film without
it: doctor then exits non-zero), `train`, `evaluate`, `voice`, or `info`. Files are looked
for where the loaders look (open_clip's and the Hugging Face hub's caches, the card's weights
folder), without downloading anything.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from locomad_cli.card import ModelCard, load_card
from locomad_cli.evaluate.metrics import CORENLP_ENV, CORENLP_JARS, corenlp_jars
from locomad_cli.utils import LocomadError, hub_cached, hub_reachable

if TYPE_CHECKING:
    from rich.table import Table


@dataclass
class Check:
    name: str
    ok: bool
    details: str
    needed_for: str = "info"
    """describe | train | evaluate | voice | info: describe rows decide the exit code."""


def _version_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else ""


def _shown(path: str | Path) -> str:
    """Paths as every row prints them: absolute, resolved."""
    return str(Path(path).expanduser().resolve())


_MODEL_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def _hf_model(
    label: str,
    name: str | None,
    needed_for: str,
    weights: bool = True,
    fix: str = "point the card at a folder",
) -> Check:
    """A Hugging Face model (or tokenizer) named by id or local folder; `fix` says how to use
    a local copy instead."""
    if not name:
        return Check(label, True, "not needed by this card (random init)", needed_for)
    local = Path(name).expanduser()
    if local.is_dir():
        return Check(label, True, _shown(local), needed_for)
    if hub_reachable():
        return Check(label, True, f"{name}: on the hub (downloaded on first use)", needed_for)
    config = hub_cached(name)
    files = hub_cached(name, _MODEL_FILES) if weights else config
    if config and files:
        return Check(label, True, f"{name}: in the local hub cache", needed_for)
    return Check(
        label,
        False,
        f"{name}: not in the local hub cache and the hub is unreachable "
        f"(huggingface-cli download it on a connected machine, or {fix})",
        needed_for,
    )


def _clip_check(card: ModelCard) -> Check:
    from locomad_cli.features.clip import _cached_pretrained, _resolve_file

    clip = card.clip
    label = f"CLIP weights ({clip.model})"
    if not clip.pretrained:
        return Check(label, True, "random init (clip.pretrained is null)", "describe")
    try:
        local = _resolve_file(card, clip.pretrained)
        if local is not None:
            return Check(label, True, _shown(local), "describe")
        if hub_reachable():
            return Check(label, True, f"{clip.pretrained}: on the hub", "describe")
        return Check(label, True, _cached_pretrained(clip.model, clip.pretrained), "describe")
    except LocomadError as e:
        return Check(label, False, str(e), "describe")


def _weights_check(card: ModelCard) -> Check:
    label = f"LoCo-MAD weights ({card.name})"
    local = card.weights_path()
    if local is None:
        return Check(label, False, "the card names no trained weights (weights: null)", "describe")
    if local.is_dir():
        missing = [f for f in ("card.yaml", "model.safetensors") if not (local / f).is_file()]
        if missing:
            return Check(label, False, f"{_shown(local)} lacks {', '.join(missing)}", "describe")
        return Check(label, True, _shown(local), "describe")
    weights = str(card.weights)
    if not Path(weights).is_absolute() and weights.count("/") == 1:  # a hub repo id
        if hub_reachable() or hub_cached(weights, ("model.safetensors",)):
            return Check(label, True, f"{weights}: on the hub or in its cache", "describe")
    return Check(
        label,
        False,
        f"{_shown(local)} does not exist: no trained LoCo-MAD weights are published for the "
        "OPT cards; train them (README, 'Describing your own film') or use --model demo",
        "describe",
    )


def _llm_check(card: ModelCard) -> Check:
    from locomad_cli.model.checkpoint import saves_llm

    label = f"language model ({card.llm.name})"
    if card.llm.config is not None:
        return Check(label, True, "built from the card's llm.config", "describe")
    check = _hf_model(label, card.llm.name, "describe")
    if saves_llm(card) and not check.ok:  # a checkpoint of llm.train: all carries the LLM
        check.needed_for = "train"
    return check


def _java_check() -> Check:
    java = shutil.which("java")
    details = (
        _version_line(["java", "-version"])
        if java
        else "not found (apt-get install default-jre-headless)"
    )
    return Check("java (METEOR, PTB tokenizer)", bool(java), details, "evaluate")


def _corenlp_check() -> Check:
    jars = corenlp_jars()
    if jars:
        return Check("CoreNLP (SPICE)", True, _shown(jars[0].parent), "evaluate")
    return Check(
        "CoreNLP (SPICE)",
        False,
        f"{' and '.join(CORENLP_JARS)} not found: put them in a folder and pass evaluate "
        f"--corenlp DIR (or set {CORENLP_ENV})",
        "evaluate",
    )


def _vlm_checks(card: ModelCard) -> list[Check]:
    """A vision-language card: its server (answering, and listing the model at /v1/models),
    or its local weights (in the hub's cache, or the hub reachable); CLIP only for
    context.select: clip."""
    rows = [_clip_check(card)] if card.context.select == "clip" else []
    if card.vlm.backend == "endpoint":
        from locomad_cli.describe.endpoint import server_models
        from locomad_cli.describe.vlm import check_vlm

        label = f"server ({card.endpoint.url or 'endpoint.url not set'})"
        try:
            check_vlm(card)
            served = server_models(card)
        except LocomadError as e:
            return [*rows, Check(label, False, str(e), "describe")]
        if card.endpoint.model not in served:
            listed = ", ".join(served[:8]) or "none"
            details = f"'{card.endpoint.model}' is not among the models it lists ({listed})"
            return [*rows, Check(label, False, details, "describe")]
        return [*rows, Check(label, True, f"serves {card.endpoint.model}", "describe")]
    from locomad_cli.describe.local_vlm import missing_weights

    label = f"vision-language model ({card.vlm.name})"
    missing = missing_weights(card)
    gpu = (
        f"; needs about {card.vlm.gpu_memory_gb:g} GB of GPU memory"
        if card.vlm.gpu_memory_gb
        else ""
    )
    if missing:
        return [*rows, Check(label, False, missing, "describe")]
    return [*rows, Check(label, True, f"a folder, in the hub cache or on the hub{gpu}", "describe")]


def run_checks(model: str = "opt-2.7b", overrides: list[str] | None = None) -> list[Check]:
    """Every check for this machine and card; never raises for a missing tool or file, only
    for a card that cannot be read."""
    card = load_card(model, overrides)
    rows: list[Check] = []
    for tool in ("ffmpeg", "ffprobe"):
        path = shutil.which(tool)
        details = (
            _version_line([tool, "-version"]) if path else "not on PATH (apt-get install ffmpeg)"
        )
        rows.append(Check(tool, bool(path), details, "describe"))
    try:
        import decord

        rows.append(Check("decord", True, f"decord {decord.__version__}", "describe"))
    except ImportError as e:
        rows.append(Check("decord", False, f"not importable: {e}", "describe"))
    import torch

    if torch.cuda.is_available():
        name = torch.cuda.get_device_name(0)
        rows.append(Check("torch device", True, f"torch {torch.__version__}, CUDA: {name}"))
    else:
        rows.append(
            Check("torch device", True, f"torch {torch.__version__}, CPU only (no CUDA GPU)")
        )
    hub = hub_reachable()
    rows.append(
        Check(
            "model hub",
            True,
            "huggingface.co reachable" if hub else "unreachable: local caches only",
        )
    )
    if card.describer.kind == "vlm":
        rows += _vlm_checks(card)
    else:
        rows += [_clip_check(card), _weights_check(card), _llm_check(card)]
        rows.append(_hf_model(f"PME init ({card.pme.init or 'none'})", card.pme.init, "train"))
    if card.describer.kind == "locomad" and card.pme.tokenizer != "tiny":
        rows.append(
            _hf_model(
                f"PME tokenizer ({card.pme.tokenizer})", card.pme.tokenizer, "train", weights=False
            )
        )
    rows.append(_java_check())
    rows.append(_corenlp_check())
    for label, name, flag in (
        ("BertScore model", "bert-base-uncased", "--bert-model"),
        ("R@k/N model", "roberta-large", "--recall-model"),
    ):
        fix = f"pass evaluate {flag} DIR"
        rows.append(_hf_model(f"{label} ({name})", name, "evaluate", fix=fix))
    espeak = shutil.which("espeak-ng")
    rows.append(
        Check(
            "espeak-ng (voice)",
            bool(espeak),
            _version_line(["espeak-ng", "--version"])
            if espeak
            else "not found (apt-get install espeak-ng)",
            "voice",
        )
    )
    return rows


def blocking(rows: list[Check]) -> list[Check]:
    """The failed checks without which the card cannot describe a film."""
    return [r for r in rows if not r.ok and r.needed_for == "describe"]


def checks_table(rows: list[Check], model: str) -> Table:
    """The checks as a rich table (colours on a terminal, plain in a pipe)."""
    from rich.table import Table

    from locomad_cli import __version__

    table = Table(title=f"locomad {__version__} doctor, model card {model}")
    table.add_column("check")
    table.add_column("status")
    table.add_column("needed for")
    table.add_column("details", overflow="fold")
    for r in rows:
        status = "[green]ok[/]" if r.ok else "[yellow]missing[/]"
        table.add_row(r.name, status, r.needed_for, r.details)
    return table
