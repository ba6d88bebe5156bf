"""Which requests a production worker answers on its event loop (oidc_server/quick_requests.py),
and the real app answering through the adapter wherever each request runs."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask

from oidc_server.clients import clients_changed
from oidc_server.models import OAuthClient
from oidc_server.quick_requests import QUICK_ENDPOINTS, TOKEN_ENDPOINT, QuickRequests, grant_of
from oidc_server.rsgi import RSGIServer
from oidc_server.tokens.redis_store import RedisTokenStore
from tests.conftest import PASSWORD, MachineClient
from tests.support.redis_trips import round_trips
from tests.support.rsgi_fakes import Headers, Protocol, Scope

ROLE_CHECK = f"/api/v1/users/{uuid.uuid4()}/roles/{uuid.uuid4()}/"


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=client_credentials&scope=roles%3Aread",
        b"scope=roles%3Aread&grant_type=refresh_token&refresh_token=abc",
    ],
)
def test_the_grants_that_sign_from_cached_state_are_quick(app: Flask, body: bytes) -> None:
    assert QuickRequests(app.url_map)("POST", "/oauth/token", body)


@pytest.mark.parametrize(
    "body",
    [
        b"grant_type=password&username=a&password=b",  # argon2id
        b"grant_type=authorization_code&code=x",
        b"grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Adevice_code&device_code=x",
        b"grant_type=client_credentials&grant_type=password",  # the app refuses it, in the pool
        b"scope=roles%3Aread",
        b"\xff\xfe=\x00",
        b"",
    ],
)
def test_other_token_requests_go_to_the_pool(app: Flask, body: bytes) -> None:
    assert not QuickRequests(app.url_map)("POST", "/oauth/token", body)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("HEAD", ROLE_CHECK),
        ("GET", "/api/v1/users/me"),
        ("HEAD", "/api/v1/users/me"),
        ("POST", "/api/v1/auth/refresh"),
        ("POST", "/oauth/introspect"),
        ("POST", "/oauth/revoke"),
        ("GET", "/oauth/userinfo"),
        ("GET", "/.well-known/jwks.json"),
        ("GET", "/.well-known/openid-configuration"),
        ("GET", "/.well-known/oauth-authorization-server"),
        ("GET", "/health/live"),
    ],
)
def test_cached_reads_and_revocations_are_quick(app: Flask, method: str, path: str) -> None:
    assert QuickRequests(app.url_map)(method, path, b"")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/v1/auth/login"),  # argon2id
        ("POST", "/api/v1/auth/register"),
        ("POST", "/api/v1/users/me/change-password"),
        ("DELETE", "/api/v1/users/me"),  # the quick endpoint's path, another endpoint
        ("GET", "/api/v1/users/me/login-history"),  # PostgreSQL pages
        ("GET", "/api/v1/roles/"),
        ("GET", "/api/v1/social/login/google"),  # another server
        ("GET", "/health/ready"),  # must answer while the rest is slow
        ("GET", "/metrics"),
        ("GET", "/nowhere"),  # the app answers 404 from the pool
        ("GET", "/oauth/token"),  # 405
        ("HEAD", "/api/v1/users/someone/roles/admin/"),  # not ids: no route
    ],
)
def test_everything_else_goes_to_the_pool(app: Flask, method: str, path: str) -> None:
    assert not QuickRequests(app.url_map)(method, path, b"")


def test_every_quick_endpoint_is_one_of_the_apps(app: Flask) -> None:
    # A renamed endpoint would silently move its requests back to the pool.
    endpoints = {rule.endpoint for rule in app.url_map.iter_rules()}
    assert QUICK_ENDPOINTS | {TOKEN_ENDPOINT} <= endpoints


def test_a_grant_counts_only_when_named_once() -> None:
    assert grant_of(b"grant_type=refresh_token") == "refresh_token"
    assert grant_of(b"grant_type=a&grant_type=a") is None
    assert grant_of(b"grant_type=") == ""
    assert grant_of(b"other=1") is None


# The real app behind the adapter ------------------------------------------------------------


class Where:
    """Records the thread each request of the app it wraps ran on."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.threads: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        self.threads.append(threading.current_thread().name)
        return self.app(environ, start_response)


def _post(
    server: RSGIServer, path: str, form: dict[str, str], headers: list[tuple[str, str]]
) -> tuple[int, dict[str, Any]]:
    body = urlencode(form).encode()
    pairs = [
        ("host", "127.0.0.1:8000"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-length", str(len(body))),
        *headers,
    ]
    protocol = Protocol(body)
    asyncio.run(server.__rsgi__(Scope(Headers(pairs), path=path, query_string=""), protocol))
    assert protocol.answered is not None
    status, _, payload = protocol.answered
    return status, json.loads(payload)


def test_the_apps_token_grants_run_where_they_are_placed(
    app: Flask, machine: MachineClient, user: Any
) -> None:
    where = Where(app.wsgi_app)
    server = RSGIServer(
        where,
        threads=1,
        max_body=64 * 1024,
        body_timeout=5.0,
        runs_on_loop=QuickRequests(app.url_map),
    )
    try:
        machine_auth = [("authorization", machine.basic["Authorization"])]
        status, issued = _post(
            server, "/oauth/token", {"grant_type": "client_credentials"}, machine_auth
        )
        assert status == 200 and issued["token_type"] == "Bearer"
        login = {"grant_type": "password", "username": "viewer@example.com", "password": PASSWORD}
        status, signed_in = _post(server, "/oauth/token", {**login, "client_id": "cinema-app"}, [])
        assert status == 200, signed_in
        refresh = {"grant_type": "refresh_token", "refresh_token": signed_in["refresh_token"]}
        status, refreshed = _post(
            server, "/oauth/token", {**refresh, "client_id": "cinema-app"}, []
        )
        assert status == 200, refreshed
        assert refreshed["refresh_token"] != signed_in["refresh_token"]
        status, introspected = _post(
            server, "/oauth/introspect", {"token": issued["access_token"]}, machine_auth
        )
        assert status == 200 and introspected["active"] is True
    finally:
        server.pool.shutdown()
    loop, pool = "MainThread", "request_0"
    assert where.threads == [loop, pool, loop, loop]


class ArrivingProtocol(Protocol):
    """A body that arrives after a turn of the loop, as granian's does."""

    async def __call__(self) -> bytes:
        await asyncio.sleep(0)
        return self.body


def test_token_requests_that_arrive_together_share_one_generation_read(
    app: Flask, machine: MachineClient, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")
    # No lease: the sharing alone (a read's lease is tests/oauth/test_client_cache.py's).
    monkeypatch.setattr(services.client_cache, "lease", 0.0)
    server = RSGIServer(
        app.wsgi_app,
        threads=1,
        max_body=64 * 1024,
        body_timeout=5.0,
        runs_on_loop=QuickRequests(app.url_map),
    )
    body = b"grant_type=client_credentials"
    pairs = [
        ("host", "127.0.0.1:8000"),
        ("content-type", "application/x-www-form-urlencoded"),
        ("content-length", str(len(body))),
        ("authorization", machine.basic["Authorization"]),
    ]

    def answers(count: int) -> list[int]:
        protocols = [ArrivingProtocol(body) for _ in range(count)]

        async def arrive_together() -> None:
            scope = Scope(Headers(pairs), path="/oauth/token", query_string="")
            await asyncio.gather(*(server.__rsgi__(scope, p) for p in protocols))

        asyncio.run(arrive_together())
        return [p.answered[0] if p.answered else 0 for p in protocols]

    try:
        assert answers(1) == [200]  # the client is now cached
        with round_trips(monkeypatch) as trips:
            assert answers(8) == [200] * 8
        assert len(trips) == 1
        # A client changed now is seen by the next requests to arrive.
        with services.db.session() as session:
            session.query(OAuthClient).filter_by(
                client_id=machine.client_id
            ).one().is_active = False
        clients_changed(services.store)
        assert answers(3) == [401] * 3
    finally:
        server.pool.shutdown()
