"""The local vision-language backend through the real transformers classes
(AutoProcessor, AutoModelForImageTextToText, the processor's chat template) on a tiny
Qwen2-VL built from its config here: random weights, a processor and tokenizer built
locally, nothing downloaded. Frames in, text out, the same loop as every describer."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from helpers.benchmarks import load_benchmark

from locomad_cli.describe.film import DescribeOptions, describe
from locomad_cli.utils import LocomadError

DEMO = Path(__file__).resolve().parent.parent / "demo"
# the chat template and special tokens of Qwen's processors, as the VLM benchmark builds them
_QWEN = load_benchmark("vlm")
SPECIALS, TEMPLATE = list(_QWEN.SPECIAL), _QWEN.TEMPLATE


def tiny_qwen2_vl(folder: Path) -> Path:
    """A Qwen2-VL of two 32-wide layers and a one-block vision tower, a character-level
    tokenizer, images of 56 x 56 pixels (4 patches, one token after merging): saved as
    safetensors with its processor, as a hub model folder is."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        PreTrainedTokenizerFast,
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    vocab = {w: i for i, w in enumerate(SPECIALS + [chr(c) for c in range(32, 127)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="?"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.add_special_tokens(SPECIALS)
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=56 * 56),
        tokenizer=fast,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=TEMPLATE,
    )
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                max_position_embeddings=4096, rope_scaling={"type": "mrope",
                "mrope_section": [2, 3, 3]}, bos_token_id=1, eos_token_id=vocab["<|im_end|>"],
                pad_token_id=0)  # fmt: skip
    vision = dict(depth=1, embed_dim=32, hidden_size=32, num_heads=2, mlp_ratio=2,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2)  # fmt: skip
    config = Qwen2VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=vocab["<|image_pad|>"],
        video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )
    torch.manual_seed(0)
    Qwen2VLForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    return tiny_qwen2_vl(tmp_path_factory.mktemp("tiny-qwen2-vl"))


def test_local_backend_frames_in_text_out_in_the_same_loop(tmp_path, tiny_vlm, monkeypatch):
    from transformers import Qwen2VLForConditionalGeneration

    shutil.copy(DEMO / "demo.mp4", tmp_path / "demo.mp4")
    shutil.copy(DEMO / "demo.srt", tmp_path / "demo.srt")
    (tmp_path / "slots.srt").write_text(
        "1\n00:00:01,000 --> 00:00:04,000\nx\n\n2\n00:00:19,000 --> 00:00:22,000\nx\n"
    )
    calls = []
    generate = Qwen2VLForConditionalGeneration.generate

    def spy(self, **kw):
        calls.append({k: v.clone() for k, v in kw.items() if torch.is_tensor(v)})
        return generate(self, **kw)

    monkeypatch.setattr(Qwen2VLForConditionalGeneration, "generate", spy)
    sets = [
        f"vlm.name={tiny_vlm}",
        "vlm.max_new_tokens=12",
        "describer.frames=3",
        "describer.frame_size=64",
        "describer.words_per_minute=2000",
        "llm.avoid_repeats=0",
    ]  # fmt: skip  (random weights say the same thing twice)
    opts = DescribeOptions(model="qwen2.5-vl-3b", overrides=sets, subs=str(tmp_path / "demo.srt"),
                           ad_times=str(tmp_path / "slots.srt"), output_dir=str(tmp_path / "out"),
                           progress=False, formats="srt,json", device="cpu")  # fmt: skip
    track, _ = describe(tmp_path / "demo.mp4", opts)
    assert len(track["slots"]) == 2
    assert len(calls) == 2  # one generate per slot: within budget, nothing asked again
    for call in calls:
        assert call["image_grid_thw"].shape[0] == 3  # the slot's three frames, as images
        patches = int(call["image_grid_thw"].prod(-1).sum())
        assert call["pixel_values"].shape[0] == patches > 0  # the frames' pixels went in
    for row in track["slots"]:  # text out: a description, or the reason there is none
        assert row["text"] or row["empty"]
        assert row["asked"] == 1
    assert track["describer"] == {
        "describer": "vlm",
        "backend": "local",
        "model": str(tiny_vlm),
        "prompt_version": "ad-1",
    }
    assert "I'm Leo." in [c["text"] for c in track["slots"][1]["selected"]]


def test_offline_without_the_weights_is_one_line_naming_how_to_fetch(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    shutil.copy(DEMO / "demo.mp4", tmp_path / "demo.mp4")
    opts = DescribeOptions(model="qwen2.5-vl-7b", progress=False, output_dir=str(tmp_path / "o"))
    want = r"Qwen/Qwen2.5-VL-7B-Instruct: weights not in the local Hugging Face cache.*"
    with pytest.raises(LocomadError, match=want + r"hf download Qwen/Qwen2.5-VL-7B-Instruct"):
        describe(tmp_path / "demo.mp4", opts)
    assert not (tmp_path / "o").exists()


def test_doctor_says_what_a_vlm_card_is_missing(monkeypatch, tiny_vlm):
    from helpers.openai_server import FakeVLM

    from locomad_cli.doctor import blocking, run_checks

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = blocking(run_checks("qwen2.5-vl-3b"))
    assert any("hf download Qwen/Qwen2.5-VL-3B-Instruct" in r.details for r in rows)
    assert not blocking(run_checks("qwen2.5-vl-3b", [f"vlm.name={tiny_vlm}"]))
    rows = blocking(run_checks("endpoint", ["endpoint.url=http://127.0.0.1:9/v1",
                                            "endpoint.model=m"]))  # fmt: skip
    assert any("unreachable" in r.details for r in rows)
    with FakeVLM(model="served") as server:
        sets = [f"endpoint.url={server.url}", "endpoint.model=other"]
        rows = blocking(run_checks("endpoint", sets))
        assert any("'other' is not among the models" in r.details for r in rows)
        ok = run_checks("endpoint", [f"endpoint.url={server.url}", "endpoint.model=served"])
        assert not blocking(ok)
