import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from locomad_cli.card import tiny_card  # noqa: E402


@pytest.fixture
def card():
    """A fresh tiny random-init card (offline, small) for each test."""
    return tiny_card()
