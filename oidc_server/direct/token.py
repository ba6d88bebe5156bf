"""``client_credentials`` tokens answered before Flask (see ``oidc_server/direct``).

Through Flask and Authlib a token cost twice to three times its RS256 signature, the floor
of its cost (docs/scaling.md, sessions 10 and 11). This answers the one request shape that is
nearly all of that traffic:

    POST /oauth/token, no query string, no Origin
    Content-Type: application/x-www-form-urlencoded
    Authorization: Basic <client id>:<secret>
    grant_type=client_credentials[&scope=...]

with the calls the grant itself makes (the clients' generation and the worker's client cache,
``RegisteredClient``'s checks, ``TokenService.issue_client_token``) and the app's answer.

It answers only when the answer is a token. Anything else (another grant or authentication
method, a parameter beyond those two, a client this worker has not cached, a wrong secret, a
scope the client may not have, Redis unreachable) makes it return None, and Authlib's grant
(``oauth/grants.py``) answers. A client is cached by the first request the app answers for it.

Not used while rate limits are on: flask-limiter counts ``/oauth/token`` per client address in
its own keys, which only its hooks maintain.
"""

from __future__ import annotations

import json
import time
from typing import Any

from .. import observability
from ..oauth.grants import ClientCredentialsGrant
from ..rsgi import RECEIVED_AT, Answer
from ..services import Services
from ..tokens.store import StoreUnavailable
from .answers import FormPostAnswer
from .requests import (
    basic_client,
    basic_credentials,
    plain_form,
    plain_form_post,
    secure_transport,
)
from .round_trips import RoundTrips

TOKEN_PATH = "/oauth/token"
GRANT_TYPE = ClientCredentialsGrant.GRANT_TYPE
#: What Authlib's grants call the token endpoint when they ask a client its methods.
ENDPOINT_NAME = "token"
#: The fields of a plain request: the grant, and the scope if any.
FIELDS = frozenset({"grant_type", "scope"})


class DirectClientCredentials(FormPostAnswer):
    """``(environ, body) -> answer or None``: the token for a plain ``client_credentials``
    request (see the module docstring), or None to let the app answer the request."""

    PATH = TOKEN_PATH
    HEADERS = ClientCredentialsGrant.TOKEN_RESPONSE_HEADER

    def __init__(
        self, svc: Services, *, vary_origin: bool, trips: RoundTrips | None = None
    ) -> None:
        super().__init__(svc, vary_origin=vary_origin, trips=trips)
        self._count_token = observability.tokens_issued_counter(GRANT_TYPE)

    async def __call__(self, environ: dict[str, Any], body: bytes) -> Answer | None:
        started = time.perf_counter()
        if not plain_form_post(environ, TOKEN_PATH):
            return None
        form = plain_form(body, FIELDS)
        credentials = basic_credentials(environ.get("HTTP_AUTHORIZATION"))
        if form is None or form.get("grant_type") != GRANT_TYPE or credentials is None:
            return None
        scope = form.get("scope")
        environ = self._seen(environ)
        if not secure_transport(environ):
            return None
        try:
            generation, _ = await self._trips.generation_and(environ.get(RECEIVED_AT))
        except StoreUnavailable:
            return None
        client = basic_client(self.svc, generation, credentials, ENDPOINT_NAME)
        if (
            client is None
            or not client.check_grant_type(GRANT_TYPE)
            or not client.allows_scope(scope)
        ):
            return None
        granted = client.get_allowed_scope(scope)
        payload = json.dumps(self.svc.tokens.issue_client_token(client.client_id, granted))
        self._count_token()
        return self._shape.answer(environ, payload.encode(), started)
