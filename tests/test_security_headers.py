"""Security headers on every response, and CORS for the configured origins only."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from oidc_server.app import create_app
from oidc_server.config import ConfigError, Settings
from oidc_server.cors import parse_origins
from oidc_server.security_headers import STRICT_CSP
from oidc_server.tokens.store import TokenStore

from .conftest import PASSWORD, MachineClient, bearer, make_client, password_login
from .support.accounts import api_login, fresh_app, register, throttled_app

APP_ORIGIN = "https://app.cinema.example"
DEV_ORIGIN = "http://localhost:3000"


@dataclass
class World:
    """A signed-in viewer and a machine client, on an app with a route that fails."""

    client: FlaskClient
    access: str
    refresh: str
    machine: MachineClient


@pytest.fixture
def world(app: Flask, services: Any, user: Any) -> World:
    def explode() -> None:
        raise RuntimeError("a bug")

    # Added before the app handles its first request, as Flask requires.
    app.add_url_rule("/test-only/explode", "explode", explode)
    client = app.test_client()
    tokens = password_login(client, scope="openid profile").json
    return World(client, tokens["access_token"], tokens["refresh_token"], make_client(services))


Call = Callable[[World], TestResponse]

#: Routes whose answers carry tokens or credentials, or may: never stored by any cache.
TOKEN_ROUTES: dict[str, Call] = {
    "token: password grant": lambda w: password_login(w.client),
    "token: wrong password": lambda w: password_login(w.client, password="wrong guess"),
    "token: refresh grant": lambda w: w.client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "client_id": "cinema-app", "refresh_token": w.refresh},
    ),
    "token: client credentials": lambda w: w.client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=w.machine.basic
    ),
    "introspection": lambda w: w.client.post(
        "/oauth/introspect", data={"token": w.access}, headers=w.machine.basic
    ),
    "revocation": lambda w: w.client.post(
        "/oauth/revoke", data={"token": w.refresh, "client_id": "cinema-app"}
    ),
    "userinfo": lambda w: w.client.get("/oauth/userinfo", headers=bearer(w.access)),
    "userinfo without a token": lambda w: w.client.get("/oauth/userinfo"),
    "api: login": lambda w: api_login(w.client),
    "api: failed login": lambda w: api_login(w.client, password="wrong guess"),
    "api: refresh": lambda w: w.client.post(
        "/api/v1/auth/refresh", json={"refresh_token": w.refresh}
    ),
    "api: register": lambda w: register(w.client, "new@example.com", "usher with a torch"),
    "api: logout": lambda w: w.client.post("/api/v1/auth/logout", headers=bearer(w.access)),
    "api: me": lambda w: w.client.get("/api/v1/users/me", headers=bearer(w.access)),
    "api: history": lambda w: w.client.get(
        "/api/v1/users/me/login-history", headers=bearer(w.access)
    ),
    "social: login start": lambda w: w.client.get("/api/v1/social/login/google"),
    "social: login with a code": lambda w: w.client.post(
        "/api/v1/social/login/google", json={"code": "c", "redirect_uri": "https://x.example"}
    ),
    "social: callback": lambda w: w.client.get("/api/v1/social/callback/google?code=c&state=s"),
}

#: Everything else: no-store unless the view chose to be cacheable.
OTHER_ROUTES: dict[str, tuple[Call, str]] = {
    "discovery": (lambda w: w.client.get("/.well-known/openid-configuration"), "public"),
    "jwks": (lambda w: w.client.get("/.well-known/jwks.json"), "public"),
    "health": (lambda w: w.client.get("/health/live"), "no-store"),
    "openapi": (lambda w: w.client.get("/openapi.json"), "no-store"),
    "metrics": (lambda w: w.client.get("/metrics"), "no-store"),
    "roles api": (lambda w: w.client.get("/api/v1/roles/"), "no-store"),
    "unknown path": (lambda w: w.client.get("/no/such/path"), "no-store"),
    "wrong method": (lambda w: w.client.put("/oauth/token"), "no-store"),
    "oversized body": (
        lambda w: w.client.post("/api/v1/auth/login", data="x" * 70_000, content_type="text/plain"),
        "no-store",
    ),
    "unhandled error": (lambda w: w.client.get("/test-only/explode"), "no-store"),
}


def assert_hardened(response: TestResponse) -> None:
    """The headers every response carries, whatever its status or content."""
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Referrer-Policy"] == "no-referrer"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert "Access-Control-Allow-Credentials" not in response.headers


def assert_no_store(response: TestResponse) -> None:
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"


def test_responses_carrying_tokens_are_hardened_and_never_stored(
    world: World, subtests: pytest.Subtests
) -> None:
    for name, call in TOKEN_ROUTES.items():
        with subtests.test(msg=name):
            response = call(world)
            assert response.status_code < 500, response.get_data(as_text=True)
            assert_hardened(response)
            assert response.headers["Content-Security-Policy"] == STRICT_CSP
            assert_no_store(response)
            assert "Strict-Transport-Security" not in response.headers  # http, http issuer


def test_every_other_response_is_hardened_too(world: World, subtests: pytest.Subtests) -> None:
    for name, (call, caching) in OTHER_ROUTES.items():
        with subtests.test(msg=name):
            response = call(world)
            assert_hardened(response)
            assert response.headers["Content-Security-Policy"] == STRICT_CSP
            if caching == "public":
                assert response.headers["Cache-Control"].startswith("public, max-age=")
                assert "Pragma" not in response.headers
            else:
                assert_no_store(response)


def test_the_unhandled_error_row_really_is_a_500(world: World) -> None:
    response = OTHER_ROUTES["unhandled error"][0](world)
    assert response.status_code == 500 and response.json["error"] == "server_error"


def test_rate_limited_answers_are_hardened(settings: Settings, token_store: TokenStore) -> None:
    with throttled_app(settings, token_store, ratelimit_login="1 per minute") as app:
        client = app.test_client()
        api_login(client, password="wrong guess")
        refused = api_login(client, password="wrong guess")
        assert refused.status_code == 429
        assert_hardened(refused)
        assert_no_store(refused)


# The Swagger UI page --------------------------------------------------------------------


def csp_directives(policy: str) -> dict[str, list[str]]:
    directives: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *values = part.split()
        directives[name] = values
    return directives


def allows(sources: list[str], url: str) -> bool:
    """Whether a CSP source list admits ``url`` (https folder sources, as we use them)."""
    return any(
        source.startswith("https://") and source.endswith("/") and url.startswith(source)
        for source in sources
    )


def test_the_docs_page_may_load_exactly_what_swagger_ui_needs(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert_hardened(response)
    page = response.get_data(as_text=True)
    policy = csp_directives(response.headers["Content-Security-Policy"])
    assert policy["default-src"] == ["'none'"]
    scripts = re.findall(r'<script src="([^"]+)"', page)
    styles = re.findall(r'<link href="([^"]+)"', page)
    inline = re.findall(r"<script>(.*?)</script>", page, re.DOTALL)
    assert scripts and styles and inline  # the page is the one we think it is
    assert all(allows(policy["script-src"], url) for url in scripts)
    assert all(allows(policy["style-src"], url) for url in styles)
    # The package's folder on the CDN, not the whole CDN (anyone can publish there).
    assert not allows(policy["script-src"], "https://cdn.jsdelivr.net/npm/evil-package/x.js")
    for script in inline:
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in policy["script-src"]
    # Inline scripts run only by hash: an injected one would not.
    assert "'unsafe-inline'" not in policy["script-src"]
    assert "'unsafe-eval'" not in policy["script-src"]
    assert policy["connect-src"] == ["'self'"]  # openapi.json and "try it out" stay here
    assert policy["frame-ancestors"] == ["'none'"]


def test_a_policy_a_view_sets_itself_is_kept(app: Flask) -> None:
    def own_policy() -> Any:
        return "page", 200, {"Content-Security-Policy": "default-src 'self'"}

    app.add_url_rule("/test-only/own-policy", "own_policy", own_policy)
    response = app.test_client().get("/test-only/own-policy")
    assert response.headers["Content-Security-Policy"] == "default-src 'self'"
    assert response.headers["X-Frame-Options"] == "DENY"


# HSTS -------------------------------------------------------------------------------------


#: (app settings, [(base URL, X-Forwarded-Proto, HSTS expected)]).
HSTS_CASES: list[tuple[dict[str, Any], list[tuple[str, str | None, bool]]]] = [
    (
        {"oidc_issuer": "https://id.cinema.example"},
        [("http://localhost", None, True), ("https://localhost", None, True)],
    ),
    (
        {"oidc_issuer": "http://localhost"},
        [
            ("https://localhost", None, True),
            ("http://localhost", None, False),
            # A client cannot claim TLS unless the proxy in front is trusted to say so.
            ("http://localhost", "https", False),
        ],
    ),
    (
        {"oidc_issuer": "http://localhost", "trust_proxy_headers": True},
        [("http://localhost", "https", True), ("http://localhost", "http", False)],
    ),
    (
        {"oidc_issuer": "https://id.cinema.example", "hsts_max_age": 0},
        [("https://localhost", None, False)],
    ),
]


@pytest.mark.parametrize(("overrides", "requests"), HSTS_CASES)
def test_hsts_is_sent_behind_tls_only(
    settings: Settings,
    token_store: TokenStore,
    overrides: dict[str, Any],
    requests: list[tuple[str, str | None, bool]],
) -> None:
    with fresh_app(settings, token_store, **overrides) as app:
        client = app.test_client()
        max_age = app.extensions["oidc"].settings.hsts_max_age
        for base_url, forwarded, expected in requests:
            headers = {"X-Forwarded-Proto": forwarded} if forwarded else {}
            for path in ("/.well-known/jwks.json", "/no/such/path", "/api/v1/users/me"):
                response = client.get(path, base_url=base_url, headers=headers)
                hsts = response.headers.get("Strict-Transport-Security")
                wanted = f"max-age={max_age}; includeSubDomains" if expected else None
                assert hsts == wanted, (base_url, forwarded, path)


# CORS -------------------------------------------------------------------------------------


def preflight(client: FlaskClient, path: str, origin: str, method: str = "POST") -> TestResponse:
    return client.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


@pytest.fixture
def cors_app(settings: Settings, token_store: TokenStore) -> Any:
    with fresh_app(settings, token_store, cors_origins=f"{APP_ORIGIN} {DEV_ORIGIN}") as app:
        yield app


def test_a_preflight_from_a_listed_origin_is_answered(cors_app: Flask) -> None:
    for origin in (APP_ORIGIN, DEV_ORIGIN):
        response = preflight(cors_app.test_client(), "/api/v1/users/me", origin, "DELETE")
        assert response.status_code == 204
        assert response.headers["Access-Control-Allow-Origin"] == origin
        methods = set(response.headers["Access-Control-Allow-Methods"].split(", "))
        assert {"GET", "DELETE"} <= methods and "POST" not in methods
        allowed_headers = response.headers["Access-Control-Allow-Headers"].lower().split(", ")
        assert {"authorization", "content-type"} <= set(allowed_headers)
        assert int(response.headers["Access-Control-Max-Age"]) > 0
        assert "Access-Control-Allow-Credentials" not in response.headers
        assert "Origin" in response.headers["Vary"]


OTHER_ORIGINS = [
    "https://evil.example",
    "https://app.cinema.example.evil.example",
    "http://app.cinema.example",  # another scheme is another origin
    "https://app.cinema.example:8443",
    "null",
]


def test_a_preflight_from_any_other_origin_is_refused(cors_app: Flask) -> None:
    client = cors_app.test_client()
    for origin in OTHER_ORIGINS:
        response = preflight(client, "/api/v1/auth/login", origin)
        assert response.status_code == 403, origin
        assert response.json["error"] == "cors_origin_not_allowed"
        assert "Access-Control-Allow-Origin" not in response.headers
        # Non-browser callers are still answered, but no browser script may read it.
        answer = client.get("/.well-known/jwks.json", headers={"Origin": origin})
        assert answer.status_code == 200
        assert "Access-Control-Allow-Origin" not in answer.headers
        assert "Origin" in answer.headers["Vary"]


def test_listed_origins_may_read_answers_and_their_headers(cors_app: Flask) -> None:
    response = cors_app.test_client().post(
        "/api/v1/auth/login",
        json={"login": "viewer@example.com", "password": PASSWORD},
        headers={"Origin": APP_ORIGIN},
    )
    assert response.status_code == 401  # nobody is registered on this fresh app
    assert response.headers["Access-Control-Allow-Origin"] == APP_ORIGIN
    exposed = response.headers["Access-Control-Expose-Headers"]
    assert "Retry-After" in exposed and "WWW-Authenticate" in exposed
    assert "Access-Control-Allow-Credentials" not in response.headers


def test_a_preflight_to_an_unknown_path_is_404(cors_app: Flask) -> None:
    response = preflight(cors_app.test_client(), "/no/such/path", APP_ORIGIN)
    assert response.status_code == 404
    assert "Access-Control-Allow-Methods" not in response.headers


def test_without_cors_origins_no_browser_origin_is_let_in(client: FlaskClient) -> None:
    response = preflight(client, "/api/v1/auth/login", APP_ORIGIN)
    assert "Access-Control-Allow-Origin" not in response.headers
    answer = client.get("/.well-known/jwks.json", headers={"Origin": APP_ORIGIN})
    assert "Access-Control-Allow-Origin" not in answer.headers


@pytest.mark.parametrize(
    "value",
    ["*", "null", "https://app.example.com/", "https://app.example.com/path", "app.example.com"],
)
def test_wildcards_and_non_origins_are_refused_at_start(settings: Settings, value: str) -> None:
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        parse_origins(f"https://ok.example {value}")
    with pytest.raises(ConfigError, match="CORS_ORIGINS"):
        create_app(replace(settings, cors_origins=value))


def test_origins_are_parsed_exactly() -> None:
    assert parse_origins(" https://A.example  http://127.0.0.1:8080 http://[::1]:3000 ") == {
        "https://a.example",
        "http://127.0.0.1:8080",
        "http://[::1]:3000",
    }
    assert parse_origins("") == frozenset()
