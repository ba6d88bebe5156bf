"""Introspection of our access tokens answered before Flask (see ``oidc_server/direct``).

Resource servers that do not verify our JWTs themselves ask ``/oauth/introspect`` (RFC 7662)
for every request they get. This answers the plain case:

    POST /oauth/introspect, no query string, no Origin
    Content-Type: application/x-www-form-urlencoded
    Authorization: Basic <client id>:<secret>
    token=<one of our access tokens>[&token_type_hint=access_token]

with the calls the endpoint makes (``oauth/endpoints.IntrospectionEndpoint``): the token
verified, its revocation (and a user's card) read in the round trip that reads the clients'
generation, the client checked from the worker's cache, and the endpoint's answer for an
active token (``introspection_payload``).

It answers only for an active token. Anything else (a token that does not verify, a revoked
one or one whose user's card is not cached, a refresh token or its hint, other
parameters or authentication, a client not cached or not confidential, Redis unreachable)
makes it return None, and the endpoint answers, ``{"active": false}`` included.

Not used while rate limits are on: the endpoint is counted by flask-limiter's default limit.
"""

from __future__ import annotations

import json
import time
from typing import Any

from authlib.consts import default_json_headers

from ..oauth.endpoints import IntrospectionEndpoint, introspection_payload
from ..oauth.protector import BearerCheck
from ..roles import AccountCard
from ..rsgi import RECEIVED_AT, Answer
from ..tokens.store import StoreUnavailable
from .answers import FormPostAnswer
from .requests import (
    basic_client,
    basic_credentials,
    plain_form,
    plain_form_post,
    secure_transport,
)

INTROSPECT_PATH = "/oauth/introspect"
ENDPOINT_NAME = IntrospectionEndpoint.ENDPOINT_NAME
#: The fields of a plain request: the token, and the hint that it is an access token.
FIELDS = frozenset({"token", "token_type_hint"})


class DirectIntrospection(FormPostAnswer):
    """``(environ, body) -> answer or None``: the introspection of an active access token
    (see the module docstring), or None to let the app answer the request."""

    PATH = INTROSPECT_PATH
    HEADERS = default_json_headers

    async def __call__(self, environ: dict[str, Any], body: bytes) -> Answer | None:
        started = time.perf_counter()
        if not plain_form_post(environ, INTROSPECT_PATH):
            return None
        form = plain_form(body, FIELDS)
        credentials = basic_credentials(environ.get("HTTP_AUTHORIZATION"))
        if (
            form is None
            or not form.get("token")
            or form.get("token_type_hint", "access_token") != "access_token"
            or credentials is None
        ):
            return None
        environ = self._seen(environ)
        if not secure_transport(environ):
            return None
        claims = self.svc.tokens.decode_access_token(form["token"])
        if claims is None:
            return None  # perhaps a refresh token, perhaps nothing: the endpoint looks
        check = BearerCheck(claims, svc=self.svc)
        try:
            generation, answers = await self._trips.generation_and(
                environ.get(RECEIVED_AT), tuple(check.reads)
            )
        except StoreUnavailable:
            return None
        client = basic_client(self.svc, generation, credentials, ENDPOINT_NAME)
        if client is None or not client.is_confidential:
            return None
        token = check.token(answers)
        if token is None:
            return None  # revoked
        if token.is_user_token and not isinstance(token.card, AccountCard):
            return None  # not cached: the endpoint reads the database
        card = token.card if token.is_user_token else None
        payload = introspection_payload(self.svc.settings.oidc_issuer, "access_token", claims, card)
        return self._shape.answer(environ, json.dumps(payload).encode(), started)
