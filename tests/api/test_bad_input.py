"""Bad input to every account endpoint gets a 4xx in the one error shape, never a 500.

Each case also checks that the rejected request left nothing behind: no user, no login
history entry, no session in the token store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import pytest
from flask.testing import FlaskClient

from oidc_server.accounts import create_user
from oidc_server.tokens.memory_store import MemoryTokenStore
from oidc_server.tokens.redis_store import RedisTokenStore

from ..conftest import PASSWORD, bearer, make_settings
from ..support.accounts import fresh_app, live_session_count, row_counts, signed_in


@dataclass(frozen=True)
class Endpoint:
    path: str
    valid: dict[str, Any]
    #: The field that string attacks go into (one whose odd value can never be accepted).
    target: str
    authenticated: bool = False
    optional: tuple[str, ...] = field(default=())


JSON_ENDPOINTS = {
    "register": Endpoint(
        "/api/v1/auth/register",
        {"login": "newcomer@example.com", "password": "a perfectly fine password"},
        target="login",
    ),
    "login": Endpoint(
        "/api/v1/auth/login", {"login": "viewer@example.com", "password": PASSWORD}, "login"
    ),
    "refresh": Endpoint(
        "/api/v1/auth/refresh",
        {"refresh_token": "abc.def", "grant_type": "refresh_token"},
        target="refresh_token",
        optional=("grant_type",),
    ),
    "change-password": Endpoint(
        "/api/v1/users/me/change-password",
        {
            "old_password": "not the current one",
            "new_password1": "a perfectly fine password",
            "new_password2": "a perfectly fine password",
        },
        target="old_password",
        authenticated=True,
    ),
}

BEARER_ENDPOINTS = [
    ("POST", "/api/v1/auth/logout"),
    ("POST", "/api/v1/auth/logout-all"),
    ("GET", "/api/v1/users/me"),
    ("POST", "/api/v1/users/me/change-password"),
    ("GET", "/api/v1/users/me/login-history"),
    ("GET", "/api/v1/users/me/sessions"),
    ("DELETE", "/api/v1/users/me/sessions/some-session"),
]

ALL_ENDPOINTS = [(("POST", e.path)) for e in JSON_ENDPOINTS.values()] + [
    (m, p) for m, p in BEARER_ENDPOINTS if p != "/api/v1/users/me/change-password"
]

TOO_LARGE = 64 * 1024 + 1


@dataclass(frozen=True)
class Case:
    body: bytes
    content_type: str
    status: int | tuple[int, ...]
    #: A field the error details must name, when the answer is a 422.
    names: str | None = None


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()


def body_cases() -> list[Any]:
    """(endpoint name, case) pairs: whole-body attacks, then per-field ones."""
    cases: list[Any] = []
    for name, endpoint in JSON_ENDPOINTS.items():
        whole = {
            "malformed JSON": Case(b'{"login": ', "application/json", 400),
            "invalid UTF-8": Case(b'{"login": "\xff\xfe"}', "application/json", 400),
            "lone surrogate as raw bytes": Case(
                b'{"login": "\xed\xa0\x80"}', "application/json", 400
            ),
            "nested 50,000 deep": Case(b"[" * 50_000, "application/json", 400),
            "a JSON array": Case(b"[1, 2]", "application/json", 422, "_schema"),
            "a JSON string": Case(b'"login"', "application/json", 422, "_schema"),
            "JSON null": Case(b"null", "application/json", 422),
            "an empty body": Case(b"", "application/json", 422, endpoint.target),
            "a form instead of JSON": Case(
                b"login=a%40b.c&password=x", "application/x-www-form-urlencoded", 422
            ),
            "JSON sent as text/plain": Case(_json(endpoint.valid), "text/plain", 422),
            "a body over the limit": Case(
                _json({**endpoint.valid, "padding": "x" * TOO_LARGE}), "application/json", 413
            ),
            "an unknown field": Case(
                _json({**endpoint.valid, "is_admin": True}), "application/json", 422, "is_admin"
            ),
        }
        for label, case in whole.items():
            cases.append(pytest.param(name, case, id=f"{name}: {label}"))
        for key in endpoint.valid:
            if key not in endpoint.optional:
                missing = {k: v for k, v in endpoint.valid.items() if k != key}
                case = Case(_json(missing), "application/json", 422, key)
                cases.append(pytest.param(name, case, id=f"{name}: {key} missing"))
            for wrong in (123, 1.5, True, None, [], {}, ["x"]):
                case = Case(_json({**endpoint.valid, key: wrong}), "application/json", 422, key)
                cases.append(pytest.param(name, case, id=f"{name}: {key}={wrong!r}"))
        target = endpoint.target
        rejected_text = {
            "NUL escaped": ("a\u0000b@example.com", 422),
            "lone surrogate escaped": ("\ud800@example.com", 422),
            "a 10,000-character string": ("a" * 10_000 + "@example.com", 422),
        }
        for label, (value, status) in rejected_text.items():
            body = json.dumps({**endpoint.valid, target: value}).encode()
            case = Case(body, "application/json", status, target)
            cases.append(pytest.param(name, case, id=f"{name}: {target} {label}"))
        odd_text = {
            "RTL override": "\u202eviewer@example.com",
            "RTL mark and zero-width space": "view\u200f\u200ber@example.com",
            "SQL: or 1=1": "' OR '1'='1' --",
            "SQL: drop table": "x@example.com'; DROP TABLE users; --",
            "SQL: union": '" UNION SELECT password_hash FROM users --',
            "control characters": "viewer\r\n\t\x1b@example.com",
        }
        for label, value in odd_text.items():
            body = _json({**endpoint.valid, target: value})
            case = Case(body, "application/json", (400, 401, 403, 409, 422))
            cases.append(pytest.param(name, case, id=f"{name}: {target} {label}"))
    return cases


def assert_error_shape(response: Any) -> dict[str, Any]:
    assert response.mimetype == "application/json", response.get_data()[:200]
    body = response.json
    assert isinstance(body, dict)
    assert isinstance(body.get("error"), str) and body["error"]
    assert isinstance(body.get("message"), str) and body["message"]
    assert set(body) <= {"error", "message", "details"}
    return body


@dataclass
class World:
    """One app for the whole module: rejected requests must not change it, so it is shared."""

    client: FlaskClient
    services: Any
    tokens: dict[str, Any]

    def state(self) -> tuple[tuple[int, int], int]:
        """Users, history entries and live sessions: what a rejected request must not touch."""
        return row_counts(self.services), live_session_count(self.services.store)


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory, database_url: str, redis_client: Any
) -> Iterator[World]:
    settings = make_settings(tmp_path_factory.mktemp("bad-input"), database_url)
    if redis_client is not None:
        redis_client.flushdb()
    store = RedisTokenStore(redis_client) if redis_client is not None else MemoryTokenStore()
    with fresh_app(settings, store) as app:
        services = app.extensions["oidc"]
        with services.db.session() as session:
            create_user(session, services.hasher, "viewer@example.com", PASSWORD)
        client = app.test_client()
        yield World(client, services, signed_in(client))
    if redis_client is not None:
        redis_client.flushdb()


@pytest.mark.parametrize(("name", "case"), body_cases())
def test_bad_bodies_are_refused_and_leave_nothing_behind(
    world: World, name: str, case: Case
) -> None:
    endpoint = JSON_ENDPOINTS[name]
    headers = bearer(world.tokens["access_token"]) if endpoint.authenticated else {}
    before = world.state()
    response = world.client.post(
        endpoint.path, data=case.body, content_type=case.content_type, headers=headers
    )
    expected = case.status if isinstance(case.status, tuple) else (case.status,)
    assert response.status_code in expected, response.get_data(as_text=True)[:300]
    body = assert_error_shape(response)
    if response.status_code == 422 and case.names:
        assert case.names in body["details"], body
    assert world.state() == before


@pytest.mark.parametrize(("method", "path"), ALL_ENDPOINTS)
def test_every_endpoint_refuses_an_oversized_body_with_413(
    world: World, method: str, path: str
) -> None:
    before = world.state()
    response = world.client.open(
        path,
        method=method,
        data=b"x" * TOO_LARGE,
        content_type="application/json",
        headers=bearer(world.tokens["access_token"]),
    )
    assert response.status_code == 413
    assert assert_error_shape(response)["error"] == "request_entity_too_large"
    assert world.state() == before


@pytest.mark.parametrize(
    "authorization",
    [
        "Bearer",
        "Bearer ",
        "Bearer  two  spaces",
        "Bearer " + "a" * 10_000,
        "Bearer a.b.c",
        "Bearer ' OR 1=1 --",
        "Basic dmlld2VyOnBhc3M=",
        "bearer\tx",
        "\x7f\x01",
    ],
)
@pytest.mark.parametrize(("method", "path"), BEARER_ENDPOINTS)
def test_bad_authorization_headers_are_401(
    world: World, method: str, path: str, authorization: str
) -> None:
    before = world.state()
    response = world.client.open(path, method=method, headers={"Authorization": authorization})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert_error_shape(response)
    assert world.state() == before


@pytest.mark.parametrize(
    "query",
    [
        "limit=abc",
        "limit=-5",
        "limit=" + "9" * 40,
        "limit=1e3",
        "limit=%00",
        "cursor=%00",
        "cursor=%ED%A0%80",
        "cursor=" + quote("' OR 1=1 --"),
        "cursor=" + "A" * 5_000,
        "cursor=" + quote("\u202e\u200b"),
        "cursor=",
    ],
)
def test_bad_history_queries_are_422(world: World, query: str) -> None:
    response = world.client.get(
        f"/api/v1/users/me/login-history?{query}", headers=bearer(world.tokens["access_token"])
    )
    assert response.status_code == 422, response.json
    field_name = query.partition("=")[0]
    assert field_name in assert_error_shape(response)["details"]


@pytest.mark.parametrize(
    "session_id",
    [
        "%00",
        quote("'; DROP TABLE users; --", safe=""),
        quote("\u202eabc", safe=""),
        "x" * 65,
        "..%2F..%2Fetc%2Fpasswd",
        "%ED%A0%80",
        "{sid}",
    ],
)
def test_odd_session_ids_are_404(world: World, session_id: str) -> None:
    before = world.state()
    response = world.client.delete(
        f"/api/v1/users/me/sessions/{session_id}", headers=bearer(world.tokens["access_token"])
    )
    assert response.status_code == 404
    assert_error_shape(response)
    assert world.state() == before
