"""A free TCP port on the loopback interface, for launchers and servers started by tests."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A port the OS had free a moment ago (bound and released at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
