"""Counting Redis round trips: what ``tokens.reads`` exists to save."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from redis.connection import AbstractConnection


@contextmanager
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count the requests this process sends to Redis inside the block (a pipeline is one).

    redis-py writes each request, one command or a whole pipeline, with one
    ``send_packed_command``; the wrapper counts those calls and lets them through.
    """
    sent: list[int] = []
    original = AbstractConnection.send_packed_command

    def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        original(self, command, check_health)

    with monkeypatch.context() as patch:
        patch.setattr(AbstractConnection, "send_packed_command", counting)
        yield sent
