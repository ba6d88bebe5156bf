"""Bearer checks (``oidc_server.oauth.protector``): what one costs in Redis and the database.

A user's token is checked against the store (revoked? session ended?) and its user's account
card read from the role cache in one Redis round trip; a warm card needs no query. A role
check (``HEAD``) sends its cached lookup along with the machine token's check the same way.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from oidc_server.models import User
from oidc_server.tokens.redis_store import RedisTokenStore

from ..conftest import MachineClient, bearer, password_login
from ..support.redis_trips import round_trips
from ..support.roles import count_queries, machine_token, role_id


@pytest.fixture
def on_redis(services: Any) -> None:
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")


@pytest.mark.usefixtures("on_redis")
@pytest.mark.parametrize("path", ["/api/v1/users/me", "/oauth/userinfo"])
def test_a_users_request_checks_the_token_and_reads_the_card_in_one_round_trip(
    client: FlaskClient, user: User, services: Any, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    token = password_login(client).json["access_token"]
    assert client.get(path, headers=bearer(token)).status_code == 200  # caches the card
    with round_trips(monkeypatch) as trips, count_queries(services) as queries:
        response = client.get(path, headers=bearer(token))
    assert response.status_code == 200
    assert len(trips) == 1
    assert queries == []


@pytest.mark.usefixtures("on_redis")
@pytest.mark.parametrize("kind", ["user", "machine"])
def test_introspection_checks_client_and_token_in_one_round_trip(
    client: FlaskClient,
    user: User,
    machine: MachineClient,
    services: Any,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
) -> None:
    """The clients' generation (is the cached client current?) goes with the token's reads."""
    if kind == "user":
        token = password_login(client).json["access_token"]
    else:
        token = machine_token(client, machine, "roles:read")

    def introspect() -> Any:
        return client.post("/oauth/introspect", data={"token": token}, headers=machine.basic)

    assert introspect().json["active"] is True  # caches the client and the card
    with round_trips(monkeypatch) as trips, count_queries(services) as queries:
        body = introspect().json
    assert body["active"] is True
    assert body.get("username") == (user.login if kind == "user" else None)
    assert len(trips) == 1
    assert queries == []


@pytest.mark.usefixtures("on_redis")
@pytest.mark.parametrize(("role", "status"), [("subscriber", 200), ("admin", 404)])
def test_a_role_check_sends_its_lookup_with_the_token_check(
    client: FlaskClient,
    user: User,
    machine: MachineClient,
    services: Any,
    monkeypatch: pytest.MonkeyPatch,
    role: str,
    status: int,
) -> None:
    token = machine_token(client, machine, "roles:read roles:write")
    subscriber = f"/api/v1/users/{user.id}/roles/{role_id(services, 'subscriber')}"
    assert client.post(subscriber, headers=bearer(token)).status_code == 201
    check = f"/api/v1/users/{user.id}/roles/{role_id(services, role)}/"
    assert client.head(check, headers=bearer(token)).status_code == status  # caches the set
    with round_trips(monkeypatch) as trips, count_queries(services) as queries:
        response = client.head(check, headers=bearer(token))
    assert response.status_code == status
    assert len(trips) == 1
    assert queries == []


@pytest.mark.usefixtures("on_redis")
def test_a_revoked_client_token_is_refused_by_the_role_check(
    client: FlaskClient, user: User, machine: MachineClient
) -> None:
    token = machine_token(client, machine, "roles:read")
    check = f"/api/v1/users/{user.id}/roles/{uuid.uuid4()}/"
    assert client.head(check, headers=bearer(token)).status_code == 404
    revoked = client.post("/oauth/revoke", data={"token": token}, headers=machine.basic)
    assert revoked.status_code == 200
    assert client.head(check, headers=bearer(token)).status_code == 401


@pytest.mark.usefixtures("on_redis")
def test_a_token_whose_session_ended_is_refused_though_its_card_is_cached(
    client: FlaskClient, user: User, services: Any
) -> None:
    tokens = password_login(client).json
    headers = bearer(tokens["access_token"])
    assert client.get("/api/v1/users/me", headers=headers).status_code == 200
    claims = services.tokens.verify_access_token(tokens["access_token"])
    services.tokens.end_session(claims["sid"])
    response = client.get("/api/v1/users/me", headers=headers)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
