"""Commands of several stores in one Redis round trip.

A bearer check asks the token store whether the token was revoked and, for a user's token, the
role cache for the user's account card. Each is a Redis round trip of its own (about 60 us of
worker CPU and 90 us of waiting each, measured with redis-py); sent together they cost one. So
a store describes a read as ``Reads`` (the commands and how their replies make the answer) and
the caller sends reads of several stores with ``read_together``.

Each command stays on one Redis Cluster slot (a key, or keys sharing a hash tag), since the
pipeline is not a transaction: each command is atomic, the set is not. So a ``Reads`` holds
read-only commands, or one script whose effects only its own caller acts on (the refresh
token's spend, ``TokenStore.rotation``): sent beside others it runs exactly as it would
alone. A command Redis answers with an error fails its own ``Reads`` only; ``on_error`` may
answer it instead (a script Redis no longer holds is run by the call that loads it). The
in-process stores answer from memory: their reads have no commands and ``read_together``
sends nothing for them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import redis

from .redis_connect import UNAVAILABLE
from .store import StoreUnavailable

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class Reads(Generic[T]):
    """Commands whose replies, in order, make one answer."""

    commands: tuple[tuple[Any, ...], ...]
    answer: Callable[[Sequence[Any]], T]
    #: The answer when Redis refused one of the commands (its error); None raises the error.
    on_error: Callable[[redis.ResponseError], T] | None = None

    @classmethod
    def local(cls, answer: Callable[[], T]) -> Reads[T]:
        """A read answered in this process, without Redis."""
        return cls((), lambda _replies: answer())

    def then(self, follow: Callable[[T], U]) -> Reads[U]:
        """The same commands, with ``follow`` applied to their answer."""
        answer, on_error = self.answer, self.on_error
        return Reads(
            self.commands,
            lambda replies: follow(answer(replies)),
            None if on_error is None else (lambda refused: follow(on_error(refused))),
        )

    def answered(self, replies: Sequence[Any]) -> T:
        """The answer from this read's replies (``replies_together``)."""
        for reply in replies:
            if not isinstance(reply, Exception):
                continue
            if isinstance(reply, UNAVAILABLE):
                raise StoreUnavailable("Redis unavailable") from reply  # a cluster node's
            if self.on_error is None or not isinstance(reply, redis.ResponseError):
                raise reply
            return self.on_error(reply)
        return self.answer(replies)


def replies_together(client: redis.Redis | None, reads: Sequence[Reads[Any]]) -> list[list[Any]]:
    """Each read's replies, in order, from one round trip; a refused command's error stands
    in its reply's place.

    Raises ``StoreUnavailable`` when Redis cannot be reached.
    """
    commands = commands_of(reads)
    replies: list[Any]
    try:
        if not commands:
            replies = []
        elif len(commands) == 1:
            assert client is not None, "Redis commands need a Redis client"
            try:
                replies = [client.execute_command(*commands[0])]
            except redis.ResponseError as refused:
                replies = [refused]
        else:
            assert client is not None, "Redis commands need a Redis client"
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            replies = pipe.execute(raise_on_error=False)
    except UNAVAILABLE as exc:
        raise StoreUnavailable("Redis unavailable") from exc
    return replies_of_each(reads, replies)


def commands_of(reads: Sequence[Reads[Any]]) -> list[tuple[Any, ...]]:
    """Every command of ``reads``, in order: one pipeline's."""
    return [command for read in reads for command in read.commands]


def replies_of_each(reads: Sequence[Reads[Any]], replies: list[Any]) -> list[list[Any]]:
    """The replies of the pipeline of ``commands_of(reads)``, cut into each read's own."""
    each, start = [], 0
    for read in reads:
        end = start + len(read.commands)
        each.append(replies[start:end])
        start = end
    return each


def read_together(client: redis.Redis | None, *reads: Reads[Any]) -> list[Any]:
    """The answers of ``reads``, in order; all their commands go in one round trip.

    Raises ``StoreUnavailable`` when Redis cannot be reached, and the first read's error
    that has no ``on_error``.
    """
    return [
        read.answered(replies)
        for read, replies in zip(reads, replies_together(client, reads), strict=True)
    ]
