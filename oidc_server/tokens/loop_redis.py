"""Redis round trips that do not stop the event loop while Redis works.

The direct answers (``oidc_server/direct``) gather the reads of every request ready in one
turn of a worker's event loop into one pipeline (``direct/round_trips.py``). Sent through
redis-py, that pipeline blocks the loop until its last reply is in: the worker signs nothing
while Redis runs eight refresh tokens' spend scripts, and in a deployment whose Redis is a
network hop away, every round trip is dead time for the worker's core (a 0.3 ms hop per
pipeline is a third of a worker lost). Here the commands are written to a connection the loop
watches, and the loop goes on answering other requests; the replies are parsed (by hiredis,
as redis-py parses them) when they arrive, and each pipeline's future is then answered.
Redis answers one connection's commands in the order they came, so several pipelines may be
in flight at once.

For a single Redis server over TCP, TLS or a unix socket, as ``redis.Redis.from_url`` makes
it, and for the master behind Sentinel (``Sentinel.master_for``): each connection asks the
Sentinels where the master is, as redis-py's own do. A Redis Cluster sends each command to its
slot's node through one of these per node (``tokens.loop_redis_cluster``). The connection is
redis-py's own (``connect()`` does the handshake: TLS, credentials, database, client name), so
the URL's options are honoured alike. Over TLS the socket is the ``ssl.SSLSocket`` it made,
used without blocking: a read or write the TLS layer cannot finish yet is tried again when the
socket is ready.

Failures: a connection that closes, resets or times out (the client's ``socket_timeout``)
fails every pipeline in flight on it with ``StoreUnavailable``, and the next pipeline opens a
new connection. Whether commands that had been written ran is then unknown, as it is for
redis-py: the callers treat it so (a refresh token's spend, ``direct/refresh.py``). Behind
Sentinel, a ``READONLY`` reply means the master this connection reached has been demoted by a
failover: as redis-py does, the connection is dropped (what is in flight fails) and the next
one asks the Sentinels for the new master.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import hiredis
import redis
from redis._parsers.base import BaseParser
from redis.sentinel import (
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)

from .store import StoreUnavailable

log = logging.getLogger(__name__)

#: Pools and connection classes of one server: a single server's, and the master's behind
#: Sentinel, each over TCP or TLS (and a single server over a unix socket).
_POOLS = (redis.ConnectionPool, SentinelConnectionPool)
_CONNECTIONS = (
    redis.Connection,
    redis.SSLConnection,
    redis.UnixDomainSocketConnection,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
#: A non-blocking socket that cannot go on now (TLS: until the socket is ready again).
_NOT_NOW = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_READ_SIZE = 65536


class _Pipeline:
    """Commands written together, and their replies as they arrive."""

    __slots__ = ("answered", "callbacks", "replies", "sent_at")

    def __init__(
        self,
        callbacks: list[Callable[..., Any] | None],
        answered: asyncio.Future[list[Any]],
        sent_at: float,
    ) -> None:
        self.callbacks = callbacks
        self.replies: list[Any] = []
        self.answered = answered
        self.sent_at = sent_at


class LoopRedis:
    """One connection to one Redis server, written and read by the running event loop."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        pool = client.connection_pool
        self._connection_class = pool.connection_class
        self._connection_kwargs = dict(pool.connection_kwargs)
        self.timeout: float | None = self._connection_kwargs.get("socket_timeout")
        self._connection: redis.Connection | None = None
        self._sock: socket.socket | None = None
        self._reader: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._in_flight: deque[_Pipeline] = deque()
        self._unwritten = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def for_client(cls, client: Any) -> LoopRedis | None:
        """A ``LoopRedis`` for ``client``'s server; None unless ``client`` is a single server
        or Sentinel's master with redis-py's default replies (see the module docstring)."""
        if type(client) is not redis.Redis:
            return None  # RedisCluster, or a subclass we do not know
        pool = client.connection_pool
        kwargs = pool.connection_kwargs
        if (
            type(pool) not in _POOLS  # a blocking pool
            or not getattr(pool, "is_master", True)  # Sentinel's replicas
            or pool.connection_class not in _CONNECTIONS  # a connection class we do not know
            or getattr(pool, "cache", None) is not None  # client-side caching
            or kwargs.get("decode_responses")
            or kwargs.get("protocol") not in (None, 2, "2")  # RESP3 replies differ
        ):
            return None
        return cls(client)

    @property
    def in_flight(self) -> int:
        """Pipelines written and not yet answered."""
        return len(self._in_flight)

    def send(self, commands: Sequence[tuple[Any, ...]]) -> asyncio.Future[list[Any]]:
        """Write ``commands`` as one pipeline; the future's result is their replies, in order,
        as redis-py's pipeline gives them (its response callbacks applied; a command Redis
        refused has its error in its reply's place). Its exception is ``StoreUnavailable``
        when Redis cannot be reached or does not answer in time. On the running loop only."""
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[list[Any]] = loop.create_future()
        if not commands:
            answered.set_result([])
            return answered
        try:
            self._connect(loop)
        except StoreUnavailable as failed:
            answered.set_exception(failed)
            return answered
        assert self._connection is not None
        callbacks = self._client.response_callbacks
        self._in_flight.append(
            _Pipeline(
                [callbacks.get(str(command[0]).upper()) for command in commands],
                answered,
                loop.time(),
            )
        )
        self._write(b"".join(self._connection.pack_commands(commands)))
        if self._timer is None and self.timeout and self._sock is not None:
            self._timer = loop.call_later(self.timeout, self._check_time)
        return answered

    def close(self) -> None:
        """Drop the connection (what is in flight fails); a later ``send`` opens another."""
        self._fail(ConnectionError("closed"))

    # The connection --------------------------------------------------------------------------
    def _connect(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sock is not None:
            if self._loop is loop:
                return
            # Made on another event loop (a worker has one; tests run several in turn): that
            # loop no longer watches it.
            self._fail(ConnectionError("the connection's event loop is gone"))
        connection = self._connection_class(**self._connection_kwargs)
        try:
            # redis-py's handshake (AUTH, SELECT, CLIENT SETNAME), blocking as the client's
            # own connections are, bounded by socket_connect_timeout and socket_timeout.
            connection.connect()
        except (redis.ConnectionError, redis.TimeoutError, OSError) as failed:
            connection.disconnect()
            raise StoreUnavailable("Redis unavailable") from failed
        sock = connection._sock  # redis-py keeps its socket there; pinned by tests
        if not isinstance(sock, socket.socket):
            connection.disconnect()
            raise StoreUnavailable("Redis connection without a socket")
        sock.setblocking(False)
        self._connection, self._sock, self._loop = connection, sock, loop
        self._reader = hiredis.Reader(
            protocolError=redis.exceptions.InvalidResponse,
            replyError=BaseParser.parse_error,
            errors=connection.encoder.encoding_errors,
        )
        loop.add_reader(sock.fileno(), self._readable)

    def _write(self, data: bytes) -> None:
        assert self._sock is not None and self._loop is not None
        if self._unwritten:  # earlier bytes still wait for the socket: keep the order
            self._unwritten += data
            return
        try:
            written = self._sock.send(data)
        except _NOT_NOW:
            written = 0
        except OSError as failed:
            self._fail(failed)
            return
        if written < len(data):
            self._unwritten += data[written:]
            self._loop.add_writer(self._sock.fileno(), self._writable)

    def _writable(self) -> None:
        assert self._sock is not None and self._loop is not None
        try:
            # TLS: the same bytes again, and maybe more after them, as OpenSSL allows.
            written = self._sock.send(self._unwritten)
        except _NOT_NOW:
            return
        except OSError as failed:
            self._fail(failed)
            return
        del self._unwritten[:written]
        if not self._unwritten:
            self._loop.remove_writer(self._sock.fileno())

    def _readable(self) -> None:
        sock = self._sock
        assert sock is not None
        try:
            # TLS: a read returns one record's bytes at most (16 KiB), so none are left
            # decrypted and unread behind the socket's readiness.
            data = sock.recv(_READ_SIZE)
        except _NOT_NOW:
            return
        except OSError as failed:
            self._fail(failed)
            return
        if not data:
            self._fail(ConnectionError("Redis closed the connection"))
            return
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except redis.exceptions.InvalidResponse as failed:
                self._fail(failed)
                return
            if reply is False:
                return
            if not self._in_flight:
                self._fail(ConnectionError("a reply nothing was sent for"))
                return
            if isinstance(reply, redis.ReadOnlyError) and isinstance(
                self._connection, SentinelManagedConnection
            ):
                self._fail(reply)  # a demoted master (see the module docstring)
                return
            pipeline = self._in_flight[0]
            callback = pipeline.callbacks[len(pipeline.replies)]
            if callback is not None and not isinstance(reply, Exception):
                reply = callback(reply)
            pipeline.replies.append(reply)
            if len(pipeline.replies) == len(pipeline.callbacks):
                self._in_flight.popleft()
                if not pipeline.answered.done():  # its waiter may have been cancelled
                    pipeline.answered.set_result(pipeline.replies)

    def _check_time(self) -> None:
        """The oldest pipeline has waited ``timeout``: the connection is given up."""
        self._timer = None
        if not self._in_flight or self._loop is None or not self.timeout:
            return
        due = self._in_flight[0].sent_at + self.timeout
        if self._loop.time() >= due:
            self._fail(redis.TimeoutError("Redis did not answer in time"))
        else:
            self._timer = self._loop.call_at(due, self._check_time)

    def _fail(self, failed: BaseException) -> None:
        """Drop the connection; every pipeline in flight learns that Redis is unavailable."""
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._loop.remove_writer(self._sock.fileno())
        if self._connection is not None:
            self._connection.disconnect()
        if self._timer is not None:
            self._timer.cancel()
        self._connection = self._sock = self._reader = self._timer = None
        self._unwritten.clear()
        in_flight, self._in_flight = self._in_flight, deque()
        if in_flight:
            log.warning(
                "Redis connection lost with pipelines in flight",
                extra={"pipelines": len(in_flight), "reason": type(failed).__name__},
            )
        for pipeline in in_flight:
            if not pipeline.answered.done():
                unavailable = StoreUnavailable("Redis unavailable")
                unavailable.__cause__ = failed
                pipeline.answered.set_exception(unavailable)
