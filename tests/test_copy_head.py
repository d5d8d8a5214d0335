"""The decoder's copy head (card llm.copy): a pointer over the prompt's words mixed into the
LM's next-token distribution — what it may point at, that generation decodes exactly the
distribution training learns, and that it lets a small random-init decoder write a name it
never saw in training, which the plain decoder cannot."""

import pytest
import torch

from locomad_cli.card import load_card
from locomad_cli.data.records import ContextItem
from locomad_cli.model.checkpoint import load_model, save_model
from locomad_cli.model.decoder import QUERY
from locomad_cli.model.locomad import LoCoMAD
from locomad_cli.utils import LocomadError

pytestmark = pytest.mark.usefixtures("one_thread")


def _model(card, copy=True, seed=0):
    card.llm.copy = copy
    card.llm.train = "all"
    torch.manual_seed(seed)
    return LoCoMAD.from_card(card)


def _queries(card, n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, card.pme.num_queries, card.pme.hidden_size, generator=g)


def test_with_the_gate_open_the_mix_is_the_prompts_word_counts(card):
    """Gate fully open, attention uniform (zero query): the next token's probability is the
    share of the prompt's word positions that hold it; the visual queries, the special
    tokens and bos are never pointed at."""
    dec = _model(card).decoder
    with torch.no_grad():
        dec.copy.gate.bias.fill_(40.0)
        dec.copy.query.weight.zero_()
        dec.copy.query.bias.zero_()
    items = [[ContextItem("ab ab", "cd")]]
    ids, lab, mask = dec.training_inputs(items, ["ab"], ["ab"])
    logp = dec.copy_logprobs(_queries(card, 1), ids, lab, mask)
    p = logp.exp()[0].detach()
    assert torch.allclose(p.sum(-1), torch.ones(p.shape[0]), atol=1e-5)
    prompt = ids[0][lab[0] == -100]
    words = [int(t) for t in prompt if dec.copyable(t[None])[0]]
    assert QUERY in prompt.tolist() and words  # the layout holds queries and words
    first = int((lab[0] != -100).nonzero()[0]) - 1  # the step that writes the first target
    for tok in set(prompt.tolist()):
        expected = words.count(tok) / len(words)
        if tok >= 0:
            assert float(p[first, tok]) == pytest.approx(expected, abs=1e-4), tok
    for sid in [*dec.special_ids, dec.tok.bos_token_id]:
        assert float(p[first, sid]) < 1e-6


@pytest.mark.parametrize(("beams", "projected"), [(1, False), (3, False), (1, True)])
def test_generation_decodes_the_distribution_training_learns(card, beams, projected):
    """Greedy (and beam) generation with the copy head, batched with left padding, writes
    the tokens whose teacher-forced log-probabilities under the training path add up to its
    reported score: the processor sees the same hidden states and prompt as training.
    `projected`: an OPT whose hidden states are projected to a narrower embedding before its
    LM head (as OPT-350m's 1024 → 512); the head reads the projected states."""
    if projected:
        card.llm.config = dict(card.llm.config, hidden_size=64, word_embed_proj_dim=32)
    dec = _model(card, seed=3).decoder
    card.llm.min_new_tokens = 0
    with torch.no_grad():
        dec.copy.gate.bias.fill_(1.0)
    items = [[ContextItem("the red key lies here", "take it")], []]
    subs = ["where is it", "no"]
    q = _queries(card, 2)
    nbest = dec.generate_nbest_ids(q, items, subs, num_beams=beams)
    suppress = list(dec.special_ids)
    for i in range(2):
        out, score = nbest[i][0]
        text_ids = out + [dec.tok.eos_token_id]
        # rebuild the teacher-forced row: prompt + the generated ids (+ eos if it ended)
        prompt = dec.prompts([items[i]], [subs[i]])[0]
        ended = len(out) < card.llm.max_new_tokens
        target = text_ids if ended else out
        ids = torch.tensor([prompt + target])
        lab = torch.tensor([[-100] * len(prompt) + target])
        logp = dec.copy_logprobs(q[i : i + 1], ids, lab, torch.ones_like(ids), suppress)
        steps = logp[0, len(prompt) - 1 :].gather(-1, torch.tensor(target)[:, None])[:, 0]
        if beams == 1:
            assert score == pytest.approx(float(steps.mean()), abs=1e-4)
        else:  # HF's beam score: sum / length (length_penalty 1), eos counted
            assert score == pytest.approx(float(steps.sum()) / len(target), abs=1e-3)


def test_checkpoints_carry_the_copy_head_and_refuse_a_card_without_it(card, tmp_path):
    m = _model(card)
    with torch.no_grad():
        m.decoder.copy.gate.bias.fill_(0.7)
    save_model(m, tmp_path / "w")
    back = load_model(tmp_path / "w")
    assert back.decoder.copy is not None
    assert float(back.decoder.copy.gate.bias) == pytest.approx(0.7)
    plain = load_card(str(tmp_path / "w" / "card.yaml"))
    plain.llm.copy = False
    plain.weights = str(tmp_path / "w")
    with pytest.raises(LocomadError, match="llm.copy"):
        load_model(plain)


def _copy_task(names, g, n):
    """'<name> enters the kitchen.' in the context, '<name> sits down.' to write."""
    pick = [names[int(i)] for i in torch.randint(len(names), (n,), generator=g)]
    items = [[ContextItem(f"{nm} enters the kitchen.", "")] for nm in pick]
    return items, [""] * n, [f"{nm} sits down." for nm in pick]


@pytest.mark.slow
def test_the_copy_head_writes_a_name_never_seen_in_training():
    """A 1-layer decoder trained from random init on names of one half of the demo's pool
    writes the other half's names, which it never saw as targets, by copying them from its
    prompt; the same decoder without the copy head cannot (it writes names it learnt)."""
    from locomad_cli.demo.world import NAMES

    got = {}
    for copy in (True, False):
        card = load_card("demo")  # its tokenizer makes every name one token
        card.llm.config = dict(
            card.llm.config,
            num_hidden_layers=1,
            hidden_size=64,
            word_embed_proj_dim=64,
            ffn_dim=128,
            num_attention_heads=2,
        )
        dec = _model(card, copy=copy).decoder
        seen, unseen = list(NAMES[::2]), list(NAMES[1::2])
        opt = torch.optim.AdamW([p for p in dec.parameters() if p.requires_grad], lr=3e-3)
        g = torch.Generator().manual_seed(0)
        q = torch.zeros(16, card.pme.num_queries, card.pme.hidden_size)
        for _ in range(150):
            items, subs, targets = _copy_task(seen, g, 16)
            loss = dec.loss(q, items, subs, targets)
            opt.zero_grad()
            loss.backward()
            opt.step()
        dec.eval()
        items, subs, targets = _copy_task(unseen, g, 16)
        outs = dec.generate(q, items, subs)
        got[copy] = (
            sum(o.split()[:1] == t.split()[:1] for o, t in zip(outs, targets, strict=True)) / 16
        )
    assert got[True] >= 0.9, got
    assert got[False] <= 0.1, got
