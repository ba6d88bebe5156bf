"""Requests as the production adapter hands them to the direct answers (``oidc_server/direct``),
and the app's own answer to the same request, to hold the two against each other."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

import jwt
import redis
from flask import Flask

from oidc_server.rsgi import RECEIVED_AT, Answer, build_environ, run_wsgi
from oidc_server.tokens.redis_store import RedisTokenStore

from ..conftest import MachineClient
from .rsgi_fakes import Headers, Scope
from .waiting import free_port

FORM = "application/x-www-form-urlencoded"

#: A direct answer as the tests call it: ``(environ, body) -> answer or None``, to its end.
Answering = Callable[[dict[str, Any], bytes], "Answer | None"]


def synchronously(
    answerer: Callable[[dict[str, Any], bytes], Awaitable[Answer | None]],
) -> Answering:
    """``answerer`` (a direct answer, which the server awaits on its event loop) run to its end
    on an event loop of its own, its Redis round trip included."""
    return lambda environ, body: asyncio.run(answerer(environ, body))


def form_post(
    path: str,
    machine: MachineClient | None,
    body: bytes,
    *,
    headers: list[tuple[str, str]] | None = None,
    **scope: Any,
) -> dict[str, Any]:
    """The environ the adapter builds (``rsgi.build_environ``) for a form POST to ``path``,
    with ``machine``'s Basic credentials, arrived now."""
    pairs = [("host", "localhost"), ("content-type", FORM)]
    if machine is not None:
        pairs.append(("authorization", machine.basic["Authorization"]))
    pairs += headers or []
    given = {"path": path, "query_string": "", **scope}
    environ = build_environ(Scope(Headers(pairs), **given), body)
    environ[RECEIVED_AT] = time.monotonic()
    return environ


def app_answer(app: Flask, environ: dict[str, Any]) -> Answer:
    """What the app answers to the same request (a copy: both read the body)."""
    fresh = dict(environ)
    fresh["wsgi.input"].seek(0)
    return run_wsgi(app, fresh)


def cut_off_from_redis(services: Any) -> Any:
    """``services`` whose Redis client and store point at a port nothing listens on: every
    read fails as an unreachable Redis does (a real connection, refused)."""
    nowhere = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
    return replace(services, redis=nowhere, store=RedisTokenStore(nowhere))


def token_claims(app: Flask, body: bytes) -> dict[str, Any]:
    """The access token's claims, verified through the JWKS as a resource server would."""
    token = json.loads(body)["access_token"]
    jwks = json.loads(app.test_client().get("/.well-known/jwks.json").data)
    key = jwt.PyJWK(jwks["keys"][0])
    settings = app.extensions["oidc"].settings
    return jwt.decode(
        token,
        key,
        algorithms=["RS256"],
        audience=settings.access_token_audience,
        issuer=settings.oidc_issuer,
    )


def comparable_token_answer(
    app: Flask, answer: Answer, varying: tuple[str, ...] = ("iat", "exp", "jti")
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A token answer without what differs between any two tokens (the ``varying`` claims,
    the signature), its access token verified and replaced by its other claims."""
    status, headers, body = answer
    named = {name.lower(): value for name, value in headers}
    assert named.pop("content-length") == str(len(body))
    payload = json.loads(body)
    claims = token_claims(app, body)
    for name in varying:
        claims.pop(name)
    payload["access_token"] = claims
    return status, named, payload
