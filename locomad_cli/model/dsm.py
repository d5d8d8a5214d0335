"""Dynamic Selection Module (Sec. 3.2, eq. 5-9): which earlier descriptions help now.

Context Proposal Encoder: `num_layers` blocks of self-attention over the proposal's CLIP text
features T_c (eq. 5), cross-attention from them to the clip's frame features (eq. 6), FFN. The
blocks are transformers' BLIP-2 Q-Former layers with cross-attention in every layer, the
proposal playing the queries. Empty proposal slots (the start of a film) are masked as keys;
they are never fed as zero vectors and never selected.

Sampler: Linear → softmax over the real items (eq. 7), hard top-k kept in film order.

CCL (eq. 8-9): the positive T+ is the score-weighted mean of the selected items' CLIP text
features, the negatives the unselected items' features, each compared by cosine with the
clip's visual anchor: the masked mean of its raw CLIP frame features. The anchor lives in the
same CLIP joint space as T_c, so cosine is meaningful from the first step (the authors used
the mean of LayerNormed features, which leaves that space). The scores reach the loss only
through T+'s weights: that is the sampler's whole training signal.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import Blip2QFormerConfig
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerEncoder

from locomad_cli.card import ModelCard
from locomad_cli.model.pme import additive

TEMP_RANGE = (0.001, 0.5)


@dataclass
class Selection:
    """Per clip: the chosen proposal slots in film order and their sampler scores."""

    indices: list[list[int]]
    """Indices into `batch.contexts[i]` (= the record's context when it holds ≤ proposal_len)."""
    scores: list[list[float]]
    """Softmax score of each chosen item (same order as `indices`)."""
    probs: torch.Tensor | None = None
    """[B, P] sampler scores over the whole proposal (0 on empty slots), with gradient."""


def masked_softmax(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Softmax over True slots; rows without any give all zeros (not NaN)."""
    x = logits.masked_fill(~mask, float("-inf"))
    any_ = mask.any(-1, keepdim=True)
    x = torch.where(any_, x, torch.zeros_like(x))
    return torch.softmax(x, -1) * mask


def top_k_in_order(probs: torch.Tensor, mask: torch.Tensor, k: int) -> list[list[int]]:
    """The k best real slots of each row (fewer when the row has fewer), ascending = film order.
    Ties go to the newer item (the later slot): recent context is the safer guess."""
    out = []
    p = probs.detach().float()
    for row, m in zip(p, mask, strict=True):
        valid = m.nonzero().flatten()
        n = min(k, valid.numel())
        if n == 0:
            out.append([])
            continue
        # stable sort on the reversed order makes ties prefer later slots
        rev = valid.flip(0)
        order = torch.sort(row[rev], descending=True, stable=True).indices[:n]
        out.append(sorted(rev[order].tolist()))
    return out


def ccl_loss(
    context: torch.Tensor,
    mask: torch.Tensor,
    probs: torch.Tensor,
    selected: list[list[int]],
    anchor: torch.Tensor,
    temp: torch.Tensor,
) -> torch.Tensor:
    """Eq. 8-9. context [B, P, D], probs [B, P], anchor [B, D]. Clips with no negative (fewer
    real items than k) are left out of the mean: their loss would be a constant zero."""
    losses = []
    for i, sel in enumerate(selected):
        real = mask[i].nonzero().flatten().tolist()
        rest = [j for j in real if j not in sel]
        if not sel or not rest:
            continue
        s = torch.tensor(sel, device=context.device)
        pos = (probs[i, s, None] * context[i, s]).sum(0) / len(sel)
        cands = torch.cat([pos[None], context[i, rest]], 0)
        logits = F.cosine_similarity(cands, anchor[i][None], dim=-1) / temp
        losses.append(-torch.log_softmax(logits, 0)[0])
    if not losses:
        return (probs * 0).sum()
    return torch.stack(losses).mean()


class DSM(nn.Module):
    def __init__(self, card: ModelCard):
        super().__init__()
        d = card.dsm
        width = card.clip.dim
        self.top_k = d.top_k
        self.config = Blip2QFormerConfig(
            hidden_size=width,
            num_hidden_layers=d.num_layers,
            num_attention_heads=d.num_heads,
            intermediate_size=d.intermediate_size,
            cross_attention_frequency=1,
            encoder_hidden_size=width,
            use_qformer_text_input=False,
        )
        self.config._attn_implementation = "sdpa"
        self.encoder = Blip2QFormerEncoder(self.config)
        self.input_norm = nn.LayerNorm(width)
        self.frame_norm = nn.LayerNorm(width)
        self.sampler = nn.Linear(width, 1)
        self.temp = nn.Parameter(torch.tensor(float(d.temperature)))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=self.config.initializer_range)
                nn.init.zeros_(m.bias)

    def temperature(self) -> torch.Tensor:
        return self.temp.clamp(*TEMP_RANGE)

    def scores(
        self,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
    ) -> torch.Tensor:
        """s_c (eq. 5-7): [B, P] softmax relevance over the real proposal items."""
        p = context.shape[1]
        x = self.input_norm(context.float())
        v = self.frame_norm(frames.float())
        self_mask = context_mask.bool()[:, None, :].expand(-1, p, -1)
        cross_mask = frame_mask.bool()[:, None, :].expand(-1, p, -1)
        h = self.encoder(
            x,
            attention_mask=additive(self_mask, x.dtype),
            encoder_hidden_states=v,
            encoder_attention_mask=additive(cross_mask, x.dtype),
            query_length=p,
        ).last_hidden_state
        return masked_softmax(self.sampler(h).squeeze(-1), context_mask.bool())

    def select(
        self,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        k: int | None = None,
    ) -> Selection:
        probs = self.scores(context, context_mask, frames, frame_mask)
        idx = top_k_in_order(probs, context_mask.bool(), self.top_k if k is None else k)
        sc = [[float(probs[i, j].detach()) for j in row] for i, row in enumerate(idx)]
        return Selection(indices=idx, scores=sc, probs=probs)

    def ccl(
        self,
        context: torch.Tensor,
        context_mask: torch.Tensor,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        selection: Selection,
    ) -> torch.Tensor:
        anchor = visual_anchor(frames, frame_mask)
        return ccl_loss(
            context.float(),
            context_mask.bool(),
            selection.probs,
            selection.indices,
            anchor,
            self.temperature(),
        )


def visual_anchor(frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
    """Masked mean of the raw CLIP frame features [B, D]: the clip in CLIP's joint space."""
    m = frame_mask.float()[..., None]
    return (frames.float() * m).sum(1) / m.sum(1).clamp(min=1.0)
