"""DSM: sampler (eq. 7), hard top-k in film order, CCL (eq. 8-9) and its gradient."""

import math

import pytest
import torch

from locomad_cli.model.dsm import DSM, ccl_loss, masked_softmax, top_k_in_order, visual_anchor

pytestmark = pytest.mark.usefixtures("one_thread")


def _inputs(card, real=(6, 2, 0), p=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    b = len(real)
    ctx = torch.randn(b, p, card.clip.dim, generator=g)
    mask = torch.zeros(b, p, dtype=torch.bool)
    for i, n in enumerate(real):
        mask[i, :n] = True
    frames = torch.randn(b, 5, card.clip.dim, generator=g)
    fmask = torch.ones(b, 5, dtype=torch.bool)
    return ctx, mask, frames, fmask


def test_top_k_exact_film_order_and_never_masked():
    probs = torch.tensor([[0.1, 0.5, 0.05, 0.3, 0.05, 0.0]])
    mask = torch.tensor([[True, True, True, True, True, False]])
    assert top_k_in_order(probs, mask, 3) == [[0, 1, 3]]
    # a masked slot with the highest raw logit is still never chosen
    logits = torch.tensor([[0.0, 1.0, 2.0, 50.0]])
    mask2 = torch.tensor([[True, True, True, False]])
    p = masked_softmax(logits, mask2)
    assert p[0, 3].item() == 0.0
    assert p[0, :3].sum().item() == pytest.approx(1.0)
    assert top_k_in_order(p, mask2, 2) == [[1, 2]]
    # ties go to the newer items
    flat = torch.full((1, 5), 0.2)
    assert top_k_in_order(flat, torch.ones(1, 5, dtype=torch.bool), 2) == [[3, 4]]
    # fewer real items than k: all of them; none: nothing (and no NaN)
    assert top_k_in_order(p, mask2, 5) == [[0, 1, 2]]
    empty = torch.zeros(1, 4, dtype=torch.bool)
    pe = masked_softmax(logits, empty)
    assert torch.equal(pe, torch.zeros(1, 4))
    assert top_k_in_order(pe, empty, 2) == [[]]


def test_sampler_selects_k_in_order_and_ignores_empty_slots(card):
    torch.manual_seed(0)
    dsm = DSM(card).eval()
    ctx, mask, frames, fmask = _inputs(card)
    sel = dsm.select(ctx, mask, frames, fmask, k=3)
    assert [len(i) for i in sel.indices] == [3, 2, 0]
    for row, m in zip(sel.indices, mask, strict=True):
        assert row == sorted(row)
        assert all(m[j] for j in row)
    assert torch.allclose(sel.probs.sum(1), torch.tensor([1.0, 1.0, 0.0]))
    assert sel.scores[0] == [pytest.approx(sel.probs[0, j].item()) for j in sel.indices[0]]
    # the top-k really are the k highest scores
    best = set(sel.probs[0].topk(3).indices.tolist())
    assert set(sel.indices[0]) == best
    # empty slots are masked, not zeros: what sits in them changes nothing
    ctx2 = ctx.clone()
    ctx2[~mask] = 99.0
    assert torch.equal(dsm.scores(ctx2, mask, frames, fmask), sel.probs)
    # ...and a real zero vector in a slot is not the same as an empty slot
    ctx3 = ctx.clone()
    ctx3[0, 6] = 0.0
    mask3 = mask.clone()
    mask3[0, 6] = True
    assert not torch.allclose(dsm.scores(ctx3, mask3, frames, fmask)[0, :6], sel.probs[0, :6])


def test_ccl_known_value_and_direction():
    e = torch.eye(4)
    ctx = e[None]  # four orthogonal items
    mask = torch.ones(1, 4, dtype=torch.bool)
    probs = torch.tensor([[0.1, 0.6, 0.2, 0.1]])
    anchor = torch.tensor([[0.0, 1.0, 0.0, 0.0]])
    temp = torch.tensor(0.5)
    # selected {1}: T+ = 0.6 * e1 / 1 → cos 1; negatives e0, e2, e3 → cos 0
    loss = ccl_loss(ctx, mask, probs, [[1]], anchor, temp)
    expected = -math.log(math.exp(2) / (math.exp(2) + 3))
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    # selecting the wrong item puts the matching one among the negatives: much higher loss
    wrong = ccl_loss(ctx, mask, probs, [[2]], anchor, temp)
    assert wrong.item() > loss.item() + 1.5
    # two selected: T+ = (0.6 e1 + 0.2 e2) / 2, cos = 0.6 / sqrt(0.4)
    loss2 = ccl_loss(ctx, mask, probs, [[1, 2]], anchor, temp)
    cos = 0.6 / math.sqrt(0.6**2 + 0.2**2)
    expected2 = -math.log(math.exp(cos / 0.5) / (math.exp(cos / 0.5) + 2))
    assert loss2.item() == pytest.approx(expected2, rel=1e-4)
    # no negatives (all items selected): left out, zero
    assert ccl_loss(ctx, mask, probs, [[0, 1, 2, 3]], anchor, temp).item() == 0.0


def test_ccl_gradient_reaches_the_sampler(card):
    torch.manual_seed(0)
    dsm = DSM(card).train()
    ctx, mask, frames, fmask = _inputs(card)
    sel = dsm.select(ctx, mask, frames, fmask)
    loss = dsm.ccl(ctx, mask, frames, fmask, sel)
    loss.backward()
    assert dsm.sampler.weight.grad.abs().sum().item() > 0
    assert dsm.temp.grad is not None and dsm.temp.grad.item() != 0
    enc = [p.grad for n, p in dsm.named_parameters() if n.startswith("encoder.")]
    assert all(g is not None for g in enc) and sum(g.abs().sum().item() for g in enc) > 0
    # the anchor is the masked mean of the raw frame features
    fm = fmask.clone()
    fm[0, 3:] = False
    assert torch.allclose(visual_anchor(frames, fm)[0], frames[0, :3].mean(0))


@pytest.mark.slow
def test_ccl_training_learns_to_pick_the_matching_items(card):
    """CCL alone teaches the sampler to prefer the items close to the clip. Cosine ignores
    T+'s scale, so the signal is the relative weight of the selected items: a poor selected
    item loses weight until a better one overtakes it (k ≥ 2 is needed for any signal)."""
    torch.manual_seed(0)
    dsm = DSM(card).train()
    g = torch.Generator().manual_seed(1)
    b, p, d = 8, 6, card.clip.dim
    frames = torch.randn(b, 4, d, generator=g)
    anchor = frames.mean(1)
    ctx = torch.randn(b, p, d, generator=g)
    for j in (1, 4):  # two matching items per clip
        ctx[:, j] = anchor + 0.2 * torch.randn(b, d, generator=g)
    mask = torch.ones(b, p, dtype=torch.bool)
    fmask = torch.ones(b, 4, dtype=torch.bool)
    before = dsm.eval().select(ctx, mask, frames, fmask, k=2).indices
    dsm.train()
    opt = torch.optim.Adam(dsm.parameters(), lr=3e-3)
    for _ in range(80):
        sel = dsm.select(ctx, mask, frames, fmask, k=2)
        loss = dsm.ccl(ctx, mask, frames, fmask, sel)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = dsm.eval().select(ctx, mask, frames, fmask, k=2).indices
    hits_before = sum(row == [1, 4] for row in before)
    hits_after = sum(row == [1, 4] for row in after)
    assert hits_after == 8 > hits_before, (hits_before, hits_after)


def test_temperature_is_clamped(card):
    dsm = DSM(card)
    assert dsm.temperature().item() == pytest.approx(0.05)
    with torch.no_grad():
        dsm.temp.fill_(10.0)
    assert dsm.temperature().item() == pytest.approx(0.5)
    with torch.no_grad():
        dsm.temp.fill_(-1.0)
    assert dsm.temperature().item() == pytest.approx(0.001)
