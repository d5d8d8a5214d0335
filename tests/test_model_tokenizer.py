"""Offline tokenizers: the tiny byte-level BPE is deterministic, lossless and carries the
project's special tokens; hub names that cannot be fetched fail with the name."""

import pytest

from locomad_cli.model.tokenizer import DEC_TOKEN, LLM_SPECIAL_TOKENS, load_tokenizer
from locomad_cli.utils import LocomadError


def test_tiny_tokenizers_are_deterministic_and_lossless():
    a, b = load_tokenizer("tiny", "llm"), load_tokenizer("tiny", "llm")
    assert a.get_vocab() == b.get_vocab()
    text = "Zoë grabs the café's key — 🎬 then leaves!"
    ids = a(text, add_special_tokens=False).input_ids
    assert a.decode(ids) == text
    assert a.unk_token_id not in ids
    assert a.convert_tokens_to_ids(LLM_SPECIAL_TOKENS) == list(range(len(a) - 6, len(a)))
    assert a.eos_token_id is not None and a.pad_token_id is not None
    # each special token is one token, never split
    for t in LLM_SPECIAL_TOKENS:
        assert len(a(t, add_special_tokens=False).input_ids) == 1


def test_tiny_pme_tokenizer_is_bert_shaped():
    tok = load_tokenizer("tiny", "pme")
    enc = tok("A Man RUNS.").input_ids
    assert enc[0] == tok.cls_token_id and enc[-1] == tok.sep_token_id
    assert tok.decode(enc, skip_special_tokens=True) == "a man runs."  # uncased like BERT
    assert tok.bos_token == DEC_TOKEN and tok.bos_token_id == len(tok) - 1


def test_saved_tokenizer_reloads_identically(tmp_path):
    tok = load_tokenizer("tiny", "llm")
    tok.save_pretrained(tmp_path / "t")
    again = load_tokenizer(str(tmp_path / "t"), "llm")
    assert again.get_vocab() == tok.get_vocab()
    assert len(again) == len(tok)  # special tokens are not added twice
    with pytest.raises(ValueError):
        load_tokenizer("tiny", "decoder")


def test_unreachable_hub_names_the_tokenizer(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(LocomadError, match="'no-such-org/no-such-tok'.*unreachable"):
        load_tokenizer("no-such-org/no-such-tok", "llm")


def test_card_paths_resolve_beside_the_card(card, tmp_path, monkeypatch):
    from locomad_cli.model.locomad import LoCoMAD, card_path

    load_tokenizer("tiny", "pme").save_pretrained(tmp_path / "cards" / "tok-pme")
    card.source = str(tmp_path / "cards" / "mine.yaml")
    card.pme.tokenizer = "tok-pme"
    monkeypatch.chdir(tmp_path)  # not where the tokenizer is
    assert card_path(card, "tok-pme") == str(tmp_path / "cards" / "tok-pme")
    assert card_path(card, "facebook/opt-350m") == "facebook/opt-350m"
    assert card_path(card, "tiny") == "tiny"
    model = LoCoMAD.from_card(card)
    assert model.pme_tokenizer.get_vocab() == load_tokenizer("tiny", "pme").get_vocab()
