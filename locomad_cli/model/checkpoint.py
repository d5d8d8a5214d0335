"""LoCo-MAD weights on disk: one folder, written atomically.

    card.yaml              the card the weights were made with
    model.safetensors      every trained tensor (tied copies stored once)
    tokenizers/pme, /llm   the tokenizers with their added special tokens
    llm_config/            the LLM's config, when its weights are in model.safetensors

A frozen pretrained LLM (llm.train none|new-tokens) is not copied into the checkpoint: it is
loaded from card.llm.name again, which keeps checkpoints small (OPT-2.7B is 5 GB).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from locomad_cli.card import ModelCard, card_from_dict
from locomad_cli.model.locomad import LoCoMAD
from locomad_cli.utils import (
    LocomadError,
    atomic_dir,
    atomic_path,
    hub_offline_hint,
    readable,
)

log = logging.getLogger(__name__)

FORMAT = "locomad-weights-1"
WEIGHTS = "model.safetensors"


def saves_llm(card: ModelCard) -> bool:
    """The LLM's weights go into the checkpoint when training changes them or when nothing
    else could rebuild them (random init from card.llm.config)."""
    return card.llm.train == "all" or card.llm.config is not None


# llm.config keys that regularise training and change no tensor: a run may fine-tune
# weights with other values (transformers' names across OPT, GPT-2, BERT-like configs).
_LLM_TRAINING_KEYS = frozenset(
    {
        "dropout",
        "attention_dropout",
        "activation_dropout",
        "layerdrop",
        "resid_pdrop",
        "embd_pdrop",
        "attn_pdrop",
        "hidden_dropout_prob",
        "attention_probs_dropout_prob",
    }
)


def architecture(card: ModelCard) -> dict:
    """The card fields that decide tensor shapes and meaning: weights made under one
    architecture are refused under another. Generation settings, top_k and training
    policies (dropout rates included) may differ."""
    pme = dict(vars(card.pme))
    # where the PME's start and tokenizer come from are paths (a copied card may spell them
    # absolute) and no shape: the tokenizers travel with the weights
    for key in ("max_frames", "label_smoothing", "temperature", "train_stage2", "stage2_dropout"):
        pme.pop(key)
    for key in ("init", "tokenizer"):
        pme.pop(key)
    d = card.dsm
    name, config = card.llm.name, card.llm.config  # config None: the named model's own
    if config is None:
        local = Path(name).expanduser()
        if (local / "config.json").is_file():  # a local copy: its config, not its path
            try:
                config, name = json.loads((local / "config.json").read_text("utf-8")), None
            except (OSError, ValueError):
                pass
    else:
        name = None  # random init from the config: the name is only a label
    if config is not None:
        config = {
            k: v
            for k, v in config.items()
            if k not in _LLM_TRAINING_KEYS and k not in ("_name_or_path", "transformers_version")
        }
    clip = card.clip.model
    if clip.endswith(".json"):  # a config file: its name, wherever it lies
        clip = Path(clip).name
    return {
        "clip": {"model": clip, "dim": card.clip.dim},
        "pme": pme,
        "dsm": {"num_layers": d.num_layers, "num_heads": d.num_heads, "ffn": d.intermediate_size},
        "llm": {
            "name": name,
            "config": config,
            "copy": card.llm.copy,
        },
    }


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict) and prefix.count(".") < 1:
            out += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            out.append(f"{prefix}{key}: {x!r} vs {y!r}")
    return out


def _state_to_save(model: LoCoMAD) -> dict[str, torch.Tensor]:
    keep_llm = saves_llm(model.card)
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, tuple[int, ...]]] = set()
    for name, t in model.state_dict().items():
        if name.startswith("decoder.llm.") and not keep_llm:
            continue
        key = (t.data_ptr(), tuple(t.shape))
        if key in seen:  # a tied copy (LM heads tied to embeddings): stored once
            continue
        seen.add(key)
        out[name] = t.detach().contiguous().cpu()
    return out


def save_model(model: LoCoMAD, path: str | Path) -> Path:
    """Write the model's folder at `path`, replacing an old one only once the new one is
    complete (a crash leaves the old folder, never half of a new one)."""
    path = Path(path)
    with atomic_dir(path) as tmp:
        (tmp / "card.yaml").write_text(model.card.to_yaml(), encoding="utf-8")
        meta = {"format": FORMAT, "card": model.card.name, "llm_saved": str(saves_llm(model.card))}
        save_file(_state_to_save(model), tmp / WEIGHTS, metadata=meta)
        model.pme_tokenizer.save_pretrained(tmp / "tokenizers" / "pme")
        model.llm_tokenizer.save_pretrained(tmp / "tokenizers" / "llm")
        if saves_llm(model.card):
            model.decoder.llm.config.save_pretrained(tmp / "llm_config")
    return path


def _resolve(source: str | Path | ModelCard) -> tuple[Path, ModelCard | None]:
    if not isinstance(source, ModelCard):
        return Path(source).expanduser(), None
    card = source
    local = card.weights_path()
    if local is None:
        raise LocomadError(f"model card '{card.name}' names no trained weights (weights: ...)")
    if local.exists():
        return local, card
    if card.weights and not Path(card.weights).is_absolute() and card.weights.count("/") == 1:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(card.weights)), card
        except Exception:
            raise LocomadError(f"weights {hub_offline_hint(card.weights)}") from None
    raise LocomadError(f"weights folder {local} for model card '{card.name}' does not exist")


def load_model(source: str | Path | ModelCard, device: str = "cpu") -> LoCoMAD:
    """Load a folder written by `save_model`, or the weights a card names. With a card, its
    runtime settings (beams, lengths, top_k) apply; its architecture must match the folder's."""
    folder, card = _resolve(source)
    if not (folder / WEIGHTS).is_file() or not (folder / "card.yaml").is_file():
        raise LocomadError(f"{folder} is not a locomad weights folder (needs card.yaml, {WEIGHTS})")
    try:
        saved = card_from_dict(yaml.safe_load((folder / "card.yaml").read_text("utf-8")))
    except yaml.YAMLError:
        raise LocomadError(f"{folder}/card.yaml is not valid YAML") from None
    if card is None:
        card = saved
        card.source = str(folder / "card.yaml")
    else:
        diff = _differences(architecture(saved), architecture(card))
        if diff:
            raise LocomadError(
                f"weights in {folder} were made for another architecture than card "
                f"'{card.name}' has (weights' card '{saved.name}': {'; '.join(diff[:3])})"
            )
    readable(folder / WEIGHTS)
    try:
        state = load_file(folder / WEIGHTS)
    except (SafetensorError, OSError) as e:
        raise LocomadError(f"cannot read {folder / WEIGHTS}: {e}") from None
    check_finite(state, folder / WEIGHTS)
    llm_inside = any(k.startswith("decoder.llm.") for k in state)
    config_dir = folder / "llm_config"
    model = LoCoMAD.from_card(
        card,
        device=device,
        pretrained=not llm_inside,
        pme_init=False,
        tokenizer_dir=str(folder / "tokenizers"),
        llm_config_dir=str(config_dir) if llm_inside and config_dir.is_dir() else None,
    )
    own = model.state_dict()
    bad = [k for k, v in state.items() if k not in own or own[k].shape != v.shape]
    if bad:
        raise LocomadError(
            f"weights in {folder} do not fit model card '{card.name}' "
            f"({len(bad)} tensor(s) differ, e.g. {bad[0]})"
        )
    tied = _tied_names(own)
    missing = [
        k
        for k in own
        if k not in state
        and k not in tied
        and not (k.startswith("decoder.llm.") and not llm_inside)
    ]
    if missing:
        raise LocomadError(f"weights in {folder} lack {len(missing)} tensor(s), e.g. {missing[0]}")
    model.load_state_dict(state, strict=False)
    return model


def _tied_names(state: dict[str, torch.Tensor]) -> set[str]:
    """Entries sharing storage with another (tied LM heads): loading one loads both."""
    count: dict[tuple[int, tuple[int, ...]], int] = {}
    for t in state.values():
        key = (t.data_ptr(), tuple(t.shape))
        count[key] = count.get(key, 0) + 1
    return {k for k, t in state.items() if count[(t.data_ptr(), tuple(t.shape))] > 1}


def check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    """Refuse weights holding NaN or infinity (a diverged run, a damaged file): they would
    describe every film as "" or "%" without a word."""
    bad = {
        k: int((~torch.isfinite(t)).sum())
        for k, t in state.items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    }
    if bad:
        first = next(iter(bad))
        raise LocomadError(
            f"{path}: {sum(bad.values())} non-finite value(s) (NaN or infinity) in "
            f"{len(bad)} tensor(s), e.g. {first}: these weights cannot describe anything"
        )


def _flatten(
    obj: dict | list | tuple, prefix: str = ""
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Tensors of a nested state dict under dotted names (as torch's own state_dicts name
    them), and the keys of anything that is neither a tensor nor a mapping."""
    tensors: dict[str, torch.Tensor] = {}
    other: list[str] = []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj)
    for k, v in items:
        name = f"{prefix}{k}"
        if isinstance(v, torch.Tensor):
            inner, rest = {name: v}, []
        elif isinstance(v, (dict, list, tuple)):
            inner, rest = _flatten(v, f"{name}.")
        else:
            inner, rest = {}, [name]
        clash = set(inner) & set(tensors)
        if clash:
            raise LocomadError(f"two tensors of the state dict would both be named {min(clash)}")
        tensors.update(inner)
        other += rest
    return tensors, other


def convert_weights(src: str | Path, dst: str | Path) -> Path:
    """Re-save a third-party PyTorch state dict (.pth/.bin) as safetensors. The pickle is
    read with `weights_only=True`: tensors and plain containers only, never code."""
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".safetensors":
        raise LocomadError(f"output {dst} must end in .safetensors")
    if src.is_dir():
        raise LocomadError(f"{src} is a folder: name the .pth/.bin file in it")
    if not src.exists():
        raise LocomadError(f"{src} does not exist")
    if not src.is_file():
        raise LocomadError(f"{src} is not a regular file (a device or a pipe?)")
    try:
        obj = torch.load(src, map_location="cpu", weights_only=True)
    except Exception as e:
        raise LocomadError(
            f"{src} is not a weights-only PyTorch file ({e.__class__.__name__})"
        ) from None
    for key in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise LocomadError(f"{src} holds no state dict")
    # nested dicts (a model of several parts) are flattened to dotted names, never dropped
    try:
        tensors, other = _flatten(obj)
    except LocomadError as e:
        raise LocomadError(f"{src}: {e}") from None
    if not tensors:
        raise LocomadError(f"{src} holds no tensors")
    if other:
        log.warning(
            "%s: %d entr%s that are not tensors left out (e.g. %s)",
            src,
            len(other),
            "y" if len(other) == 1 else "ies",
            other[0],
        )
    # safetensors holds dense tensors only: sparse or quantized layouts are not weights
    # locomad loads (and .contiguous() raises on them)
    odd = [k for k, v in tensors.items() if v.layout != torch.strided or v.is_quantized]
    if odd:
        raise LocomadError(
            f"{src}: {len(odd)} tensor(s) are sparse or quantized (e.g. {odd[0]}): "
            "safetensors holds dense tensors only; densify them first (tensor.to_dense())"
        )
    # shared storage is not allowed in safetensors: give each tensor its own copy
    tensors = {k: v.detach().clone().contiguous() for k, v in tensors.items()}
    with atomic_path(dst) as tmp:
        save_file(tensors, tmp, metadata={"source": src.name})
    return dst
