"""One Redis round trip for the reads of every request a worker's event loop is answering.

A direct answer reads Redis once (a token's revocation, a user's card, the clients'
generation) and the read blocks the event loop: measured under load (session 12), one round
trip per request cost 0.10 ms of the worker's CPU and 0.15 ms of the machine's, as much as all
the rest of a role check. Under load several requests are ready in the same turn of the loop,
so their reads are gathered here and sent together, as one pipeline, at the start of the next
turn (``replies_together`` over all of them): each request waits for its answers, and one round
trip serves them all. Alone, a request waits one turn of the loop, which is nothing.

Each ``Reads`` stays on one Redis Cluster slot and is read-only, or one script only its own
request acts on (a refresh token's spend), so batching changes nothing of what each answer
means: every command is atomic, the set never was. A refresh sends two in turn (the user's
card, then the spend, ``direct/refresh.py``); each goes with whatever else is ready then.

Whatever the deployment (a single server, Sentinel's master, a Cluster's nodes; over TCP, TLS
or a unix socket) the pipeline is written without stopping the loop (``tokens.loop_redis``,
``tokens.loop_redis_cluster``): while Redis runs it, the loop answers other requests, whose
reads wait and go together in the next pipeline once this one's replies are in (one out at a
time: several made smaller pipelines and cost more, docs/scaling.md session 17). For a client
those cannot stand in for (decoded or RESP3 replies, client-side caching, a subclass),
redis-py sends it, and the loop waits for its replies.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..oauth.clients_generation import GenerationRead
from ..services import Services
from ..tokens.loop_redis import LoopRedis
from ..tokens.loop_redis_cluster import LoopRedisCluster
from ..tokens.reads import Reads, commands_of, read_together, replies_of_each, replies_together
from ..tokens.store import StoreUnavailable

#: The requests gathered for one pipeline: each one's reads and the future of its answers.
Waiting = list[tuple[tuple[Reads[Any], ...], asyncio.Future[list[Any]]]]


class RoundTrips:
    """The reads of the requests ready in one turn of the event loop, sent together."""

    def __init__(self, svc: Services) -> None:
        self.svc = svc
        self._waiting: Waiting = []
        self._loop_redis: LoopRedis | LoopRedisCluster | None = None
        if svc.redis is not None:
            self._loop_redis = LoopRedis.for_client(svc.redis) or LoopRedisCluster.for_client(
                svc.redis
            )
        #: A pipeline is written and not yet answered: reads wait for it to be (one at a time).
        self._in_flight = False

    async def read(self, *reads: Reads[Any]) -> list[Any]:
        """The answers of ``reads``, in order, from the next round trip.

        Raises ``StoreUnavailable`` when Redis cannot be reached.
        """
        if not any(read.commands for read in reads):
            return read_together(None, *reads)  # answered in this process
        loop = asyncio.get_running_loop()
        answered: asyncio.Future[list[Any]] = loop.create_future()
        self._waiting.append((reads, answered))
        if len(self._waiting) == 1 and not self._in_flight:
            loop.call_soon(self._send)
        return await answered

    async def generation_and(
        self, received_at: float | None, reads: tuple[Reads[Any], ...] = ()
    ) -> tuple[str, list[Any]]:
        """``clients_generation.generation_and`` in the next round trip: the clients'
        generation, from a read sent since ``received_at`` or with ``reads``; their answers."""
        generation = GenerationRead(self.svc, received_at)
        return generation.answered(await self.read(*generation.with_reads(reads)))

    def _send(self) -> None:
        waiting, self._waiting = self._waiting, []
        if not waiting:
            return
        everyone = [read for reads, _ in waiting for read in reads]
        if self._loop_redis is None:
            try:
                replies = replies_together(self.svc.redis, everyone)
            except Exception as failed:  # StoreUnavailable, or a bug: each request hears of it
                self._fail(waiting, failed)
                return
            self._answer(waiting, replies)
            return
        self._in_flight = True
        sent = self._loop_redis.send(commands_of(everyone))
        sent.add_done_callback(lambda done: self._answer_sent(waiting, everyone, done))

    def _answer_sent(
        self,
        waiting: Waiting,
        everyone: list[Reads[Any]],
        sent: asyncio.Future[list[Any]],
    ) -> None:
        """A pipeline's replies are in (or it failed): answer its requests, then send what
        gathered meanwhile (``_next``)."""
        try:
            failed = (
                StoreUnavailable("Redis round trip cancelled")
                if sent.cancelled()
                else sent.exception()
            )
            if failed is not None:
                self._fail(waiting, failed)
                return
            self._answer(waiting, replies_of_each(everyone, sent.result()))
        except Exception as bug:  # never leave a request waiting for ever
            self._fail(waiting, bug)
        finally:
            self._next()

    def _next(self) -> None:
        """Send the reads that gathered while a pipeline was out. Scheduled after the wake-ups
        of the requests it has just answered, so that their next reads (a refresh's spend,
        after its card) go in it too."""
        self._in_flight = False
        if self._waiting:
            asyncio.get_running_loop().call_soon(self._send)

    @staticmethod
    def _fail(
        waiting: Waiting,
        failed: BaseException,
    ) -> None:
        for _, answered in waiting:
            if not answered.done():
                answered.set_exception(failed)

    @staticmethod
    def _answer(
        waiting: Waiting,
        replies: list[list[Any]],
    ) -> None:
        """Each waiting request's answers from its reads' replies (``replies``, a list per
        read, in the order of ``waiting``)."""
        start = 0
        for reads, answered in waiting:
            mine = replies[start : start + len(reads)]
            start += len(reads)
            # Answered even for a request cancelled meanwhile: a spend's answer finishes
            # what its script began (the user's session index).
            try:
                answers = [read.answered(each) for read, each in zip(reads, mine, strict=True)]
            except Exception as failed:  # this request's alone: a refusal, a reuse, ...
                if not answered.done():
                    answered.set_exception(failed)
                continue
            if not answered.done():
                answered.set_result(answers)
