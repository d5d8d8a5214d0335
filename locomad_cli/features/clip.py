"""The CLIP encoder behind frame features and DSM text features, built by open_clip.

Features are CLIP's *projected* embeddings, not L2-normalised: that is what MAD's
`CLIP_L14_frames_features_5fps.h5` holds and what the PME reads; text features are made the same
way so both sides stay comparable. Whoever needs unit vectors normalises at use.

Preprocessing is taken from the open_clip model itself (`model.visual.preprocess_cfg` and the
transform open_clip builds from it), so callers cannot get image size, mean/std or
interpolation wrong; `ClipEncoder.preprocess` runs those same transform steps on batches of
tensors on the device instead of one PIL image at a time.

Activation: OpenAI trained its CLIPs with QuickGELU, and MAD's `CLIP_L14_*` features come from
that network. open_clip 3.x builds `ViT-L-14` with `nn.GELU` even for `pretrained="openai"`
(only a warning says so, and not on the offline path), so `load_clip` asks for QuickGELU
whenever open_clip's table of pretrained tags says the weights were trained with it, and
`weights_id` names the activation, so features of the wrong network are never reused.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locomad_cli.card import MODELS_DIR, ModelCard, check_clip_config
from locomad_cli.utils import LocomadError, hub_reachable

if TYPE_CHECKING:  # imported where used: extract-features plans its films before torch loads
    import torch


def _precision(dtype: torch.dtype | None) -> str | None:
    import torch

    table = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
    return table.get(torch.float32 if dtype is None else dtype)


@dataclass
class ClipEncoder:
    """An open_clip model ready for inference, with the preprocessing it was trained with."""

    model: Any
    preprocess_cfg: dict[str, Any]
    """open_clip's PreprocessCfg as a dict: size, mean, std, interpolation, resize_mode, ..."""
    transform: Any
    """open_clip's own eval transform (PIL in, tensor out): the reference `preprocess` matches."""
    tokenizer: Any
    device: str
    dtype: torch.dtype
    name: str
    pretrained: str | None
    dim: int

    @property
    def image_size(self) -> tuple[int, int]:
        size = self.preprocess_cfg["size"]
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    @property
    def decode_short_side(self) -> int:
        """Decode frames with this shortest side: open_clip's resize is then a no-op for the
        usual square 'shortest' mode, leaving only the center crop."""
        return max(self.image_size)

    def preprocess(self, frames: torch.Tensor) -> torch.Tensor:
        """uint8 frames [N, 3, H, W] (any size, on any device) → float [N, 3, S, S] normalised:
        open_clip's eval transform applied step by step to the whole batch."""
        import torch
        from open_clip.transform import (
            CenterCropOrPad,
            MaybeConvertMode,
            MaybeToTensor,
            ResizeKeepRatio,
        )
        from torchvision.transforms import CenterCrop, Normalize, Resize
        from torchvision.transforms import functional as F

        if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(
                f"expected uint8 frames [N, 3, H, W], got {frames.dtype} {tuple(frames.shape)}"
            )
        x = frames
        for step in self.transform.transforms:
            if isinstance(step, MaybeConvertMode):
                continue  # PIL-only: decoded frames are RGB already
            if isinstance(step, MaybeToTensor):
                x = x.float().div_(255.0)
            elif isinstance(step, ResizeKeepRatio):
                # open_clip computes the size from a PIL image's .size (w, h): give it that.
                shim = type("Size", (), {"size": (x.shape[-1], x.shape[-2])})()
                size = step.get_params(shim, step.size, step.longest)
                x = F.resize(x, size, interpolation=step.interpolation, antialias=True)
            elif isinstance(step, (Resize, CenterCrop, CenterCropOrPad, Normalize)):
                x = step(x)
            else:
                raise LocomadError(
                    f"CLIP preprocessing step {step.__class__.__name__} has no batched version"
                )
        return x

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 frames [N, 3, H, W] (raw, any size) or float [N, 3, S, S] already preprocessed
        → projected image embeddings [N, D], float32 on the CPU."""
        import torch

        with torch.inference_mode():
            if images.device.type == "cpu" and self.device.startswith("cuda"):
                images = images.pin_memory()
            x = images.to(self.device, non_blocking=True)
            if x.dtype == torch.uint8:
                x = self.preprocess(x)
            out = self.model.encode_image(x.to(self.dtype))
            return out.float().cpu()

    def encode_text(self, texts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Projected text embeddings [N, D], float32 on the CPU (DSM text-feature cache)."""
        import torch

        with torch.inference_mode():
            if not texts:
                return torch.zeros(0, self.dim)
            outs = []
            for i in range(0, len(texts), batch_size):
                tokens = self.tokenizer(list(texts[i : i + batch_size])).to(self.device)
                outs.append(self.model.encode_text(tokens).float().cpu())
            return torch.cat(outs)


@contextlib.contextmanager
def _quiet_open_clip() -> Iterator[None]:
    """open_clip logs warnings ('initialized randomly') and errors (failed downloads, which we
    report ourselves) on the root logger; a CLI prints one line per error, so hold them back."""
    previous = logging.root.manager.disable
    logging.disable(logging.ERROR)
    try:
        yield
    finally:
        logging.disable(previous)


def _resolve_file(card: ModelCard, value: str) -> Path | None:
    """`clip.pretrained` as a local file when it names one (absolute, relative to the current
    folder, or relative to the card's folder — the repository root for shipped cards)."""
    p = Path(value).expanduser()
    candidates = [p]
    if not p.is_absolute():
        card_dir = Path(card.source).resolve().parent if card.source else MODELS_DIR
        base = MODELS_DIR.parent if card_dir == MODELS_DIR else card_dir
        candidates.append(base / p)
    for c in candidates:
        if c.is_file():
            return c
    if p.suffix in (".safetensors", ".pt", ".pth", ".bin") or "/" in value:
        raise LocomadError(f"CLIP weights file not found: {value}")
    return None


def quick_gelu(card: ModelCard) -> bool:
    """Whether the card's CLIP must run QuickGELU to be the network its weights were trained
    as. For an open_clip tag that is open_clip's own record (True for every `openai` tag);
    otherwise the architecture's config decides (`ViT-L-14-quickgelu`, an inline config's
    `quick_gelu`), which is how a local file fine-tuned from OpenAI's weights asks for it."""
    import open_clip

    c = card.clip
    inline = _inline_config(card)
    if inline is not None:
        return bool(inline["model_cfg"].get("quick_gelu", False))
    model_cfg = open_clip.get_model_config(c.model) or {}
    if c.pretrained and _resolve_file(card, c.pretrained) is None:
        tag_cfg = open_clip.get_pretrained_cfg(c.model, c.pretrained) or {}
        if tag_cfg.get("quick_gelu"):
            return True
    return bool(model_cfg.get("quick_gelu", False))


def weights_id(card: ModelCard) -> str:
    """What identifies the CLIP's weights for caches of its features: the pretrained tag (with
    `+quickgelu` when the network runs it: features made with open_clip's nn.GELU build of
    OpenAI's weights carry plain `openai` and are refused), or for a local weights file its
    size and a hash of its content, so features made before the file was retrained (the demo's
    CLIP, a fine-tuned encoder) are never reused by mistake."""
    pretrained = card.clip.pretrained
    if not pretrained:
        return "random-init"
    path = _resolve_file(card, pretrained)
    if path is None:
        return f"{pretrained}+quickgelu" if quick_gelu(card) else str(pretrained)
    stat = path.stat()
    return _file_digest(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """Size + SHA-256 of a file, once per (path, size, mtime) in a process."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return f"{size}-{digest.hexdigest()[:16]}"


def _inline_config(card: ModelCard) -> dict[str, Any] | None:
    """The card's own open_clip config: `clip.config` inline, or `clip.model` naming a JSON file.
    Returned as open_clip's `open_clip_config.json` layout ({model_cfg, preprocess_cfg})."""
    cfg = card.clip.config
    if cfg is None and card.clip.model.endswith(".json"):
        path = Path(card.clip.model).expanduser()
        if not path.is_absolute() and card.source:
            path = Path(card.source).resolve().parent / path
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise LocomadError(f"CLIP config {path}: cannot read ({e})") from None
    if cfg is None:
        return None
    check_clip_config(cfg, f"CLIP config for '{card.clip.model}'")  # a JSON file's too
    if "model_cfg" in cfg:
        return {"model_cfg": cfg["model_cfg"], "preprocess_cfg": cfg.get("preprocess_cfg") or {}}
    missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
    if missing:
        raise LocomadError(f"CLIP config for '{card.clip.model}' lacks {', '.join(missing)}")
    model_cfg = {k: v for k, v in cfg.items() if k != "preprocess_cfg"}
    return {"model_cfg": model_cfg, "preprocess_cfg": cfg.get("preprocess_cfg") or {}}


def _check_config_names(model_cfg: dict[str, Any]) -> None:
    """Every name in an inline clip.config is one open_clip's builders take: an unknown one
    would fail inside them as a keyword argument their dataclasses do not have."""
    import dataclasses
    import inspect

    from open_clip.coca_model import CoCa, MultimodalCfg
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    top = {"custom_text"}
    for cls in (CLIP, CoCa):
        top |= set(inspect.signature(cls.__init__).parameters) - {"self", "cast_dtype"}
    unknown = sorted(map(str, set(model_cfg) - top))
    if unknown:
        raise LocomadError(f"clip.config: unknown key(s) {', '.join(unknown)}")
    for section, cls in (
        ("vision_cfg", CLIPVisionCfg),
        ("text_cfg", CLIPTextCfg),
        ("multimodal_cfg", MultimodalCfg),
    ):
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(map(str, set(model_cfg.get(section) or {}) - names))
        if unknown:
            raise LocomadError(f"clip.config.{section}: unknown key(s) {', '.join(unknown)}")


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:200] or e.__class__.__name__


def input_side(card: ModelCard) -> int | None:
    """The longer side of the picture the card's CLIP takes (what `decode_short_side` of the
    built encoder says), from its config alone: the card's own or open_clip's bundled one for
    a built-in name, read without importing open_clip or torch, so that extract-features can
    read its films and decode their first frames before those load. None when the config
    does not say; the built encoder is then asked."""
    inline = _inline_config(card)
    cfg = inline["model_cfg"] if inline is not None else _bundled_config(card.clip.model)
    size = ((cfg or {}).get("vision_cfg") or {}).get("image_size")
    if isinstance(size, int) and size > 0:
        return size
    if isinstance(size, (list, tuple)) and size and all(isinstance(v, int) for v in size):
        return max(size)
    return None


def _bundled_config(name: str) -> dict[str, Any] | None:
    """open_clip's own model_configs/NAME.json, found without importing the package."""
    import importlib.util

    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model_configs" / f"{name}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def load_clip(
    card: ModelCard,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    load_weights: bool = True,
) -> ClipEncoder:
    """Build the card's CLIP with open_clip: a shipped architecture name + pretrained tag (from
    the hub or its cache), the card's inline config, and/or a local `.safetensors` file; with
    QuickGELU where the weights were trained with it (`quick_gelu`). `load_weights=False`
    builds the same network at (seeded) random init without the hub or a file: tests and
    shape checks of the real cards. `dtype` None is fp32."""
    import open_clip
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2

    precision = _precision(dtype)
    dtype = torch.float32 if dtype is None else dtype
    if precision is None:
        raise LocomadError(f"unsupported CLIP dtype {dtype}")
    name, pretrained = card.clip.model, card.clip.pretrained
    weights_file = _resolve_file(card, pretrained) if pretrained else None
    # open_clip 3.x builds OpenAI's weights with nn.GELU unless told: force what they need
    force_quick_gelu = quick_gelu(card)
    if not load_weights:
        pretrained = weights_file = None
    if weights_file is not None and weights_file.suffix != ".safetensors":
        raise LocomadError(
            f"{weights_file}: CLIP weights must be a .safetensors file (pickled checkpoints are "
            "not loaded)"
        )
    inline = _inline_config(card)
    if inline is not None:
        _check_config_names(inline["model_cfg"])
    kwargs = dict(device=device, precision=precision, force_quick_gelu=force_quick_gelu)
    try:
        # Random init (tests, demos) is seeded: the same card always builds the same encoder,
        # so a resumed extraction never mixes features of two different random models.
        with (
            _quiet_open_clip(),
            torch.random.fork_rng(devices=[]),
            tempfile.TemporaryDirectory(prefix="locomad-clip-") as tmp,
        ):
            torch.manual_seed(0)
            if inline is not None:
                # open_clip's 'local-dir:' schema reads a config from a folder: no global
                # registry to mutate, and the tokenizer comes from the same config.
                (Path(tmp) / "open_clip_config.json").write_text(json.dumps(inline))
                source = f"local-dir:{tmp}"
                model = open_clip.create_model(source, **kwargs)
                tokenizer = open_clip.get_tokenizer(source)
            else:
                tag = None if weights_file is not None else pretrained
                if tag and not hub_reachable():
                    tag = _cached_pretrained(name, tag)
                model = open_clip.create_model(name, pretrained=tag, **kwargs)
                tokenizer = open_clip.get_tokenizer(name)
            if weights_file is not None:
                open_clip.load_checkpoint(model, str(weights_file), strict=True)
    except LocomadError:
        raise
    except (TypeError, AttributeError, KeyError) as e:
        if inline is None:
            raise
        raise LocomadError(f"clip.config cannot build a CLIP: {_one_line(e)}") from None
    except Exception as e:  # open_clip wraps hub, config and state-dict errors in RuntimeError
        raise LocomadError(_explain(e, name, pretrained, weights_file)) from None
    model.eval()
    cfg = dict(model.visual.preprocess_cfg)
    transform = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    dim = int(model.visual.output_dim)
    if dim != card.clip.dim:
        raise LocomadError(
            f"card says clip.dim={card.clip.dim} but {name} makes {dim}-wide features"
        )
    return ClipEncoder(model, cfg, transform, tokenizer, device, dtype, name, pretrained, dim)


def _cached_pretrained(name: str, tag: str) -> str:
    """With the hub unreachable, the local file open_clip would otherwise download for
    `name`/`tag` (its Hugging Face cache or its download folder), so it loads at once instead
    of retrying the network for a minute; a clear error when it was never fetched."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        return tag  # not a tag: open_clip itself reports the unknown name or tag
    repo = (cfg.get("hf_hub") or "").strip("/")
    if repo:
        for filename in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
            hit = try_to_load_from_cache(repo, filename)
            if isinstance(hit, str):
                return hit
    url = cfg.get("url") or ""
    if url:
        local = Path.home() / ".cache" / "clip" / Path(url).name
        if local.is_file():
            return str(local)
    raise LocomadError(
        f"CLIP weights {name}/{tag} are not in the local cache and the model hub is "
        f"unreachable; fetch them once on a connected machine (open_clip.create_model('{name}', "
        f"pretrained='{tag}')) or set clip.pretrained to a local .safetensors"
    )


def _explain(e: Exception, name: str, pretrained: str | None, weights_file: Path | None) -> str:
    msg = " ".join(str(e).split())
    if "not found in built-ins" in msg:
        return f"open_clip has no model named '{name}' (see open_clip.list_models())"
    if "not a known tag" in msg:
        import open_clip

        tags = ", ".join(open_clip.list_pretrained_tags_by_model(name)) or "none"
        return f"'{pretrained}' is neither an open_clip tag of {name} (known: {tags}) nor a file"
    if "Failed to download" in msg or "offline" in msg.lower() or "connect" in msg.lower():
        return (
            f"CLIP weights {name}/{pretrained} are not in the local cache and the model hub is "
            "unreachable; fetch them once on a connected machine (open_clip.create_model("
            f"'{name}', pretrained='{pretrained}')) or set clip.pretrained to a local .safetensors"
        )
    if weights_file is not None:
        return f"{weights_file}: cannot load into {name}: {msg[:300]}"
    return f"cannot build CLIP {name}: {msg[:300]}"
