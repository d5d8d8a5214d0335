"""Model cards: one YAML per variant in `models/`, loaded into dataclasses.

A card says everything needed to rebuild a model: which CLIP encoder makes the frame and text
features, the sizes of the PME (Q-Former) and DSM, which causal LM decodes, how it generates,
and where the trained weights live. `--model NAME|PATH.yaml` picks a card everywhere; CLI
flags override single fields with dotted keys (`--set llm.num_beams=1`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from locomad_cli.utils import LocomadError

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
"""Cards shipped with the repository (and with a source install)."""


@dataclass
class ClipCard:
    """The open_clip encoder used for frame features and DSM text features."""

    model: str = "ViT-L-14"
    """open_clip model name (`open_clip.list_models()`), or a JSON config path for custom ones."""
    pretrained: str | None = "openai"
    """open_clip pretrained tag, a local `.safetensors` file, or None for random init (tests)."""
    dim: int = 768
    """Width of the projected embeddings (768 for ViT-L/14)."""
    config: dict[str, Any] | None = None
    """An open_clip model config (the JSON of `open_clip/model_configs/*.json`) registered
    under `model`: small encoders for tests and the demo, loaded through the same code."""


@dataclass
class PMECard:
    """Pre-aligned Movie Encoder: a BERT-shaped Q-Former over frame features (Sec. 3.1)."""

    init: str | None = "bert-base-uncased"
    """HF id or local dir whose BERT weights initialise the Q-Former; None = random (tests)."""
    tokenizer: str = "bert-base-uncased"
    """Tokenizer for the Q-Former's text side (HF id or local dir)."""
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_freq: int = 2
    num_queries: int = 32
    max_frames: int = 1000
    """Longer clips are uniformly subsampled to this many frames."""
    embed_dim: int = 256
    """VTC projection width."""
    max_text_len: int = 32
    vocab_size: int | None = None
    """Only for random init: vocabulary size when no pretrained tokenizer defines it."""
    label_smoothing: float = 0.1
    temperature: float = 0.07


@dataclass
class DSMCard:
    """Dynamic Selection Module: context-proposal encoder + sampler + CCL (Sec. 3.2)."""

    num_layers: int = 2
    num_heads: int = 12
    intermediate_size: int = 3072
    proposal_len: int = 10
    """How many earlier descriptions (with their subtitles) form the context proposal."""
    top_k: int = 5
    temperature: float = 0.05


@dataclass
class LLMCard:
    """The causal language model that writes the description (Sec. 3.2, eq. 10-12)."""

    name: str = "facebook/opt-2.7b"
    """HF id or local dir loaded with `AutoModelForCausalLM.from_pretrained`."""
    tokenizer: str | None = None
    """Defaults to `name`."""
    config: dict[str, Any] | None = None
    """Random-init architecture (an `OPTConfig`-style dict) instead of `name`: tests, demo."""
    train: str = "new-tokens"
    """What stage 2 trains in the LLM: none | new-tokens | all."""
    dtype: str = "auto"
    """Weights dtype on GPU: auto | fp32 | fp16 | bf16."""
    max_context_tokens: int = 200
    max_new_tokens: int = 36
    min_new_tokens: int = 5
    num_beams: int = 3
    """1 = greedy."""
    max_target_tokens: int = 36
    prompt: str = "Describe the scene:"
    """Final instruction placed after the visual and context prompts."""


@dataclass
class ModelCard:
    name: str
    clip: ClipCard = field(default_factory=ClipCard)
    fps: float = 5.0
    pme: PMECard = field(default_factory=PMECard)
    dsm: DSMCard = field(default_factory=DSMCard)
    llm: LLMCard = field(default_factory=LLMCard)
    weights: str | None = None
    """Trained checkpoint: a local dir (relative to the repo for shipped cards) or an HF id."""
    description: str = ""
    source: str | None = None
    """Where the card was read from (not part of the YAML)."""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data.pop("source", None)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def weights_path(self) -> Path | None:
        """The weights folder as a local path when it is one (relative paths are resolved
        against the repository root for shipped cards, the card's folder otherwise)."""
        if not self.weights:
            return None
        p = Path(self.weights).expanduser()
        if p.is_absolute():
            return p
        card_dir = Path(self.source).resolve().parent if self.source else MODELS_DIR
        base = MODELS_DIR.parent if card_dir == MODELS_DIR else card_dir
        return base / p


_SECTIONS = {"clip": ClipCard, "pme": PMECard, "dsm": DSMCard, "llm": LLMCard}


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise LocomadError(f"{where}: unknown key(s) {', '.join(unknown)}")
    return cls(**data)


def card_from_dict(data: dict[str, Any], source: str | None = None) -> ModelCard:
    """Build a card from a plain dict (the YAML's content), checking every key."""
    where = source or "model card"
    if not isinstance(data, dict) or "name" not in data:
        raise LocomadError(f"{where}: a model card is a mapping with at least a 'name'")
    data = dict(data)
    for key, cls in _SECTIONS.items():
        sub = data.get(key) or {}
        if not isinstance(sub, dict):
            raise LocomadError(f"{where}: '{key}' must be a mapping")
        data[key] = _build(cls, sub, f"{where} [{key}]")
    data.pop("source", None)
    card = _build(ModelCard, data, where)
    card.source = source
    return card


def available_cards() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.yaml"))


def load_card(name_or_path: str | Path, overrides: list[str] | None = None) -> ModelCard:
    """Load a card by shipped name (`opt-2.7b`, `demo`) or YAML path, then apply overrides
    of the form `section.key=value` (values parsed as YAML scalars)."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.is_file():
        path = p
    else:
        path = MODELS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(available_cards()) or "none"
        raise LocomadError(f"model card '{name_or_path}' not found (shipped cards: {known})")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise LocomadError(f"{path}: not valid YAML ({e.__class__.__name__})") from None
    for item in overrides or []:
        apply_override(data, item)
    return card_from_dict(data, source=str(path.resolve()))


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b=value` inside a nested dict, creating sections as needed."""
    if "=" not in item:
        raise LocomadError(f"override '{item}' is not of the form key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise LocomadError(f"override '{item}': '{part}' is not a section")
    node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None


TINY_CLIP_CONFIG: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}


def tiny_card(name: str = "tiny") -> ModelCard:
    """A random-init configuration with every size small, buildable offline in a second:
    for tests. Same code paths as the real cards; only the numbers differ."""
    return ModelCard(
        name=name,
        clip=ClipCard(model="locomad-tiny-clip", pretrained=None, dim=32, config=TINY_CLIP_CONFIG),
        fps=5.0,
        pme=PMECard(
            init=None,
            tokenizer="tiny",
            hidden_size=32,
            num_layers=2,
            num_heads=2,
            intermediate_size=64,
            cross_attention_freq=2,
            num_queries=4,
            max_frames=64,
            embed_dim=16,
            max_text_len=24,
        ),
        dsm=DSMCard(num_layers=2, num_heads=2, intermediate_size=64, proposal_len=10, top_k=3),
        llm=LLMCard(
            name="tiny-opt",
            tokenizer="tiny",
            config={
                "model_type": "opt",
                "hidden_size": 48,
                "word_embed_proj_dim": 48,
                "num_hidden_layers": 2,
                "ffn_dim": 96,
                "num_attention_heads": 4,
                "max_position_embeddings": 512,
            },
            train="all",
            num_beams=1,
            min_new_tokens=0,
            max_new_tokens=36,
        ),
        weights=None,
        description="tiny random-init configuration for tests",
    )
