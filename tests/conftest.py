import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from locomad_cli.card import tiny_card  # noqa: E402
from locomad_cli.threads import torch_threads  # noqa: E402


@pytest.fixture
def card():
    """A fresh tiny random-init card (offline, small) for each test."""
    return tiny_card()


@pytest.fixture
def one_thread():
    """torch at one thread for the test, then as it was: tiny tensors on two cores shared with
    other runs are several times faster on one thread than on two contending."""
    with torch_threads(1, decoding=False, device="cpu"):
        yield


@pytest.fixture(scope="session")
def demo_films():
    """Two short demo-world films with their soundtrack and truth (helpers/demo_films.py),
    rendered once per session."""
    from helpers.demo_films import demo_films

    return demo_films()
