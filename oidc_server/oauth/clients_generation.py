"""The clients' generation: whether this worker's cached clients are current, read per request.

Every client authentication reads it (``AuthorizationServer.query_client``); any change to a
client bumps it, so every worker drops its copies at once (``clients.ClientCache``). An
endpoint that reads Redis for its request anyway (introspection, refresh) sends those reads
with this one before authenticating the client, so both cost one round trip.
"""

from __future__ import annotations

from typing import Any

from flask import has_request_context, request

from ..clients import CLIENTS_GENERATION
from ..context import services
from ..tokens.reads import Reads, read_together

#: Where the generation read for a request is kept: its WSGI environ, which lives exactly as
#: long as the request (Flask's ``g`` can outlive one, in an app context pushed around several).
_ENVIRON_KEY = "oidc_server.clients_generation"


def read_with_clients_generation(*reads: Reads[Any]) -> list[Any]:
    """The answers of ``reads``, sent with the read of the generation, kept for the request."""
    svc = services()
    generation, *answers = read_together(
        svc.redis, svc.store.generation_reads(CLIENTS_GENERATION), *reads
    )
    if has_request_context():
        request.environ[_ENVIRON_KEY] = generation
    return answers


def clients_generation() -> str:
    """The generation read earlier in this request, else read now."""
    generation = request.environ.get(_ENVIRON_KEY) if has_request_context() else None
    if generation is None:
        generation = services().store.get_generation(CLIENTS_GENERATION)
    return generation
