"""Pre-aligned Movie Encoder (Sec. 3.1, eq. 1-4): a Q-Former over CLIP frame features.

Built from transformers' BLIP-2 Q-Former layers (`Blip2QFormerEncoder` with text input on):
each layer runs one shared self-attention over `[V_q; T]` (eq. 1), cross-attention from the
queries to the frames every `cross_attention_freq` layers (eq. 2), and two FFNs, one for the
queries and one for the text (eq. 3). The paper writes `[T; V_q]`; the order is immaterial
because the three task masks below decide who sees whom. `card.pme.init` names the
initialisation: BERT weights (`bert-base-uncased`, as the authors' code did) for embeddings,
self-attention and both FFNs with cross-attention random, or the paper's BLIP-2 ViT-L Q-Former
(a LAVIS checkpoint converted to safetensors), of which every tensor that fits is loaded and
each one is reported. The text embeddings and the LM head are transformers' `BertEmbeddings`
and `BertLMPredictionHead`, the head tied to the word embeddings.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, Blip2QFormerConfig
from transformers.models.bert.modeling_bert import BertEmbeddings, BertLMPredictionHead
from transformers.models.blip_2.modeling_blip_2 import Blip2QFormerEncoder

from locomad_cli.card import ModelCard
from locomad_cli.utils import LocomadError, hf_load_kwargs, hub_offline_hint, readable

MASK_MODES = ("vtc", "vtm", "vtg")
TEMP_RANGE = (0.001, 0.5)
"""Learnable temperatures are clamped here (as BLIP-2 does) so a run cannot collapse them."""
STAGE2_POLICIES = ("frozen", "all")
"""card.pme.train_stage2: what stage 2 does with the PME (see `on_query_path`)."""
MASK_VALUE = -float(2**14)
"""Additive mask value: exact and finite in fp32, bf16 and fp16 (finfo(fp32).min becomes -inf
in both half types, as kernels cast masks to the compute dtype), still finite when masks are
summed; a softmax gives it exactly 0 weight next to any visible score in every dtype."""
_QUERY_PATH = re.compile(
    r"^(query_tokens|embeddings\.LayerNorm\..*|frame_norm\..*|encoder\.layer\.\d+\."
    r"(attention|crossattention|intermediate_query|output_query)\..*)$"
)


def on_query_path(name: str) -> bool:
    """Whether PME parameter `name` (as in `PME.named_parameters()`) shapes the queries q̃ that
    stage 2 reads: the query tokens, their LayerNorm, the frame norm, attention and the query
    FFNs. The text side (embeddings, text FFNs, LM head, projections, VTM head, temperature)
    gets no gradient in stage 2 and is left out of `pme.train_stage2: all`."""
    return bool(_QUERY_PATH.match(name))


def sinusoid_positions(length: int, dim: int, device=None) -> torch.Tensor:
    """Fixed (unlearned) sinusoidal positions [length, dim] (Vaswani et al.), one per frame."""
    pos = torch.arange(length, dtype=torch.float32, device=device)[:, None]
    div = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(1e4) / dim)
    )
    pe = torch.zeros(length, dim, device=device)
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)[:, : dim // 2]
    return pe


def task_mask(mode: str, num_queries: int, text_mask: torch.Tensor) -> torch.Tensor:
    """Who may attend to whom over `[queries; text]`, as a bool [B, L, L] (True = visible).

    vtc: queries see queries, text sees text (no leakage either way, eq. 1 with the VTC mask);
    vtm: everything sees everything; vtg: queries see queries, text sees the queries and the
    text up to itself (causal). Padded text is never a key."""
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}")
    b, lt = text_mask.shape
    lq = num_queries
    n = lq + lt
    dev = text_mask.device
    keys = torch.cat([torch.ones(b, lq, dtype=torch.bool, device=dev), text_mask.bool()], 1)
    allowed = torch.zeros(b, n, n, dtype=torch.bool, device=dev)
    allowed[:, :lq, :lq] = True
    if mode == "vtm":
        allowed[:] = True
    elif mode == "vtc":
        allowed[:, lq:, lq:] = True
    else:
        allowed[:, lq:, :lq] = True
        causal = torch.tril(torch.ones(lt, lt, dtype=torch.bool, device=dev))
        allowed[:, lq:, lq:] = causal
    return allowed & keys[:, None, :]


def additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool [B, Lq, Lk] (True = visible) → additive float mask [B, 1, Lq, Lk] for attention.

    Finite by construction under any autocast dtype: masked keys get MASK_VALUE, not the
    dtype's minimum (-inf once cast to fp16/bf16), and a row with no visible key (every query
    of an all-empty DSM proposal, a clip without frames) sees every key instead: a finite
    average nobody reads, where a fully masked row would give NaN in some CUDA kernels and
    poison the gradients. In fp32 this is what the minimum gave anyway, so outputs are the
    same as before."""
    mask = mask | ~mask.any(-1, keepdim=True)
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    out.masked_fill_(~mask, MASK_VALUE)
    return out[:, None]


def vtc_loss(
    query_feats: torch.Tensor, text_feat: torch.Tensor, temp: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE both ways. Similarity of clip i and text j = the best of the clip's queries
    against the text's [CLS] feature (cosine), divided by the temperature.
    query_feats [B, Lq, E], text_feat [B, E] → (loss, sim_i2t [B, B])."""
    q = F.normalize(query_feats, dim=-1)
    t = F.normalize(text_feat, dim=-1)
    sim = torch.einsum("iqe,je->ijq", q, t).max(-1).values / temp
    target = torch.arange(sim.shape[0], device=sim.device)
    loss = (F.cross_entropy(sim, target) + F.cross_entropy(sim.t(), target)) / 2
    return loss, sim


def hard_negatives(
    sim: torch.Tensor, same: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One hard negative per row: drawn from softmax(sim[i]) with the positives (`same`, the
    diagonal and any identical pair) zeroed. Returns (index [B], ok [B]); rows with no
    possible negative have ok False and must be left out."""
    w = torch.softmax(sim.detach().float(), dim=1).masked_fill(same, 0.0)
    # a tiny floor so underflowed rows still draw among the valid negatives only
    w = torch.where(same, w, w + 1e-12)
    ok = (~same).any(dim=1)
    w[~ok] = 1.0  # placeholder rows, discarded by the caller
    idx = torch.multinomial(w, 1, generator=generator).squeeze(1)
    return idx, ok


def vtm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Binary matching loss: logits [N, 2] (mean over queries of the classifier), labels 0/1."""
    return F.cross_entropy(logits, labels)


def vtg_loss(logits: torch.Tensor, labels: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Next-token loss with label smoothing; labels [B, L] with -100 where ignored."""
    shifted = logits[:, :-1].reshape(-1, logits.shape[-1])
    target = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shifted, target, ignore_index=-100, label_smoothing=smoothing)


class PME(nn.Module):
    def __init__(self, card: ModelCard, vocab_size: int, pad_token_id: int):
        super().__init__()
        p = card.pme
        if p.train_stage2 not in STAGE2_POLICIES:
            raise LocomadError(
                f"pme.train_stage2 is '{p.train_stage2}'; "
                f"choose one of {', '.join(STAGE2_POLICIES)}"
            )
        self.num_queries = p.num_queries
        self.max_frames = p.max_frames
        self.label_smoothing = p.label_smoothing
        self.bert_config = BertConfig(
            vocab_size=vocab_size,
            hidden_size=p.hidden_size,
            num_hidden_layers=p.num_layers,
            num_attention_heads=p.num_heads,
            intermediate_size=p.intermediate_size,
            max_position_embeddings=max(512, p.max_text_len),
            pad_token_id=pad_token_id,
        )
        self.qformer_config = Blip2QFormerConfig(
            vocab_size=vocab_size,
            hidden_size=p.hidden_size,
            num_hidden_layers=p.num_layers,
            num_attention_heads=p.num_heads,
            intermediate_size=p.intermediate_size,
            cross_attention_frequency=p.cross_attention_freq,
            encoder_hidden_size=card.clip.dim,
            use_qformer_text_input=True,
            pad_token_id=pad_token_id,
        )
        self.qformer_config._attn_implementation = "sdpa"
        self.embeddings = BertEmbeddings(self.bert_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, p.num_queries, p.hidden_size))
        self.frame_norm = nn.LayerNorm(card.clip.dim)
        self.encoder = Blip2QFormerEncoder(self.qformer_config)
        self.lm_head = BertLMPredictionHead(self.bert_config)
        self.vision_proj = nn.Linear(p.hidden_size, p.embed_dim)
        self.text_proj = nn.Linear(p.hidden_size, p.embed_dim)
        self.vtm_head = nn.Linear(p.hidden_size, 2)
        self.temp = nn.Parameter(torch.tensor(float(p.temperature)))
        self.apply(self._init_weights)
        nn.init.normal_(self.query_tokens, std=0.02)
        self._tie()

    def _tie(self) -> None:
        self.lm_head.decoder.weight = self.embeddings.word_embeddings.weight
        self.lm_head.bias = self.lm_head.decoder.bias

    def _init_weights(self, module: nn.Module) -> None:
        # BERT's own initialisation (normal 0.02), so a random-init PME trains like BERT would
        std = self.bert_config.initializer_range
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    def load_bert(self, name: str) -> InitReport | None:
        """Initialise from `card.pme.init`: a BERT checkpoint (hub id or folder) is copied into
        embeddings, self-attention, the text FFN and (a copy of it) the query FFN, and the MLM
        head; a BLIP-2 Q-Former safetensors file (or a folder holding one) goes to
        `load_blip2`. A pickled file is refused: convert it with `locomad convert-weights`."""
        from transformers import BertForMaskedLM

        blip2 = _blip2_file(name)
        if blip2 is not None:
            return self.load_blip2(blip2)

        try:
            bert = BertForMaskedLM.from_pretrained(name, **hf_load_kwargs(name))
        except OSError:
            raise LocomadError(f"PME init {hub_offline_hint(name)}") from None
        cfg = bert.config
        mine = self.bert_config
        if (cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size) != (
            mine.hidden_size,
            mine.num_attention_heads,
            mine.intermediate_size,
        ) or cfg.num_hidden_layers < mine.num_hidden_layers:
            raise LocomadError(
                f"PME init '{name}' has shape {cfg.num_hidden_layers}x{cfg.hidden_size} "
                f"({cfg.num_attention_heads} heads, FFN {cfg.intermediate_size}); the card asks "
                f"{mine.num_hidden_layers}x{mine.hidden_size} ({mine.num_attention_heads} heads, "
                f"FFN {mine.intermediate_size})"
            )
        src = bert.state_dict()
        with torch.no_grad():
            emb = self.embeddings
            n = min(
                src["bert.embeddings.word_embeddings.weight"].shape[0],
                emb.word_embeddings.num_embeddings,
            )
            emb.word_embeddings.weight[:n] = src["bert.embeddings.word_embeddings.weight"][:n]
            for key in ("position_embeddings", "token_type_embeddings"):
                w = src[f"bert.embeddings.{key}.weight"]
                getattr(emb, key).weight[: w.shape[0]] = w[: getattr(emb, key).weight.shape[0]]
            emb.LayerNorm.load_state_dict(
                {k: src[f"bert.embeddings.LayerNorm.{k}"] for k in ("weight", "bias")}
            )
            for i, layer in enumerate(self.encoder.layer):
                pre = f"bert.encoder.layer.{i}."
                for part in ("query", "key", "value"):
                    getattr(layer.attention.attention, part).load_state_dict(
                        _sub(src, f"{pre}attention.self.{part}.")
                    )
                layer.attention.output.load_state_dict(_sub(src, f"{pre}attention.output."))
                for inter, out in (
                    (layer.intermediate, layer.output),
                    (layer.intermediate_query, layer.output_query),
                ):
                    inter.load_state_dict(_sub(src, f"{pre}intermediate."))
                    out.load_state_dict(_sub(src, f"{pre}output."))
            self.lm_head.transform.load_state_dict(_sub(src, "cls.predictions.transform."))
            bias = src.get("cls.predictions.bias", src.get("cls.predictions.decoder.bias"))
            if bias is not None:
                self.lm_head.decoder.bias[: bias.shape[0]] = bias[
                    : self.lm_head.decoder.bias.shape[0]
                ]
        self._tie()
        return None

    def load_blip2(self, path: str | Path) -> InitReport:
        """Initialise a freshly built PME from a LAVIS BLIP-2 Q-Former checkpoint (safetensors,
        LAVIS's key names) and print on stderr what became of every tensor."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        readable(path)
        try:
            state = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise LocomadError(f"PME init {path}: cannot read ({e})") from None
        report = self.load_blip2_state(state)
        print(f"locomad: PME init from {path} (BLIP-2 Q-Former)", file=sys.stderr)
        for line in report.lines():
            print(f"locomad:   {line}", file=sys.stderr)
        return report

    def load_blip2_state(self, state: dict[str, torch.Tensor]) -> InitReport:
        """Copy every tensor of a LAVIS `Blip2Qformer` state dict that fits this PME, by the
        key mapping of `_blip2_name`. A tensor fits when its shape is ours; embedding-like
        tables (word and position embeddings, the LM bias) also when only their row count
        differs (the shared rows are copied). What does not fit keeps its fresh init — the
        cross-attention's key/value read 1024-d CLIP-L patch features in BLIP-2 ViT-L, 768-d
        projected frame features here — and LAVIS's lack of token-type embeddings is kept
        by zeroing ours. Every source key and every PME tensor lands in the report."""
        if not any(k.startswith(_BLIP2_PREFIX) for k in state):
            raise LocomadError(
                f"PME init: no '{_BLIP2_PREFIX}*' tensors, not a LAVIS BLIP-2 Q-Former checkpoint"
            )
        own = self.state_dict()
        unfit = _blip2_unfit_layers(state, own)
        report = InitReport()
        with torch.no_grad():
            for key in sorted(state):
                name = _blip2_name(key)
                why = _blip2_not_copied(key, name, own, unfit, report.loaded)
                if why is None:
                    _copy_blip2_tensor(report, key, state[key], name, own[name])
                    continue
                report.ignored[key] = why
                if name is not None and name.endswith(".bias") and name[: -len("bias")] in unfit:
                    report.reinitialised[name] = "fresh init with its weight"
            _account_for_the_rest(own, report)
        if not any(name.startswith("encoder.") for name in report.loaded):
            width = state.get(f"{_BLIP2_PREFIX}embeddings.LayerNorm.weight")
            raise LocomadError(
                "PME init: no encoder tensor of the BLIP-2 checkpoint fits this card's PME "
                f"(checkpoint width {None if width is None else width.shape[0]}, card "
                f"{self.bert_config.hidden_size})"
            )
        self._tie()
        return report

    # -- encoding ---------------------------------------------------------------------------

    def prepare_frames(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """V_t: frame features + fixed sinusoidal positions, then LayerNorm."""
        pe = sinusoid_positions(frames.shape[1], frames.shape[2], frames.device)
        return self.frame_norm(frames.float() + pe)

    def encode(
        self,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        input_ids: torch.Tensor | None = None,
        text_mask: torch.Tensor | None = None,
        mode: str = "vtc",
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Run the Q-Former on `[queries; text]` under a task mask. Returns (q̃ [B, Lq, H],
        t̃ [B, Lt, H] or None). Without text, only the queries run (stage 2, inference)."""
        b = frames.shape[0]
        vt = self.prepare_frames(frames, frame_mask)
        queries = self.embeddings.LayerNorm(self.query_tokens.expand(b, -1, -1))
        queries = self.embeddings.dropout(queries)
        if input_ids is None:
            hidden = queries
            text_mask = torch.zeros(b, 0, dtype=torch.bool, device=frames.device)
        else:
            hidden = torch.cat([queries, self.embeddings(input_ids=input_ids)], 1)
        attn = additive(task_mask(mode, self.num_queries, text_mask), hidden.dtype)
        cross = additive(
            frame_mask.bool()[:, None, :].expand(-1, self.num_queries, -1), hidden.dtype
        )
        out = self.encoder(
            hidden,
            attention_mask=attn,
            encoder_hidden_states=vt,
            encoder_attention_mask=cross,
            query_length=self.num_queries,
        ).last_hidden_state
        q = out[:, : self.num_queries]
        t = out[:, self.num_queries :] if input_ids is not None else None
        return q, t

    def encode_queries(self, frames: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        return self.encode(frames, frame_mask)[0]

    # -- stage 1 ----------------------------------------------------------------------------

    def temperature(self) -> torch.Tensor:
        return self.temp.clamp(*TEMP_RANGE)

    def stage1_losses(
        self,
        frames: torch.Tensor,
        frame_mask: torch.Tensor,
        input_ids: torch.Tensor,
        text_mask: torch.Tensor,
        same_text: torch.Tensor,
        dec_token_id: int,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """L_s1 = L_VTC + L_VTM + L_VTG (eq. 4). `same_text[i, j]` marks pairs that must not
        serve as negatives (the diagonal and duplicate descriptions)."""
        b = frames.shape[0]
        # VTC: queries and text in one pass, blind to each other
        q, t = self.encode(frames, frame_mask, input_ids, text_mask, "vtc")
        q_feat = self.vision_proj(q)
        t_feat = self.text_proj(t[:, 0])
        vtc, sim = vtc_loss(q_feat, t_feat, self.temperature())

        # VTM: positives + one hard negative clip per text and one hard negative text per clip
        neg_clip, ok_c = hard_negatives(sim.t(), same_text.t(), generator)
        neg_text, ok_t = hard_negatives(sim, same_text, generator)
        rows = torch.arange(b, device=frames.device)
        vid = torch.cat([rows, neg_clip[ok_c], rows[ok_t]])
        txt = torch.cat([rows, rows[ok_c], neg_text[ok_t]])
        labels = torch.cat([torch.ones(b), torch.zeros(int(ok_c.sum()) + int(ok_t.sum()))])
        qm, _ = self.encode(frames[vid], frame_mask[vid], input_ids[txt], text_mask[txt], "vtm")
        logits = self.vtm_head(qm).mean(1)
        vtm = vtm_loss(logits, labels.long().to(frames.device))

        # VTG: [DEC] replaces [CLS]; text sees the queries and earlier text only
        dec_ids = input_ids.clone()
        dec_ids[:, 0] = dec_token_id
        _, tg = self.encode(frames, frame_mask, dec_ids, text_mask, "vtg")
        labels_g = dec_ids.masked_fill(~text_mask.bool(), -100)
        vtg = vtg_loss(self.lm_head(tg), labels_g, self.label_smoothing)
        return {"loss": vtc + vtm + vtg, "vtc": vtc, "vtm": vtm, "vtg": vtg}


def _sub(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


# -- BLIP-2 (LAVIS) initialisation -------------------------------------------------------------

_BLIP2_PREFIX = "Qformer.bert."
_BLIP2_HEADS = {
    "Qformer.cls.predictions.": "lm_head.",
    "vision_proj.": "vision_proj.",
    "text_proj.": "text_proj.",
    "itm_head.": "vtm_head.",
    "ln_vision.": "frame_norm.",
}
_ROW_TABLES = (
    "embeddings.word_embeddings.weight",
    "embeddings.position_embeddings.weight",
    "lm_head.bias",
)


@dataclass
class InitReport:
    """What a PME initialisation did with each tensor, so none is missed silently."""

    loaded: dict[str, str] = field(default_factory=dict)
    """PME tensor → the checkpoint key it came from (or the tensor it is tied to)."""
    reinitialised: dict[str, str] = field(default_factory=dict)
    """PME tensor → why it keeps its fresh init (or was zeroed)."""
    ignored: dict[str, str] = field(default_factory=dict)
    """Checkpoint key → why it was not loaded."""

    def lines(self) -> list[str]:
        """Readable summary: names grouped over layer numbers, one line per group."""
        out = [
            f"loaded {len(self.loaded)}, re-initialised {len(self.reinitialised)}, "
            f"ignored {len(self.ignored)} checkpoint tensor(s)"
        ]
        out += [f"loaded: {g}" for g in _group(dict.fromkeys(self.loaded, ""))]
        out += [f"re-initialised: {g}" for g in _group(self.reinitialised)]
        out += [f"ignored: {g}" for g in _group(self.ignored)]
        return out


_BLIP2_ALIASES = {
    "lm_head.decoder.weight": "embeddings.word_embeddings.weight",
    "lm_head.decoder.bias": "lm_head.bias",
}
"""LAVIS keeps these as tensors of their own; here they are tied to another (one tensor)."""


def _blip2_unfit_layers(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> set[str]:
    """Layers (name up to `weight`) whose checkpoint weight cannot load. A layer's bias goes
    with its weight: a projection whose weight cannot load (the cross-attention's key/value)
    starts fresh as a whole."""
    unfit = set()
    for key, src in state.items():
        name = _blip2_name(key)
        if name in _BLIP2_ALIASES or name is None:
            continue
        if name.endswith(".weight") and name in own and own[name].ndim > 1:
            if src.shape != own[name].shape and name not in _ROW_TABLES:
                unfit.add(name[: -len("weight")])
    return unfit


def _blip2_not_copied(
    key: str, name: str | None, own: dict, unfit: set[str], loaded: dict[str, str]
) -> str | None:
    """Why the checkpoint tensor `key` (our `name`) is not copied; None when it is."""
    if name is None:
        return _blip2_ignore_reason(key)
    if name.endswith(".bias") and name[: -len("bias")] in unfit:
        return f"its weight does not fit {name[: -len('bias')]}weight"
    if name in _BLIP2_ALIASES:
        return f"tied to {_BLIP2_ALIASES[name]} here (one tensor)"
    if name not in own:
        return f"this card's PME has no {name}"
    if name in loaded:
        return f"{name} already loaded from {loaded[name]}"
    return None


def _copy_blip2_tensor(
    report: InitReport, key: str, src: torch.Tensor, name: str, dst: torch.Tensor
) -> None:
    """Copy where the shape is ours (a row table: its shared rows), else say why not."""
    if src.shape == dst.shape:
        dst.copy_(src.to(dst.dtype))
        report.loaded[name] = key
    elif name in _ROW_TABLES and src.shape[1:] == dst.shape[1:]:
        rows = min(src.shape[0], dst.shape[0])
        dst[:rows].copy_(src[:rows].to(dst.dtype))
        report.loaded[name] = f"{key} (rows 0-{rows - 1} of {dst.shape[0]})"
    else:
        report.ignored[key] = f"shape {list(src.shape)} does not fit {name} {list(dst.shape)}"
        report.reinitialised[name] = (
            f"fresh init: checkpoint {list(src.shape)}, card {list(dst.shape)}"
        )


def _account_for_the_rest(own: dict[str, torch.Tensor], report: InitReport) -> None:
    """Token types zeroed (LAVIS has none), tied tensors noted, the rest fresh init."""
    tt = "embeddings.token_type_embeddings.weight"
    if tt in own and tt not in report.loaded:
        own[tt].zero_()
        report.reinitialised[tt] = "zeroed: LAVIS's Q-Former has no token types"
    for alias, target in _BLIP2_ALIASES.items():
        if alias in own and target in report.loaded:
            report.loaded[alias] = f"tied to {target}"
    for name in own:
        if name not in report.loaded and name not in report.reinitialised:
            report.reinitialised[name] = "not in the checkpoint: fresh init"


def _group(items: dict[str, str]) -> list[str]:
    """Names with the same reason and the same shape up to layer numbers (and a large family
    under one top-level module, like a whole image encoder) in one entry."""
    groups: dict[tuple[str, str], list[int]] = {}
    tops: dict[tuple[str, str], int] = {}
    for name, why in items.items():
        top = name.split(".")[0]
        tops[(top, why)] = tops.get((top, why), 0) + 1
    for name, why in items.items():
        top = name.split(".")[0]
        if tops[(top, why)] > 64:
            groups.setdefault((f"{top}.*", why), []).append(-1)
            continue
        m = re.search(r"\.layer\.(\d+)\.", name)
        pattern = name if m is None else name.replace(m.group(0), ".layer.{}.")
        groups.setdefault((pattern, why), []).append(int(m.group(1)) if m else -1)
    leaves: dict[tuple[str, str], list[str]] = {}
    for (pattern, why), layers in groups.items():
        if "{}" in pattern:
            pattern = pattern.replace("{}", "{" + ",".join(map(str, sorted(layers))) + "}")
        elif len(layers) > 1:
            pattern = f"{pattern} ({len(layers)} tensors)"
        module, _, leaf = pattern.rpartition(".")
        leaves.setdefault((module, why), []).append(leaf)
    out = []
    for (module, why), names in leaves.items():
        leaf = names[0] if len(names) == 1 else "{" + ",".join(names) + "}"
        out.append((f"{module}.{leaf}" if module else leaf) + (f" — {why}" if why else ""))
    return out


def _blip2_file(spec: str) -> Path | None:
    """`spec` as a BLIP-2 Q-Former safetensors file: the file itself, or the only
    `*.safetensors` of a folder that is not a transformers model folder. None = a BERT spec."""
    p = Path(spec).expanduser()
    if p.is_file():
        if p.suffix == ".safetensors":
            return p
        raise LocomadError(
            f"PME init {p}: only safetensors are loaded (pickles are never opened); convert it "
            f"with `locomad convert-weights {p} {p.with_suffix('.safetensors')}`"
        )
    if p.is_dir() and not (p / "config.json").is_file():
        files = sorted(p.glob("*.safetensors"))
        if len(files) == 1:
            return files[0]
        raise LocomadError(
            f"PME init {p}: a folder needs a BERT config.json or exactly one .safetensors "
            f"BLIP-2 checkpoint ({len(files)} found)"
        )
    return None


def _blip2_name(key: str) -> str | None:
    """The PME tensor a LAVIS `Blip2Qformer` key maps to (None: not part of the PME)."""
    if key.startswith(_BLIP2_PREFIX):
        name = key[len(_BLIP2_PREFIX) :]
        return re.sub(r"\.(attention|crossattention)\.self\.", r".\1.attention.", name)
    if key in ("query_tokens", "temp"):
        return key
    for prefix, ours in _BLIP2_HEADS.items():
        if key.startswith(prefix):
            return ours + key[len(prefix) :]
    return None


def _blip2_ignore_reason(key: str) -> str:
    if key.startswith("visual_encoder."):
        return "BLIP-2's image encoder (locomad reads CLIP frame features)"
    return "not part of the Q-Former"
