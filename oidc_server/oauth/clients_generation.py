"""The clients' generation: whether this worker's cached clients are current, read per request.

Every client authentication reads it (``AuthorizationServer.query_client``); any change to a
client bumps it, so every worker drops its copies at once (``clients.ClientCache``). An
endpoint that reads Redis for its request anyway (introspection, refresh) sends those reads
with this one before authenticating the client, so both cost one round trip.

A request the production server received before another request's read was sent uses that
read's answer (``ClientCache.generation_read_since``): a read sent after the request arrived
sees every change made before it. The server stamps each request with the time it arrived
(``rsgi.RECEIVED_AT``); a request without the stamp (the test client, the embedded server)
always reads.
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
    generation = svc.client_cache.generation_read_since(received_at)
    if generation is not None:
        return generation, read_together(svc.redis, *reads)
    sent_at = time.monotonic()
    generation, *answers = read_together(
        svc.redis, svc.store.generation_reads(CLIENTS_GENERATION), *reads
    )
    svc.client_cache.note_generation_read(sent_at, generation)
    return generation, answers
