"""LoCoMAD end to end on the tiny card: overfitting, settings, selection, stage freezing."""

import pytest
import torch
from test_model_helpers import TEXTS, batch_of

from locomad_cli.model.locomad import LoCoMAD
from locomad_cli.utils import LocomadError

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(card):
    torch.manual_seed(0)
    return LoCoMAD.from_card(card)


def test_tiny_model_overfits_a_handful_of_triples(card):
    model = _model(card)
    batch = batch_of(card, 4)
    opt = torch.optim.AdamW([p for _, p in model.trainable_parameters(2)], lr=3e-3)
    model.train()
    first = last = None
    for _ in range(100):
        out = model.forward_stage2(batch)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = out["gen"].item() if first is None else first
        last = out["gen"].item()
    assert last <= 0.1 * first, (first, last)
    assert model.training  # generate() leaves the mode as it found it
    gens = model.generate(batch)
    assert model.training
    assert [g.text for g in gens] == TEXTS
    # the context setting used the DSM's selection: top-k of each clip's earlier items
    assert [len(g.selected) for g in gens] == [0, 1, 2, 3]
    assert all(g.selected == sorted(g.selected) for g in gens)


def test_local_is_the_context_path_with_no_items(card):
    model = _model(card)
    batch = batch_of(card, 3)
    local = model.generate(batch, "local")
    empty = model.generate(batch, "context", selection_override=[[], [], []])
    assert [g.text for g in local] == [g.text for g in empty]
    assert all(g.selected == [] and g.scores == [] for g in local)
    # an override is used as given (sorted into film order)
    over = model.generate(batch, "context", selection_override=[[], [0], [1, 0]])
    assert [g.selected for g in over] == [[], [0], [0, 1]]
    probs = model.select_context(batch).probs
    assert [g.scores for g in over] == [[], [probs[1, 0].item()], probs[2, :2].tolist()]
    # and it is what reaches the prompt: the same as handing the decoder those items
    q = model.pme.encode_queries(batch.frames, batch.frame_mask)
    items = [[], [batch.contexts[1][0]], batch.contexts[2][:2]]
    assert model.decoder.generate(q, items, batch.subtitles) == [g.text for g in over]
    with pytest.raises(LocomadError, match="out of range"):
        model.generate(batch, "context", selection_override=[[], [5], []])
    with pytest.raises(LocomadError, match="unknown setting"):
        model.generate(batch, "oracle-ish")


def test_select_context_defaults_to_card_k(card):
    card.dsm.top_k = 2
    model = _model(card)
    batch = batch_of(card, 4)
    sel = model.select_context(batch)
    assert [len(i) for i in sel.indices] == [0, 1, 2, 2]
    assert [len(i) for i in model.select_context(batch, k=1).indices] == [0, 1, 1, 1]
    gens = model.generate(batch)
    assert [g.selected for g in gens] == sel.indices
    assert [g.scores for g in gens] == sel.scores


def test_stage2_freezes_the_pme(card):
    model = _model(card)
    s1 = {n for n, _ in model.trainable_parameters(1)}
    s2 = {n for n, _ in model.trainable_parameters(2)}
    assert s1 and all(n.startswith("pme.") for n in s1)
    assert s2 and not any(n.startswith("pme.") for n in s2)
    assert {"dsm.sampler.weight", "dsm.temp", "decoder.proj.weight"} <= s2
    with pytest.raises(ValueError):
        model.trainable_parameters(3)
    model.train()
    out = model.forward_stage2(batch_of(card, 3))
    assert set(out) == {"loss", "ccl", "gen"}
    assert out["loss"].item() == pytest.approx(0.5 * (out["ccl"] + out["gen"]).item())
    out["loss"].backward()
    assert all(p.grad is None for n, p in model.named_parameters() if n.startswith("pme."))
    assert model.pme.training  # the frozen PME ran in eval mode but the flag is restored


def test_bad_inputs_are_clear_errors(card):
    model = _model(card)
    batch = batch_of(card, 2)
    batch.texts = ["", "x"]
    with pytest.raises(LocomadError, match="description"):
        model.forward_stage2(batch)
    with pytest.raises(LocomadError, match="description"):
        model.forward_stage1(batch)
    batch = batch_of(card, 2)
    batch.frames = torch.zeros(2, 3, 7)
    with pytest.raises(LocomadError, match="7-d"):
        model.generate(batch)
    batch = batch_of(card, 3)
    batch.context_features = torch.zeros(3, card.dsm.proposal_len, 5)
    with pytest.raises(LocomadError, match="5-d"):
        model.select_context(batch)


def test_context_dropout_hides_the_items_from_the_prompt_only(card):
    """With context dropout 1 every prompt loses its items (the GEN loss is the local one),
    while the DSM still scores them (same CCL); in eval mode, or at 0, nothing changes."""
    model = _model(card)
    batch = batch_of(card, 4)
    model.train()
    model.decoder.llm.eval()  # no dropout draws: the three GEN losses compare exactly
    card.llm.max_context_tokens = 10_000
    torch.manual_seed(1)
    full = model.forward_stage2(batch)
    torch.manual_seed(1)
    hidden = model.forward_stage2(batch, context_dropout=1.0)
    torch.manual_seed(1)
    q = model._queries(*model._frames(batch))
    local = model.decoder.loss(q, [[] for _ in range(4)], batch.subtitles, batch.texts)
    assert hidden["ccl"].item() == pytest.approx(full["ccl"].item())
    assert hidden["gen"].item() != pytest.approx(full["gen"].item())
    assert hidden["gen"].item() == pytest.approx(local.item(), rel=1e-5)
    model.eval()
    torch.manual_seed(1)
    assert model.forward_stage2(batch, context_dropout=1.0)["gen"].item() != pytest.approx(
        hidden["gen"].item()
    )


def test_avoid_takes_the_best_candidate_that_is_not_a_repeat(card):
    """The recurrent loop's decoding constraint (llm.avoid_repeats): a description equal to
    an avoided text (case and spaces aside) gives way to the best other beam; others stay."""
    card.llm.num_beams = 1  # greedy, as the demo card: the other candidates need a new search
    card.llm.avoid_beams = 4
    model = _model(card)
    batch = batch_of(card, 3)
    plain = [g.text for g in model.generate(batch)]
    assert model.generate(batch, avoid=[[], ["not said"], []])[1].text == plain[1]
    shouted = "  " + plain[0].upper() + " "
    got = model.generate(batch, avoid=[[shouted], [], []])
    assert [g.text for g in got][1:] == plain[1:]
    assert got[0].text.lower() != plain[0].lower()
    # it is the best of avoid_beams beams that is not the repeat
    q = model.pme.encode_queries(batch.frames, batch.frame_mask)
    items = [[batch.contexts[0][j] for j in got[0].selected]]
    beams = model.decoder.generate_nbest(q[:1], items, batch.subtitles[:1], num_beams=4)[0]
    assert got[0].text == next(t for t, _ in beams if t.lower() != plain[0].lower())
    # every candidate avoided: the best one stays (a repeat is better than nothing)
    everything = [t for t, _ in beams] + [plain[0]]
    assert model.generate(batch, avoid=[everything, [], []])[0].text == plain[0]
    with pytest.raises(LocomadError, match="one text list per clip"):
        model.generate(batch, avoid=[[]])
