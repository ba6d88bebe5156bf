"""Reads of several stores in one Redis round trip.

A bearer check asks the token store whether the token was revoked and, for a user's token, the
role cache for the user's account card. Each is a Redis round trip of its own (about 60 us of
worker CPU and 90 us of waiting each, measured with redis-py); sent together they cost one. So
a store describes a read as ``Reads`` (the commands and how their replies make the answer) and
the caller sends reads of several stores with ``read_together``.

Only read-only commands go in a ``Reads``, and each of its commands stays on one Redis Cluster
slot (a key, or keys sharing a hash tag), since the pipeline is not a transaction: each
command is atomic, the set is not. The in-process stores answer from memory: their reads have
no commands and ``read_together`` sends nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis

from .store import StoreUnavailable

T = TypeVar("T")


@dataclass(frozen=True)
class Reads(Generic[T]):
    """Read-only commands whose replies, in order, make one answer."""

    commands: tuple[tuple[Any, ...], ...]
    answer: Callable[[Sequence[Any]], T]

    @classmethod
    def local(cls, answer: Callable[[], T]) -> Reads[T]:
        """A read answered in this process, without Redis."""
        return cls((), lambda _replies: answer())


def read_together(client: redis.Redis | None, *reads: Reads[Any]) -> list[Any]:
    """The answers of ``reads``, in order; all their commands go in one round trip.

    Raises ``StoreUnavailable`` when Redis cannot be reached.
    """
    commands = [command for read in reads for command in read.commands]
    try:
        if not commands:
            replies: list[Any] = []
        elif len(commands) == 1:
            assert client is not None, "Redis commands need a Redis client"
            replies = [client.execute_command(*commands[0])]
        else:
            assert client is not None, "Redis commands need a Redis client"
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies = pipe.execute()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise StoreUnavailable("Redis unavailable") from exc
    answers = []
    start = 0
    for read in reads:
        end = start + len(read.commands)
        answers.append(read.answer(replies[start:end]))
        start = end
    return answers
