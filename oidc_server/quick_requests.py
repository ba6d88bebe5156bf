"""Which requests a production worker answers on its event loop instead of in a thread.

A quick request's work is CPU and a Redis round trip or two: the token grants that sign a
token from cached state, introspection and revocation, userinfo, the role check and
``/users/me`` (their cards and role ids are cached in Redis), discovery and the JWKS. Handing
one to a thread gains nothing and, for those that sign, cost 14-28 % of their CPU
(``oidc_server/rsgi.py``), so the event loop runs it itself. A request that can wait on
something slow is not quick, because the loop answers nothing else meanwhile: argon2id
(password logins, registration, password changes), PostgreSQL pages (login history,
sessions, roles CRUD), another server (Google, Yandex), and ``/health/ready`` and
``/metrics``, which must answer while the rest is slow.
A cache miss sends a quick request to PostgreSQL for one indexed row, on the loop: rare, and
short.
"""

from __future__ import annotations

from urllib.parse import parse_qsl

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map

#: Flask endpoints whose every request is quick.
QUICK_ENDPOINTS = frozenset(
    {
        "auth.refresh",  # the refresh_token grant behind the account API
        "health.live",
        "oauth.introspect",
        "oauth.revoke",
        "oauth.userinfo",
        "roles.check_user_role",
        "users.me",  # GET and HEAD; the same path's DELETE is account_erase.erase_me
        "wellknown.jwks",
        "wellknown.oauth_authorization_server",
        "wellknown.openid_configuration",
    }
)
#: The token endpoint is quick for these grants only: ``password`` hashes with argon2id, and
#: the code and device grants read PostgreSQL.
QUICK_GRANTS = frozenset({"client_credentials", "refresh_token"})
TOKEN_ENDPOINT = "oauth.token"


class QuickRequests:
    """``(method, path, body) -> bool`` for ``RSGIServer(runs_on_loop=...)``: whether a request
    is quick, by the endpoint the app's URL map gives its path (and, at the token endpoint, by
    its grant). Anything it cannot place (no such route, a redirect) goes to the pool, where
    the app answers it as always."""

    def __init__(self, url_map: Map) -> None:
        # Only the host matters to a URL map that matches hosts, and ours does not.
        self.urls = url_map.bind("localhost")

    def __call__(self, method: str, path: str, body: bytes) -> bool:
        try:
            endpoint, _ = self.urls.match(path, method)
        except HTTPException:  # no such route, a method it does not take, a redirect
            return False
        if endpoint == TOKEN_ENDPOINT:
            return grant_of(body) in QUICK_GRANTS
        return endpoint in QUICK_ENDPOINTS


def grant_of(body: bytes) -> str | None:
    """The ``grant_type`` of a form body, or None unless it names exactly one."""
    grants = [
        value
        for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
        if name == "grant_type"
    ]
    return grants[0] if len(grants) == 1 else None
