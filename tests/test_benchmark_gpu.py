"""benchmarks/gpu.py stays runnable: its --tiny smoke run on the CPU reports every figure with
sane values, and its full-size cards are OPT-2.7B's and the paper's PME/DSM (never run here)."""

from __future__ import annotations

import contextlib
import io
import json
import math

import pytest
import torch
from helpers.benchmarks import load_benchmark

from locomad_cli.card import load_card
from locomad_cli.threads import torch_threads


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("gpu")


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory):
    """One `--tiny --json` run (one torch thread: other suites share the cores)."""
    path = tmp_path_factory.mktemp("gpu") / "gpu.json"
    out = io.StringIO()
    with torch_threads(1, decoding=False, device="cpu"), contextlib.redirect_stdout(out):
        res = bench.main(["--tiny", "--device", "cpu", "--json", str(path)])
    return res, json.loads(path.read_text(encoding="utf-8")), out.getvalue()


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.mark.slow
def test_tiny_run_measures_the_features_path(tiny_run):
    res, saved, _ = tiny_run
    assert saved == json.loads(json.dumps(res))  # the JSON is what main returned
    env = res["environment"]
    assert env["device"] == "cpu" and env["device_name"] and env["torch"] == torch.__version__
    assert "cuda" in env and env["transformers"] and env["open_clip"]
    f = res["frames"]
    assert f["frames"] == 30  # 6 s at 5 FPS
    # decoded at the size the features path decodes to: shortest side = the tiny CLIP's 32 px
    w, h = map(int, f["decode_size"].split("x"))
    assert min(w, h) == 32 and w > h
    for key in ("encoder_fps", "decord_decode_fps", "ffmpeg_decode_fps", "extract_fps"):
        assert _positive(f[key]), key
    assert f["encoder_frames"] >= 16
    assert f["projected_2h_s"] == pytest.approx(36_000 * (f["plan_s"] + f["extract_loop_s"]) / 30)
    assert res["targets"] == {"features_2h_s": 90.0, "slot_median_ms": 150.0}


def test_tiny_run_times_the_recurrent_loop(tiny_run):
    res, _, _ = tiny_run
    s = res["slots"]
    real = load_card("opt-2.7b").llm
    assert (s["num_beams"], s["max_new_tokens"]) == (real.num_beams, real.max_new_tokens)
    assert s["min_new_tokens"] == s["max_new_tokens"]  # forced: every slot writes 36 tokens
    assert s["warmup"] == 1 and s["slots"] == len(s["per_slot_ms"]) == 3
    assert s["new_tokens"] == [real.max_new_tokens] * 3  # what each slot's generate returned
    assert all(n >= 1 for n in s["llm_calls"])
    assert all(_positive(t) for t in s["per_slot_ms"])
    assert min(s["per_slot_ms"]) <= s["median_ms"] <= s["p90_ms"] <= max(s["per_slot_ms"])
    assert 0 < s["generate_median_ms"] <= max(s["per_slot_ms"])
    # recurrent: slot i's proposal holds the i descriptions before it, the DSM takes top-k
    top_k = s["top_k"]
    assert s["selected"] == [min(i, top_k) for i in (1, 2, 3)]
    # the prompt holds the visual prompt, the dialogue and the growing context
    assert all(p > 6 for p in s["prompt_tokens"])
    assert s["prompt_tokens"] == sorted(s["prompt_tokens"])
    assert s["last_text"].strip()
    assert _positive(s["build_s"]) and all(_positive(v) for v in s["params"].values())


def test_tiny_run_prints_a_table_that_says_it_is_not_gpu_figures(tiny_run):
    res, _, printed = tiny_run
    assert "TINY SMOKE RUN" in printed and "not GPU figures" in printed
    assert "| 2-hour film (36,000 frames), projected |" in printed
    assert "<= 90 s" in printed and "<= 150 ms" in printed
    assert set(res["verdicts"].values()) == {"n/a (tiny smoke run)"}


def test_full_cards_are_opt_2_7b_and_the_papers_pme(bench):
    """The GPU run's sizes, checked without building anything real: OPT-2.7B on the meta
    device has OPT-2.7B's parameter count, the PME and DSM are the card's."""
    from locomad_cli.model.decoder import load_llm

    real = load_card("opt-2.7b")
    card = bench.slots_card(False)
    assert card.pme.hidden_size == real.pme.hidden_size == 768
    assert (card.pme.num_layers, card.pme.num_queries) == (real.pme.num_layers, 32)
    assert card.dsm == real.dsm and card.pme.init is None and card.pme.vocab_size == 30522
    assert bench.slots_card(False, force_length=False).llm.min_new_tokens == real.llm.min_new_tokens
    tok = bench.opt_tokenizer()
    assert len(tok) == 50265 + 6  # OPT's entries and the six LoCo-MAD tokens
    ids = tok(" w17 w50264 w4", add_special_tokens=False).input_ids
    assert ids == [17, 50264, 4] and tok.decode(ids) == "w17 w50264 w4"
    with torch.device("meta"):
        llm = load_llm(card, tok, torch.bfloat16, pretrained=False)
    assert llm.get_input_embeddings().num_embeddings == 50272  # no resize: the 6 fit
    n = sum(p.numel() for p in llm.parameters())
    assert 2.6e9 < n < 2.7e9 and llm.dtype == torch.bfloat16


def test_without_a_gpu_the_full_run_refuses(bench, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit):
        bench.main([])
    assert "--tiny" in capsys.readouterr().err


def test_tiny_run_times_the_local_vlm_loop(tiny_run):
    res, _, printed = tiny_run
    v = res["vlm"]
    assert v["model"] == "tiny Qwen2.5-VL" and v["slots"] == len(v["per_slot_ms"]) == 2
    assert all(_positive(t) for t in v["per_slot_ms"]) and _positive(v["load_s"])
    assert v["params"] > 151936 * 32  # Qwen's full vocabulary, tiny layers
    assert "vlm describe per slot, median of 2" in printed


def test_full_vlm_is_qwen2_5_vl_3b_sizes(bench):
    """The GPU run's VLM, on the meta device: Qwen2.5-VL-3B's parameter count."""
    import vlm
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config=vlm.QWEN25_VL_3B_TEXT, vision_config=vlm.QWEN25_VL_3B_VISION
    )
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(config)
    n = sum(p.numel() for p in model.parameters())
    assert 3.7e9 < n < 3.8e9
