"""Per-slot latency of the local vision-language describer (card qwen2.5-vl-3b) in describe's
loop, for benchmarks/gpu.py: Qwen2.5-VL-3B-Instruct's sizes at random init in bf16, built
from its config with no download, 8 frames of 448 px per slot as describe decodes them.

Nothing about the text is measured (random weights write noise); the cost is: the vision
tower over 8 frames, the prompt's prefill, and `vlm.max_new_tokens` (60) new tokens forced
(min_new_tokens = max_new_tokens, a random model's end-of-sequence being arbitrary), one ask
per slot (describer.shorter_tries = 0). Not yet run on a GPU.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

# Qwen2.5-VL-3B-Instruct's config.json (its sizes; the hub's file is not needed)
QWEN25_VL_3B_TEXT = dict(
    vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
    num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
    rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True,
    rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
)  # fmt: skip
QWEN25_VL_3B_VISION = dict(
    depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
    patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2, hidden_act="silu",
)  # fmt: skip
TINY_TEXT = dict(vocab_size=151936, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=8192,
                 rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})  # fmt: skip
TINY_VISION = dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2,
                   out_hidden_size=32, patch_size=14, spatial_merge_size=2,
                   temporal_patch_size=2, window_size=56, fullatt_block_indexes=[0])  # fmt: skip
SPECIAL = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645,
           "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|image_pad|>": 151655,
           "<|video_pad|>": 151656}  # fmt: skip
TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def qwen_vl_folder(folder: Path, tiny: bool) -> Path:
    """A Qwen2.5-VL model folder (config, safetensors at random init, processor with a
    synthetic word-level tokenizer of Qwen's 151,936 entries and its special tokens at
    Qwen's ids), loadable by describe's local backend."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    vocab = {f"w{i}": i for i in range(min(SPECIAL.values()))}
    vocab.update(SPECIAL)
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(list(SPECIAL))
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        tokenizer=fast,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=TEMPLATE,
    )
    text = dict(TINY_TEXT if tiny else QWEN25_VL_3B_TEXT, bos_token_id=151643,
                eos_token_id=151645, pad_token_id=151643)  # fmt: skip
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=TINY_VISION if tiny else QWEN25_VL_3B_VISION,
        image_token_id=SPECIAL["<|image_pad|>"],
        video_token_id=SPECIAL["<|video_pad|>"],
        vision_start_token_id=SPECIAL["<|vision_start|>"],
        vision_end_token_id=SPECIAL["<|vision_end|>"],
    )
    with torch.device("cuda" if torch.cuda.is_available() and not tiny else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(torch.bfloat16)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


class StillFrames:
    """Frames as describe decodes them (uint8, short side `size`, 16:9), without a film."""

    def __init__(self, n: int, size: int):
        rng = np.random.default_rng(0)
        self.frames = rng.integers(0, 256, (n, size, round(size * 16 / 9), 3), dtype=np.uint8)

    def images(self, slot) -> np.ndarray:
        return self.frames


def bench_vlm(device: str, slots: int, warmup: int, tiny: bool, tmp: Path) -> dict[str, Any]:
    """Per-slot milliseconds of describe's loop with the local backend."""
    from gpu import _sync, slots_film

    from locomad_cli.card import load_card
    from locomad_cli.describe.film import describe_slots
    from locomad_cli.describe.local_vlm import LocalBackend
    from locomad_cli.describe.vlm import VLMDescriber

    folder = qwen_vl_folder(tmp / "qwen2.5-vl", tiny)
    sets = [f"vlm.name={folder}", "describer.shorter_tries=0"]
    if tiny:
        sets += ["describer.frames=2", "describer.frame_size=56", "vlm.max_new_tokens=8"]
    card = load_card("qwen2.5-vl-3b", sets)
    start = time.perf_counter()
    backend = LocalBackend(card, device)
    backend.model.generation_config.min_new_tokens = card.vlm.max_new_tokens
    _sync(device)
    load_s = time.perf_counter() - start
    frames = StillFrames(card.describer.frames, card.describer.frame_size)
    film = slots_film(warmup + slots, 8, 5.0)
    rows = describe_slots(VLMDescriber(card, backend, frames, None), film, card, "recurrent", [])
    ms = []
    for _ in range(warmup + slots):
        t0 = time.perf_counter()
        next(rows)
        _sync(device)
        ms.append(1000 * (time.perf_counter() - t0))
    timed = ms[warmup:]
    return {
        "model": "Qwen2.5-VL-3B sizes" if not tiny else "tiny Qwen2.5-VL",
        "dtype": str(backend.model.dtype).replace("torch.", ""),
        "params": sum(p.numel() for p in backend.model.parameters()),
        "load_s": load_s,
        "frames": card.describer.frames,
        "frame_size": card.describer.frame_size,
        "max_new_tokens": card.vlm.max_new_tokens,
        "warmup": warmup,
        "slots": len(timed),
        "per_slot_ms": timed,
        "median_ms": statistics.median(timed),
        "p90_ms": float(np.percentile(timed, 90)),
    }


def table_rows(v: dict[str, Any]) -> list[str]:
    what = f"{v['model']} {v['dtype']}, {v['frames']} frames of {v['frame_size']} px"
    return [
        f"| {what}: load (random init) | {v['load_s']:.1f} s | | |",
        f"| vlm describe per slot, median of {v['slots']} ({v['max_new_tokens']} new tokens) "
        f"| {v['median_ms']:.1f} ms | | |",
        f"| vlm describe per slot, p90 | {v['p90_ms']:.1f} ms | | |",
    ]
