"""``GET`` and ``HEAD /api/v1/users/me`` answered before Flask (see ``oidc_server/direct``).

The cinema's apps ask who is signed in whenever they start or resume. This answers the plain
case, a current user's token whose account card is in the role cache, with the calls the
view (``api/users.me``) makes: the token verified, its revocation and its user's card read
in one Redis round trip (``oauth.protector.BearerCheck``), and the view's answer: the card
dumped by ``MeSchema`` as flask-smorest and Flask's JSON provider write it.

Anything else (no, a malformed, a revoked or a machine token; a card not cached, which needs
PostgreSQL; a query string or an ``Origin``; Redis unreachable) makes it return None, and
the view answers.

Not used while rate limits are on: the route is counted by flask-limiter's default limit.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

from flask import Flask

from .. import cors
from ..api.schemas import MeSchema
from ..oauth.protector import BearerCheck
from ..roles import AccountCard
from ..rsgi import Answer
from ..services import Services
from ..tokens.store import StoreUnavailable
from .answers import AnswerShape, ProxiedView, json_writer
from .requests import bearer_claims
from .round_trips import RoundTrips

ME_PATH = "/api/v1/users/me"


class DirectUsersMe:
    """``(environ, body) -> answer or None``: the signed-in user's account for a plain
    request (see the module docstring), or None to let the app answer the request."""

    def __init__(
        self,
        svc: Services,
        write: Callable[[Any], bytes],
        *,
        vary_origin: bool,
        trips: RoundTrips | None = None,
    ) -> None:
        self.svc = svc
        self._trips = trips or RoundTrips(svc)
        #: The app's JSON writer (``answers.json_writer``), so the bytes are the view's.
        self._write = write
        self._schema = MeSchema()
        #: The body is the card's alone, and an app asks again and again for the same
        #: account: the schema's dump and the JSON were a quarter of this answer's Python
        #: (docs/scaling.md, session 14). Cards are values, so a changed card is another key.
        self._body = functools.lru_cache(maxsize=1024)(self._account)
        self._seen = ProxiedView(svc)
        self._shapes = AnswerShape.get_and_head(
            svc, ME_PATH, [("Content-Type", "application/json")], vary_origin=vary_origin
        )

    @classmethod
    def for_app(cls, app: Flask, trips: RoundTrips | None = None) -> DirectUsersMe | None:
        """The direct path for ``app``'s ``/users/me``; None while rate limits are on, or when
        Flask would indent its JSON (debug mode)."""
        svc: Services = app.extensions["oidc"]
        write = json_writer(app)
        if svc.settings.ratelimit_enabled or write is None:
            return None
        return cls(svc, write, vary_origin=cors.enabled(app), trips=trips)

    async def __call__(self, environ: dict[str, Any], body: bytes) -> Answer | None:
        started = time.perf_counter()
        shape = self._shapes.get(environ["REQUEST_METHOD"])
        if (
            shape is None
            or environ["PATH_INFO"] != ME_PATH
            or environ.get("QUERY_STRING")
            or "HTTP_ORIGIN" in environ  # a browser's: CORS decides its headers
        ):
            return None
        claims = self._users_token(environ.get("HTTP_AUTHORIZATION"))
        if claims is None:
            return None
        check = BearerCheck(claims, svc=self.svc)
        if check.user_id is None:
            return None
        try:
            token = check.token(await self._trips.read(*check.reads))
        except StoreUnavailable:
            return None
        if token is None or not isinstance(token.card, AccountCard):
            return None  # revoked, or the card is not cached: the view reads the database
        return shape.answer(self._seen(environ), self._body(token.card), started)

    def _account(self, card: AccountCard) -> bytes:
        """The view's body for the user of ``card``."""
        account = self._schema.dump(
            {
                "id": card.user_id,
                "login": card.login,
                "roles": list(card.roles),
                "has_password": card.has_password,
                "created_at": card.created_at,
            }
        )
        return self._write(account)

    def _users_token(self, authorization: str | None) -> dict[str, Any] | None:
        """The claims of a current user's token; else None."""
        claims = bearer_claims(self.svc, authorization)
        if claims is None or "sid" not in claims:
            return None  # a machine's token: the view refuses it
        return claims
