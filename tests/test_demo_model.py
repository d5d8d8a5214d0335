"""The demo model: its tokenizers, its CLIP training, its measurements, a reduced training from
scratch that must learn, and the shipped weights that must keep the figures of docs/demo.md."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from locomad_cli.card import MODELS_DIR, load_card, tiny_card
from locomad_cli.demo.tokenizers import train_tokenizer
from locomad_cli.demo.world import LOOKS, NAMES

REPO = MODELS_DIR.parent
DOCS = REPO / "docs" / "demo.md"


def _slot(text: str, kind: str, location: int = 0, prop: int | None = None) -> dict:
    return {"text": text, "action": {"kind": kind, "location": location, "prop": prop}}


def test_attribute_readers_use_the_worlds_vocabulary():
    from locomad_cli.demo.attributes import action_of, location_of, look_of, name_of, prop_of

    assert name_of("A man in a green coat, Tom, enters the kitchen.") == "tom"
    assert name_of("mira hands tom the red key") == "mira"
    assert name_of("The kitchen is empty.") is None
    kitchen, living, beach = 0, 2, 5
    assert location_of("A man in a green coat enters the kitchen.") == kitchen
    assert location_of("Tom walks over to the side table.") == living  # not the kitchen's table
    assert location_of("Tom walks over to the table.") == kitchen
    assert location_of("Mira sits down on the deck chair.") == beach  # not the office's chair
    assert location_of("Tom sits down on the bench.") is None  # garden and street both have one
    assert look_of("Tom, in the green coat, returns to the garden.") == 0
    assert look_of("Mira waves at Tom.") is None
    assert prop_of("Mira hands Tom the red key.") == 0
    assert prop_of("In the kitchen, a blue cup lies on the table.") == 1
    assert action_of("Tom gets back to his feet.") == "getup"
    assert action_of("Tom gets up.") == "stand"
    assert action_of("Mira and Tom embrace.") == "meet"
    assert action_of("Tom, in the green coat, walks into the garden.") == "enter"
    assert action_of("Tom walks over to the desk.") == "walk"


def test_scores_count_only_what_the_reference_says_and_catch_repeats():
    from locomad_cli.demo.attributes import score_films

    slots = [
        _slot("The kitchen is empty.", "establish"),
        _slot("In the kitchen, a red key lies on the table.", "establish", prop=0),
        _slot("A man in a green coat enters the kitchen.", "enter"),
        _slot("Tom picks up the red key.", "pickup", prop=0),
        _slot("Tom waves at Mira.", "wave"),
        _slot("Tom sits down on the stool.", "sit"),
    ]
    preds = [
        "The kitchen is empty.",  # location right
        "In the kitchen, a blue cup lies on the table.",  # location right, prop seen wrong
        "A woman in a red dress enters the garden.",  # look, location wrong; action right
        "Tom picks up the blue cup.",  # no place said; prop wrong, action and name right
        "Tom picks up the blue cup.",  # a repeat; action wrong, name right
        "Leo sits down on the stool.",  # location (the stool), action right, name wrong
    ]
    r = score_films([(slots, preds)])
    assert r["location_count"] == 4 and r["location"] == pytest.approx(3 / 4)
    assert r["location_said"] == pytest.approx(4 / 6)
    assert r["look_count"] == 1 and r["look"] == 0.0
    assert r["prop_count"] == 1 and r["prop"] == 0.0
    assert r["prop_seen_count"] == 1 and r["prop_seen"] == 0.0
    assert r["action_count"] == 6 and r["action"] == pytest.approx(5 / 6)
    assert r["name_count"] == 3 and r["name"] == pytest.approx(2 / 3)
    assert r["repeat_rate"] == pytest.approx(1 / 6)
    assert r["reference_repeat_rate"] == 0.0


def test_probe_labels_what_is_on_screen_and_the_probe_reads_only_what_is_there():
    from types import SimpleNamespace

    from locomad_cli.demo.probe import linear_probe, slot_labels

    def act(kind, actor=None, prop=None):
        return {"action": {"kind": kind, "actor": actor, "prop": prop, "location": 3}}

    world = {
        "cast": [{"name": "Tom", "look": LOOKS[2].phrase}],
        "slots": [act("establish", prop=4), act("enter", 0), act("pickup", 0, 4), act("wave", 0)],
    }
    labels = slot_labels(SimpleNamespace(world=world))
    assert [lab["prop_seen"] for lab in labels] == [4, None, None, None]
    assert [lab["prop"] for lab in labels] == [None, None, 4, None]
    assert [lab["look"] for lab in labels] == [None, 2, None, None]  # entrances, as scored
    assert {lab["location"] for lab in labels} == {3}
    g = torch.Generator().manual_seed(0)
    y = [i % 3 for i in range(90)]
    signal = torch.nn.functional.one_hot(torch.tensor(y), 3).float() * 3
    x = torch.cat([signal, torch.randn(90, 5, generator=g)], 1)
    assert linear_probe(x[:60], y[:60], x[60:], y[60:]) == 1.0
    noise = torch.randn(90, 8, generator=g)
    assert linear_probe(noise[:60], y[:60], noise[60:], y[60:]) < 0.6


def test_sequence_probe_reads_who_came_in_where_the_mean_frame_cannot():
    """The demo's newcomer problem in miniature: every clip shows one class, then another;
    the label is the one that comes second. The mean frame holds both equally, so a linear
    probe on it is near a coin toss; the sequence reader reads the order."""
    from locomad_cli.demo.probe import linear_probe, sequence_probe

    g = torch.Generator().manual_seed(0)
    n, length = 240, 10
    first = torch.randint(0, 4, (n,), generator=g)
    second = (first + torch.randint(1, 4, (n,), generator=g)) % 4
    x = torch.randn(n, length, 6, generator=g) * 0.3
    x[:, :5, :4] += torch.nn.functional.one_hot(first, 4)[:, None].float() * 2
    x[:, 5:, :4] += torch.nn.functional.one_hot(second, 4)[:, None].float() * 2
    mask = torch.ones(n, length, dtype=torch.bool)
    mask[::3, 8:] = False  # some clips end early: padding must not count
    x[::3, 8:] = 50.0
    y = second.tolist()
    mean = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert linear_probe(mean[:180], y[:180], mean[180:], y[180:]) < 0.7
    held = {"who": y[180:], "none": [None] * 60}
    acc = sequence_probe(
        (x[:180], mask[:180]), {"who": y[:180], "none": [None] * 180}, (x[180:], mask[180:]), held
    )
    assert acc["who"] >= 0.95 and acc["none"] == 0.0
    noise = torch.randn(n, length, 6, generator=g)
    acc = sequence_probe(
        (noise[:180], mask[:180]), {"who": y[:180]}, (noise[180:], mask[180:]), {"who": y[180:]}
    )
    assert acc["who"] < 0.5


def test_tokenizers_keep_every_name_whole():
    texts = ["A man in a green coat, Tom, enters the kitchen.", "Mira hands Tom the red key."]
    texts += [f"{n}, {n}. {n}!" for n in NAMES] * 4 + [look.phrase for look in LOOKS]
    llm = train_tokenizer(texts, "llm", vocab_size=500)
    pme = train_tokenizer(texts, "pme", vocab_size=500)
    for name in NAMES:
        assert len(llm.tokenize(f" {name}")) == 1, name
    ids = llm("Mira hands Tom the red key.")["input_ids"]
    assert llm.decode(ids, skip_special_tokens=True).strip() == "Mira hands Tom the red key."
    enc = pme("Mira hands Tom the red key.")["input_ids"]
    assert enc[0] == pme.cls_token_id and enc[-1] == pme.sep_token_id
    assert pme.decode(enc, skip_special_tokens=True).strip() == "mira hands tom the red key."


def test_pme_generate_writes_text_from_the_vtg_head():
    from locomad_cli.data.records import ClipRecord, collate
    from locomad_cli.demo.measure import pme_generate
    from locomad_cli.model.locomad import LoCoMAD

    torch.manual_seed(0)
    card = tiny_card()
    model = LoCoMAD.from_card(card)
    recs = [ClipRecord("f", 0, 1, torch.randn(6, card.clip.dim)) for _ in range(2)]
    batch = collate(recs, card.pme.max_frames, card.dsm.proposal_len)
    out = pme_generate(model, batch, max_len=6)
    assert len(out) == 2 and all(isinstance(t, str) for t in out)
    # greedy: the same input gives the same words
    assert out == pme_generate(model, batch, max_len=6)
    # one step = the VTG head's argmax after [DEC], under the causal VTG mask
    tok = model.pme_tokenizer
    frames, fmask = model._frames(batch)
    dec = torch.full((2, 1), tok.bos_token_id)
    with torch.no_grad():
        _, t = model.pme.encode(frames, fmask, dec, torch.ones_like(dec, dtype=torch.bool), "vtg")
    first = model.pme.lm_head(t[:, -1]).argmax(-1).tolist()
    expected = [tok.decode([i], skip_special_tokens=True).strip() for i in first]
    assert pme_generate(model, batch, max_len=2) == expected


@pytest.mark.slow
def test_hard_negatives_swap_one_prop_garment_or_room_for_another_of_the_world():
    import numpy as np

    from locomad_cli.demo.clip_train import hard_negative
    from locomad_cli.demo.world import LOCATIONS, PROPS

    caption = "The man in the blue suit picks up the blue cup in the kitchen."
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        neg = hard_negative(caption, rng)
        assert neg != caption
        if "suit" not in neg:  # the garment went: "blue suit" -> another garment
            assert "blue cup" in neg and "kitchen" in neg
            seen.add("garment")
        elif "blue cup" not in neg:  # the prop went, the suit stayed blue
            assert "blue suit" in neg and any(p.name in neg for p in PROPS)
            seen.add("prop")
        else:
            assert "kitchen" not in neg and any(loc.name in neg for loc in LOCATIONS)
            seen.add("room")
    assert seen == {"garment", "prop", "room"}
    assert hard_negative("Tom waves at Mira.", rng) is None


def test_contrastive_loss_counts_negative_texts_for_images_only():
    import math

    from locomad_cli.demo.clip_train import contrastive_loss

    e = torch.eye(2)
    got = contrastive_loss(e, e, e[:1], torch.tensor(1.0))
    E = math.e
    per_image = ((-1 + math.log(E + 1 + E)) + (-1 + math.log(1 + E + 1))) / 2
    per_text = -1 + math.log(E + 1)
    assert got.item() == pytest.approx((per_image + per_text) / 2, rel=1e-6)
    # no negatives: CLIP's own symmetric loss
    assert contrastive_loss(e, e, e[:0], torch.tensor(1.0)).item() == pytest.approx(per_text)


@pytest.mark.slow
def test_clip_training_learns_and_saves_loadable_weights(tmp_path):
    from locomad_cli.demo.clip_train import train_clip
    from locomad_cli.demo.data import DemoDataConfig, make_data
    from locomad_cli.features.clip import load_clip

    make_data(tmp_path / "d", DemoDataConfig(seed=1, films=4, val=1, test=1), features=False)
    card = load_card("demo")
    out = tmp_path / "clip.safetensors"
    r = train_clip(tmp_path / "d", card, out, steps=30, batch_size=32, log_every=0)
    assert out.is_file()
    assert 0.0 <= r["val_r1_random"] <= 1.0 and 0.0 <= r["val_r1_trained"] <= 1.0
    # the file loads through the same code as ViT-L/14's weights, and text features are real
    trained = dataclasses.replace(card, clip=dataclasses.replace(card.clip, pretrained=str(out)))
    enc = load_clip(trained)
    random_init = load_clip(
        dataclasses.replace(card, clip=dataclasses.replace(card.clip, pretrained=None))
    )
    texts = ["A man in a green coat enters the kitchen.", "The beach is quiet."]
    a, b = enc.encode_text(texts), random_init.encode_text(texts)
    assert a.shape == (2, card.clip.dim)
    assert not torch.allclose(a, b)


@pytest.mark.slow
def test_reduced_training_from_scratch_beats_an_untrained_model(tmp_path):
    """A few minutes of the real pipeline (data, tokenizers, CLIP, features, stage 1, stage 2)
    must leave a model clearly better than the same architecture untrained, and one that
    sees: it names the room on screen far above chance (1 in 6) on films it never saw."""
    from locomad_cli.demo.measure import measure
    from locomad_cli.demo.pipeline import DemoTrainConfig, train_demo
    from locomad_cli.demo.probe import POINTS, ProbeConfig, probe
    from locomad_cli.model.checkpoint import load_model
    from locomad_cli.model.locomad import LoCoMAD

    cfg = DemoTrainConfig(
        work=str(tmp_path / "work"),
        weights=str(tmp_path / "weights"),
        films=20,
        val=1,
        test=3,
        extra_train=0,
        clip_steps=400,
        s1_epochs=6,
        s2_epochs=16,
        s2_eval_epochs=16,
        val_clips=8,
        measure=False,
    )
    train_demo(cfg)
    card = load_card(str(tmp_path / "work" / "card.yaml"))
    trained = load_model(card)
    torch.manual_seed(0)
    untrained = LoCoMAD.from_card(card)
    data = tmp_path / "work" / "data"
    settings = ("recurrent", "local")
    got = measure(trained, data, settings)
    base = measure(untrained, data, settings)
    # CIDEr is on the usual ×100 scale; a working run gets 90 here, an untrained one ~0
    for s in settings:
        assert got[s]["CIDEr"] > base[s]["CIDEr"] + 10, (s, got, base)
    # measured 0.95 (local) and 0.93 (recurrent) on the 3 held-out films; chance is 0.17. The
    # earlier, smaller run (16 films, 300 CLIP steps, 12 stage-2 epochs) measured 0.88 / 0.62
    # on one machine and 0.45 / 0.30 on an AMD EPYC: too near its floor to be a test.
    assert got["local"]["location"] >= 0.6, got
    assert got["recurrent"]["location"] >= 0.6, got
    assert (tmp_path / "weights" / "frame-stats.json").is_file()
    # `demo probe` on the same films: the room is in the frames for both readers (the
    # reduced CLIP's, 16 training films); its query and prompt points are all reported
    probed = probe(trained, ProbeConfig(str(data), train_films=16, model_settings=False))
    assert set(probed) == {f"{k}/{p}" for k in ("probe", "reader") for p in POINTS}
    assert probed["probe/frames"]["location"] >= 0.8, probed
    assert probed["reader/frames"]["location"] >= 0.8, probed


def _documented() -> dict:
    """The machine-readable figures block of docs/demo.md."""
    text = DOCS.read_text(encoding="utf-8")
    block = re.search(r"<!-- figures\n(.*?)\n-->", text, re.S)
    assert block, "docs/demo.md lacks its figures block"
    return json.loads(block.group(1))


@pytest.mark.slow
def test_shipped_weights_keep_the_documented_figures(tmp_path):
    from locomad_cli.demo.data import DemoDataConfig, extract_demo_features, make_film, write_film
    from locomad_cli.demo.measure import measure
    from locomad_cli.model.checkpoint import load_model

    doc = _documented()
    cfg = DemoDataConfig(**doc["data"])
    # the held-out films of the shipped training, rebuilt from their seed
    for i in range(cfg.films - cfg.test, cfg.films):
        write_film(make_film(i, cfg), tmp_path / "test", cfg.fps)
    extract_demo_features(tmp_path, "demo")
    model = load_model(load_card("demo"))
    settings = tuple(doc["test"])
    got = measure(model, tmp_path, [s for s in settings if s != "stage1"])
    # the "stage1" row is the stage-1 PME alone, which is not shipped (stage 2 trains the
    # PME on): its documented figure is the baseline the stage-2 rows must beat
    tol = doc["tolerance"]
    for s in settings:
        if s == "stage1":
            continue
        for key in ("CIDEr", "location", "look", "name"):
            floor = doc["test"][s][key] - tol[key]
            assert got[s][key] >= floor, (s, key, got[s], doc["test"][s])
        ceiling = doc["test"][s]["repeat_rate"] + tol["repeat_rate"]
        assert got[s]["repeat_rate"] <= ceiling, (s, got[s], doc["test"][s])
    # the model sees: the room on screen, far above chance (1 in 6), in every setting
    for s in ("oracle", "recurrent", "local"):
        assert got[s]["location"] >= 0.9, (s, got[s])
        # Table 4's direction: stage 1+2 writes far better than the PME alone after stage 1
        assert got[s]["CIDEr"] > doc["test"]["stage1"]["CIDEr"] + 100, (s, got[s])
    # names in the recurrent loop: context (DSM top-k, last k) >= no context. Table 6's
    # DSM >= last k held greedy (0.10 / 0.08) and not with 4 beams ranked to fit the slot
    # (0.10 / 0.13 on seed 0; docs/notes/2026-12-06-describe-to-fit.md)
    assert got["recurrent"]["name"] >= got["local"]["name"]
    assert got["recurrent-last-k"]["name"] >= got["local"]["name"]


def test_shipped_demo_film_is_small_and_complete():
    folder = REPO / "demo"
    mp4s = sorted(folder.glob("*.mp4"))
    assert len(mp4s) == 1
    mp4 = mp4s[0]
    assert mp4.stat().st_size <= 3_000_000
    assert mp4.with_suffix(".srt").is_file()
    # the reference AD doubles as --ad-times; not NAME.ad.srt, which describe writes
    assert Path(str(mp4.with_suffix("")) + ".ad-times.srt").is_file()


def test_shipped_weights_are_small_safetensors():
    folder = REPO / "weights" / "demo"
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25_000_000
    assert (folder / "model.safetensors").is_file() and (folder / "clip.safetensors").is_file()
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".bin", ".pkl")]
