"""``client_credentials`` tokens answered by the production server before Flask sees the request.

Machine clients ask for tokens more often than anything else asks for anything, and through
Flask and Authlib a token cost about three times its RS256 signature, the floor of its cost
(docs/scaling.md: 0.80 ms of CPU per token where signing takes 0.27). This answers the one
request shape that is nearly all of that traffic:

    POST /oauth/token, no query string, no Origin
    Content-Type: application/x-www-form-urlencoded
    Authorization: Basic <client id>:<secret>
    grant_type=client_credentials[&scope=...]

with the calls the grant itself makes (the clients' generation and the worker's client cache,
``RegisteredClient``'s checks, ``TokenService.issue_client_token``) and the same answer: body,
headers (``security_headers.add_security_headers``, ``X-Request-ID``), metrics and access log
line (``observability``).

It answers only when the answer is a token. Anything else (another grant or authentication
method, a parameter beyond those two, a client this worker has not cached, a wrong secret, a
scope the client may not have, Redis unreachable) makes it return None, and the request goes
on to Flask, which answers it as it always has. So every error answer, and every case but
the one above, stays in one place: Authlib's grant (``oauth/grants.py``). A client is cached
by the first request Flask answers for it.

Not used while rate limits are on: flask-limiter counts ``/oauth/token`` per client address in
its own keys, which only its hooks maintain.
"""

from __future__ import annotations

import json
import time
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from authlib.common.security import is_secure_transport
from authlib.oauth2.rfc6749.util import extract_basic_authorization
from flask import Flask
from werkzeug.datastructures import Headers

from .. import cors, observability
from ..app import behind_trusted_proxy
from ..rsgi import RECEIVED_AT, Answer
from ..security_headers import add_security_headers
from ..services import Services
from ..tokens.store import StoreUnavailable
from .clients_generation import generation_and
from .grants import ClientCredentialsGrant

TOKEN_PATH = "/oauth/token"
GRANT_TYPE = ClientCredentialsGrant.GRANT_TYPE
AUTH_METHOD = "client_secret_basic"
FORM_TYPE = "application/x-www-form-urlencoded"


class DirectClientCredentials:
    """``(environ, body) -> answer or None``: the token for a plain ``client_credentials``
    request (see the module docstring), or None to let the app answer the request."""

    def __init__(self, svc: Services, *, vary_origin: bool) -> None:
        self.svc = svc
        #: CORS is on: every answer says ``Vary: Origin`` (``cors._cors_headers``).
        self.vary_origin = vary_origin
        #: Every header of the answer but its length and request id, by whether the request
        #: came over TLS: they depend on nothing else.
        self._headers = {secure: self._fixed_headers(secure) for secure in (False, True)}
        self._count_token = observability.tokens_issued_counter(GRANT_TYPE)
        self._recorder = observability.RequestRecorder("POST", TOKEN_PATH, 200)
        self._proxy_fix = (
            behind_trusted_proxy(lambda environ, start_response: ())
            if svc.settings.trust_proxy_headers
            else None
        )

    @classmethod
    def for_app(cls, app: Flask) -> DirectClientCredentials | None:
        """The direct path for ``app``'s token endpoint; None while rate limits are on."""
        svc: Services = app.extensions["oidc"]
        if svc.settings.ratelimit_enabled:
            return None
        return cls(svc, vary_origin=cors.enabled(app))

    def __call__(self, environ: dict[str, Any], body: bytes) -> Answer | None:
        started = time.perf_counter()
        if not _plain_token_request(environ):
            return None
        asked = _requested_scope(body)
        credentials = _basic_credentials(environ.get("HTTP_AUTHORIZATION"))
        if asked is None or credentials is None:
            return None
        scope, (client_id, secret) = asked[0], credentials
        if self._proxy_fix is not None:
            environ = dict(environ)  # the app gets the request as it came
            self._proxy_fix(environ, None)
        host = environ.get("HTTP_HOST") or environ["SERVER_NAME"]
        if not _secure_transport(environ["wsgi.url_scheme"], host):
            return None  # Authlib's insecure_transport answer
        try:
            generation, _ = generation_and(self.svc, environ.get(RECEIVED_AT))
        except StoreUnavailable:
            return None
        client = self.svc.client_cache.cached(generation, client_id)
        if (
            client is None
            or not client.check_client_secret(secret)
            or not client.check_endpoint_auth_method(AUTH_METHOD, "token")
            or not client.check_grant_type(GRANT_TYPE)
            or not client.allows_scope(scope)
        ):
            return None
        granted = client.get_allowed_scope(scope)
        payload = json.dumps(self.svc.tokens.issue_client_token(client.client_id, granted))
        return self._answer(environ, payload.encode(), started)

    def _fixed_headers(self, is_secure: bool) -> list[tuple[str, str]]:
        """The headers Authlib and the app's hooks give a token response (``oauth/grants.py``),
        but for ``Content-Length`` and ``X-Request-ID``."""
        headers = Headers(ClientCredentialsGrant.TOKEN_RESPONSE_HEADER)
        add_security_headers(
            headers, path=TOKEN_PATH, is_secure=is_secure, settings=self.svc.settings
        )
        if self.vary_origin:
            headers["Vary"] = "Origin"
        return headers.to_wsgi_list()

    def _answer(self, environ: dict[str, Any], body: bytes, started: float) -> Answer:
        request_id = observability.request_id_for(environ.get("HTTP_X_REQUEST_ID"))
        headers = [
            *self._headers[environ["wsgi.url_scheme"] == "https"],
            ("Content-Length", str(len(body))),
            (observability.REQUEST_ID_HEADER, request_id),
        ]
        with observability.request_id_bound(request_id):
            self._count_token()
            self._recorder.record(
                time.perf_counter() - started, TOKEN_PATH, environ.get("REMOTE_ADDR") or ""
            )
        return 200, headers, body


@lru_cache(maxsize=64)
def _secure_transport(scheme: str, host: str) -> bool:
    """Authlib's check of the request's URL (https, or http on loopback), which depends on
    nothing else; cached, as parsing an address costs more than the rest of a request."""
    return is_secure_transport(f"{scheme}://{host}{TOKEN_PATH}")


def _plain_token_request(environ: dict[str, Any]) -> bool:
    return (
        environ["REQUEST_METHOD"] == "POST"
        and environ["PATH_INFO"] == TOKEN_PATH
        and not environ.get("QUERY_STRING")  # Authlib reads parameters from the query too
        and "HTTP_ORIGIN" not in environ  # a browser's: CORS decides its headers
        and environ.get("CONTENT_TYPE", "").strip().lower() == FORM_TYPE
    )


def _requested_scope(body: bytes) -> tuple[str | None] | None:
    """``(scope or None,)`` if the form is ``grant_type=client_credentials`` and at most one
    ``scope``, each once; None for any other form."""
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=True, errors="strict"
        )
    except (UnicodeDecodeError, ValueError):
        return None
    form = dict(pairs)
    if len(form) != len(pairs) or form.get("grant_type") != GRANT_TYPE:
        return None
    if not set(form) <= {"grant_type", "scope"}:
        return None
    return (form.get("scope"),)


def _basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """Client id and secret from ``Authorization: Basic``, parsed as Authlib parses them."""
    if not authorization:
        return None
    try:
        client_id, secret = extract_basic_authorization({"Authorization": authorization})
    except (ValueError, UnicodeError):
        return None
    if not client_id or not secret:
        return None
    return client_id, secret
