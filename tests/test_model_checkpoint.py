"""Weights I/O: bit-identical round trip, atomic folder writes, refusing foreign weights,
and the weights-only `.pth` → safetensors converter."""

import os
import pickle

import pytest
import torch
from helpers.batches import batch_of
from safetensors.torch import load_file
from typer.testing import CliRunner

from locomad_cli.card import card_from_dict
from locomad_cli.cli import app
from locomad_cli.model import checkpoint
from locomad_cli.model.checkpoint import convert_weights, load_model, save_model
from locomad_cli.model.locomad import LoCoMAD
from locomad_cli.utils import LocomadError

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained(card):
    """A tiny model nudged away from its init, so a load that silently re-initialised
    anything would show."""
    torch.manual_seed(0)
    model = LoCoMAD.from_card(card)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return model


def test_save_load_bit_identical(card, tmp_path):
    model = _trained(card)
    save_model(model, tmp_path / "w")
    assert sorted(os.listdir(tmp_path / "w")) == [
        "card.yaml",
        "llm_config",
        "model.safetensors",
        "tokenizers",
    ]
    torch.manual_seed(123)  # a load must not depend on the RNG
    loaded = load_model(tmp_path / "w")
    a, b = model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    batch = batch_of(card, 4)
    assert [g.text for g in model.generate(batch)] == [g.text for g in loaded.generate(batch)]
    la, lb = model.forward_stage2(batch), loaded.forward_stage2(batch)
    assert torch.equal(la["loss"], lb["loss"])
    assert loaded.card.to_dict() == model.card.to_dict()
    assert loaded.pme_tokenizer.get_vocab() == model.pme_tokenizer.get_vocab()
    # tied tensors are stored once and stay tied after loading
    stored = load_file(tmp_path / "w" / "model.safetensors")
    assert (
        "pme.lm_head.decoder.weight" not in stored
        or "pme.embeddings.word_embeddings.weight" not in stored
    )
    assert loaded.pme.lm_head.decoder.weight is loaded.pme.embeddings.word_embeddings.weight


def test_load_through_a_card_uses_its_runtime_settings(card, tmp_path):
    model = _trained(card)
    save_model(model, tmp_path / "w")
    other = card_from_dict(model.card.to_dict())
    other.weights = str(tmp_path / "w")
    other.llm.num_beams = 2
    other.dsm.top_k = 1
    loaded = load_model(other)
    assert loaded.card.llm.num_beams == 2
    assert [len(i) for i in loaded.select_context(batch_of(card, 3)).indices] == [0, 1, 1]
    assert torch.equal(loaded.dsm.sampler.weight, model.dsm.sampler.weight)
    other.weights = None
    with pytest.raises(LocomadError, match="names no trained weights"):
        load_model(other)
    other.weights = str(tmp_path / "missing")
    with pytest.raises(LocomadError, match="does not exist"):
        load_model(other)


def test_refuses_weights_made_for_another_card(card, tmp_path):
    save_model(_trained(card), tmp_path / "w")
    other = card_from_dict(card.to_dict())
    other.name = "wide"
    other.pme.hidden_size = 64
    other.weights = str(tmp_path / "w")
    with pytest.raises(LocomadError, match="another architecture than card 'wide'.*hidden_size"):
        load_model(other)
    with pytest.raises(LocomadError, match="not a locomad weights folder"):
        load_model(tmp_path)
    # the same card with only a dropout rate changed is the same architecture (fine-tuning
    # with more dropout); one more layer is not
    same = card_from_dict(card.to_dict())
    same.weights = str(tmp_path / "w")
    same.llm.config = {**same.llm.config, "dropout": 0.3, "attention_dropout": 0.2}
    assert load_model(same).decoder.llm.config.dropout == 0.3
    same.llm.config["num_hidden_layers"] = same.llm.config.get("num_hidden_layers", 2) + 1
    with pytest.raises(LocomadError, match="num_hidden_layers"):
        load_model(same)


def test_save_is_atomic(card, tmp_path, monkeypatch):
    model = _trained(card)
    save_model(model, tmp_path / "w")
    before = (tmp_path / "w" / "model.safetensors").read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(model, tmp_path / "w")
    assert (tmp_path / "w" / "model.safetensors").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["w"]  # no temporary folders left behind
    with pytest.raises(OSError):
        save_model(model, tmp_path / "new")
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    # a successful save replaces the old folder whole
    with torch.no_grad():
        model.dsm.sampler.weight.add_(1.0)
    save_model(model, tmp_path / "w")
    assert sorted(os.listdir(tmp_path)) == ["w"]
    assert torch.equal(load_model(tmp_path / "w").dsm.sampler.weight, model.dsm.sampler.weight)


def test_frozen_hub_llm_is_not_copied(card):
    card.llm.config = None
    card.llm.train = "new-tokens"
    assert not checkpoint.saves_llm(card)
    card.llm.train = "all"
    assert checkpoint.saves_llm(card)


def test_convert_weights(tmp_path):
    shared = torch.arange(6.0).reshape(2, 3)
    torch.save(
        {"state_dict": {"a.weight": shared, "b.weight": shared, "step": 3}}, tmp_path / "m.pth"
    )
    out = convert_weights(tmp_path / "m.pth", tmp_path / "m.safetensors")
    got = load_file(out)
    assert set(got) == {"a.weight", "b.weight"}
    assert torch.equal(got["a.weight"], shared) and torch.equal(got["b.weight"], shared)
    with pytest.raises(LocomadError, match=r"\.safetensors"):
        convert_weights(tmp_path / "m.pth", tmp_path / "m.bin")
    with pytest.raises(LocomadError, match="does not exist"):
        convert_weights(tmp_path / "none.pth", tmp_path / "x.safetensors")
    with pytest.raises(LocomadError, match="is a folder"):
        convert_weights(tmp_path, tmp_path / "x.safetensors")
    with pytest.raises(LocomadError, match="not a regular file"):
        convert_weights("/dev/zero", tmp_path / "x.safetensors")
    # a sparse tensor was an internal error ("unsupported memory format option Contiguous")
    torch.save({"a": torch.zeros(3).to_sparse(), "b": shared}, tmp_path / "sparse.pth")
    with pytest.raises(LocomadError, match="1 tensor.* sparse or quantized .e.g. a."):
        convert_weights(tmp_path / "sparse.pth", tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_convert_weights_never_unpickles_code(tmp_path):
    with open(tmp_path / "evil.bin", "wb") as f:
        pickle.dump({"w": _Evil()}, f, protocol=2)
    with pytest.raises(LocomadError, match="not a weights-only"):
        convert_weights(tmp_path / "evil.bin", tmp_path / "evil.safetensors")
    assert not (tmp_path / "evil.safetensors").exists()


def test_convert_weights_cli(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "m.bin")
    runner = CliRunner()
    ok = runner.invoke(
        app, ["convert-weights", str(tmp_path / "m.bin"), str(tmp_path / "o.safetensors")]
    )
    assert ok.exit_code == 0, ok.output
    assert torch.equal(load_file(tmp_path / "o.safetensors")["w"], torch.ones(2))
    bad = runner.invoke(app, ["convert-weights", str(tmp_path / "m.bin"), str(tmp_path / "o.pt")])
    assert bad.exit_code == 2
    assert "must end in .safetensors" in bad.output


def test_architecture_of_a_hub_llm_card_keeps_its_config_unset():
    from locomad_cli.card import load_card
    from locomad_cli.model.checkpoint import architecture

    arch = architecture(load_card("opt-2.7b"))["llm"]
    assert arch == {"name": "facebook/opt-2.7b", "config": None, "copy": False}
    inline = architecture(load_card("demo"))["llm"]["config"]
    assert inline["num_hidden_layers"] == 3 and "dropout" not in inline


def test_a_card_with_the_rates_under_llm_still_loads(tmp_path, caplog):
    """The speaking rates moved from llm to describer (one rate for every describer): a card
    copied before, or the card.yaml of weights trained before, reads them there, with a
    warning; a card that sets both keeps the describer's; --set of the old key works too."""
    from locomad_cli.card import load_card

    d = load_card("demo").to_dict()
    d["describer"].pop("words_per_minute")
    d["describer"].pop("max_words_per_minute")
    d["llm"]["words_per_minute"] = 150
    d["llm"]["max_words_per_minute"] = 190
    with caplog.at_level("WARNING"):
        card = card_from_dict(d, "old.yaml")
    assert (card.describer.words_per_minute, card.describer.max_words_per_minute) == (150, 190)
    assert "old.yaml: llm.words_per_minute is now describer.words_per_minute" in caplog.text
    d["describer"]["words_per_minute"] = 165
    assert card_from_dict(d).describer.words_per_minute == 165
    assert load_card("demo", ["llm.words_per_minute=140"]).describer.words_per_minute == 140
    assert load_card("demo").describer.words_per_minute == 170
    assert load_card("endpoint").describer.words_per_minute == 160
