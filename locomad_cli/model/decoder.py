"""Language decoder (Sec. 3.2, eq. 10-13): a causal LM prompted with the visual and context
prompts.

Prompt layout (one sequence per clip, every piece in film order, oldest first):

    [bos] <b_q> Proj_l(q̃)×Lq <e_q>                                  visual prompt (eq. 11)
    (<b_t> t*_i <e_t> <b_s> s*_i <e_s>) for each selected item      context prompt (eq. 10)
    <b_s> current subtitle <e_s>                                     current clip's dialogue
    instruction (card.llm.prompt)                                    e.g. "Describe the scene:"
    target <eos>                                                     training only, ≤ 36 tokens

The context part (items + current subtitle) is held to `max_context_tokens`: the oldest items
are dropped whole first, then the current subtitle loses its oldest words. The current
subtitle sits last, next to the target (the authors put it before the context): it keeps the
prompt in film order and survives truncation.

LLM training policy (card.llm.train): `none` freezes the LLM and the six added tokens;
`new-tokens` (default) freezes the LLM but trains the six added token embeddings, kept as
their own small parameter that replaces those rows on the way in (a gradient mask on the
whole embedding would still be weight-decayed by AdamW); `all` trains the LLM too. The six
tokens start at the mean of the vocabulary embeddings, not random, and are never generated.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from locomad_cli.card import ModelCard
from locomad_cli.data.records import ContextItem
from locomad_cli.model.tokenizer import LLM_SPECIAL_TOKENS
from locomad_cli.utils import LocomadError, hf_load_kwargs, hub_offline_hint

VisualHook = Callable[[torch.Tensor], torch.Tensor]
"""Maps the projected visual prompt [B, Lq, W] to what enters the LLM instead."""
QUERY = -1
"""Placeholder id in prompt sequences where a visual query embedding goes."""
TRAIN_POLICIES = ("none", "new-tokens", "all")


def load_llm(
    card: ModelCard,
    tokenizer: PreTrainedTokenizerBase,
    dtype: torch.dtype,
    pretrained: bool = True,
    config_dir: Path | None = None,
    name: str | None = None,
) -> PreTrainedModel:
    """The card's causal LM: random-init from `card.llm.config` (tiny/demo), from a saved
    config (checkpoints that carry the LLM weights), or `from_pretrained(name)` (default
    card.llm.name)."""
    name = name or card.llm.name
    try:
        if card.llm.config is not None:
            cfg = dict(card.llm.config)
            model_type = cfg.pop("model_type", "opt")
            cfg.setdefault("vocab_size", len(tokenizer))
            ids = {
                "pad_token_id": tokenizer.pad_token_id,
                "bos_token_id": tokenizer.bos_token_id,
                "eos_token_id": tokenizer.eos_token_id,
            }
            for key, value in ids.items():
                cfg.setdefault(key, value)
            config = AutoConfig.for_model(model_type, **cfg)
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
        elif config_dir is not None:
            model = AutoModelForCausalLM.from_config(
                AutoConfig.from_pretrained(config_dir), dtype=dtype
            )
        elif pretrained:
            model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype, **hf_load_kwargs(name))
        else:
            config = AutoConfig.from_pretrained(name, **hf_load_kwargs(name))
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except OSError:
        raise LocomadError(f"language model {hub_offline_hint(name)}") from None
    except (KeyError, ValueError) as e:
        raise LocomadError(f"language model '{name}': {e}") from None
    old = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        # deterministic new rows (the mean embedding): they only feed the output softmax (the
        # input side uses Decoder.special_embeds), and a checkpoint that leaves the frozen LLM
        # out must rebuild them exactly
        with torch.no_grad():
            w = model.get_input_embeddings().weight
            w[old:] = w[:old].float().mean(0).to(w.dtype)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != w.data_ptr():
                out.weight[old:] = out.weight[:old].float().mean(0).to(out.weight.dtype)
    return model


def _ids(tok: PreTrainedTokenizerBase, text: str) -> list[int]:
    text = " ".join(text.split())
    return tok(" " + text, add_special_tokens=False).input_ids if text else []


def build_prompt(
    tok: PreTrainedTokenizerBase,
    num_queries: int,
    items: list[ContextItem],
    subtitle: str,
    instruction: str,
    max_context_tokens: int,
) -> list[int]:
    """Token ids of one prompt (layout in the module docstring); QUERY marks the visual slots."""
    sp = dict(zip(LLM_SPECIAL_TOKENS, tok.convert_tokens_to_ids(LLM_SPECIAL_TOKENS), strict=True))
    blocks = [
        [
            sp["<b_t>"],
            *_ids(tok, it.text),
            sp["<e_t>"],
            sp["<b_s>"],
            *_ids(tok, it.subtitle),
            sp["<e_s>"],
        ]
        for it in items
    ]
    sub = _ids(tok, subtitle)
    while blocks and sum(map(len, blocks)) + len(sub) + 2 > max_context_tokens:
        blocks.pop(0)  # the oldest item goes first
    room = max(max_context_tokens - 2 - sum(map(len, blocks)), 0)
    sub = sub[len(sub) - room :] if len(sub) > room else sub
    head = [tok.bos_token_id] if tok.bos_token_id is not None else []
    visual = [sp["<b_q>"], *([QUERY] * num_queries), sp["<e_q>"]]
    context = [t for b in blocks for t in b] + [sp["<b_s>"], *sub, sp["<e_s>"]]
    return head + visual + context + _ids(tok, instruction)


def build_target(tok: PreTrainedTokenizerBase, text: str, max_tokens: int) -> list[int]:
    """The description's ids + eos, at most `max_tokens` in all."""
    return _ids(tok, text)[: max_tokens - 1] + [tok.eos_token_id]


class CopyHead(nn.Module):
    """A pointer over the prompt's words (pointer-generator, See et al. 2017; card llm.copy).

    p(w) = (1 - g) · softmax(LM logits)(w) + g · Σ_j a_j [x_j = w]: `a` attends from the
    LM's last hidden state at the step over its last hidden states at the prompt's word
    positions (context items, dialogue, instruction; never the visual or special tokens), and
    the gate `g` is learnt from the same state. Why: a pretrained LLM copies a name from its
    prompt by itself, a small one trained from random init may never learn to, and this
    gives it the copy as a path gradient can find (docs/notes/2026-12-02-demo-copy-head.md)."""

    def __init__(self, width: int, dim: int = 64):
        super().__init__()
        self.query = nn.Linear(width, dim)
        self.key = nn.Linear(width, dim)
        self.gate = nn.Linear(width, 1)
        self.scale = 1 / math.sqrt(dim)

    def mix(
        self,
        logits: torch.Tensor,
        hidden: torch.Tensor,
        keys: torch.Tensor,
        source: torch.Tensor,
        copyable: torch.Tensor,
    ) -> torch.Tensor:
        """Log-probabilities [N, T, V] of the mix, from the LM's `logits` [N, T, V] and last
        hidden states [N, T, W] at the steps, the prompt's `keys` [N, S, d], its token ids
        `source` [N, S] and which of them may be copied `copyable` [N, S]."""
        h = hidden.float()
        scores = torch.einsum("ntd,nsd->nts", self.query(h), keys) * self.scale
        scores = scores.masked_fill(~copyable[:, None, :], float("-inf"))
        attn = torch.nan_to_num(scores.softmax(-1))  # a row with nothing to copy: all zeros
        index = source.clamp(min=0)[:, None, :].expand(-1, h.shape[1], -1)
        copied = torch.zeros_like(logits, dtype=torch.float).scatter_add(-1, index, attn)
        g = torch.sigmoid(self.gate(h)) * copyable.any(-1)[:, None, None]
        p = (1 - g) * logits.float().softmax(-1) + g * copied
        return p.clamp(min=1e-12).log()


@dataclass
class NameTokens:
    """One prompt's names rule (LLMCard.names): the first tokens of the cast names it has not
    said, which the description may not contain, and of those it has."""

    unheard: list[int]
    heard: list[int]


class _NameRule(LogitsProcessor):
    """Unheard names out of the description. Where the model would rather write a name than
    anything else — the cast names' first tokens together outscore every other token — and
    the prompt has said a name, the likeliest heard name takes all the names' probability:
    the sentence goes on about a person the listener knows (banning alone would make the
    model write another sentence instead). Then every unheard name's first
    token gets -inf. Rows of `scores` are prompts x beams, prompt by prompt, as HF's
    generate lays them out."""

    def __init__(self, names: list[NameTokens], beams: int):
        self.names, self.beams = names, beams

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        for row in range(scores.shape[0]):
            rule = self.names[row // self.beams]
            if not rule.unheard:
                continue
            if rule.heard:
                cast = rule.unheard + rule.heard
                names = torch.logsumexp(scores[row, cast], 0)
                other = scores[row].clone()
                other[cast] = -math.inf
                if names > other.max():
                    scores[row, rule.heard[int(scores[row, rule.heard].argmax())]] = names
            scores[row, rule.unheard] = -math.inf
        return scores


class _WordLimit(LogitsProcessor):
    """No word past a slot's limit: once a beam has written `limits[prompt]` words, every
    token that starts a new word gets -inf, so the beam ends its sentence (a period, the
    end-of-sequence token) or finishes the word it is in. The search for a shorter wording
    when the n-best has none a voice can say in the slot ("A man in a green coat enters."
    where every beam walked on into "... the kitchen."); a beam cut off mid-phrase ends on a
    word no sentence ends on, which describe's rules then refuse."""

    def __init__(self, limits: list[int], beams: int, starts_word: torch.Tensor, decode):
        self.limits, self.beams, self.decode = limits, beams, decode
        self.starts_word = starts_word

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.starts_word.shape[0] != scores.shape[1]:  # the LM head may be wider
            wide = torch.zeros(scores.shape[1], dtype=torch.bool)
            n = min(scores.shape[1], self.starts_word.shape[0])
            wide[:n] = self.starts_word[:n]
            self.starts_word = wide
        mask = self.starts_word.to(scores.device)
        for row in range(scores.shape[0]):
            if len(self.decode(input_ids[row]).split()) >= self.limits[row // self.beams]:
                scores[row, mask] = -math.inf
        return scores


class _CopyLogits(LogitsProcessor):
    """Generation with the copy head: the LM's scores at each step replaced by the log of
    the mix (the LM's last hidden states come from a hook on its decoder; the prompt's keys
    from the first forward, which holds the whole prompt)."""

    def __init__(self, head: CopyHead, seen: dict, source: torch.Tensor, copyable: torch.Tensor):
        self.head, self.seen, self.source, self.copyable = head, seen, source, copyable
        self.keys: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        hidden = self.seen["hidden"]
        if self.keys is None:
            n = hidden.shape[0] // self.source.shape[0]  # beams: each prompt repeated n times
            self.source = self.source.repeat_interleave(n, 0)
            self.copyable = self.copyable.repeat_interleave(n, 0)
            self.keys = self.head.key(hidden[:, -self.source.shape[1] :].float())
        out = self.head.mix(scores[:, None], hidden[:, -1:], self.keys, self.source, self.copyable)
        return out[:, 0].to(scores.dtype)


class Decoder(nn.Module):
    def __init__(self, card: ModelCard, llm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        if card.llm.train not in TRAIN_POLICIES:
            raise LocomadError(
                f"llm.train is '{card.llm.train}'; choose one of {', '.join(TRAIN_POLICIES)}"
            )
        self.card = card
        self.llm = llm
        self.tok = tokenizer
        self._name_firsts: dict[str, set[int]] = {}  # name_tokens' cache, per cast name
        emb = llm.get_input_embeddings().weight
        width = emb.shape[1]  # OPT-350m: 512 (word_embed_proj_dim), not its hidden size 1024
        self.proj = nn.Linear(card.pme.hidden_size, width)  # Proj_l (eq. 11)
        # q̃ standardised per dimension first (card.llm.visual_norm): running statistics,
        # updated while stage 2 trains, fixed at inference
        self.visual_norm = (
            nn.BatchNorm1d(card.pme.hidden_size, affine=False)
            if card.llm.visual_norm == "batch"
            else None
        )
        self.special_ids = tokenizer.convert_tokens_to_ids(LLM_SPECIAL_TOKENS)
        base = emb[: min(emb.shape[0], tokenizer.vocab_size)].detach().float()
        noise = torch.randn(len(LLM_SPECIAL_TOKENS), width) * base.std(0) * 0.1
        self.special_embeds = nn.Parameter(base.mean(0) + noise)
        # the copy head reads what the LM head reads: OPT-350m projects its 1024-d hidden
        # states to 512 first
        head = llm.get_output_embeddings()
        self.copy = (
            CopyHead(head.weight.shape[1] if head is not None else width) if card.llm.copy else None
        )

    # -- embeddings -------------------------------------------------------------------------

    def embed(
        self,
        ids: torch.Tensor,
        queries: torch.Tensor | None,
        visual: VisualHook | None = None,
        prompt: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Input embeddings for `ids` [B, L] (QUERY slots filled from `queries` [B, Lq, H] in
        order; the added special tokens from `special_embeds`). `visual` may replace the
        projected visual prompt [B, Lq, W] (ablations: zeroed, shuffled across slots);
        `prompt` is an already projected one, used instead of `queries`."""
        table = self.llm.get_input_embeddings()
        x = table(ids.clamp(min=0))
        special = torch.full_like(ids, -1)
        for j, sid in enumerate(self.special_ids):
            special[ids == sid] = j
        sp = self.special_embeds.to(x.dtype)[special.clamp(min=0)]
        x = torch.where((special >= 0)[..., None], sp, x)
        q = self.project(queries) if prompt is None else prompt
        if visual is not None:
            q = visual(q)
        q = q.to(x.dtype)
        return x.masked_scatter((ids == QUERY)[..., None], q)

    def project(self, queries: torch.Tensor) -> torch.Tensor:
        """The visual prompt: q̃ [B, Lq, H] → (standardised, then Proj_l) [B, Lq, W]."""
        q = queries.float()
        if self.visual_norm is not None:
            q = self.visual_norm(q.flatten(0, 1)).view_as(q)
        return self.proj(q)

    def prompts(self, items: list[list[ContextItem]], subtitles: list[str]) -> list[list[int]]:
        c = self.card
        return [
            build_prompt(
                self.tok, c.pme.num_queries, its, sub, c.llm.prompt, c.llm.max_context_tokens
            )
            for its, sub in zip(items, subtitles, strict=True)
        ]

    # -- training ---------------------------------------------------------------------------

    def hold_words(self, words: list[str]) -> torch.utils.hooks.RemovableHandle:
        """Keep the token rows of `words` (those that are one token) at their embeddings
        while training: their gradient is zeroed. For names renamed at random (`locomad
        train --rename-names`): exchangeable names get the same gradient whichever row
        stands for which, and with tied input and output embeddings the cheapest way to the
        uniform guess over names is to make their rows equal, and a decoder that cannot tell
        names apart cannot copy one. Held, they stay apart
        (docs/notes/2026-12-02-demo-copy-head.md)."""
        emb = self.llm.get_input_embeddings().weight
        rows = [
            ids[0]
            for ids in (self.tok(" " + w, add_special_tokens=False).input_ids for w in words)
            if len(ids) == 1
        ]
        keep = torch.ones(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
        keep[rows] = 0
        return emb.register_hook(lambda g: g * keep.to(g.dtype))

    def training_inputs(
        self, items: list[list[ContextItem]], subtitles: list[str], targets: list[str]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded (ids, labels, attention mask) of prompt + target: labels are -100 on
        the prompt and the padding, so only the description is learned."""
        pad = self.tok.pad_token_id
        rows, labels = [], []
        for p, text in zip(self.prompts(items, subtitles), targets, strict=True):
            t = build_target(self.tok, text, self.card.llm.max_target_tokens)
            rows.append(p + t)
            labels.append([-100] * len(p) + t)
        n = max(map(len, rows))
        ids = torch.tensor([r + [pad] * (n - len(r)) for r in rows])
        lab = torch.tensor([r + [-100] * (n - len(r)) for r in labels])
        mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in rows])
        return ids, lab, mask

    def loss(
        self,
        queries: torch.Tensor,
        items: list[list[ContextItem]],
        subtitles: list[str],
        targets: list[str],
    ) -> torch.Tensor:
        """L_GEN: cross-entropy on the target tokens only."""
        dev = queries.device
        ids, lab, mask = (t.to(dev) for t in self.training_inputs(items, subtitles, targets))
        if self.copy is None:
            out = self.llm(inputs_embeds=self.embed(ids, queries), attention_mask=mask, labels=lab)
            return out.loss.float()
        logp = self.copy_logprobs(queries, ids, lab, mask)
        return nn.functional.nll_loss(logp.flatten(0, 1), lab[:, 1:].flatten(), ignore_index=-100)

    def loss_with_contrast(
        self,
        queries: torch.Tensor,
        negatives: torch.Tensor,
        items: list[list[ContextItem]],
        subtitles: list[str],
        targets: list[str],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(L_GEN, the visual margin Δ [B]): Δ_i is log p(target_i | its own visual prompt)
        − log p(target_i | clip `negatives[i]`'s prompt), the same words around both. Δ is
        the description's pointwise information about its clip's pixels: only the tokens the
        pixels decide (the room, a look, a prop) can raise it, so a loss on Δ rewards reading
        the visual prompt, for an LLM that writes from its language prior (on the demo it did
        not: docs/notes/2026-12-04-demo-visual-read.md). The negative
        prompts are the batch's own, reordered, so the visual norm sees the batch once; one
        LLM pass over the batch twice; L_GEN is `loss`'s."""
        dev = queries.device
        ids, lab, mask = (t.to(dev) for t in self.training_inputs(items, subtitles, targets))
        n = ids.shape[0]
        ids2, lab2, mask2 = ids.repeat(2, 1), lab.repeat(2, 1), mask.repeat(2, 1)
        prompt = self.project(queries)
        both = torch.cat([prompt, prompt[negatives.to(dev)]])
        x = self.embed(ids2, None, prompt=both)
        if self.copy is None:
            logp = self.llm(inputs_embeds=x, attention_mask=mask2).logits[:, :-1].float()
            logp = logp.log_softmax(-1)
        else:
            logp = self.copy_logprobs(None, ids2, lab2, mask2, embeds=x)
        target = lab2[:, 1:]
        keep = target != -100
        tok = logp.gather(-1, target.clamp(min=0)[..., None])[..., 0] * keep
        gen = -tok[:n].sum() / keep[:n].sum().clamp(min=1)
        seq = tok.sum(1)
        return gen, seq[:n] - seq[n:]

    def copy_logprobs(
        self,
        queries: torch.Tensor | None,
        ids: torch.Tensor,
        labels: torch.Tensor,
        mask: torch.Tensor,
        suppress: list[int] | None = None,
        embeds: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Teacher-forced log-probabilities [B, L-1, V] of the next token under the copy
        head's mix (`training_inputs` rows; the prompt is where labels are -100). `suppress`:
        token ids the LM may not write (as generation suppresses the special tokens);
        `embeds`: the input embeddings, where they are not `embed(ids, queries)`'s."""
        x = self.embed(ids, queries) if embeds is None else embeds
        with self._last_hidden() as seen:
            logits = self.llm(inputs_embeds=x, attention_mask=mask).logits
        if suppress:
            logits = logits.clone()
            logits[..., suppress] = float("-inf")
        hidden = seen["hidden"]
        copyable = self.copyable(ids) & (labels == -100) & mask.bool()  # the prompt's words
        keys = self.copy.key(hidden.float())
        return self.copy.mix(logits[:, :-1], hidden[:, :-1], keys, ids, copyable)

    def name_tokens(self, unheard: list[str], heard: list[str]) -> NameTokens:
        """The names rule of one prompt (_NameRule): the token ids that start a `heard` name,
        and those that start an `unheard` one but no heard one (with and without a leading
        space: mid-sentence and at the start). With a BPE vocabulary a name's first piece
        ("Ol" of "Olga") is banned for every word it starts. Each name is tokenized once per
        decoder: the same cast comes back at every slot."""

        def firsts(names: list[str]) -> set[int]:
            out: set[int] = set()
            for name in names:
                if name not in self._name_firsts:
                    found = set()
                    for form in (name, " " + name):
                        ids = self.tok(form, add_special_tokens=False).input_ids
                        if ids and self.tok.decode(ids[:1]).strip():  # never a bare space
                            found.add(ids[0])
                    self._name_firsts[name] = found
                out |= self._name_firsts[name]
            return out

        said = firsts(heard)
        return NameTokens(sorted(firsts(unheard) - said), sorted(said))

    def copyable(self, ids: torch.Tensor) -> torch.Tensor:
        """Which prompt positions the copy head may point at: words, not the visual queries,
        the added special tokens, padding, bos or eos."""
        tok = self.tok
        out = ids >= 0
        for t in (*self.special_ids, tok.pad_token_id, tok.bos_token_id, tok.eos_token_id):
            if t is not None:
                out &= ids != t
        return out

    @contextlib.contextmanager
    def _last_hidden(self) -> Iterator[dict]:
        """The LM's last hidden states of each forward while inside (a hook on its decoder:
        the states its LM head reads)."""
        seen: dict = {}

        def keep(_module, _inputs, output) -> None:
            seen["hidden"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

        handle = self.llm.get_decoder().register_forward_hook(keep)
        try:
            yield seen
        finally:
            handle.remove()

    # -- generation -------------------------------------------------------------------------

    @torch.no_grad()
    def generate_nbest_ids(
        self,
        queries: torch.Tensor,
        items: list[list[ContextItem]],
        subtitles: list[str],
        visual: VisualHook | None = None,
        num_beams: int | None = None,
        names: list[NameTokens] | None = None,
        word_limits: list[int] | None = None,
    ) -> list[list[tuple[list[int], float]]]:
        """Batched generation (left-padded prompts, KV cache). Per clip, the candidates best
        first as (token ids, score): every beam when the beam count (`num_beams`, default
        llm.num_beams) is > 1, the one greedy sequence otherwise. At most max_new_tokens ids
        each, the end-of-sequence token and what follows removed. The score is the
        length-normalised log-probability under the decoding's own (suppressed-token)
        distribution: HF's beam score, and for greedy the mean log-probability of its tokens
        (the beam score with length_penalty 1). `names[i]`: clip i's names rule
        (name_tokens): its candidates never contain an unheard name's first token.
        `word_limits[i]`: no candidate of clip i runs past that many words (_WordLimit)."""
        pad = self.tok.pad_token_id
        rows = self.prompts(items, subtitles)
        n = max(map(len, rows))
        dev = queries.device
        ids = torch.tensor([[pad] * (n - len(r)) + r for r in rows], device=dev)
        mask = torch.tensor([[0] * (n - len(r)) + [1] * len(r) for r in rows], device=dev)
        c = self.card.llm
        beams = max(1, c.num_beams if num_beams is None else num_beams)
        with contextlib.ExitStack() as stack:
            processors = LogitsProcessorList()
            if self.copy is not None:
                seen = stack.enter_context(self._last_hidden())
                processors.append(
                    _CopyLogits(self.copy, seen, ids, self.copyable(ids) & mask.bool())
                )
            if names is not None and any(r.unheard for r in names):
                if len(names) != len(rows):
                    raise LocomadError("names needs one rule per clip")
                processors.append(_NameRule(names, beams))
            if word_limits is not None:
                decode = functools.partial(self.tok.decode, skip_special_tokens=True)
                processors.append(_WordLimit(word_limits, beams, self.starts_word(), decode))
            out = self._generate(ids, mask, queries, visual, beams, processors)
        seqs = out.sequences[:, : c.max_new_tokens].tolist()
        lengths = []
        for k, row in enumerate(seqs):
            if self.tok.eos_token_id in row:
                seqs[k] = row[: row.index(self.tok.eos_token_id)]
                lengths.append(len(seqs[k]) + 1)  # the eos token is scored too
            else:
                lengths.append(len(row))
        if beams > 1:
            scores = out.sequences_scores.float().tolist()
        else:
            steps = self.llm.compute_transition_scores(
                out.sequences, out.scores, normalize_logits=True
            ).float()
            scores = [float(steps[k, : max(1, lengths[k])].mean()) for k in range(steps.shape[0])]
        return [
            [(seqs[i * beams + j], scores[i * beams + j]) for j in range(beams)]
            for i in range(len(rows))
        ]

    def _generate(
        self,
        ids: torch.Tensor,
        mask: torch.Tensor,
        queries: torch.Tensor,
        visual: VisualHook | None,
        beams: int,
        processors: LogitsProcessorList,
    ) -> Any:
        """HF generate on the prompt embeddings (left-padded `ids`), KV cache, the special
        tokens suppressed; `processors` (the copy head) run after HF's own."""
        c = self.card.llm
        return self.llm.generate(
            inputs_embeds=self.embed(ids, queries, visual),
            attention_mask=mask,
            max_new_tokens=c.max_new_tokens,
            min_new_tokens=min(c.min_new_tokens, c.max_new_tokens),
            num_beams=beams,
            num_return_sequences=beams,
            do_sample=False,
            use_cache=True,
            eos_token_id=self.tok.eos_token_id,
            pad_token_id=self.tok.pad_token_id,
            suppress_tokens=list(self.special_ids),
            output_scores=True,
            return_dict_in_generate=True,
            logits_processor=processors,
        )

    def generate_ids(
        self,
        queries: torch.Tensor,
        items: list[list[ContextItem]],
        subtitles: list[str],
        visual: VisualHook | None = None,
    ) -> list[list[int]]:
        """The best candidate's token ids per clip (see generate_nbest_ids)."""
        return [c[0][0] for c in self.generate_nbest_ids(queries, items, subtitles, visual)]

    def starts_word(self) -> torch.Tensor:
        """[vocab] bool: the tokens that begin a new word (byte-level BPE's leading 'Ġ',
        SentencePiece's '▁')."""
        if getattr(self, "_starts_word", None) is None:
            pieces = self.tok.convert_ids_to_tokens(list(range(len(self.tok))))
            self._starts_word = torch.tensor(
                [p is not None and p[:1] in ("Ġ", "▁") for p in pieces], dtype=torch.bool
            )
        return self._starts_word

    def generate_nbest(
        self,
        queries: torch.Tensor,
        items: list[list[ContextItem]],
        subtitles: list[str],
        visual: VisualHook | None = None,
        num_beams: int | None = None,
        names: list[NameTokens] | None = None,
        word_limits: list[int] | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Per clip, (text, score) candidates best first, repeated texts dropped (two token
        sequences can decode to the same words)."""
        result = []
        nbest = self.generate_nbest_ids(
            queries, items, subtitles, visual, num_beams, names, word_limits
        )
        for cands in nbest:
            seen: dict[str, float] = {}
            for ids, score in cands:
                text = self.tok.decode(ids, skip_special_tokens=True).strip()
                seen.setdefault(text, score)
            result.append(list(seen.items()))
        return result

    def generate(
        self,
        queries: torch.Tensor,
        items: list[list[ContextItem]],
        subtitles: list[str],
        visual: VisualHook | None = None,
    ) -> list[str]:
        return [
            self.tok.decode(r, skip_special_tokens=True).strip()
            for r in self.generate_ids(queries, items, subtitles, visual)
        ]
