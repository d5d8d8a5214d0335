"""GPU figures of issue 14: CLIP ViT-L/14 frames/s against the decoder, and OPT-2.7B per slot.

One command on a GPU machine (after `bash scripts/setup.sh`), meant to finish in a few minutes on
one H100/H200 (not yet run on one):

    .venv/bin/python benchmarks/gpu.py --json gpu.json     # the figures, GPU required
    .venv/bin/python benchmarks/gpu.py --tiny              # a CPU smoke run: NOT GPU figures

Frames (the real features path, `extract_film` with the card's encoder):
  * ViT-L/14 (open_clip, random init, the network OpenAI's weights run in: QuickGELU) in the
    card's GPU dtype (bf16), encoding decoded uint8 frames the way extract-features does
    (`features._encode_chunk`: pinned copy, batched preprocessing on the GPU);
  * decord and ffmpeg decoding the same 5 FPS frames of a generated 720p film at the size the
    features path decodes to (`video.plan_frames`: shortest side = CLIP's input size);
  * `extract_film` itself (decode thread overlapping the encoder, chunk files, final write)
    and from it the projected time of a 2-hour film's 36,000 frames (target <= 90 s).

Slots (the real describe loop, `describe_slots`, one slot at a time):
  * LoCoMAD of models/opt-2.7b.yaml at random init: OPT built from OPTConfig with OPT-2.7B's
    sizes directly on the GPU in bf16, the full-size PME (BERT-base Q-Former) and DSM, 3 beams,
    KV cache, 36 new tokens (min_new_tokens = max_new_tokens: a random model's end-of-sequence
    is arbitrary, and 36 is the longest a description may run); each slot's context is the
    previous generated descriptions, their CLIP text features (ViT-L/14 text tower, fp32 as
    describe loads it) and the DSM's top-k; median and p90 after a warm-up (target <= 150 ms).

The local vision-language describer (benchmarks/vlm.py, `--part vlm`): card qwen2.5-vl-3b's
model at Qwen2.5-VL-3B's sizes, random init, bf16, 8 frames of 448 px and 60 new tokens per
slot through describe's loop; median and p90 per slot (no target).

No model hub is needed: every network is built from its config. The LLM tokenizer is a
synthetic word-level one of OPT's 50,265 entries (`w4` ... `w50264`), so the vocabulary, the
LM head and the softmax are full size and every generated token comes back as one context
token, as a real tokenizer's round trip roughly does; the PME's tokenizer is the tests' tiny
one with BERT's vocabulary size (its text side does not run at inference).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from extract import ffmpeg_decode, make_film, timed  # noqa: E402
from vlm import bench_vlm, table_rows  # noqa: E402

from locomad_cli.card import ModelCard, load_card, tiny_card  # noqa: E402
from locomad_cli.features.clip import ClipEncoder, load_clip  # noqa: E402
from locomad_cli.features.extract import (  # noqa: E402
    CHUNK_FRAMES,
    _encode_chunk,
    extract_film,
)
from locomad_cli.features.video import iter_chunks, plan_frames, probe  # noqa: E402
from locomad_cli.utils import resolve_dtype  # noqa: E402

FRAMES_2H = 36_000
"""A 2-hour film at 5 FPS."""
TARGET_2H_S = 90.0
TARGET_SLOT_MS = 150.0

OPT_2_7B: dict[str, Any] = {
    "model_type": "opt",
    "vocab_size": 50272,
    "hidden_size": 2560,
    "word_embed_proj_dim": 2560,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "ffn_dim": 10240,
    "max_position_embeddings": 2048,
    "activation_function": "relu",
    "do_layer_norm_before": True,
    "enable_bias": True,
}
"""facebook/opt-2.7b's config.json sizes (written out: the hub is not reachable here)."""
OPT_TOKENIZER_SIZE = 50265
"""Entries of OPT's GPT-2 BPE tokenizer (the model's 50,272 rows leave room for the 6 added)."""
BERT_VOCAB_SIZE = 30522

LINES = [
    "Where were you last night?",
    "I told you already, I was at home.",
    "Nobody saw you there.",
    "Then ask my sister.",
    "Keep your voice down, they can hear us.",
    "The train leaves at six.",
]


# -- cards and models ----------------------------------------------------------------------------


def frames_card(tiny: bool) -> ModelCard:
    """The card whose CLIP the features path runs: opt-2.7b's ViT-L/14 at random init, with
    the QuickGELU OpenAI's weights need (same cost as the real one), or the tests' tiny card."""
    if tiny:
        return tiny_card()
    card = load_card("opt-2.7b")
    card.clip.model, card.clip.pretrained = "ViT-L-14-quickgelu", None
    return card


def slots_card(tiny: bool, force_length: bool = True) -> ModelCard:
    """opt-2.7b.yaml with every part buildable offline at its full size (OPT-2.7B's config,
    random PME, BERT's vocabulary size), or the tiny card with opt-2.7b's generation settings.
    `force_length`: min_new_tokens = max_new_tokens, so every slot writes the longest text."""
    real = load_card("opt-2.7b")
    card = tiny_card() if tiny else copy.deepcopy(real)
    if not tiny:
        card.clip.model, card.clip.pretrained = "ViT-L-14-quickgelu", None
        card.pme.init, card.pme.tokenizer, card.pme.vocab_size = None, "tiny", BERT_VOCAB_SIZE
        card.llm.config = dict(OPT_2_7B)
        card.weights = None
    for key in ("num_beams", "max_new_tokens", "min_new_tokens", "max_context_tokens"):
        setattr(card.llm, key, getattr(real.llm, key))
    if force_length:
        card.llm.min_new_tokens = card.llm.max_new_tokens
    return card


def opt_tokenizer(size: int = OPT_TOKENIZER_SIZE):  # -> PreTrainedTokenizerFast
    """A word-level tokenizer with OPT's specials (<s> <pad> </s> <unk> = 0..3, </s> begins
    and ends) and `size` entries: decoding any id gives one word that encodes back to it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from locomad_cli.model.tokenizer import add_special_tokens

    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="</s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    add_special_tokens(fast, "llm")
    return fast


def build_model(card: ModelCard, device: str, tiny: bool):  # -> LoCoMAD
    """LoCoMAD.from_card's steps with offline tokenizers, every tensor created on `device`
    (a CPU init of 2.7B parameters, then a copy, takes minutes)."""
    from locomad_cli.model.decoder import load_llm
    from locomad_cli.model.locomad import LoCoMAD
    from locomad_cli.model.tokenizer import load_tokenizer

    pme_tok = load_tokenizer("tiny", "pme")
    llm_tok = load_tokenizer("tiny", "llm") if tiny else opt_tokenizer()
    dtype = resolve_dtype(card.llm.dtype, device)
    torch.manual_seed(0)
    with torch.device(device):
        llm = load_llm(card, llm_tok, dtype, pretrained=False)
        model = LoCoMAD(card, pme_tok, llm_tok, llm)
    return model.to(device).eval()


# -- frames --------------------------------------------------------------------------------------


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def encoder_rate(encoder: ClipEncoder, frames: np.ndarray, batch_size: int, total: int) -> dict:
    """Frames/s of the encoder alone on decoded frames already in host memory, as
    extract_film hands them over (`_encode_chunk`), after one warm-up batch."""
    _encode_chunk(encoder, frames[:batch_size], batch_size)
    _sync(encoder.device)
    done = 0
    start = time.perf_counter()
    while done < total:
        out = _encode_chunk(encoder, frames, batch_size)
        done += len(out)
    seconds = time.perf_counter() - start
    return {"frames": done, "seconds": seconds, "fps": done / seconds}


def bench_frames(
    film: Path,
    card: ModelCard,
    device: str,
    dtype: torch.dtype,
    batch_size: int,
    encode_frames: int,
    repeat: int,
    work: Path,
) -> dict[str, Any]:
    """Encoder, decoders and the extract-features loop on one film (best of `repeat`)."""
    start = time.perf_counter()
    encoder = load_clip(card, device, dtype, load_weights=False)
    _sync(device)
    build_s = time.perf_counter() - start
    info = probe(film)
    plan = plan_frames(info, card.fps, encoder.decode_short_side)
    first = next(iter_chunks(plan, CHUNK_FRAMES))[1]
    enc = encoder_rate(encoder, first, batch_size, encode_frames)
    decord_fps = ffmpeg_fps = 0.0
    plan_s = loop_s = math.inf
    frames = plan.frames
    for _ in range(repeat):  # best of N: other work on the machine only slows things
        n, s, _ = timed(lambda p=plan: sum(len(f) for _, f in iter_chunks(p, CHUNK_FRAMES)))
        decord_fps = max(decord_fps, n / s)
        n, s, _ = timed(lambda p=plan: ffmpeg_decode(film, card.fps, p.width, p.height))
        ffmpeg_fps = max(ffmpeg_fps, n / s)
        t0 = time.perf_counter()
        plan = plan_frames(info, card.fps, encoder.decode_short_side)
        t1 = time.perf_counter()
        out = work / f"{film.stem}.features.safetensors"
        res = extract_film(plan, out, card, encoder, batch_size)
        if (t1 - t0) + res.seconds < plan_s + loop_s:
            plan_s, loop_s = t1 - t0, res.seconds
    return {
        "film": {"seconds": round(info.duration, 3), "size": f"{info.width}x{info.height}"},
        "codec": info.codec,
        "fps": card.fps,
        "frames": frames,
        "decode_size": f"{plan.width}x{plan.height}",
        "clip_model": card.clip.model,
        "dtype": str(dtype).replace("torch.", ""),
        "batch_size": batch_size,
        "clip_build_s": build_s,
        "encoder_frames": enc["frames"],
        "encoder_fps": enc["fps"],
        "decord_decode_fps": decord_fps,
        "ffmpeg_decode_fps": ffmpeg_fps,
        "plan_s": plan_s,
        "extract_loop_s": loop_s,
        "extract_fps": frames / loop_s,
        "projected_2h_s": FRAMES_2H * (plan_s + loop_s) / frames,
    }


# -- slots ---------------------------------------------------------------------------------------


def slots_film(n: int, dim: int, fps: float, length: float = 4.0, every: float = 7.0):
    """A describe `Film` of `n` slots of `length` s every `every` s, one line of dialogue in
    each gap before a slot, and random frame features (their values do not change the cost)."""
    from locomad_cli.describe.film import Film
    from locomad_cli.slots.plan import Slot
    from locomad_cli.tracks.readers import Cue

    slots, cues = [], []
    for i in range(n):
        start = 3.0 + every * i
        slots.append(Slot(start, start + length, i, source="gap"))
        cues.append(Cue(start - 2.5, start - 0.5, LINES[i % len(LINES)], line=i + 1))
    seconds = slots[-1].end + 1.0
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(math.ceil(seconds * fps), dim, generator=gen).half()
    return Film("bench", slots, cues, [], features, fps)


@contextlib.contextmanager
def _recording(model, device: str) -> Iterator[list[dict[str, Any]]]:
    """One entry per LLM generate call (a slot may make more than one): its prompt lengths,
    the new tokens it returned and its seconds."""
    calls: list[dict[str, Any]] = []
    pending: dict[str, list[int]] = {"prompt_tokens": []}
    decoder, llm = model.decoder, model.decoder.llm

    def prompts(items, subtitles):
        rows = type(decoder).prompts(decoder, items, subtitles)
        pending["prompt_tokens"] = [len(r) for r in rows]
        return rows

    def generate(*args, **kwargs):
        start = time.perf_counter()
        out = type(llm).generate(llm, *args, **kwargs)
        _sync(device)
        calls.append(
            {
                "seconds": time.perf_counter() - start,
                "new_tokens": int(out.sequences.shape[1]),
                "prompt_tokens": pending["prompt_tokens"],
            }
        )
        return out

    decoder.prompts, llm.generate = prompts, generate
    try:
        yield calls
    finally:
        del decoder.prompts, llm.generate


def bench_slots(card: ModelCard, device: str, slots: int, warmup: int, tiny: bool) -> dict:
    """Per-slot latency of describe's recurrent loop: one slot at a time, each description
    joining the next slots' context proposal (their CLIP text features computed once)."""
    from locomad_cli.describe.describer import LocoMadDescriber
    from locomad_cli.describe.film import TextFeatureCache, describe_slots

    start = time.perf_counter()
    model = build_model(card, device, tiny)
    _sync(device)
    build_s = time.perf_counter() - start
    text = load_clip(card, device, torch.float32, load_weights=False)  # describe's text encoder
    film = slots_film(warmup + slots, card.clip.dim, card.fps)
    cache = TextFeatureCache(text.encode_text)
    describer = LocoMadDescriber(model, cache, "recurrent", 1)
    rows = describe_slots(describer, film, model.card, "recurrent", [])
    per_slot: list[dict[str, Any]] = []
    last = ""
    with _recording(model, device) as calls:
        _sync(device)
        while True:
            t0, k = time.perf_counter(), len(calls)
            row = next(rows, None)
            if row is None:
                break
            ms = 1000 * (time.perf_counter() - t0)
            mine = calls[k:]
            per_slot.append(
                {
                    "ms": ms,
                    "generate_ms": 1000 * sum(c["seconds"] for c in mine),
                    "llm_calls": len(mine),
                    "new_tokens": mine[0]["new_tokens"],
                    "prompt_tokens": mine[0]["prompt_tokens"][0],
                    "selected": len(row["selected"]),
                }
            )
            last = row["text"]
    timed = per_slot[warmup:]

    def each(key: str) -> list:
        return [p[key] for p in timed]

    llm = model.decoder.llm
    return {
        "llm": "OPT-2.7B sizes" if not tiny else "tiny OPT",
        "llm_config": dict(card.llm.config),
        "dtype": str(llm.dtype).replace("torch.", ""),
        "attn_implementation": llm.config._attn_implementation,
        "build_s": build_s,
        "params": {
            part: sum(p.numel() for p in mod.parameters())
            for part, mod in (("llm", llm), ("pme", model.pme), ("dsm", model.dsm))
        },
        "num_beams": card.llm.num_beams,
        "max_new_tokens": card.llm.max_new_tokens,
        "min_new_tokens": card.llm.min_new_tokens,
        "proposal_len": card.dsm.proposal_len,
        "top_k": card.dsm.top_k,
        "warmup": warmup,
        "slots": len(timed),
        "per_slot_ms": each("ms"),
        "median_ms": statistics.median(each("ms")),
        "p90_ms": float(np.percentile(each("ms"), 90)),
        "generate_median_ms": statistics.median(each("generate_ms")),
        "llm_calls": each("llm_calls"),
        "new_tokens": each("new_tokens"),
        "prompt_tokens": each("prompt_tokens"),
        "selected": each("selected"),
        "last_text": last[:80],  # a reader's check: generated text fed the context
    }


# -- report --------------------------------------------------------------------------------------


def environment(device: str) -> dict[str, Any]:
    import decord
    import open_clip
    import transformers

    cuda = device.startswith("cuda")
    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True)
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    return {
        "device": device,
        "device_name": torch.cuda.get_device_name(0) if cuda else platform.processor() or "CPU",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "transformers": transformers.__version__,
        "open_clip": open_clip.__version__,
        "decord": decord.__version__,
        "ffmpeg": (ffmpeg.stdout.splitlines() or ["?"])[0],
        "python": platform.python_version(),
        "cpu_cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 1),
        "commit": commit.stdout.strip() or None,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def verdict(value: float, target: float, tiny: bool) -> str:
    if tiny:
        return "n/a (tiny smoke run)"
    return "met" if value <= target else "missed"


def table(res: dict[str, Any]) -> str:
    """The figures as a Markdown table, each against its target where it has one."""
    env, tiny = res["environment"], res["tiny"]
    lines = [
        f"{env['device_name']} ({env['device']}); torch {env['torch']}, CUDA {env['cuda']}, "
        f"transformers {env['transformers']}, open_clip {env['open_clip']}; "
        f"{env['cpu_cores']} CPU cores, load {env['load_average']}; {env['date']}",
    ]
    if tiny:
        lines.append("TINY SMOKE RUN (tiny configs): these are not GPU figures")
    elif not env["device"].startswith("cuda"):
        lines.append("CPU RUN (full sizes): these are not GPU figures")
    lines += ["", "| what | measured | target | |", "| --- | --- | --- | --- |"]
    if "frames" in res:
        f = res["frames"]
        what = f"{f['clip_model']} {f['dtype']}"
        lines += [
            f"| {what} build (random init) | {f['clip_build_s']:.1f} s | | |",
            f"| {what} encoder, batch {f['batch_size']} | {f['encoder_fps']:.1f} frames/s | | |",
            f"| decord decode at {f['decode_size']} | {f['decord_decode_fps']:.1f} frames/s | | |",
            f"| ffmpeg decode at {f['decode_size']} | {f['ffmpeg_decode_fps']:.1f} frames/s | | |",
            f"| extract_film loop ({f['frames']} frames) | {f['extract_fps']:.1f} frames/s | | |",
            f"| 2-hour film ({FRAMES_2H:,} frames), projected | {f['projected_2h_s']:.1f} s "
            f"| <= {TARGET_2H_S:g} s | {verdict(f['projected_2h_s'], TARGET_2H_S, tiny)} |",
        ]
    if "slots" in res:
        s = res["slots"]
        what = f"{s['llm']} {s['dtype']} + PME + DSM"
        lines += [
            f"| {what} build on {env['device']} | {s['build_s']:.1f} s | | |",
            f"| describe per slot, median of {s['slots']} ({s['num_beams']} beams, "
            f"{s['max_new_tokens']} new tokens) | {s['median_ms']:.1f} ms "
            f"| <= {TARGET_SLOT_MS:g} ms | {verdict(s['median_ms'], TARGET_SLOT_MS, tiny)} |",
            f"| describe per slot, p90 | {s['p90_ms']:.1f} ms | | |",
            f"| of which LLM generate, median | {s['generate_median_ms']:.1f} ms | | |",
            f"| new tokens per slot | {min(s['new_tokens'])}-{max(s['new_tokens'])} | | |",
            f"| LLM generate calls per slot | {min(s['llm_calls'])}-{max(s['llm_calls'])} | | |",
            f"| prompt tokens per slot, mean | {statistics.mean(s['prompt_tokens']):.0f} | | |",
            f"| context items selected, mean | {statistics.mean(s['selected']):.1f} | | |",
        ]
    if "vlm" in res:
        lines += table_rows(res["vlm"])
    if res.get("peak_gpu_memory_gib") is not None:
        lines.append(f"| peak GPU memory | {res['peak_gpu_memory_gib']:.1f} GiB | | |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="tiny configs, a few frames and slots")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--device", help="default: cuda when there is one (required without --tiny)")
    ap.add_argument("--dtype", default="auto", help="CLIP dtype: auto = bf16 on GPUs that have it")
    ap.add_argument("--part", choices=("all", "frames", "slots", "vlm"), default="all")
    ap.add_argument("--film", help="a video of your own instead of the generated testsrc2 film")
    ap.add_argument("--seconds", type=float, help="generated film length (240; tiny 6)")
    ap.add_argument("--size", help="generated film size (1280x720; tiny 320x180)")
    ap.add_argument("--batch-size", type=int, help="CLIP batch (64; tiny 8)")
    ap.add_argument("--encode-frames", type=int, help="frames for the encoder figure (2000)")
    ap.add_argument("--repeat", type=int, help="best of N for decoding and extraction (2; tiny 1)")
    ap.add_argument("--slots", type=int, help="timed slots (50; tiny 3)")
    ap.add_argument("--warmup", type=int, help="untimed first slots (10 = proposal_len; tiny 1)")
    ap.add_argument(
        "--free-length",
        action="store_true",
        help="keep the card's min_new_tokens instead of forcing max_new_tokens",
    )
    args = ap.parse_args(argv)
    tiny = args.tiny

    def pick(value, full, small):
        """The flag's value, else the full-size or the tiny default."""
        return value if value is not None else (small if tiny else full)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and not tiny and args.device is None:
        ap.error("no GPU here: run it on a GPU machine, or pass --tiny for a CPU smoke run")
    res: dict[str, Any] = {"tiny": tiny, "environment": environment(device)}
    res["targets"] = {"features_2h_s": TARGET_2H_S, "slot_median_ms": TARGET_SLOT_MS}
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="locomad-gpu-") as tmp:
        if args.part in ("all", "frames"):
            card = frames_card(tiny)
            film = Path(args.film) if args.film else Path(tmp) / "film.mp4"
            if not args.film:
                size = pick(args.size, "1280x720", "320x180")
                make_film(film, pick(args.seconds, 240.0, 6.0), size)
            res["frames"] = bench_frames(
                film,
                card,
                device,
                resolve_dtype(args.dtype, device),
                pick(args.batch_size, 64, 8),
                pick(args.encode_frames, 2000, 16),
                pick(args.repeat, 2, 1),
                Path(tmp),
            )
        if args.part in ("all", "slots"):
            card = slots_card(tiny, force_length=not args.free_length)
            res["slots"] = bench_slots(
                card, device, pick(args.slots, 50, 3), pick(args.warmup, 10, 1), tiny
            )
        if args.part in ("all", "vlm"):
            slots, warmup = pick(args.slots, 20, 2), pick(args.warmup, 2, 1)
            res["vlm"] = bench_vlm(device, slots, warmup, tiny, Path(tmp))
    if device.startswith("cuda"):
        res["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    res["verdicts"] = {}
    if "frames" in res:
        res["verdicts"]["features_2h"] = verdict(res["frames"]["projected_2h_s"], TARGET_2H_S, tiny)
    if "slots" in res:
        res["verdicts"]["slot_median"] = verdict(res["slots"]["median_ms"], TARGET_SLOT_MS, tiny)
    print(table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")
    return res


if __name__ == "__main__":
    main()
