"""Model cards: one YAML per variant in `models/`, loaded into dataclasses.

A card says everything needed to rebuild a model: which CLIP encoder makes the frame and text
features, the sizes of the PME (Q-Former) and DSM, which causal LM decodes, how it generates,
and where the trained weights live. `--model NAME|PATH.yaml` picks a card everywhere; CLI
flags override single fields with dotted keys (`--set llm.num_beams=1`).
"""

from __future__ import annotations

import codecs
import dataclasses
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from locomad_cli.utils import LocomadError

log = logging.getLogger(__name__)

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
    train_stage2: str = "frozen"
    """What stage 2 does with the PME: frozen (as the authors' code) | all (its query path
    trains with the DSM and Proj_l, as BLIP-2's stage 2 trains its Q-Former)."""
    stage2_dropout: bool = True
    """With train_stage2 all: whether the Q-Former's dropout runs while stage 2 trains it
    (false: its query path still trains, in eval mode). Dropout regularises the queries and
    also blurs small details in them, which a decoder may need (the demo's trial:
    docs/notes/2026-12-04-demo-visual-read.md)."""


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
    avoid_repeats: int = 3
    """Recurrent setting: a description may not repeat one of the film's previous N
    descriptions word for word (0: off). A model fed its own output as context can lock into
    copying it; when the best candidate is such a repeat, the best other candidate of
    `avoid_beams` beams is taken (docs/model.md has the measurements)."""
    avoid_beams: int = 4
    length_weight: float = 1.0
    """Describe to fit: candidates are ranked by score - length_weight x (words over the
    slot's budget), so the best candidate a voice can say in the slot comes first and the
    longer ones stay behind it in the n-best (0: rank by score alone)."""
    max_target_tokens: int = 36
    prompt: str = "Describe the scene:"
    """Final instruction placed after the visual and context prompts."""
    visual_norm: str = "batch"
    """How q̃ is standardised before Proj_l: batch (per-dimension running mean and variance,
    no affine: the queries share a large common component that otherwise drowns what tells
    slots apart; docs/model.md) | none (the paper's plain linear projection)."""
    names: list[str] = field(default_factory=list)
    """Character names a description may write only once its prompt holds them (the slot's
    dialogue or a chosen context item): until the film has said a name, the listener does
    not know it and the description says who by their look. Decoding bans an unheard name's
    first token and, where the model would write a name, gives the likeliest heard one the
    names' probability (docs/model.md). `locomad describe --cast FILE` adds a film's own
    cast. Empty: no rule."""
    copy: bool = False
    """A copy head over the prompt's tokens (pointer-generator, See et al. 2017): each next
    token is a learnt mix of the LM's softmax and an attention over the prompt's words, so
    a decoder that has not learnt to copy can still write a name its prompt holds. Off in
    every shipped card: pretrained LLMs copy names from their prompt by themselves (the
    demo's trial: docs/notes/2026-12-02-demo-copy-head.md). Part of the architecture: set it
    from stage 1 on."""


@dataclass
class DescriberCard:
    """Which describer writes the descriptions, and what every describer is given."""

    kind: str = "locomad"
    """locomad (the trained model of this card) | vlm (a vision-language model, no training:
    `vlm` and `endpoint` below)."""
    frames: int = 8
    """Frames decoded from the film per slot, evenly spaced (vlm)."""
    frame_size: int = 448
    """Short side, in pixels, of the frames a vlm is shown."""
    words_per_minute: float = 170.0
    """The speaking rate a slot's word budget is counted at, for every describer: a slot of
    s seconds holds s * wpm / 60 words (`locomad voice --rate`'s default; the VLM cards ask
    160, as a VLM's answers run long)."""
    max_words_per_minute: float = 200.0
    """The fastest a voice may speak (`locomad voice --max-rate`). LoCo-MAD: when no
    candidate has words few enough for the slot even at this rate, the slot is searched again
    with no word allowed past it, and what that finds joins the n-best."""
    shorter_tries: int = 2
    """Times a vlm answer over the budget is asked again, shorter (0-2)."""


@dataclass
class ContextCard:
    """How a vlm's context is chosen from the film so far (the DSM's job, without training)."""

    select: str = "recent"
    """recent (the last k items) | clip (the k items whose CLIP text features are nearest the
    slot's mean frame feature, and the most recent one)."""
    k: int = 5
    max_tokens: int = 200
    """The context's cap in tokens (words and punctuation), as the paper's 200."""


@dataclass
class VLMCard:
    """A vision-language model: local (transformers) or behind an OpenAI-compatible server."""

    backend: str = "local"
    """local (AutoModelForImageTextToText) | endpoint (the `endpoint` section)."""
    name: str | None = None
    """Local backend: Hugging Face id or folder."""
    dtype: str = "bf16"
    """Weights dtype on GPU (fp32 on CPU): fp32 | fp16 | bf16."""
    max_new_tokens: int = 60
    gpu_memory_gb: float | None = None
    """What the weights need on a GPU (stated on the card, from its size)."""


@dataclass
class EndpointCard:
    """An OpenAI-compatible chat-completions server (vLLM, SGLang, Ollama, llama.cpp...); its
    key, if any, comes from the environment variable LOCOMAD_API_KEY."""

    url: str | None = None
    """Base URL up to /v1, e.g. http://127.0.0.1:8000/v1."""
    model: str | None = None
    """The model name the server knows (its /v1/models)."""
    timeout: float = 120.0
    """Seconds per request."""
    retries: int = 4
    """Tries after the first on connection errors, 429 and 5xx, backing off 1, 2, 4... s."""
    backoff: float = 1.0
    concurrency: int = 4
    """Requests in flight at once, at most: a film's slots where order allows (--setting
    local or oracle; recurrent asks them in order), and several films described at once."""


@dataclass
class ModelCard:
    name: str
    clip: ClipCard = field(default_factory=ClipCard)
    fps: float = 5.0
    pme: PMECard = field(default_factory=PMECard)
    dsm: DSMCard = field(default_factory=DSMCard)
    llm: LLMCard = field(default_factory=LLMCard)
    describer: DescriberCard = field(default_factory=DescriberCard)
    context: ContextCard = field(default_factory=ContextCard)
    vlm: VLMCard = field(default_factory=VLMCard)
    endpoint: EndpointCard = field(default_factory=EndpointCard)
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


_SECTIONS = {
    "clip": ClipCard,
    "pme": PMECard,
    "dsm": DSMCard,
    "llm": LLMCard,
    "describer": DescriberCard,
    "context": ContextCard,
    "vlm": VLMCard,
    "endpoint": EndpointCard,
}


_POSITIVE = {
    "fps",
    "clip.dim",
    *(
        f"pme.{k}"
        for k in (
            "hidden_size",
            "num_layers",
            "num_heads",
            "intermediate_size",
            "cross_attention_freq",
            "num_queries",
            "max_frames",
            "embed_dim",
            "max_text_len",
            "vocab_size",
            "temperature",
        )
    ),
    *(
        f"dsm.{k}"
        for k in (
            "num_layers",
            "num_heads",
            "intermediate_size",
            "proposal_len",  # the DSM's encoder runs over the proposal: none is no sequence
            "top_k",
            "temperature",
        )
    ),
    *(
        f"llm.{k}"
        for k in (
            "max_context_tokens",
            "max_new_tokens",
            "num_beams",
            "max_target_tokens",
        )
    ),
    "describer.frames",
    "describer.frame_size",
    "describer.words_per_minute",
    "describer.max_words_per_minute",
    "context.k",
    "context.max_tokens",
    "vlm.max_new_tokens",
    "endpoint.timeout",
    "endpoint.concurrency",
}
"""Card fields that must be > 0 (sizes, counts, rates, temperatures)."""
_NON_NEGATIVE = {
    "llm.min_new_tokens",
    "llm.length_weight",
    "describer.shorter_tries",
    "endpoint.retries",
    "endpoint.backoff",
}
_AT_MOST = {
    "fps": 60,
    "pme.max_frames": 10_000,
    "pme.num_queries": 1024,
    "dsm.proposal_len": 1000,
    "dsm.top_k": 1000,
    "llm.num_beams": 64,
    "llm.avoid_beams": 64,
    "llm.max_new_tokens": 1024,
    "llm.min_new_tokens": 1024,
    "llm.max_context_tokens": 8192,
    "llm.max_target_tokens": 1024,
    "llm.avoid_repeats": 10_000,
}
"""Upper bounds of the values that drive memory or time (beams, tokens, frames): past them a
typo (`--set llm.num_beams=100000`) would grow memory by gigabytes before anything is said.
Far above any real use (the paper: 3 beams, 36 tokens, 5 fps)."""
_CHOICES = {
    "llm.train": ("none", "new-tokens", "all"),
    "llm.dtype": ("auto", "fp32", "fp16", "bf16"),
    "pme.train_stage2": ("frozen", "all"),
    "llm.visual_norm": ("batch", "none"),
    "describer.kind": ("locomad", "vlm"),
    "context.select": ("recent", "clip"),
    "vlm.backend": ("local", "endpoint"),
    "vlm.dtype": ("fp32", "fp16", "bf16"),
}


def _kind(hint: Any) -> str:
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a finite number"
    if hint is str:
        return "a string"
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        kinds = [_kind(a) for a in typing.get_args(hint) if a is not type(None)]
        return " or ".join(kinds) + " or null"
    if origin is dict or hint is dict:
        return "a mapping"
    return getattr(hint, "__name__", str(hint))


def _typed(value: Any, hint: Any) -> tuple[bool, Any]:
    """(ok, value converted) for `value` against a field's type hint. YAML gives ints where a
    float is meant (`fps: 5`), so ints are taken as floats; bools are never numbers."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return True, None
        for arg in typing.get_args(hint):
            if arg is not type(None):
                ok, v = _typed(value, arg)
                if ok:
                    return True, v
        return False, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        try:
            return math.isfinite(float(value)), float(value)
        except OverflowError:
            return False, value
    if hint is str:
        return isinstance(value, str), value
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    return True, value


def _shown(value: Any) -> str:
    """A value as a message shows it: quoted, on one line, at most about 40 characters."""
    if isinstance(value, str) and len(value) > 37:
        return repr(value[:34] + "...")
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _got(value: Any, hint: Any) -> str:
    """What a wrong value was, and how to write it when it is a number that came as a string:
    PyYAML (YAML 1.1) reads `1e9` and `1e-300` as text, wanting a dot and a signed exponent."""
    if not isinstance(value, str) or _kind(hint) == "a string":
        return f"got {_shown(value)}"
    try:
        number = float(value.replace("_", ""))
    except ValueError:
        return f"got {_shown(value)}"
    if not math.isfinite(number):
        return f"got {_shown(value)}"
    forms = [_yaml_float(value.strip(), number)] if "number" in _kind(hint) else []
    if number.is_integer() and abs(number) < 1e18:
        forms.append(str(int(number)))
    if not forms:
        return f"got the string {_shown(value)}, not a whole number"
    return f"got the string {_shown(value)} (YAML reads it as text: write {' or '.join(forms)})"


def _yaml_float(text: str, number: float) -> str:
    """`text` rewritten as YAML 1.1 reads a float (a dot in the mantissa, a sign in the
    exponent: `1e9` -> `1.0e+9`), or Python's own form of `number` where that fails."""
    mantissa, _, exponent = text.lower().partition("e")
    if "." not in mantissa:
        mantissa += ".0"
    if exponent and exponent[0] not in "+-":
        exponent = "+" + exponent
    form = f"{mantissa}e{exponent}" if exponent else mantissa
    try:
        ok = yaml.safe_load(form) == number
    except yaml.YAMLError:
        ok = False
    return form if ok else repr(number)


def _check_field(key: str, value: Any, hint: Any, where: str) -> Any:
    """A card value checked against its field type and range: one clear line naming the key
    when it is wrong, because the model would otherwise fail deep inside generation."""
    ok, value = _typed(value, hint)
    if not ok:
        raise LocomadError(f"{where}: {key} must be {_kind(hint)}, {_got(value, hint)}")
    if value is None or isinstance(value, bool):
        return value
    if key in _POSITIVE and isinstance(value, (int, float)) and not value > 0:
        raise LocomadError(f"{where}: {key} must be greater than 0, got {_shown(value)}")
    if key in _NON_NEGATIVE and isinstance(value, (int, float)) and value < 0:
        raise LocomadError(f"{where}: {key} must be 0 or more, got {_shown(value)}")
    if key in _AT_MOST and isinstance(value, (int, float)) and value > _AT_MOST[key]:
        raise LocomadError(f"{where}: {key} must be at most {_AT_MOST[key]}, got {_shown(value)}")
    if key in _CHOICES and value not in _CHOICES[key]:
        raise LocomadError(
            f"{where}: {key} must be one of {', '.join(_CHOICES[key])}, got {_shown(value)}"
        )
    return value


def _build(cls: type, data: dict[str, Any], where: str, section: str = "") -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        shown = f" [{section}]" if section else ""
        raise LocomadError(f"{where}{shown}: unknown key(s) {', '.join(map(str, unknown))}")
    hints = typing.get_type_hints(cls)
    checked = {}
    for name, value in data.items():
        if not section and name in _SECTIONS:
            checked[name] = value  # a section, built and checked already
        else:
            key = f"{section}.{name}" if section else name
            checked[name] = _check_field(key, value, hints[name], where)
    return cls(**checked)


def _check_card(card: ModelCard, where: str) -> None:
    """Rules between fields, each of which the model relies on (a vlm card uses none of
    the LoCo-MAD model's sections)."""
    check_clip_config(card.clip.config, where)
    if card.describer.kind == "vlm":
        return
    _check_prompt_room(card, where)
    pme, dsm, llm = card.pme, card.dsm, card.llm
    if pme.hidden_size % pme.num_heads:
        raise LocomadError(
            f"{where}: pme.hidden_size ({pme.hidden_size}) must be a multiple of pme.num_heads "
            f"({pme.num_heads})"
        )
    if card.clip.dim % dsm.num_heads:  # the DSM works at the width of the CLIP features
        raise LocomadError(
            f"{where}: clip.dim ({card.clip.dim}) must be a multiple of dsm.num_heads "
            f"({dsm.num_heads})"
        )
    if llm.min_new_tokens > llm.max_new_tokens:
        raise LocomadError(
            f"{where}: llm.min_new_tokens ({llm.min_new_tokens}) is more than "
            f"llm.max_new_tokens ({llm.max_new_tokens})"
        )
    if not 0 <= pme.label_smoothing < 1:
        raise LocomadError(
            f"{where}: pme.label_smoothing must be in [0, 1), got {pme.label_smoothing}"
        )


PROMPT_MAX_WORDS = 200
"""llm.prompt is an instruction ("Describe the scene:"), not a text: past this many words it
is a mistake, and every word of it takes a position the context and description need."""


def _llm_positions(card: ModelCard) -> int | None:
    """The LLM's positions (max_position_embeddings) when the card's own llm.config says;
    None for a pretrained LLM named only, whose config is read when it loads."""
    cfg = card.llm.config or {}
    value = cfg.get("max_position_embeddings", cfg.get("n_positions"))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _check_prompt_room(card: ModelCard, where: str) -> None:
    """The whole sequence must fit the LLM's position embeddings (past them it indexes off
    the table): bos, <b_q> the queries <e_q>, the context (at most llm.max_context_tokens,
    2 at least), the instruction, and the description (llm.max_new_tokens when generating,
    llm.max_target_tokens when training). Words are counted, as the tokenizer is not loaded
    here: a word takes one token or more, so a prompt refused here could never fit."""
    llm = card.llm
    words = len(llm.prompt.split())
    if words > PROMPT_MAX_WORDS:
        raise LocomadError(
            f"{where}: llm.prompt has {words} words; it is an instruction to the model, at most "
            f"{PROMPT_MAX_WORDS} words"
        )
    positions = _llm_positions(card)
    if positions is None:
        return
    fixed = (
        3
        + card.pme.num_queries
        + max(llm.max_context_tokens, 2)
        + max(llm.max_new_tokens, llm.max_target_tokens)
    )
    if fixed + words > positions:
        raise LocomadError(
            f"{where}: llm.prompt ({words} words) does not fit the LLM's {positions} positions "
            f"(llm.config max_position_embeddings): 3 + pme.num_queries ({card.pme.num_queries})"
            f" + llm.max_context_tokens ({llm.max_context_tokens}) + the longer of "
            f"llm.max_new_tokens and llm.max_target_tokens "
            f"({max(llm.max_new_tokens, llm.max_target_tokens)}) leave {max(positions - fixed, 0)}"
            " for the prompt's tokens (a word is one token or more)"
        )


_CLIP_SECTIONS = ("vision_cfg", "text_cfg", "multimodal_cfg", "preprocess_cfg")


def check_clip_config(cfg: Any, where: str, key: str = "clip.config") -> None:
    """The shape of clip.config (an open_clip model config) where the card is read: open_clip
    would otherwise fail inside its builders with its own attribute errors. The names inside
    each section are checked against open_clip's own when the encoder is built."""
    if cfg is None:
        return
    if not isinstance(cfg, dict):
        raise LocomadError(f"{where}: {key} must be a mapping (an open_clip model config)")
    if "model_cfg" in cfg:  # the layout of open_clip_config.json
        inner = cfg["model_cfg"]
        if not isinstance(inner, dict):
            raise LocomadError(f"{where}: {key}.model_cfg must be a mapping")
        check_clip_config({**inner, "preprocess_cfg": cfg.get("preprocess_cfg")}, where, key)
        return
    embed_dim = cfg.get("embed_dim")
    if embed_dim is not None and (
        isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim <= 0
    ):
        raise LocomadError(
            f"{where}: {key}.embed_dim must be an integer greater than 0, got {_shown(embed_dim)}"
        )
    for name in _CLIP_SECTIONS:
        value = cfg.get(name)
        if value is not None and not isinstance(value, dict):
            raise LocomadError(
                f"{where}: {key}.{name} must be a mapping (open_clip's "
                f"{name} settings), got {_shown(value)}"
            )
        if isinstance(value, dict) and not all(isinstance(k, str) for k in value):
            raise LocomadError(f"{where}: {key}.{name} has a key that is not a name")


def card_from_dict(data: dict[str, Any], source: str | None = None) -> ModelCard:
    """Build a card from a plain dict (the YAML's content), checking every key."""
    where = source or "model card"
    if not isinstance(data, dict) or "name" not in data:
        raise LocomadError(f"{where}: a model card is a mapping with at least a 'name'")
    data = _renamed_keys(dict(data), where)
    for key, cls in _SECTIONS.items():
        sub = data.get(key) or {}
        if not isinstance(sub, dict):
            raise LocomadError(f"{where}: '{key}' must be a mapping")
        data[key] = _build(cls, sub, where, key)
    data.pop("source", None)
    card = _build(ModelCard, data, where)
    _check_card(card, where)
    card.source = source
    return card


_RENAMED = {
    ("llm", "words_per_minute"): ("describer", "words_per_minute"),
    ("llm", "max_words_per_minute"): ("describer", "max_words_per_minute"),
}
"""Keys that moved (old section, key) -> (new section, key): the cards users copied and the
card.yaml of weights trained before the move still load."""


def _renamed_keys(data: dict[str, Any], where: str) -> dict[str, Any]:
    for (old_sec, key), (new_sec, new_key) in _RENAMED.items():
        old = data.get(old_sec)
        if not isinstance(old, dict) or key not in old:
            continue
        new = data.get(new_sec) or {}
        if not isinstance(new, dict):
            continue  # reported as not a mapping by the caller
        old = dict(old)
        value = old.pop(key)
        data[old_sec] = old
        if new_key not in new:
            data[new_sec] = {**new, new_key: value}
            log.warning(
                "%s: %s.%s is now %s.%s (read as that)", where, old_sec, key, new_sec, new_key
            )
    return data


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
    data = _parse_yaml(_card_text(path), f"{path}: not valid YAML")
    if overrides and not isinstance(data, dict):
        card_from_dict(data, source=str(path))  # says what is wrong with the file first
    for item in overrides or []:
        apply_override(data, item)
    return card_from_dict(data, source=str(path.resolve()))


def _card_text(path: Path) -> str:
    """A card file's text: UTF-8 (with or without a BOM), or UTF-16 with its BOM (what some
    Windows editors save); anything else is refused in one line."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise LocomadError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            return raw.decode("utf-16")
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LocomadError(
            f"{path}: not a UTF-8 text file (byte {e.start}: {e.reason}); save the model card "
            "as UTF-8"
        ) from None


def apply_override(data: dict[str, Any], item: str) -> None:
    """Set `a.b=value` inside a nested dict, creating sections as needed."""
    if "=" not in item:
        raise LocomadError(f"override {_shown(item)} is not of the form key=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(part.strip() for part in parts):
        raise LocomadError(
            f"override {_shown(item)} has an empty key name before '=' (write section.key=value, "
            "e.g. llm.num_beams=1)"
        )
    value = _parse_yaml(raw, f"override {_shown(item)}: its value is not a YAML value")
    node = data
    for part in parts[:-1]:
        if node.get(part) is None:  # `dsm:` left empty in the file is an empty section
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise LocomadError(f"override {_shown(item)}: '{part}' is not a section")
    node[parts[-1]] = value


_MAX_DEPTH = 32
"""How deeply a card's values may nest (a real card: 4 levels, in clip.config). Deeper is a
broken or hostile file, which would exhaust Python's recursion in the YAML parser or in
every copy of the card."""


def _parse_yaml(text: str, what: str) -> Any:
    """YAML text (a card file, an override's value) as Python data, every way it can be
    wrong said in one line starting with `what` (never a parser traceback)."""
    if not text.strip():
        return None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        said = [getattr(e, "context", None), getattr(e, "problem", None)]
        problem = ", ".join(str(x) for x in said if x) or e.__class__.__name__
        raise LocomadError(f"{what} ({' '.join(problem.split())[:160]})") from None
    except RecursionError:
        raise LocomadError(f"{what} (nested too deep)") from None
    except (ValueError, TypeError, OverflowError) as e:
        if "digits" in str(e):  # Python's limit on int() of a long string of digits
            raise LocomadError(f"{what} (a number too large: more than 4300 digits)") from None
        raise LocomadError(f"{what} ({' '.join(str(e).split())[:100]})") from None
    if _too_deep(data):
        raise LocomadError(
            f"{what} (nested more than {_MAX_DEPTH} levels deep, or too large: a card is a few "
            "dozen values)"
        )
    return data


def _too_deep(value: Any, limit: int = _MAX_DEPTH, most: int = 100_000) -> bool:
    """Whether parsed YAML nests deeper than `limit` or holds more than `most` values, walked
    without recursion and stopping at the first excess: YAML aliases can make a structure
    refer to itself (infinitely deep) or repeat one part exponentially (billion laughs)."""
    todo, seen = [(value, 0)], 0
    while todo:
        node, depth = todo.pop()
        seen += 1
        if depth > limit or seen > most:
            return True
        if isinstance(node, dict):
            todo.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            todo.extend((v, depth + 1) for v in node)
    return False


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
