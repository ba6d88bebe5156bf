"""Refresh-token grants answered before Flask (see ``oidc_server/direct``).

Every signed-in app refreshes its user's access token every few minutes: after the machine
tokens, the most frequent token request. Through Flask and Authlib a refresh cost 2.6 times a
direct ``client_credentials`` token (docs/scaling.md, session 12). This answers the plain
request:

    POST /oauth/token, no query string, no Origin
    Content-Type: application/x-www-form-urlencoded
    grant_type=refresh_token&refresh_token=...[&scope=...]
    and either client_id=<a public client> (no Authorization),
    or Authorization: Basic <a confidential client's id and secret>

with the calls the grant makes (``oauth.grants.RefreshTokenGrant``): the user the token names
and their card read with the clients' generation (one round trip), the client from the
worker's cache, the token spent by the store's single step (rotation and reuse detection,
``TokenService.refresh_spend``; a second round trip, shared like the first with the other
requests ready at the time), the access token issued with the card's roles.

Before the spend, anything unusual (other parameters or authentication, a client or card not
cached, a token that names no user, Redis unreachable) makes it return None, and the grant
answers as it always has. Once the token has been sent to the store it cannot be handed back:
a refresh token is spent only once, and reuse ends its session. So from there on the request
is the direct path's to finish, and when it cannot (the store refused the token, found it
reused, or could not be reached; or issuing failed) it leaves the outcome in the environ
(``grants.SPEND_ATTEMPT``) and returns None: the grant answers that outcome, as it answers its
own spend's, without spending the token a second time. Every error answer stays the grant's.

Not used while rate limits are on: flask-limiter counts ``/oauth/token`` in its own keys.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from .. import observability
from ..clients import RegisteredClient
from ..oauth.grants import SPEND_ATTEMPT, RefreshTokenGrant
from ..roles import AccountCard
from ..rsgi import RECEIVED_AT, Answer
from ..services import Services
from ..tokens.service import claimed_user_id, split_refresh_token
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
from .token import ENDPOINT_NAME, TOKEN_PATH

GRANT_TYPE = RefreshTokenGrant.GRANT_TYPE
#: The fields of a plain request: the grant, the token, a narrower scope, a public client's id.
FIELDS = frozenset({"grant_type", "refresh_token", "scope", "client_id"})


class DirectRefresh(FormPostAnswer):
    """``(environ, body) -> answer or None``: the rotated tokens for a plain refresh request
    (see the module docstring), or None to let the grant answer the request."""

    PATH = TOKEN_PATH
    HEADERS = RefreshTokenGrant.TOKEN_RESPONSE_HEADER

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
        if form is None or form.get("grant_type") != GRANT_TYPE:
            return None
        presented = form.get("refresh_token")
        user_id = _named_user(presented)
        seen = self._seen(environ)
        if user_id is None or not secure_transport(seen):
            return None
        try:
            generation, (card,) = await self._trips.generation_and(
                environ.get(RECEIVED_AT),
                (self.svc.role_cache.card_reads(uuid.UUID(user_id)),),
            )
        except StoreUnavailable:
            return None
        client = self._client(environ, form, generation)
        if (
            client is None
            or not client.check_grant_type(GRANT_TYPE)
            or not isinstance(card, AccountCard)  # not cached: the grant reads the database
        ):
            return None
        # From here the request is this path's: see the module docstring.
        try:
            (spent,) = await self._trips.read(
                self.svc.tokens.refresh_spend(
                    presented, client.client_id, user_id, form.get("scope")
                )
            )
        except Exception as failed:  # the store's refusals, or Redis unreachable
            environ[SPEND_ATTEMPT] = failed
            return None
        environ[SPEND_ATTEMPT] = spent  # should issuing fail, the grant issues from it
        payload = json.dumps(self.svc.tokens.issue_after_refresh(spent, list(card.roles)))
        self._count_token()
        return self._shape.answer(seen, payload.encode(), started)

    def _client(
        self, environ: dict[str, Any], form: dict[str, str], generation: str
    ) -> RegisteredClient | None:
        """The client, authenticated as Authlib would: a confidential one by Basic
        credentials, a public one by its id alone; None for anything else."""
        authorization = environ.get("HTTP_AUTHORIZATION")
        public_id = form.get("client_id")
        if authorization is not None:
            credentials = basic_credentials(authorization)
            if credentials is None or public_id is not None:
                return None
            return basic_client(self.svc, generation, credentials, ENDPOINT_NAME)
        if not public_id:
            return None
        client = self.svc.client_cache.cached(generation, public_id)
        if client is None or not client.check_endpoint_auth_method("none", ENDPOINT_NAME):
            return None
        return client


def _named_user(presented: str | None) -> str | None:
    """The user id a refresh token of ours names, as the grant takes it (unverified: the
    store's spend checks it); None if it names none, or nothing a user id can be."""
    if presented is None or split_refresh_token(presented) is None:
        return None
    claimed = claimed_user_id(presented)
    if claimed is None:
        return None  # a token from before they named their user: the grant looks it up
    try:
        uuid.UUID(claimed)
    except ValueError:
        return None
    return claimed
