"""The clients' generation: whether this worker's cached clients are current, read per request.

Every client authentication reads it (``AuthorizationServer.query_client``); any change to a
client bumps it, so every worker drops its copies at once (``clients.ClientCache``). An
endpoint that reads Redis for its request anyway (introspection, refresh) sends those reads
with this one before authenticating the client, so both cost one round trip.

A request the production server received before another request's read was sent, or within
that read's lease after, uses that read's answer (``ClientCache.generation_read_since``): a
read sent after the request arrived sees every change made before it, and a change returns
only once the lease of every read that missed it is over (``clients.clients_changed``). The
server stamps each request with the time it arrived (``rsgi.RECEIVED_AT``); a request without
the stamp (the test client, the embedded server) always reads.
"""

from __future__ import annotations

import time
from typing import Any

from flask import has_request_context, request

from ..clients import CLIENTS_GENERATION
from ..context import services
from ..rsgi import RECEIVED_AT
from ..services import Services
from ..tokens.reads import Reads, read_together

#: Where the generation read for a request is kept: its WSGI environ, which lives exactly as
#: long as the request (Flask's ``g`` can outlive one, in an app context pushed around several).
_ENVIRON_KEY = "oidc_server.clients_generation"


def read_with_clients_generation(*reads: Reads[Any]) -> list[Any]:
    """The answers of ``reads``, sent with the read of the generation, kept for the request.

    The generation is left out of the round trip when a read sent after the request arrived
    already answered it.
    """
    generation, answers = generation_and(services(), _received_at(), reads)
    if has_request_context():
        request.environ[_ENVIRON_KEY] = generation
    return answers


def clients_generation() -> str:
    """The generation read earlier in this request or since it arrived, else read now."""
    generation = request.environ.get(_ENVIRON_KEY) if has_request_context() else None
    return generation if generation is not None else generation_and(services(), _received_at())[0]


def _received_at() -> float | None:
    return request.environ.get(RECEIVED_AT) if has_request_context() else None


def generation_and(
    svc: Services, received_at: float | None, reads: tuple[Reads[Any], ...] = ()
) -> tuple[str, list[Any]]:
    """The generation, from a read sent since ``received_at`` or with ``reads``; their answers.

    ``received_at`` is None for a request without the server's arrival stamp: it reads.
    Raises ``StoreUnavailable`` when Redis cannot be reached.
    """
    generation = GenerationRead(svc, received_at)
    return generation.answered(read_together(svc.redis, *generation.with_reads(reads)))


class GenerationRead:
    """The generation for a request received at ``received_at``, as one more read among a
    caller's; none at all when a read sent since the request arrived already answered it
    (``ClientCache.generation_read_since``). For callers that send their reads themselves
    (``generation_and``; the direct answers' gathered round trips)."""

    def __init__(self, svc: Services, received_at: float | None) -> None:
        self._cache = svc.client_cache
        self._known = self._cache.generation_read_since(received_at)
        self._read = (
            None if self._known is not None else svc.store.generation_reads(CLIENTS_GENERATION)
        )
        # Noted as sent now, perhaps before it is: safe, as a read sent later sees more.
        self._sent_at = time.monotonic()

    def with_reads(self, reads: tuple[Reads[Any], ...]) -> tuple[Reads[Any], ...]:
        """``reads``, with the generation's read first if one is needed."""
        return reads if self._read is None else (self._read, *reads)

    def answered(self, answers: list[Any]) -> tuple[str, list[Any]]:
        """The generation and the answers of the caller's reads, from ``with_reads``' answers."""
        if self._known is not None:
            return self._known, answers
        generation, *rest = answers
        self._cache.note_generation_read(self._sent_at, generation)
        return generation, rest
