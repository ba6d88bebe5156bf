"""Malformed input to every OAuth and well-known endpoint: a JSON 4xx, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from flask.testing import FlaskClient

from oidc_server.models import User

from ..conftest import MachineClient

HUGE = "x" * (200 * 1024)

BAD_BODIES: dict[str, dict[str, Any]] = {
    "json instead of a form": {"json": {"grant_type": "client_credentials"}},
    "malformed form": {"data": b"%%%&&&===", "content_type": "application/x-www-form-urlencoded"},
    "binary garbage": {"data": bytes(range(256)), "content_type": "application/octet-stream"},
    "NUL bytes": {"data": {"grant_type": "client_credentials\x00", "token": "\x00\x00"}},
    "lone surrogate bytes": {
        "data": b"grant_type=%ED%A0%80&token=%ED%A0%80",
        "content_type": "application/x-www-form-urlencoded",
    },
    "right-to-left marks": {
        "data": {
            "grant_type": "\u202epassword",
            "username": "\u202e@x",
            "password": "\u202e" * 50,
            "token": "\u202e",
        }
    },
    "SQL-looking": {
        "data": {
            "grant_type": "password",
            "username": "' OR 1=1 --",
            "password": "'; DROP TABLE users; --",
            "client_id": "x' OR '1'='1",
            "token": "' OR 1=1 --",
        }
    },
    "very long values": {
        "data": {
            "grant_type": "password",
            "username": "u" * 60000,
            "password": "p" * 60000,
            "client_id": "c" * 1000,
        }
    },
    "huge body": {"data": {"grant_type": "client_credentials", "pad": HUGE}},
    "repeated parameters": {
        "data": {"grant_type": ["password", "client_credentials"], "token": ["a", "b"]}
    },
    "empty": {"data": {}},
}

ENDPOINTS = ["/oauth/token", "/oauth/revoke", "/oauth/introspect", "/oauth/userinfo"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("case", list(BAD_BODIES), ids=str)
def test_bad_bodies_get_a_json_4xx(
    client: FlaskClient, machine: MachineClient, user: User, endpoint: str, case: str
) -> None:
    for headers in ({}, machine.basic):
        response = client.post(endpoint, headers=headers, **BAD_BODIES[case])
        # Revocation answers 200 for unknown tokens (RFC 7009 §2.2) and introspection
        # {"active": false} (RFC 7662 §2.2); everything else refuses.
        accepted = {"/oauth/revoke": {}, "/oauth/introspect": {"active": False}}
        ok_answer = response.status_code == 200 and response.json == accepted.get(endpoint)
        assert ok_answer or 400 <= response.status_code < 500, (
            case,
            headers,
            response.status_code,
            response.get_data(as_text=True)[:200],
        )
        assert response.is_json, (case, response.get_data(as_text=True)[:200])
        if case == "huge body" and endpoint != "/oauth/userinfo":  # userinfo reads no body
            assert response.status_code == 413


@pytest.mark.parametrize(
    "authorization",
    [
        "Basic",
        "Basic !!!notbase64",
        "Basic " + "QUJD" * 4000,
        "Basic Og==",
        "Basic w6k6w6k=",
        "Bearer x",
        "Digest abc",
        "Basic \u202e",
    ],
)
def test_odd_client_authentication_is_refused_cleanly(
    client: FlaskClient, authorization: str
) -> None:
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": authorization},
    )
    assert response.status_code in (400, 401), response.get_data(as_text=True)[:200]
    assert response.json["error"] in {"invalid_client", "invalid_request"}


@pytest.mark.parametrize(
    "path",
    [
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        "/oauth/token",
        "/oauth/introspect",
        "/nowhere",
    ],
)
@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH"])
def test_wrong_methods_and_unknown_paths_are_json(
    client: FlaskClient, path: str, method: str
) -> None:
    response = client.open(path, method=method)
    assert response.status_code in (404, 405)
    assert response.is_json and "error" in response.json


@pytest.mark.parametrize(
    "header",
    ["Bearer", "Bearer ", "Bearer a b c", "bearer \x00", "Bearer " + "A" * 10000, "Token abc"],
)
def test_malformed_bearer_headers_are_invalid_token(client: FlaskClient, header: str) -> None:
    response = client.get("/oauth/userinfo", headers={"Authorization": header})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("agent", ["bad\x00agent", "\udcff\udcfe", "\u202e" * 600, ""])
def test_odd_user_agents_are_stored_safely(client: FlaskClient, user: User, agent: str) -> None:
    """The User-Agent goes into login history and sessions; NULs would break PostgreSQL."""
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "client_id": "cinema-app",
            "username": "viewer@example.com",
            "password": "correct horse battery staple",
        },
        headers={"User-Agent": agent},
    )
    assert response.status_code == 200


DEEP_JSON = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/auth/register",
        "/api/v1/auth/login",
        "/api/v1/auth/refresh",
        "/api/v1/social/login/google",
        "/api/v1/roles/",
    ],
)
def test_deeply_nested_json_is_refused_cheaply(client: FlaskClient, path: str) -> None:
    response = client.post(path, data=DEEP_JSON, content_type="application/json")
    assert 400 <= response.status_code < 500 and response.is_json
