"""Polling for what real processes do in their own time."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

#: Seconds a process may take to start or react on a loaded two-core machine.
DEADLINE = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(check: Callable[[], Any], what: str, deadline: float = DEADLINE) -> Any:
    """Poll ``check`` until it answers something true, and return that; fail after ``deadline``."""
    give_up = time.monotonic() + deadline
    while True:
        found = check()
        if found:
            return found
        assert time.monotonic() < give_up, f"gave up waiting: {what}"
        time.sleep(0.02)
