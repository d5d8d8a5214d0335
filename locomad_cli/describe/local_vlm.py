"""A vision-language model run here, through transformers' standard API: `AutoProcessor`,
`AutoModelForImageTextToText` and the processor's chat template (cards qwen2.5-vl-3b,
qwen2.5-vl-7b). Weights from the Hugging Face hub or its cache by name, or a folder;
safetensors only; bf16 (vlm.dtype) on a GPU, fp32 on the CPU; greedy decoding.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from locomad_cli.utils import LocomadError, hf_load_kwargs, hub_cached, hub_reachable

if TYPE_CHECKING:
    from locomad_cli.card import ModelCard

_FILES = ("model.safetensors", "model.safetensors.index.json")


def missing_weights(card: ModelCard) -> str | None:
    """One line saying what is missing to load the card's model, or None."""
    name = card.vlm.name
    if not name:
        return f"model card '{card.name}' names no model (vlm.name)"
    if Path(name).expanduser().is_dir() or hub_reachable():
        return None

    if hub_cached(name) and hub_cached(name, _FILES):
        return None
    size = f" (about {card.vlm.gpu_memory_gb:g} GB)" if card.vlm.gpu_memory_gb else ""
    return (
        f"{name}: weights not in the local Hugging Face cache and the hub is unreachable: "
        f"fetch them on a connected machine with `hf download {name}`{size} and copy the "
        "cache (~/.cache/huggingface), or point vlm.name at a folder (--set vlm.name=DIR)"
    )


class LocalBackend:
    """Backend (describe/vlm.py) running the model in this process, one slot at a time."""

    concurrency = 1

    def __init__(self, card: ModelCard, device: str):
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        message = missing_weights(card)
        if message:
            raise LocomadError(message)
        name = str(Path(card.vlm.name).expanduser()) if card.vlm.name else ""
        kwargs = hf_load_kwargs(name)
        dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
        dtype = dtypes[card.vlm.dtype] if device.startswith("cuda") else torch.float32
        try:
            self.processor = AutoProcessor.from_pretrained(name, **kwargs)
            model = AutoModelForImageTextToText.from_pretrained(
                name, dtype=dtype, use_safetensors=True, **kwargs
            )
        except (OSError, ValueError) as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LocomadError(f"{name}: cannot load the model ({first[:200]})") from None
        self.model = model.to(device).eval()
        self.device, self.card = device, card

    def complete(self, images: list[np.ndarray], system: str, user: str) -> str:
        import torch
        from PIL import Image

        content: list[dict[str, Any]] = [
            {"type": "image", "image": Image.fromarray(f)} for f in images
        ]
        content.append({"type": "text", "text": user})
        messages = [
            {"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": content},
        ]
        inputs = self.processor.apply_chat_template(
            messages,
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        ).to(self.device)
        with torch.no_grad():
            out = self.model.generate(
                **inputs, max_new_tokens=self.card.vlm.max_new_tokens, do_sample=False
            )
        new = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new, skip_special_tokens=True)[0]
