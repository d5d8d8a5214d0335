"""The real (ViT-L/14 + OPT) path as the paper and MAD have it: OpenAI's CLIP with QuickGELU and
an identity that refuses features of the wrong network; the PME initialised from a LAVIS BLIP-2
ViT-L Q-Former; the PME's stage-2 policy; finite numerics under bf16 autocast."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers.batches import batch_of
from helpers.media import make_video
from safetensors.torch import load_file, save_file

from locomad_cli.card import MODELS_DIR, load_card
from locomad_cli.describe.film import _check_features
from locomad_cli.features.clip import load_clip, quick_gelu, weights_id
from locomad_cli.features.extract import FORMAT, _identity, extract_features, output_path
from locomad_cli.features.video import source_fingerprint
from locomad_cli.model.checkpoint import convert_weights
from locomad_cli.model.locomad import LoCoMAD
from locomad_cli.model.pme import MASK_VALUE, PME, additive, on_query_path
from locomad_cli.model.tokenizer import load_tokenizer
from locomad_cli.train.loop import param_groups
from locomad_cli.utils import LocomadError

pytestmark = pytest.mark.usefixtures("one_thread")

OPT_CARDS = sorted(p.stem for p in MODELS_DIR.glob("opt-*.yaml"))


# -- 1. CLIP: QuickGELU for OpenAI's weights ---------------------------------------------------


@pytest.fixture(scope="module")
def opt_clip():
    """The opt-* cards' CLIP (one encoder: their clip sections are the same), built through
    load_clip at random init: the network OpenAI's weights load into, without the hub."""
    cards = [load_card(n) for n in OPT_CARDS]
    assert len(cards) >= 3 and all(c.clip == cards[0].clip for c in cards)
    return load_clip(cards[0], load_weights=False)


def test_opt_cards_clip_runs_quick_gelu_in_every_block(opt_clip):
    from open_clip.transformer import QuickGELU

    model = opt_clip.model
    blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    assert len(blocks) == 24 + 12  # ViT-L/14: 24 image blocks, 12 text blocks
    assert all(isinstance(b.mlp.gelu, QuickGELU) for b in blocks)
    assert not any(isinstance(m, torch.nn.GELU) for m in model.modules())
    # and it is what runs: every block's activation fires once per encode call
    ran = []
    hooks = [b.mlp.gelu.register_forward_hook(lambda *_: ran.append(1)) for b in blocks]
    try:
        frame = torch.randint(0, 256, (1, 3, 240, 320), dtype=torch.uint8)
        assert opt_clip.encode_images(frame).shape == (1, 768)
        assert opt_clip.encode_text(["A man opens the door."]).shape == (1, 768)
    finally:
        for h in hooks:
            h.remove()
    assert len(ran) == 36


def test_quick_gelu_follows_the_weights_not_the_name(card):
    opt = load_card(OPT_CARDS[0])
    assert quick_gelu(opt) and weights_id(opt) == "openai+quickgelu"
    laion = copy.deepcopy(opt)
    laion.clip.pretrained = "laion2b_s32b_b82k"  # trained with nn.GELU
    assert not quick_gelu(laion) and weights_id(laion) == "laion2b_s32b_b82k"
    random = copy.deepcopy(opt)
    random.clip.pretrained = None
    assert not quick_gelu(random) and weights_id(random) == "random-init"
    named = copy.deepcopy(random)
    named.clip.model = "ViT-L-14-quickgelu"  # how a local file fine-tuned from OpenAI's asks
    assert quick_gelu(named)
    assert not quick_gelu(card)  # inline configs say it themselves
    card.clip.config = {**card.clip.config, "quick_gelu": True}
    assert quick_gelu(card)


@pytest.mark.slow
def test_features_of_the_gelu_network_are_refused(tmp_path):
    """Files stamped `openai` were made by open_clip's nn.GELU build of OpenAI's weights:
    describe refuses them in one line, extract asks for --overwrite (before any weights)."""
    opt = load_card(OPT_CARDS[0])
    film = make_video(tmp_path / "film.mp4", duration=1.0, size="64x48")
    out = output_path(film, tmp_path)
    meta = {
        **_identity(opt, opt.fps, source_fingerprint(film)),
        "format": FORMAT,
        "frames": "5",
        "duration": "1.0",
        "dim": "768",
    }
    assert meta["clip_weights"] == "openai+quickgelu"
    meta["clip_weights"] = "openai"  # what locomad stamped before QuickGELU
    save_file({"features": torch.zeros(5, 768, dtype=torch.float16)}, str(out), metadata=meta)
    with pytest.raises(LocomadError, match="other weights.*extract them again"):
        _check_features(out, meta, opt)
    with pytest.raises(LocomadError, match="--overwrite"):
        extract_features([film], opt, out_dir=tmp_path, device="cpu")
    meta["clip_weights"] = weights_id(opt)
    _check_features(out, meta, opt)  # the QuickGELU identity is accepted


# -- 3. PME from a LAVIS BLIP-2 Q-Former -------------------------------------------------------


def lavis_shapes(
    hidden: int,
    layers: int,
    ffn: int,
    vocab: int,
    vision_width: int,
    queries: int,
    embed_dim: int,
    cross_every: int = 2,
) -> dict[str, tuple[int, ...]]:
    """Key names and shapes of a LAVIS `Blip2Qformer` state dict (Qformer.py / blip2.py):
    BertLMHeadModel under `Qformer.`, cross-attention every `cross_every` layers reading
    `vision_width`-d image features, query FFNs beside the text FFNs, no token types."""
    shapes: dict[str, tuple[int, ...]] = {}

    def linear(name, out, inp):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (out, inp), (out,)

    def norm(name, width):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (width,)

    b = "Qformer.bert."
    shapes[b + "embeddings.word_embeddings.weight"] = (vocab, hidden)
    shapes[b + "embeddings.position_embeddings.weight"] = (512, hidden)
    shapes[b + "embeddings.position_ids"] = (1, 512)
    norm(b + "embeddings.LayerNorm", hidden)
    for i in range(layers):
        layer = f"{b}encoder.layer.{i}."
        for part in ("query", "key", "value"):
            linear(f"{layer}attention.self.{part}", hidden, hidden)
        linear(layer + "attention.output.dense", hidden, hidden)
        norm(layer + "attention.output.LayerNorm", hidden)
        if i % cross_every == 0:
            linear(layer + "crossattention.self.query", hidden, hidden)
            linear(layer + "crossattention.self.key", hidden, vision_width)
            linear(layer + "crossattention.self.value", hidden, vision_width)
            linear(layer + "crossattention.output.dense", hidden, hidden)
            norm(layer + "crossattention.output.LayerNorm", hidden)
        for branch in ("", "_query"):
            linear(f"{layer}intermediate{branch}.dense", ffn, hidden)
            linear(f"{layer}output{branch}.dense", hidden, ffn)
            norm(f"{layer}output{branch}.LayerNorm", hidden)
    head = "Qformer.cls.predictions."
    linear(head + "transform.dense", hidden, hidden)
    norm(head + "transform.LayerNorm", hidden)
    shapes[head + "bias"] = shapes[head + "decoder.bias"] = (vocab,)
    shapes[head + "decoder.weight"] = (vocab, hidden)
    shapes["query_tokens"] = (1, queries, hidden)
    linear("vision_proj", embed_dim, hidden)
    linear("text_proj", embed_dim, hidden)
    linear("itm_head", 2, hidden)
    shapes["temp"] = ()
    norm("ln_vision", vision_width)
    # a few of the image encoder's tensors (LAVIS's CLIP ViT-L: 1024 wide, 14-px patches)
    shapes["visual_encoder.conv1.weight"] = (vision_width, 3, 14, 14)
    shapes["visual_encoder.class_embedding"] = (vision_width,)
    shapes["visual_encoder.transformer.resblocks.0.attn.in_proj_weight"] = (
        3 * vision_width,
        vision_width,
    )
    shapes["opt_proj.weight"] = (2560, hidden)  # a stage-2 checkpoint's extra: not the PME's
    return shapes


def lavis_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Distinct values in every tensor (so a copy from the wrong key shows); position ids and
    LAVIS's tied LM head as LAVIS has them."""
    g = torch.Generator().manual_seed(seed)
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    state["Qformer.bert.embeddings.position_ids"] = torch.arange(512)[None]
    head = "Qformer.cls.predictions."
    state[head + "decoder.weight"] = state["Qformer.bert.embeddings.word_embeddings.weight"]
    state[head + "decoder.bias"] = state[head + "bias"]
    return state


def _check_every_tensor(report, state, pme: PME) -> None:
    """Each checkpoint key is loaded or ignored, each PME tensor loaded or re-initialised,
    never both; loaded values are the checkpoint's."""
    sources = {v.split(" ")[0] for v in report.loaded.values() if not v.startswith("tied")}
    assert sources | set(report.ignored) == set(state)
    assert not sources & set(report.ignored)
    own = pme.state_dict()
    assert set(report.loaded) | set(report.reinitialised) == set(own)
    assert not set(report.loaded) & set(report.reinitialised)
    for name, src in report.loaded.items():
        if src.startswith("tied"):
            continue
        key = src.split(" ")[0]
        rows = min(own[name].shape[0], state[key].shape[0]) if own[name].ndim else None
        want = state[key] if rows is None else state[key][:rows]
        got = own[name] if rows is None else own[name][:rows]
        assert torch.equal(got, want.to(got.dtype)), name


def test_blip2_checkpoint_converted_then_loaded_accounts_for_every_tensor(card, tmp_path, capsys):
    assert card.pme.cross_attention_freq == 2  # as BLIP-2's
    vocab_here = len(load_tokenizer("tiny", "pme"))
    shapes = lavis_shapes(
        hidden=card.pme.hidden_size,
        layers=card.pme.num_layers,
        ffn=card.pme.intermediate_size,
        vocab=vocab_here + 5,  # a larger table: the shared rows are copied
        vision_width=48,  # ≠ card.clip.dim (32): cross-attention key/value cannot load
        queries=card.pme.num_queries,
        embed_dim=card.pme.embed_dim,
    )
    state = lavis_state(shapes)
    # LAVIS saves {"model": state_dict} with torch.save; convert-weights makes it safetensors
    torch.save({"model": state, "epoch": 3}, tmp_path / "blip2_vitL.pth")
    card.pme.init = str(tmp_path / "blip2_vitL.pth")
    with pytest.raises(LocomadError, match="convert-weights"):  # pickles are never opened
        LoCoMAD.from_card(card)
    folder = tmp_path / "blip2"
    folder.mkdir()
    convert_weights(tmp_path / "blip2_vitL.pth", folder / "blip2_vitL.safetensors")
    card.pme.init = str(folder)  # a folder holding the one converted file
    capsys.readouterr()
    model = LoCoMAD.from_card(card)
    err = capsys.readouterr().err
    report = model.pme.load_bert(str(folder))  # again, to look at the report
    pme = model.pme
    _check_every_tensor(report, state, pme)

    layer0 = pme.encoder.layer[0]
    b = "Qformer.bert.encoder.layer.0."
    # the query FFN is LAVIS's own (not a copy of the text FFN, as from BERT)
    assert torch.equal(
        layer0.intermediate_query.dense.weight, state[b + "intermediate_query.dense.weight"]
    )
    assert torch.equal(layer0.intermediate.dense.weight, state[b + "intermediate.dense.weight"])
    assert torch.equal(pme.query_tokens, state["query_tokens"])
    assert torch.equal(pme.vtm_head.weight, state["itm_head.weight"])
    assert pme.temp.item() == pytest.approx(state["temp"].item())
    # cross-attention: key/value read 48-d features there, 32-d here → fresh init
    for part in ("key", "value"):
        assert f"encoder.layer.0.crossattention.attention.{part}.weight" in report.reinitialised
    assert "encoder.layer.1.crossattention.attention.key.weight" not in pme.state_dict()
    assert torch.equal(
        layer0.crossattention.attention.query.weight, state[b + "crossattention.self.query.weight"]
    )
    assert "frame_norm.weight" in report.reinitialised  # ln_vision is 48-wide
    assert pme.embeddings.token_type_embeddings.weight.abs().sum() == 0
    assert report.loaded["embeddings.word_embeddings.weight"].endswith(
        f"(rows 0-{vocab_here - 1} of {vocab_here})"
    )
    assert pme.lm_head.decoder.weight is pme.embeddings.word_embeddings.weight
    assert set(k for k in state if k.startswith("visual_encoder.")) <= set(report.ignored)
    assert "opt_proj.weight" in report.ignored
    # stderr says all of it, grouped
    assert "PME init from" in err and "re-initialised" in err and "ignored" in err
    assert "encoder.layer.{0}.crossattention.attention.key.weight" in err
    assert "visual_encoder" in err and "token types" in err


def test_blip2_vit_l_on_the_opt_card_reinitialises_only_the_frame_side():
    """The real shapes: BLIP-2 ViT-L's Q-Former (BERT-base, 32 queries, vocabulary 30523
    with [DEC]) cross-attends 1024-d CLIP-L patch features; the opt cards' PME reads 768-d
    projected frame features. All but that side of cross-attention (and ln_vision) loads."""
    opt = load_card(OPT_CARDS[0])
    p = opt.pme
    shapes = lavis_shapes(
        p.hidden_size, p.num_layers, p.intermediate_size, 30523, 1024, p.num_queries, p.embed_dim
    )
    state = {k: torch.full(s, (i + 1) / 1024) for i, (k, s) in enumerate(shapes.items())}
    pme = PME(opt, vocab_size=30523, pad_token_id=0)
    report = pme.load_blip2_state(state)
    _check_every_tensor(report, state, pme)
    cross = [f"encoder.layer.{i}.crossattention.attention" for i in range(0, 12, 2)]
    expected = {
        f"{c}.{part}.{t}" for c in cross for part in ("key", "value") for t in ("weight", "bias")
    }
    expected |= {"frame_norm.weight", "frame_norm.bias", "embeddings.token_type_embeddings.weight"}
    assert set(report.reinitialised) == expected
    assert all(" (rows" not in v for v in report.loaded.values())  # every table fits whole


def test_a_pme_init_that_is_no_blip2_checkpoint_is_refused(card, tmp_path):
    save_file({"weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    card.pme.init = str(tmp_path / "other.safetensors")
    with pytest.raises(LocomadError, match="not a LAVIS BLIP-2 Q-Former checkpoint"):
        LoCoMAD.from_card(card)
    wide = lavis_state(lavis_shapes(64, 2, 128, 600, 48, 4, 16))  # another width altogether
    with pytest.raises(LocomadError, match="checkpoint width 64, card 32"):
        PME(card, 600, 0).load_blip2_state(wide)


# -- 4. the PME in stage 2 ---------------------------------------------------------------------


def _stage2_step(card) -> tuple[LoCoMAD, dict[str, torch.Tensor]]:
    """One stage-2 optimizer step set up as train.py does it: requires_grad from
    trainable_parameters(2), AdamW over param_groups. Returns the model and the PME before."""
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card)
    trainable = dict(model.trainable_parameters(2))
    for name, p in model.named_parameters():
        p.requires_grad_(name in trainable)
    before = {k: v.detach().clone() for k, v in model.pme.state_dict().items()}
    opt = torch.optim.AdamW(param_groups(list(trainable.items()), 0.05), lr=1e-3)
    model.train()
    model.forward_stage2(batch_of(card, 4))["loss"].backward()
    opt.step()
    return model, before


def test_pme_frozen_in_stage2_does_not_move(card):
    assert card.pme.train_stage2 == "frozen"  # the default, for now
    model, before = _stage2_step(card)
    after = model.pme.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(n.startswith("pme.") for n, _ in model.trainable_parameters(2))


def test_pme_all_in_stage2_trains_its_query_path(card):
    card.pme.train_stage2 = "all"
    model, before = _stage2_step(card)
    after = model.pme.state_dict()
    query_path = {n for n, _ in model.pme.named_parameters() if on_query_path(n)}
    assert {"query_tokens", "frame_norm.weight"} <= query_path
    assert any(".crossattention." in n for n in query_path)
    assert all(not torch.equal(before[k], after[k]) for k in query_path), [
        k for k in query_path if torch.equal(before[k], after[k])
    ]
    # exactly the query path got gradients (the text side is unused: DDP would stall on it)
    with_grad = {n for n, p in model.pme.named_parameters() if p.grad is not None}
    assert with_grad == query_path
    assert all(torch.equal(before[k], after[k]) for k in before if k not in query_path)
    assert model.pme.training  # trained in train mode (dropout), like the rest


def test_pme_trained_in_stage2_without_its_dropout(card):
    """pme.stage2_dropout false: the query path still trains (same gradients' reach), but q̃
    is drawn without dropout, so two passes in train mode agree — with dropout they differ —
    and the PME is left in the mode it was in. A training policy, not architecture."""
    from locomad_cli.model.checkpoint import architecture

    card.pme.train_stage2 = "all"
    with_dropout = architecture(card)
    card.pme.stage2_dropout = False
    assert architecture(card) == with_dropout
    model, before = _stage2_step(card)
    after = model.pme.state_dict()
    query_path = {n for n, _ in model.pme.named_parameters() if on_query_path(n)}
    assert all(not torch.equal(before[k], after[k]) for k in query_path)
    assert {n for n, p in model.pme.named_parameters() if p.grad is not None} == query_path
    assert model.pme.training
    frames = model._frames(batch_of(card, 3))
    a, b = model._queries(*frames), model._queries(*frames)
    assert a.requires_grad and torch.equal(a, b)
    card.pme.stage2_dropout = True
    assert not torch.equal(model._queries(*frames), model._queries(*frames))


def test_locomad_train_stage2_picks_the_policy_up(card, tmp_path):
    """Through `locomad train` itself: --set pme.train_stage2=all on a stage-1 checkpoint moves
    the PME's query path and nothing else of it."""
    from helpers.datasets import simple_films, write_film_folder, write_splits

    from locomad_cli.train.loop import TrainConfig, train

    root = write_film_folder(tmp_path / "films", simple_films(3, 8), frames=100)
    write_splits(root, {"train": ["film0", "film1"], "val": ["film2"]})
    card_file = tmp_path / "tiny.yaml"
    card_file.write_text(card.to_yaml())
    common = dict(data=f"folder:{root}", batch_size=4, lr=1e-3, warmup_steps=0, val_data="none")
    common.update(log_every=1, num_workers=0, progress=False, max_steps=1, model=str(card_file))
    train(TrainConfig(stage=1, out=str(tmp_path / "r1"), **common))
    r2 = tmp_path / "r2"
    train(
        TrainConfig(
            stage=2,
            out=str(r2),
            init=str(tmp_path / "r1"),
            overrides=["pme.train_stage2=all"],
            **common,
        )
    )
    w1 = load_file(str(tmp_path / "r1" / "model" / "model.safetensors"))
    w2 = load_file(str(r2 / "model" / "model.safetensors"))
    pme = [k for k in w1 if k.startswith("pme.")]
    moved = {k for k in pme if not torch.equal(w1[k], w2[k])}
    assert moved == {k for k in pme if on_query_path(k[len("pme.") :])}


def test_unknown_stage2_policy_is_refused(card):
    card.pme.train_stage2 = "some"
    with pytest.raises(LocomadError, match="pme.train_stage2"):
        LoCoMAD.from_card(card)


# -- 5. mixed precision -------------------------------------------------------------------------


def test_additive_masks_are_finite_in_every_dtype_and_never_fully_masked():
    mask = torch.tensor([[[True, False, False], [False, False, False]]])
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        add = additive(mask, dtype)
        assert add.shape == (1, 1, 2, 3) and add.dtype == dtype
        for cast in (torch.float32, torch.bfloat16, torch.float16):
            assert torch.isfinite(add.to(cast)).all()
            assert torch.isfinite((add + add).to(cast)).all()  # two masks summed
        assert (add == 0).any(-1).all()  # every row sees at least one key
        masked = torch.tensor(MASK_VALUE, dtype=dtype)
        assert add[0, 0, 0, 0] == 0 and (add[0, 0, 0, 1:] == masked).all()
        assert (add[0, 0, 1] == 0).all()  # the empty row sees every key, finitely
    assert math.exp(MASK_VALUE) == 0.0


def strict_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """Attention as a strict half-precision kernel does it: the mask cast to the compute
    dtype, no special case for rows without a visible key (a row of -inf gives NaN)."""
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    scores = (query @ key.transpose(-1, -2)) * scale
    if is_causal:
        n, m = scores.shape[-2:]
        attn_mask = torch.ones(n, m, dtype=torch.bool, device=query.device).tril()
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros(attn_mask.shape, dtype=query.dtype).masked_fill(
                ~attn_mask, float("-inf")
            )
        scores = scores + attn_mask.to(query.dtype)
    return torch.softmax(scores.float(), -1).to(query.dtype) @ value


@pytest.mark.parametrize("policy", ["frozen", "all"])
def test_stage2_under_bf16_autocast_is_finite_for_an_empty_proposal(card, monkeypatch, policy):
    card.pme.train_stage2 = policy
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card)
    batch = batch_of(card, 3)
    assert not batch.context_mask[0].any()  # the film's first slot: nothing before it
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", strict_sdpa)
    trainable = dict(model.trainable_parameters(2))
    model.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sel = model.dsm.select(*model._context(batch), *model._frames(batch))
        out = model.forward_stage2(batch)
    assert torch.isfinite(sel.probs.float()).all() and sel.probs[0].abs().sum() == 0
    assert sel.indices[0] == []
    assert all(torch.isfinite(v).all() for v in out.values())
    out["loss"].backward()
    grads = {n: p.grad for n, p in trainable.items() if p.grad is not None}
    assert any(n.startswith("dsm.sampler") for n in grads)
    assert (policy == "all") == any(n.startswith("pme.") for n in grads)
    assert all(torch.isfinite(g).all() for g in grads.values()), [
        n for n, g in grads.items() if not torch.isfinite(g).all()
    ]
