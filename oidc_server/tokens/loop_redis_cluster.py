"""A Redis Cluster's round trips on the event loop: each command to its slot's node.

``tokens.loop_redis`` writes a pipeline to one server's connection and lets the event loop go
on while Redis runs it. A Cluster spreads the keys over its nodes by slot, so a pipeline of
the direct answers' reads (``direct/round_trips.py``) is cut here into one pipeline per node,
each written through that node's own ``LoopRedis``, and the replies are put back in the
commands' order. Where each slot lives is redis-py's cluster client's knowledge
(``nodes_manager``): routing here reads it, and the client keeps it up to date.

When the cluster moves a slot or fails over, a node answers ``MOVED``, ``ASK``, ``TRYAGAIN``
or ``CLUSTERDOWN`` and has not run the command. Those few commands are sent again through
redis-py's cluster client, which follows the redirection and learns the new slot map, so the
next pipelines go to the right node; that send blocks the loop, as every round trip did before,
only while the cluster changes. A node that cannot be reached or does not answer in time, or a
cluster still down after redis-py's retries, puts a ``redis.ConnectionError`` in the commands'
places (``Reads.answered`` makes it ``StoreUnavailable`` for their requests alone) and has the
slot map read again before the next pipeline, at most once a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import redis
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisClusterException,
    TryAgainError,
)

from .loop_redis import LoopRedis
from .store import StoreUnavailable

log = logging.getLogger(__name__)

#: Replies of a node that did not run the command: another node has its slot, or will.
_NOT_RUN_HERE = (MovedError, AskError, TryAgainError, ClusterDownError)
#: Seconds between two readings of the slot map after nodes were lost.
SLOTS_RELOAD_INTERVAL = 1.0


class LoopRedisCluster:
    """Pipelines to a Redis Cluster's primaries, written and read by the running event loop."""

    def __init__(self, client: RedisCluster) -> None:
        self._client = client
        self._nodes: dict[str, LoopRedis] = {}
        self._in_flight = 0
        #: A node was lost: read the slot map before the next pipeline (not before this time).
        self._reload_slots = False
        self._reloaded_at = float("-inf")

    @classmethod
    def for_client(cls, client: Any) -> LoopRedisCluster | None:
        """A ``LoopRedisCluster`` for ``client``; None unless it is redis-py's cluster client
        whose nodes ``LoopRedis`` can reach (redis-py's connections, default replies)."""
        if type(client) is not RedisCluster:
            return None
        nodes = client.get_nodes()
        if not nodes or any(
            node.redis_connection is None or LoopRedis.for_client(node.redis_connection) is None
            for node in nodes
        ):
            return None
        return cls(client)

    @property
    def in_flight(self) -> int:
        """Pipelines written and not yet answered."""
        return self._in_flight

    def send(self, commands: Sequence[tuple[Any, ...]]) -> asyncio.Future[list[Any]]:
        """``LoopRedis.send`` for the cluster: each command goes to its slot's primary; a node
        lost puts a ``redis.ConnectionError`` in its commands' places. The future fails with
        ``StoreUnavailable`` only when the commands cannot be routed (no slot map)."""
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[list[Any]] = loop.create_future()
        if not commands:
            answered.set_result([])
            return answered
        try:
            routes = self._routes(commands, loop)
        except (redis.RedisError, RedisClusterException) as failed:
            unavailable = StoreUnavailable("Redis Cluster unavailable")
            unavailable.__cause__ = failed
            answered.set_exception(unavailable)
            return answered
        replies: list[Any] = [None] * len(commands)
        parts = [(indexes, node.send([commands[i] for i in indexes])) for node, indexes in routes]
        self._in_flight += 1
        remaining = len(parts)

        def part_done(_: asyncio.Future[list[Any]]) -> None:
            nonlocal remaining
            remaining -= 1
            if remaining:
                return
            self._in_flight -= 1
            try:
                self._put_back(commands, parts, replies)
            except Exception as bug:  # never leave the caller waiting for ever
                if not answered.done():
                    answered.set_exception(bug)
                return
            if not answered.done():  # its waiter may have been cancelled
                answered.set_result(replies)

        for _, part in parts:
            part.add_done_callback(part_done)
        return answered

    def _routes(
        self, commands: Sequence[tuple[Any, ...]], loop: asyncio.AbstractEventLoop
    ) -> list[tuple[LoopRedis, list[int]]]:
        """The commands' indexes by the node that holds their slot."""
        if self._reload_slots and loop.time() - self._reloaded_at >= SLOTS_RELOAD_INTERVAL:
            self._reload_slots, self._reloaded_at = False, loop.time()
            self._client.nodes_manager.initialize()  # blocking, as redis-py itself does it
            self._forget_gone_nodes()
        by_node: dict[str, tuple[LoopRedis, list[int]]] = {}
        manager = self._client.nodes_manager
        for index, command in enumerate(commands):
            node = manager.get_node_from_slot(self._client.determine_slot(*command))
            route = by_node.get(node.name)
            if route is None:
                route = by_node[node.name] = (self._node(node), [])
            route[1].append(index)
        return list(by_node.values())

    def _node(self, node: Any) -> LoopRedis:
        """The loop's connection to ``node`` (a ``ClusterNode``), made on first use."""
        loop_redis = self._nodes.get(node.name)
        if loop_redis is None:
            loop_redis = LoopRedis.for_client(node.redis_connection)
            if loop_redis is None:  # checked for every node by for_client
                raise redis.RedisError(f"cluster node {node.name}: no loop connection")
            self._nodes[node.name] = loop_redis
        return loop_redis

    def _forget_gone_nodes(self) -> None:
        known = self._client.nodes_manager.nodes_cache
        for name in [name for name in self._nodes if name not in known]:
            self._nodes.pop(name).close()

    def _put_back(
        self,
        commands: Sequence[tuple[Any, ...]],
        parts: list[tuple[list[int], asyncio.Future[list[Any]]]],
        replies: list[Any],
    ) -> None:
        """Each part's replies in their commands' places; the commands a node did not run
        sent again through redis-py (see the module docstring)."""
        for indexes, part in parts:
            failed = (
                StoreUnavailable("Redis round trip cancelled")
                if part.cancelled()
                else part.exception()
            )
            if failed is not None:
                self._reload_slots = True
                lost = redis.ConnectionError("Redis Cluster node unavailable")
                lost.__cause__ = failed
                for index in indexes:
                    replies[index] = lost
                continue
            for index, reply in zip(indexes, part.result(), strict=True):
                replies[index] = reply
        for index, reply in enumerate(replies):
            if isinstance(reply, _NOT_RUN_HERE):
                replies[index] = self._sent_by_redis_py(commands[index])

    def _sent_by_redis_py(self, command: tuple[Any, ...]) -> Any:
        """``command``'s reply through redis-py's cluster client (which follows redirections
        and retries while the cluster changes); a cluster that stays down or changing, or a
        node lost, is a ``redis.ConnectionError`` in its place, as a node lost here is."""
        try:
            return self._client.execute_command(*command)
        except (*_NOT_RUN_HERE, redis.ConnectionError, redis.TimeoutError) as failed:
            self._reload_slots = True
            unavailable = redis.ConnectionError("Redis Cluster unavailable")
            unavailable.__cause__ = failed
            return unavailable
        except redis.ResponseError as refused:  # the command's own error (WRONGTYPE, ...)
            return refused
        except (redis.RedisError, RedisClusterException) as failed:
            log.warning("Redis Cluster resend failed", extra={"reason": type(failed).__name__})
            return redis.ConnectionError("Redis Cluster unavailable")
