"""With the hub unreachable, every loader asks the local cache only and fails at once with
one clear line, instead of huggingface_hub's minute of retries."""

import pytest
import torch

from locomad_cli import utils
from locomad_cli.card import load_card
from locomad_cli.utils import LocomadError


@pytest.fixture
def offline(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    import huggingface_hub.file_download as fd

    lookup = fd._get_metadata_or_catch_error

    def no_download(*args, **kwargs):
        # some transformers releases (5.3) ask it with local_files_only=True: a cache lookup
        if kwargs.get("local_files_only"):
            return lookup(*args, **kwargs)
        raise AssertionError("a download was attempted although the hub is unreachable")

    monkeypatch.setattr(utils.socket, "create_connection", refuse)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.setattr("huggingface_hub.file_download._get_metadata_or_catch_error", no_download)
    utils.hub_reachable.cache_clear()
    yield
    utils.hub_reachable.cache_clear()


def test_hub_reachable_and_load_kwargs(offline, tmp_path):
    assert utils.hub_reachable() is False
    assert utils.hf_load_kwargs("facebook/opt-350m") == {"local_files_only": True}
    assert utils.hf_load_kwargs(tmp_path) == {}  # a local folder needs no hub


def test_hub_offline_env_short_circuits(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("no connection should be tried under HF_HUB_OFFLINE=1")

    monkeypatch.setattr(utils.socket, "create_connection", boom)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    utils.hub_reachable.cache_clear()
    try:
        assert utils.hub_reachable() is False
    finally:
        utils.hub_reachable.cache_clear()


def test_clip_tag_not_cached_fails_without_download(offline):
    from locomad_cli.features.clip import load_clip

    card = load_card("opt-350m")
    with pytest.raises(LocomadError, match="not in the local cache.*unreachable"):
        load_clip(card)


@pytest.mark.parametrize(
    "loader",
    ["tokenizer", "bert", "llm"],
)
def test_hub_models_not_cached_fail_with_the_model_id(offline, loader):
    from locomad_cli.model.decoder import load_llm
    from locomad_cli.model.pme import PME
    from locomad_cli.model.tokenizer import load_tokenizer

    card = load_card("opt-350m")
    with pytest.raises(LocomadError) as e:
        if loader == "tokenizer":
            load_tokenizer("facebook/opt-350m", "llm")
        elif loader == "bert":
            PME(card, vocab_size=64, pad_token_id=0).load_bert("bert-base-uncased")
        else:
            load_llm(card, load_tokenizer("tiny", "llm"), torch.float32)
    msg = str(e.value)
    assert "hub is unreachable" in msg and "\n" not in msg
    assert ("opt-350m" in msg) or ("bert-base-uncased" in msg)
