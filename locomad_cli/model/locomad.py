"""LoCo-MAD: the PME (stage 1), the DSM and the language decoder (stage 2) as one module.

Entry points take a `ClipBatch` (data/records.py) and tokenize text themselves:
`forward_stage1` (eq. 4), `forward_stage2` (eq. 13), `select_context` (eq. 5-7) and
`generate` (eq. 10-12). The `local` setting is the `context` path with an empty selection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from locomad_cli.card import MODELS_DIR, ModelCard
from locomad_cli.data.records import ClipBatch, ContextItem, subsample_frames
from locomad_cli.model.decoder import Decoder, NameTokens, VisualHook, load_llm
from locomad_cli.model.dsm import DSM, Selection
from locomad_cli.model.pme import PME, on_query_path
from locomad_cli.model.tokenizer import load_tokenizer
from locomad_cli.tracks.rules import is_empty_or_truncated, is_repeat, names_heard, text_key
from locomad_cli.utils import LocomadError, resolve_dtype

SETTINGS = ("context", "local")


@dataclass
class Generation:
    text: str
    selected: list[int]
    """Indices into the clip's `batch.contexts[i]` (film order) used in the prompt."""
    scores: list[float]
    """The DSM's scores of the selected items (also for overrides; empty for `local`)."""
    candidates: list[tuple[str, float]] = field(default_factory=list)
    """The decoder's n-best (text, score), best first; `text` is the first unless it
    repeated an avoided text (llm.avoid_repeats). One candidate for greedy cards (llm.num_beams
    1). See Decoder.generate_nbest_ids for the score."""


class LoCoMAD(nn.Module):
    def __init__(
        self,
        card: ModelCard,
        pme_tokenizer: PreTrainedTokenizerBase,
        llm_tokenizer: PreTrainedTokenizerBase,
        llm: nn.Module,
    ):
        super().__init__()
        self.card = card
        self.pme_tokenizer = pme_tokenizer
        self.llm_tokenizer = llm_tokenizer
        vocab = max(len(pme_tokenizer), card.pme.vocab_size or 0)
        self.pme = PME(card, vocab, pme_tokenizer.pad_token_id)
        self.dsm = DSM(card)
        self.decoder = Decoder(card, llm, llm_tokenizer)
        self.train(False)

    @classmethod
    def from_card(
        cls,
        card: ModelCard,
        device: str = "cpu",
        pretrained: bool = True,
        pme_init: bool | None = None,
        tokenizer_dir: str | None = None,
        llm_config_dir: str | None = None,
    ) -> LoCoMAD:
        """Build the model a card describes. `pretrained` loads the LLM from card.llm.name
        (hub or local) and, unless `pme_init` says otherwise, the PME from card.pme.init.
        Checkpoints skip what they carry and bring their own tokenizers
        (`tokenizer_dir/pme`, `tokenizer_dir/llm`)."""
        if tokenizer_dir is not None:
            pme_tok = load_tokenizer(f"{tokenizer_dir}/pme", "pme")
            llm_tok = load_tokenizer(f"{tokenizer_dir}/llm", "llm")
        else:
            pme_tok = load_tokenizer(card_path(card, card.pme.tokenizer), "pme")
            llm_tok = load_tokenizer(card_path(card, card.llm.tokenizer or card.llm.name), "llm")
        dtype = resolve_dtype(card.llm.dtype, device)
        llm = load_llm(
            card,
            llm_tok,
            dtype,
            pretrained=pretrained,
            config_dir=llm_config_dir,
            name=card_path(card, card.llm.name),
        )
        model = cls(card, pme_tok, llm_tok, llm)
        if (pretrained if pme_init is None else pme_init) and card.pme.init:
            model.pme.load_bert(card_path(card, card.pme.init))
        return model.to(device)

    @property
    def device(self) -> torch.device:
        return self.pme.query_tokens.device

    def train(self, mode: bool = True) -> LoCoMAD:
        """A frozen LLM stays in eval mode (no dropout) while the rest trains."""
        super().train(mode)
        if self.card.llm.train != "all":
            self.decoder.llm.eval()
        return self

    def trainable_parameters(self, stage: int) -> list[tuple[str, nn.Parameter]]:
        """Stage 1 trains the PME. Stage 2 trains the DSM, Proj_l, the copy head (llm.copy)
        and, per card.llm.train, the six added token embeddings and/or the whole LLM; per
        card.pme.train_stage2 the PME stays frozen or its query path trains too
        (`pme.on_query_path`: the text side gets no gradient in stage 2, and unused
        parameters would stall DDP)."""
        if stage == 1:
            return [(n, p) for n, p in self.named_parameters() if n.startswith("pme.")]
        if stage != 2:
            raise ValueError(f"stage is 1 or 2, not {stage}")
        policy = self.card.llm.train
        pme_trains = self.card.pme.train_stage2 == "all"
        out = []
        for n, p in self.named_parameters():
            if n.startswith(("dsm.", "decoder.proj.", "decoder.copy.")):
                out.append((n, p))
            elif n.startswith("pme.") and pme_trains and on_query_path(n[len("pme.") :]):
                out.append((n, p))
            elif n == "decoder.special_embeds" and policy != "none":
                out.append((n, p))
            elif n.startswith("decoder.llm.") and policy == "all":
                out.append((n, p))
        return out

    # -- inputs -----------------------------------------------------------------------------

    def _frames(self, batch: ClipBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames on the model's device; clips over pme.max_frames are uniformly subsampled."""
        frames, mask = batch.frames.to(self.device).float(), batch.frame_mask.to(self.device)
        if frames.shape[2] != self.card.clip.dim:
            raise LocomadError(
                f"frame features are {frames.shape[2]}-d but model card '{self.card.name}' "
                f"expects {self.card.clip.dim}-d ({self.card.clip.model})"
            )
        limit = self.card.pme.max_frames
        if frames.shape[1] <= limit:
            return frames, mask.bool()
        out = torch.zeros(frames.shape[0], limit, frames.shape[2], device=self.device)
        out_mask = torch.zeros(frames.shape[0], limit, dtype=torch.bool, device=self.device)
        for i in range(frames.shape[0]):
            f = subsample_frames(frames[i, mask[i].bool()], limit)
            out[i, : f.shape[0]] = f
            out_mask[i, : f.shape[0]] = True
        return out, out_mask

    def _context(self, batch: ClipBatch) -> tuple[torch.Tensor, torch.Tensor]:
        dim = batch.context_features.shape[2]
        if dim != self.card.clip.dim and batch.context_mask.any():
            raise LocomadError(
                f"context text features are {dim}-d but model card '{self.card.name}' "
                f"expects {self.card.clip.dim}-d CLIP text embeddings ({self.card.clip.model})"
            )
        return (
            batch.context_features.to(self.device).float(),
            batch.context_mask.to(self.device).bool(),
        )

    # -- stage 1 ----------------------------------------------------------------------------

    def forward_stage1(
        self, batch: ClipBatch, generator: torch.Generator | None = None
    ) -> dict[str, torch.Tensor]:
        """L_s1 = L_VTC + L_VTM + L_VTG (eq. 4) on the batch's descriptions."""
        if any(not t.strip() for t in batch.texts):
            raise LocomadError("stage 1 needs a description for every clip in the batch")
        frames, fmask = self._frames(batch)
        tok = self.pme_tokenizer(
            batch.texts,
            padding="longest",
            truncation=True,
            max_length=self.card.pme.max_text_len,
            return_tensors="pt",
        ).to(self.device)
        norm = [text_key(t) for t in batch.texts]
        same = torch.tensor([[a == b for b in norm] for a in norm], device=self.device)
        return self.pme.stage1_losses(
            frames,
            fmask,
            tok["input_ids"],
            tok["attention_mask"].bool(),
            same,
            self.pme_tokenizer.bos_token_id,
            generator,
        )

    # -- stage 2 ----------------------------------------------------------------------------

    def _queries(self, frames: torch.Tensor, fmask: torch.Tensor) -> torch.Tensor:
        """q̃ from the PME: trained along (pme.train_stage2: all) in the model's own mode or,
        with pme.stage2_dropout false, in eval mode (gradient, no dropout); or frozen in eval
        mode (no dropout, no gradient)."""
        trains = self.card.pme.train_stage2 == "all"
        if trains and self.card.pme.stage2_dropout:
            return self.pme.encode_queries(frames, fmask)
        was = self.pme.training
        self.pme.eval()
        try:
            with torch.enable_grad() if trains else torch.no_grad():
                return self.pme.encode_queries(frames, fmask)
        finally:
            self.pme.train(was)

    def forward_stage2(
        self, batch: ClipBatch, context_dropout: float = 0.0, visual_contrast: float = 0.0
    ) -> dict[str, torch.Tensor]:
        """L_s2 = ½ (L_CCL + L_GEN) (eq. 13), the prompt holding the DSM's top-k items.

        `context_dropout`: the chance that a clip's prompt leaves its selected items out
        (the DSM and its CCL still see them). Under teacher forcing the reference context
        names the room, the look and the prop of most slots, so an LLM can learn to copy
        them from the context instead of reading the visual prompt; at inference the context
        is its own earlier output and the copy goes wrong (docs/demo.md).

        `visual_contrast` w > 0 adds w · mean softplus(−Δ), Δ a description's log-likelihood
        under its own visual prompt minus under the previous clip's in the batch (its words, context
        and dialogue unchanged; `Decoder.loss_with_contrast`); clips whose neighbour has the
        same description are left out of it."""
        if any(not t.strip() for t in batch.texts):
            raise LocomadError("stage 2 needs a description for every clip in the batch")
        frames, fmask = self._frames(batch)
        ctx, cmask = self._context(batch)
        q = self._queries(frames, fmask)
        sel = self.dsm.select(ctx, cmask, frames, fmask)
        ccl = self.dsm.ccl(ctx, cmask, frames, fmask, sel)
        items = _pick(batch.contexts, sel.indices)
        if context_dropout > 0 and self.training:
            hide = (torch.rand(len(items)) < context_dropout).tolist()
            items = [[] if h else it for it, h in zip(items, hide, strict=True)]
        if visual_contrast > 0 and self.training and len(batch.texts) > 1:
            previous = torch.arange(len(batch.texts)).roll(1)
            gen, margin = self.decoder.loss_with_contrast(
                q, previous, items, batch.subtitles, batch.texts
            )
            norm = [text_key(t) for t in batch.texts]
            differs = torch.tensor(
                [a != b for a, b in zip(norm, norm[-1:] + norm[:-1], strict=True)],
                device=margin.device,
            )
            vis = (nn.functional.softplus(-margin) * differs).sum() / differs.sum().clamp(min=1)
            loss = 0.5 * (ccl + gen) + visual_contrast * vis
            return {"loss": loss, "ccl": ccl, "gen": gen, "visual": vis}
        gen = self.decoder.loss(q, items, batch.subtitles, batch.texts)
        return {"loss": 0.5 * (ccl + gen), "ccl": ccl, "gen": gen}

    @torch.no_grad()
    def select_context(self, batch: ClipBatch, k: int | None = None) -> Selection:
        """The DSM's top-k (card.dsm.top_k by default) proposal items per clip, film order
        (eval mode: no dropout in the scores, whatever mode the model is in)."""
        was = self.dsm.training
        self.dsm.eval()
        try:
            frames, fmask = self._frames(batch)
            ctx, cmask = self._context(batch)
            sel = self.dsm.select(ctx, cmask, frames, fmask, k)
        finally:
            self.dsm.train(was)
        sel.probs = sel.probs.detach()
        return sel

    @torch.no_grad()
    def generate(
        self,
        batch: ClipBatch,
        setting: str = "context",
        selection_override: list[list[int]] | None = None,
        visual: VisualHook | None = None,
        avoid: list[list[str]] | None = None,
        names: list[str] | None = None,
        budgets: list[float] | None = None,
    ) -> list[Generation]:
        """Describe each clip. `context`: the DSM picks the items (or `selection_override`
        gives indices into batch.contexts[i]); `local`: no context items, same path.
        `visual` replaces the projected visual prompt (the demo's ablations). `avoid[i]`:
        texts clip i's description may not equal (the recurrent loop's previous
        descriptions, llm.avoid_repeats); see `_avoid_repeats`. `names` (default
        llm.names): character names a description may use only once its prompt holds them
        (the slot's dialogue or a chosen context item); see `unheard_names`. `budgets[i]`:
        the words clip i's slot has time for; candidates are ranked to fit it
        (`rank_to_budget`, llm.length_weight) before anything is chosen."""
        if setting not in SETTINGS:
            raise LocomadError(f"unknown setting '{setting}' (choose {', '.join(SETTINGS)})")
        was = self.training
        self.eval()
        try:
            frames, fmask = self._frames(batch)
            q = self.pme.encode_queries(frames, fmask)
            n = len(batch)
            if setting == "local":
                idx: list[list[int]] = [[] for _ in range(n)]
                scores: list[list[float]] = [[] for _ in range(n)]
            elif selection_override is not None:
                if len(selection_override) != n:
                    raise LocomadError("selection_override needs one index list per clip")
                idx = [sorted(set(s)) for s in selection_override]
                for i, s in enumerate(idx):
                    if any(j < 0 or j >= len(batch.contexts[i]) for j in s):
                        raise LocomadError(f"selection_override for clip {i} is out of range")
                probs = self.select_context(batch).probs
                scores = [[float(probs[i, j]) for j in s] for i, s in enumerate(idx)]
            else:
                sel = self.select_context(batch)
                idx, scores = sel.indices, sel.scores
            items = _pick(batch.contexts, idx)
            cast = self.card.llm.names if names is None else names
            rules = None
            if cast:
                rules = [
                    self.decoder.name_tokens(*unheard_names(cast, subtitle, its))
                    for subtitle, its in zip(batch.subtitles, items, strict=True)
                ]
            nbest = self.decoder.generate_nbest(q, items, batch.subtitles, visual, names=rules)
            if budgets is not None and self.card.llm.length_weight > 0:
                if len(budgets) != n:
                    raise LocomadError("budgets needs one word budget per clip")
                nbest = self._fit_budgets(q, items, batch.subtitles, visual, nbest, budgets, rules)
            texts = [c[0][0] for c in nbest]
            if avoid is not None:
                texts = self._avoid_repeats(
                    q, items, batch.subtitles, visual, nbest, avoid, rules, budgets
                )
        finally:
            self.train(was)
        return [
            Generation(text=t, selected=i, scores=s, candidates=c)
            for t, c, i, s in zip(texts, nbest, idx, scores, strict=True)
        ]

    def _fit_budgets(
        self,
        q: torch.Tensor,
        items: list[list[ContextItem]],
        subtitles: list[str],
        visual: VisualHook | None,
        nbest: list[list[tuple[str, float]]],
        budgets: list[float],
        rules: list[NameTokens] | None,
    ) -> list[list[tuple[str, float]]]:
        """Each clip's n-best ranked to its budget (rank_to_budget). A clip none of whose
        candidates fits even at describer.max_words_per_minute is searched again (llm.avoid_beams
        beams, at least 2) with no word past that limit (Decoder's word_limits), and the
        shorter wordings found join its n-best (whole sentences only: a beam the limit cut
        off mid-phrase is no candidate)."""
        c, rate = self.card.llm, self.card.describer
        limits = [
            max(1, int(b * rate.max_words_per_minute / rate.words_per_minute)) for b in budgets
        ]
        short = [
            i
            for i, (cands, lim) in enumerate(zip(nbest, limits, strict=True))
            if all(len(t.split()) > lim for t, _ in cands)
        ]
        if short:
            more = self.decoder.generate_nbest(
                q[short],
                [items[i] for i in short],
                [subtitles[i] for i in short],
                visual,
                num_beams=max(c.avoid_beams, c.num_beams, 2),
                names=None if rules is None else [rules[i] for i in short],
                word_limits=[limits[i] for i in short],
            )
            for i, extra in zip(short, more, strict=True):
                seen = {t for t, _ in nbest[i]}
                whole = [(t, s) for t, s in extra if not is_empty_or_truncated(t)]
                nbest[i] = nbest[i] + [(t, s) for t, s in whole if t not in seen]
        w = c.length_weight
        return [rank_to_budget(cands, b, w) for cands, b in zip(nbest, budgets, strict=True)]

    def _avoid_repeats(
        self,
        q: torch.Tensor,
        items: list[list[ContextItem]],
        subtitles: list[str],
        visual: VisualHook | None,
        nbest: list[list[tuple[str, float]]],
        avoid: list[list[str]],
        rules: list[NameTokens] | None = None,
        budgets: list[float] | None = None,
    ) -> list[str]:
        """Per clip, the best candidate that is not word for word one of `avoid[i]`
        (compared case- and space-insensitively); clips whose every candidate is avoided are
        decoded again with llm.avoid_beams beams. Where all of those are avoided too, the
        best candidate stays: a repeat is better than nothing."""
        if len(avoid) != len(nbest):
            raise LocomadError("avoid needs one text list per clip")

        def first_new(cands: list[tuple[str, float]], recent: list[str]) -> str | None:
            return next((t for t, _ in cands if not is_repeat(t, recent)), None)

        texts = [first_new(c, a) for c, a in zip(nbest, avoid, strict=True)]
        again = [i for i, t in enumerate(texts) if t is None]
        beams = max(self.card.llm.avoid_beams, self.card.llm.num_beams, 2)
        if again:
            more = self.decoder.generate_nbest(
                q[again],
                [items[i] for i in again],
                [subtitles[i] for i in again],
                visual,
                num_beams=beams,
                names=None if rules is None else [rules[i] for i in again],
            )
            for i, cands in zip(again, more, strict=True):
                if budgets is not None and self.card.llm.length_weight > 0:
                    cands = rank_to_budget(cands, budgets[i], self.card.llm.length_weight)
                texts[i] = first_new(cands, avoid[i])
        return [t if t is not None else c[0][0] for t, c in zip(texts, nbest, strict=True)]


def rank_to_budget(
    candidates: list[tuple[str, float]], budget: float, weight: float
) -> list[tuple[str, float]]:
    """The n-best reordered for a slot with time for `budget` words: by score minus `weight`
    per word over the budget (the scores are mean log-probabilities per token, so one word
    over costs about as much as a much less likely wording). Within the budget the order is
    the decoder's; the (text, score) pairs themselves are unchanged."""

    def fitted(c: tuple[str, float]) -> float:
        return c[1] - weight * max(0.0, len(c[0].split()) - budget)

    return sorted(candidates, key=fitted, reverse=True)


def unheard_names(
    names: list[str], subtitle: str, items: list[ContextItem]
) -> tuple[list[str], list[str]]:
    """(unheard, heard): which of the cast's `names` the prompt does not / does hold, as whole
    words in any case, in the slot's dialogue or a chosen item's description or dialogue.
    What a listener has not heard named, the description does not name either: it has to
    say who by other words ("a man in a green coat") until the film has said the name."""
    said = " ".join([subtitle, *(f"{it.text} {it.subtitle}" for it in items)])
    return names_heard(names, said)


def card_path(card: ModelCard, spec: str) -> str:
    """A card's local path (tokenizer folder, BERT or LLM folder) relative to where the card
    lives, as `ModelCard.weights_path` does, when it is not found from the working
    directory; hub ids and 'tiny' pass through unchanged."""
    p = Path(spec).expanduser()
    if spec == "tiny" or p.is_absolute() or p.exists():
        return spec
    card_dir = Path(card.source).resolve().parent if card.source else MODELS_DIR
    base = MODELS_DIR.parent if card_dir == MODELS_DIR else card_dir
    return str(base / p) if (base / p).exists() else spec


def _pick(contexts: list[list[ContextItem]], indices: list[list[int]]) -> list[list[ContextItem]]:
    return [[ctx[j] for j in idx] for ctx, idx in zip(contexts, indices, strict=True)]
