"""PME (Q-Former) masks and stage-1 losses: each test breaks when its equation does."""

import math

import pytest
import torch
import torch.nn.functional as F

from locomad_cli.model.locomad import LoCoMAD
from locomad_cli.model.pme import (
    PME,
    hard_negatives,
    sinusoid_positions,
    task_mask,
    vtc_loss,
    vtg_loss,
    vtm_loss,
)
from locomad_cli.utils import LocomadError

pytestmark = pytest.mark.usefixtures("one_thread")


def _pme(card) -> PME:
    """A PME with large random weights, so any leak through a mask shows up clearly."""
    torch.manual_seed(0)
    pme = PME(card, vocab_size=120, pad_token_id=0).eval()
    with torch.no_grad():
        for name, p in pme.named_parameters():
            if p.dim() == 2 and "LayerNorm" not in name:
                p.normal_(0, 0.3)
    return pme


def _differ(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a - b).abs().max().item() > 1e-3


def _inputs(card, b=2, lt=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    frames = torch.randn(b, 7, card.clip.dim, generator=g)
    fmask = torch.ones(b, 7, dtype=torch.bool)
    ids = torch.randint(5, 120, (b, lt), generator=g)
    tmask = torch.ones(b, lt, dtype=torch.bool)
    return frames, fmask, ids, tmask


def test_task_mask_values():
    text = torch.tensor([[True, True, False]])
    q, t = 2, 3
    vtc = task_mask("vtc", q, text)[0].int().tolist()
    assert vtc == [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 1, 1, 0],
    ]
    vtg = task_mask("vtg", q, text)[0].int().tolist()
    assert vtg == [
        [1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 1, 1, 0],
    ]
    vtm = task_mask("vtm", q, text)[0].int().tolist()
    assert vtm == [[1, 1, 1, 1, 0]] * (q + t)


def test_vtc_mask_no_leakage_either_way(card):
    pme = _pme(card)
    frames, fmask, ids, tmask = _inputs(card)
    q1, t1 = pme.encode(frames, fmask, ids, tmask, "vtc")
    ids2 = ids.clone()
    ids2[:, 1:] = (ids2[:, 1:] + 17) % 120
    q2, _ = pme.encode(frames, fmask, ids2, tmask, "vtc")
    assert torch.equal(q1, q2)
    # and the text never sees the frames (through the queries) under VTC
    _, t3 = pme.encode(frames.flip(1) * 2 + frames.roll(1, 2), fmask, ids, tmask, "vtc")
    assert torch.equal(t1, t3)
    # queries alone give the same q̃ as the VTC pass (stage 2 relies on it), to float32's
    # rounding (other matmul shapes: 1.5e-6 on values of 2.3 seen on an AMD EPYC; a leak through
    # the mask moves them by about 1 with these weights)
    assert torch.allclose(pme.encode_queries(frames, fmask), q1, atol=1e-5, rtol=1e-5)


def test_vtg_mask_is_causal_and_queries_blind_to_text(card):
    pme = _pme(card)
    frames, fmask, ids, tmask = _inputs(card, lt=8)
    q1, t1 = pme.encode(frames, fmask, ids, tmask, "vtg")
    ids2 = ids.clone()
    ids2[:, 5:] = (ids2[:, 5:] + 31) % 120
    q2, t2 = pme.encode(frames, fmask, ids2, tmask, "vtg")
    assert torch.equal(t1[:, :5], t2[:, :5])
    assert _differ(t1[:, 5:], t2[:, 5:])
    assert torch.equal(q1, q2)
    # the text does see the video through the queries
    _, t3 = pme.encode(frames.flip(1) * 2 + frames.roll(1, 2), fmask, ids, tmask, "vtg")
    assert _differ(t1, t3)


def test_vtm_mask_lets_everything_attend(card):
    pme = _pme(card)
    frames, fmask, ids, tmask = _inputs(card)
    q1, t1 = pme.encode(frames, fmask, ids, tmask, "vtm")
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 7) % 120
    q2, t2 = pme.encode(frames, fmask, ids2, tmask, "vtm")
    assert _differ(q1, q2)
    assert _differ(t1[:, 0], t2[:, 0])  # [CLS] sees later text


def test_padding_is_invisible(card):
    pme = _pme(card)
    frames, fmask, ids, tmask = _inputs(card, b=1)
    # padded frames: changing them changes nothing
    fmask2 = fmask.clone()
    fmask2[:, 5:] = False
    frames2 = frames.clone()
    frames2[:, 5:] = 100.0
    a, _ = pme.encode(frames, fmask2, ids, tmask, "vtm")
    b, _ = pme.encode(frames2, fmask2, ids, tmask, "vtm")
    assert torch.equal(a, b)
    tmask2 = tmask.clone()
    tmask2[:, 4:] = False
    ids2 = ids.clone()
    ids2[:, 4:] = 99
    c, _ = pme.encode(frames, fmask, ids, tmask2, "vtm")
    d, _ = pme.encode(frames, fmask, ids2, tmask2, "vtm")
    assert torch.equal(c, d)


def test_frame_order_matters_through_fixed_positions(card):
    pme = _pme(card)
    frames, fmask, _, _ = _inputs(card)
    vt = pme.prepare_frames(frames, fmask)
    expected = F.layer_norm(frames + sinusoid_positions(7, card.clip.dim), (card.clip.dim,))
    assert torch.allclose(vt, expected, atol=1e-5)  # frame_norm starts as a plain LayerNorm
    # cross-attention alone is blind to order; the positions make a reversed clip differ
    q = pme.encode_queries(frames, fmask)
    assert _differ(q, pme.encode_queries(frames.flip(1), fmask))
    assert not any(n.startswith("frame_pos") for n, _ in pme.named_parameters())


def test_sinusoid_positions_are_fixed_values():
    pe = sinusoid_positions(3, 4)
    assert torch.allclose(pe[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    assert pe[1, 0].item() == pytest.approx(math.sin(1.0))
    assert pe[2, 2].item() == pytest.approx(math.sin(2.0 / 100.0))
    assert pe[2, 3].item() == pytest.approx(math.cos(2.0 / 100.0))


def test_vtc_loss_known_values():
    temp = torch.tensor(0.1)
    e = torch.eye(4)
    # clip i's best query equals text i; the other queries point elsewhere
    queries = torch.stack([torch.stack([e[i], e[(i + 1) % 4] * -1]) for i in range(2)])
    texts = e[:2]
    loss, sim = vtc_loss(queries, texts, temp)
    # sim = max over queries: diagonal 1/0.1, off-diagonal max(0, -cos) = 0
    assert torch.allclose(sim, torch.tensor([[10.0, 0.0], [0.0, 10.0]]), atol=1e-5)
    expected = -math.log(math.exp(10) / (math.exp(10) + 1))
    assert loss.item() == pytest.approx(expected, rel=1e-3)
    shuffled, _ = vtc_loss(queries, texts.flip(0), temp)
    assert shuffled.item() > loss.item() + 5


def test_hard_negatives_never_positive():
    torch.manual_seed(0)
    b = 6
    sim = torch.randn(b, b) * 5 + torch.eye(b) * 50  # positives dominate the softmax
    same = torch.eye(b, dtype=torch.bool)
    same[0, 3] = same[3, 0] = True  # a duplicate description is a positive too
    for _ in range(50):
        idx, ok = hard_negatives(sim, same)
        assert ok.all()
        assert not same[torch.arange(b), idx].any()
    # the draw follows the softmax: one dominant negative is (almost) always picked
    sim2 = torch.zeros(b, b)
    sim2[:, 2] = 30.0
    sim2[2, 4] = 30.0
    idx, _ = hard_negatives(sim2, torch.eye(b, dtype=torch.bool))
    assert idx.tolist() == [2, 2, 4, 2, 2, 2]
    # a row whose every other item is a positive has no negative
    all_same = torch.ones(3, 3, dtype=torch.bool)
    _, ok = hard_negatives(torch.zeros(3, 3), all_same)
    assert not ok.any()


def test_vtm_and_vtg_losses_known_values():
    assert vtm_loss(torch.tensor([[0.0, 20.0]]), torch.tensor([1])).item() < 1e-6
    assert vtm_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([0])).item() == pytest.approx(
        math.log(2)
    )
    # VTG predicts the NEXT token: logits at i pointing at label i+1 give the minimum
    labels = torch.tensor([[3, 1, 4, 2, -100]])
    v = 6
    good = torch.full((1, 5, v), -20.0)
    for i in range(4):
        nxt = labels[0, i + 1].item()
        if nxt >= 0:
            good[0, i, nxt] = 20.0
    same_pos = torch.full((1, 5, v), -20.0)
    for i in range(5):
        if labels[0, i] >= 0:
            same_pos[0, i, labels[0, i]] = 20.0
    assert vtg_loss(good, labels, 0.0).item() < 1e-6
    assert vtg_loss(same_pos, labels, 0.0).item() > 10
    # label smoothing 0.1 raises the floor to the smoothed cross-entropy of a sure guess
    floor = vtg_loss(good, labels, 0.1).item()
    logp = F.log_softmax(good[0, 0], -1)
    expected = -(0.9 + 0.1 / v) * logp[1] - (0.1 / v) * (logp.sum() - logp[1])
    assert floor == pytest.approx(expected.item(), rel=1e-4)


def test_stage1_loss_sums_and_falls(card):
    from helpers.batches import batch_of

    torch.manual_seed(0)
    model = LoCoMAD.from_card(card)
    batch = batch_of(card, 4)
    out = model.forward_stage1(batch, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "vtc", "vtm", "vtg"}
    assert out["loss"].item() == pytest.approx((out["vtc"] + out["vtm"] + out["vtg"]).item())
    # each task trains its own head: VTC the projections and temperature, VTM the classifier,
    # VTG the LM head (tied to the word embeddings)
    heads = {
        "vtc": ["pme.vision_proj.weight", "pme.text_proj.weight", "pme.temp"],
        "vtm": ["pme.vtm_head.weight"],
        "vtg": ["pme.lm_head.transform.dense.weight"],
    }
    params = dict(model.named_parameters())
    for task in heads:
        model.zero_grad()
        out = model.forward_stage1(batch, generator=torch.Generator().manual_seed(0))
        out[task].backward()
        for task2, names2 in heads.items():
            for name in names2:
                g = params[name].grad
                has = g is not None and g.abs().sum().item() > 0
                assert has == (task2 == task), (task, name)
    model.zero_grad()
    opt = torch.optim.AdamW([p for _, p in model.trainable_parameters(1)], lr=1e-2)
    model.train()
    first = None
    for _ in range(30):
        out = model.forward_stage1(batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
    assert out["loss"].item() < 0.6 * first
    # only the PME received gradients
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("pme."))


def test_long_clips_subsampled_not_cut(card):
    from helpers.batches import batch_of

    card.pme.max_frames = 10
    model = LoCoMAD.from_card(card)
    batch = batch_of(card, 1, frames=25)
    batch.frames[0, 24] = 7.0  # the last frame must survive
    frames, mask = model._frames(batch)
    assert frames.shape[1] == 10 and mask.all()
    assert torch.equal(frames[0, -1], batch.frames[0, 24])
    assert torch.equal(frames[0, 0], batch.frames[0, 0])


def test_bert_init_copies_weights_into_both_ffns(card, tmp_path):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=100,
        hidden_size=card.pme.hidden_size,
        num_hidden_layers=card.pme.num_layers,
        num_attention_heads=card.pme.num_heads,
        intermediate_size=card.pme.intermediate_size,
    )
    BertForMaskedLM(cfg).save_pretrained(tmp_path / "bert")
    src = BertForMaskedLM.from_pretrained(tmp_path / "bert").state_dict()
    pme = PME(card, vocab_size=101, pad_token_id=0)
    pme.load_bert(str(tmp_path / "bert"))
    layer = pme.encoder.layer[1]
    w = src["bert.encoder.layer.1.intermediate.dense.weight"]
    assert torch.equal(layer.intermediate.dense.weight, w)
    assert torch.equal(layer.intermediate_query.dense.weight, w)
    q = src["bert.encoder.layer.1.attention.self.query.weight"]
    assert torch.equal(layer.attention.attention.query.weight, q)
    emb = src["bert.embeddings.word_embeddings.weight"]
    assert torch.equal(pme.embeddings.word_embeddings.weight[:100], emb)
    assert pme.lm_head.decoder.weight is pme.embeddings.word_embeddings.weight
    # a BERT of another width is refused with the card's numbers
    card.pme.hidden_size = 64
    card.clip.dim = 64
    with pytest.raises(LocomadError, match="card asks"):
        PME(card, 101, 0).load_bert(str(tmp_path / "bert"))


def test_offline_hub_names_the_model(card, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pme = PME(card, 101, 0)
    with pytest.raises(LocomadError, match="no-such-org/no-such-bert"):
        pme.load_bert("no-such-org/no-such-bert")
