"""The role check answered before Flask (see ``oidc_server/direct``).

``HEAD /api/v1/users/<user id>/roles/<role id>`` is what other services ask most: does this
user hold this role? Through Flask its answer cost 1.2 ms of CPU on session 11's machine,
where signing a token took 0.8 (docs/scaling.md). This answers it with the calls the view
(``api/roles.check_user_role``) makes: the machine token verified
(``TokenService.decode_access_token``), its revocation and the cached answer read in one Redis
round trip (the store's ``access_token_reads``, ``RoleCache.lookup_reads``), and the app's
answer: 200 when the user holds the role, 404 when not, no body either way.

It answers only when the answer is 200 or 404 and the cache holds it. Anything else (no,
a malformed, an expired, a revoked or a user's token; a token without ``roles:read``; a
query string or an ``Origin``; a cache miss, which needs PostgreSQL; Redis unreachable) makes
it return None, and the view answers.

The route is exempt from rate limits, so this is used with them on as well.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from flask import Flask
from werkzeug.routing import UUIDConverter

from .. import cors
from ..api.roles import READ
from ..roles import Miss
from ..rsgi import Answer
from ..services import Services
from ..tokens.store import StoreUnavailable
from .answers import AnswerShape, ProxiedView
from .requests import bearer_claims
from .round_trips import RoundTrips

ENDPOINT = "roles.check_user_role"
#: The route's two ids, as werkzeug's ``uuid`` converter takes them.
_ID = f"({UUIDConverter.regex})"


def route_pattern(route: str) -> re.Pattern[str]:
    """The paths of ``route`` (``/users/<uuid:user_id>/roles/<uuid:role_id>/``, not strict
    about its last slash) as one regular expression: the ids are its two groups."""
    parts = re.split(r"<uuid:[a-z_]+>", route.removesuffix("/"))
    if len(parts) != 3:
        raise ValueError(f"not a route of two uuids: {route}")
    return re.compile(_ID.join(re.escape(part) for part in parts) + "/?")


class DirectRoleCheck:
    """``(environ, body) -> answer or None``: 200 or 404 for a plain role check (see the
    module docstring), or None to let the app answer the request."""

    def __init__(
        self,
        svc: Services,
        route: str,
        *,
        vary_origin: bool,
        trips: RoundTrips | None = None,
    ) -> None:
        self.svc = svc
        self._trips = trips or RoundTrips(svc)
        #: A path is taken for a role check only when the app's routing says so. The app's
        #: matcher walks werkzeug's state machine in Python, a quarter of a check's
        #: instructions (docs/scaling.md, session 14); this is one C call, held to the app's
        #: verdict by tests/direct/test_role_check.py. Paths werkzeug also takes (a last "//")
        #: are left to the app.
        self.paths = route_pattern(route)
        self._seen = ProxiedView(svc)
        example = route.replace("<uuid:user_id>", str(uuid.UUID(int=1))).replace(
            "<uuid:role_id>", str(uuid.UUID(int=2))
        )

        def shape(status: int, headers: list[tuple[str, str]]) -> AnswerShape:
            return AnswerShape(
                svc,
                method="HEAD",
                route=route,
                path_like=example,
                status=status,
                headers=headers,
                vary_origin=vary_origin,
            )

        # As the view answers: no Content-Type when held; the JSON error's when not.
        self._held = shape(200, [])
        self._not_held = shape(404, [("Content-Type", "application/json")])

    @classmethod
    def for_app(cls, app: Flask, trips: RoundTrips | None = None) -> DirectRoleCheck:
        [rule] = [rule for rule in app.url_map.iter_rules() if rule.endpoint == ENDPOINT]
        return cls(
            app.extensions["oidc"],
            rule.rule,
            vary_origin=cors.enabled(app),
            trips=trips,
        )

    async def __call__(self, environ: dict[str, Any], body: bytes) -> Answer | None:
        started = time.perf_counter()
        if (
            environ["REQUEST_METHOD"] != "HEAD"
            or environ.get("QUERY_STRING")
            or "HTTP_ORIGIN" in environ  # a browser's: CORS decides its headers
        ):
            return None
        ids = self.paths.fullmatch(environ["PATH_INFO"])
        if ids is None:
            return None
        claims = self._machine_token(environ.get("HTTP_AUTHORIZATION"))
        if claims is None:
            return None
        user_id, role_id = uuid.UUID(ids[1]), uuid.UUID(ids[2])
        svc = self.svc
        try:
            active, held = await self._trips.read(
                svc.store.access_token_reads(claims["jti"], None),
                svc.role_checker.cache.lookup_reads(user_id, role_id),
            )
        except StoreUnavailable:
            return None
        if not active or isinstance(held, Miss):
            return None
        shape = self._held if held else self._not_held
        return shape.answer(self._seen(environ), b"", started)

    def _machine_token(self, authorization: str | None) -> dict[str, Any] | None:
        """The claims of a current machine token with ``roles:read``; else None."""
        claims = bearer_claims(self.svc, authorization)
        if (
            claims is None
            or "sid" in claims  # a user's token: the view refuses it
            or READ not in str(claims.get("scope", "")).split()
        ):
            return None
        return claims
