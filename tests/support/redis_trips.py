"""Counting Redis round trips: what ``tokens.reads`` exists to save."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from redis.connection import AbstractConnection

from oidc_server.tokens.loop_redis import LoopRedis


@contextmanager
def round_trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Count the requests this process sends to Redis inside the block (a pipeline is one).

    redis-py writes each request, one command or a whole pipeline, with one
    ``send_packed_command``, and the event loop's connection (``tokens.loop_redis``) each
    pipeline with one ``LoopRedis.send``; the wrappers count those calls and let them through.
    A new connection's handshake (credentials, database, client name) is not counted: it is
    once per connection, not per request.
    """
    sent: list[int] = []
    connecting: list[int] = []
    original_send = AbstractConnection.send_packed_command
    original_connect = AbstractConnection.connect
    original_loop_send = LoopRedis.send

    def counting(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        if not connecting:
            sent.append(1)
        original_send(self, command, check_health)

    def connect(self: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
        connecting.append(1)
        try:
            return original_connect(self, *args, **kwargs)
        finally:
            connecting.pop()

    def loop_send(self: LoopRedis, commands: Any) -> Any:
        sent.append(1)
        return original_loop_send(self, commands)

    with monkeypatch.context() as patch:
        patch.setattr(AbstractConnection, "send_packed_command", counting)
        patch.setattr(AbstractConnection, "connect", connect)
        patch.setattr(LoopRedis, "send", loop_send)
        yield sent
