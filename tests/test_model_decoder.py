"""Language decoder: prompt layout (eq. 10-12), truncation, target cap, L_GEN labels,
generation cap and batching, LLM training policies."""

import pytest
import torch

from locomad_cli.data.records import ContextItem
from locomad_cli.model.decoder import QUERY, build_prompt, build_target
from locomad_cli.model.locomad import LoCoMAD
from locomad_cli.model.tokenizer import LLM_SPECIAL_TOKENS, load_tokenizer
from locomad_cli.utils import LocomadError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("tiny", "llm")


def _ids(tok, text):
    return tok(" " + text, add_special_tokens=False).input_ids


def test_prompt_layout_exact(tok):
    sp = dict(zip(LLM_SPECIAL_TOKENS, tok.convert_tokens_to_ids(LLM_SPECIAL_TOKENS), strict=True))
    items = [ContextItem("He runs.", "Stop!"), ContextItem("She waits.", "Where?")]
    got = build_prompt(tok, 3, items, "Come  here.", "Describe the scene:", 200)
    expected = (
        [tok.bos_token_id, sp["<b_q>"], QUERY, QUERY, QUERY, sp["<e_q>"]]
        + [sp["<b_t>"], *_ids(tok, "He runs."), sp["<e_t>"]]
        + [sp["<b_s>"], *_ids(tok, "Stop!"), sp["<e_s>"]]
        + [sp["<b_t>"], *_ids(tok, "She waits."), sp["<e_t>"]]
        + [sp["<b_s>"], *_ids(tok, "Where?"), sp["<e_s>"]]
        + [sp["<b_s>"], *_ids(tok, "Come here."), sp["<e_s>"]]
        + _ids(tok, "Describe the scene:")
    )
    assert got == expected
    # local: no items, same layout otherwise
    local = build_prompt(tok, 3, [], "Come here.", "Describe the scene:", 200)
    assert local == (
        expected[:6]
        + [sp["<b_s>"], *_ids(tok, "Come here."), sp["<e_s>"]]
        + _ids(tok, "Describe the scene:")
    )


def test_truncation_drops_oldest_items_first(tok):
    items = [ContextItem(f"item number {i} happens here.", f"line {i}") for i in range(8)]
    full = build_prompt(tok, 2, items, "now", "Go:", 10_000)
    head = 1 + 4  # bos, b_q, 2 queries, e_q
    tail = len(_ids(tok, "Go:"))
    ctx_len = len(full) - head - tail
    budget = ctx_len - 5  # forces the oldest item out, and only it
    cut = build_prompt(tok, 2, items, "now", "Go:", budget)
    assert len(cut) - head - tail <= budget
    text = tok.decode([t for t in cut if t >= 0])
    assert "item number 0" not in text
    assert all(f"item number {i}" in text for i in range(1, 8))
    block7 = 6 + len(_ids(tok, items[7].text)) + len(_ids(tok, items[7].subtitle))
    tiny_budget = len(_ids(tok, "now")) + 2 + block7 + 3  # room for item 7, not for item 6
    cut2 = build_prompt(tok, 2, items, "now", "Go:", tiny_budget)
    text2 = tok.decode([t for t in cut2 if t >= 0])
    assert "item number 7" in text2 and "item number 6" not in text2
    assert len(cut2) - head - tail <= tiny_budget
    # a current subtitle longer than the budget keeps its newest words
    sub = " ".join(f"w{i}" for i in range(100))
    cut3 = build_prompt(tok, 2, items, sub, "Go:", 20)
    text3 = tok.decode([t for t in cut3 if t >= 0])
    assert "w99" in text3 and "w0 " not in text3 and "item" not in text3
    assert len(cut3) - head - tail == 20


def test_target_capped_and_terminated(tok):
    long = " ".join(["word"] * 100)
    t = build_target(tok, long, 36)
    assert len(t) == 36 and t[-1] == tok.eos_token_id
    short = build_target(tok, "A man.", 36)
    assert short == _ids(tok, "A man.") + [tok.eos_token_id]


def test_training_labels_ignore_prompt_and_padding(card):
    torch.manual_seed(0)
    dec = LoCoMAD.from_card(card).decoder
    items = [[ContextItem("He runs.", "hi")], []]
    ids, labels, mask = dec.training_inputs(items, ["a", "b c"], ["A man.", "She runs home now."])
    prompts = dec.prompts(items, ["a", "b c"])
    for row in range(2):
        p = len(prompts[row])
        t = build_target(dec.tok, ["A man.", "She runs home now."][row], 36)
        assert labels[row, :p].eq(-100).all()
        assert labels[row, p : p + len(t)].tolist() == t
        assert labels[row, p + len(t) :].eq(-100).all()
        assert mask[row].sum().item() == p + len(t)
        assert ids[row, p : p + len(t)].tolist() == t


def test_generation_cap_and_special_tokens_never_generated(card):
    card.llm.min_new_tokens = 80  # asks for more than the cap: the cap wins
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card)
    dec = model.decoder
    q = torch.randn(2, card.pme.num_queries, card.pme.hidden_size)

    # make the six added tokens the model's favourites: suppression must still hold
    def favour_special(module, args, logits):
        logits = logits.clone()
        logits[..., dec.special_ids] += 1000.0
        return logits

    dec.llm.get_output_embeddings().register_forward_hook(favour_special)
    rows = dec.generate_ids(q, [[], []], ["hello", "a longer line of dialogue"])
    assert [len(r) for r in rows] == [36, 36]
    assert not any(t in dec.special_ids for r in rows for t in r)


def test_batched_generation_equals_one_by_one(card):
    torch.manual_seed(0)
    dec = LoCoMAD.from_card(card).decoder
    q = torch.randn(3, card.pme.num_queries, card.pme.hidden_size)
    items = [[], [ContextItem("He runs fast.", "Stop him!")], [ContextItem("x", "")] * 3]
    subs = ["", "where", "a b c d e f"]
    together = dec.generate_ids(q, items, subs)
    alone = [dec.generate_ids(q[i : i + 1], items[i : i + 1], subs[i : i + 1])[0] for i in range(3)]
    assert together == alone


def test_projection_targets_the_input_embedding_width(card):
    # OPT-350m: word_embed_proj_dim 512 ≠ hidden 1024; Proj_l must give the embedding width
    card.llm.config = dict(card.llm.config, word_embed_proj_dim=16)
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card)
    assert model.decoder.proj.out_features == 16
    assert model.decoder.special_embeds.shape == (6, 16)
    from helpers.batches import batch_of

    out = model.forward_stage2(batch_of(card, 2))
    assert torch.isfinite(out["loss"])
    assert len(model.generate(batch_of(card, 2))) == 2


def test_training_policies(card):
    from helpers.batches import batch_of

    card.llm.train = "bogus"
    with pytest.raises(LocomadError, match="llm.train"):
        LoCoMAD.from_card(card)
    card.llm.train = "none"
    names = [n for n, _ in LoCoMAD.from_card(card).trainable_parameters(2)]
    assert "decoder.special_embeds" not in names
    assert not any(n.startswith("decoder.llm.") for n in names)
    assert "decoder.proj.weight" in names
    card.llm.train = "new-tokens"
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card)
    names = [n for n, _ in model.trainable_parameters(2)]
    assert "decoder.special_embeds" in names
    assert not any(n.startswith(("decoder.llm.", "pme.")) for n in names)
    model.train()
    assert model.training and not model.decoder.llm.training  # frozen LLM: no dropout
    for p in model.parameters():
        p.requires_grad_(False)
    for _, p in model.trainable_parameters(2):
        p.requires_grad_(True)
    emb_before = model.decoder.llm.get_input_embeddings().weight.clone()
    out = model.forward_stage2(batch_of(card, 3))
    out["gen"].backward()
    g = model.decoder.special_embeds.grad
    assert g is not None and (g.abs().sum(1) > 0).all()  # all six tokens appear and learn
    opt = torch.optim.AdamW([p for _, p in model.trainable_parameters(2)], weight_decay=0.1)
    opt.step()
    assert torch.equal(model.decoder.llm.get_input_embeddings().weight, emb_before)
    card.llm.train = "all"
    names = [n for n, _ in LoCoMAD.from_card(card).trainable_parameters(2)]
    assert any(n.startswith("decoder.llm.") for n in names)


def test_offline_llm_names_the_model(card, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    card.llm.config = None
    card.llm.name = "no-such-org/no-such-llm"
    with pytest.raises(LocomadError, match="no-such-org/no-such-llm"):
        LoCoMAD.from_card(card)
    card.llm.tokenizer = None
    with pytest.raises(LocomadError, match="tokenizer 'no-such-org/no-such-llm'"):
        LoCoMAD.from_card(card)


def test_visual_norm_standardises_queries_before_the_projection(card):
    """q̃ share a large common component; llm.visual_norm=batch removes it (running mean and
    variance learnt in training, fixed at inference), so only what differs between slots
    reaches Proj_l. With 'none' the projection sees q̃ as it is (the paper's Proj_l)."""
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card)
    dec = model.decoder
    h = card.pme.hidden_size
    common = torch.randn(h) * 10
    scale = torch.rand(h) + 0.5
    dec.train()
    for _ in range(200):
        dec.project(common + scale * torch.randn(4, card.pme.num_queries, h))
    dec.eval()
    q = common + scale * torch.randn(2, card.pme.num_queries, h)
    with torch.no_grad():
        expected = dec.proj((q - common) / scale)
        err = (dec.project(q) - expected).abs().mean()
        raw = (dec.proj(q) - expected).abs().mean()
    assert err < 0.2 * expected.abs().mean() and err < 0.05 * raw
    # the statistics travel with the weights
    assert "decoder.visual_norm.running_mean" in model.state_dict()

    card.llm.visual_norm = "none"
    plain = LoCoMAD.from_card(card).decoder
    assert plain.visual_norm is None
    assert torch.equal(plain.project(q), plain.proj(q))
