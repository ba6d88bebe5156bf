"""POST /oauth/introspect (RFC 7662): active tokens described, anything else inactive."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from oidc_server.models import Role, User, UserRole

from ..conftest import MachineClient, password_login
from ..support.roles import machine_token


def introspect(client: FlaskClient, machine: MachineClient, token: str, **extra: str) -> Any:
    response = client.post(
        "/oauth/introspect", data={"token": token, **extra}, headers=machine.basic
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Cache-Control"] == "no-store"
    return response.json


def test_a_user_access_token_is_described(
    client: FlaskClient, user: User, machine: MachineClient
) -> None:
    tokens = password_login(client).json
    body = introspect(client, machine, tokens["access_token"])
    assert body["active"] is True
    assert body["sub"] == str(user.id) and body["client_id"] == "cinema-app"
    assert body["token_type"] == "Bearer" and body["username"] == user.login
    assert body["scope"] == "openid profile email" and body["roles"] == []
    assert body["iss"] == "http://localhost" and body["exp"] > body["iat"]


def test_roles_are_current_not_as_issued(
    client: FlaskClient, user: User, machine: MachineClient, services: Any
) -> None:
    tokens = password_login(client).json
    with services.db.session() as session:
        role = session.query(Role).filter_by(name="subscriber").one()
        session.add(UserRole(user_id=user.id, role_id=role.id))
    assert introspect(client, machine, tokens["access_token"])["roles"] == ["subscriber"]


def test_a_refresh_token_is_described_until_spent(
    client: FlaskClient, user: User, machine: MachineClient
) -> None:
    tokens = password_login(client).json
    body = introspect(client, machine, tokens["refresh_token"], token_type_hint="refresh_token")
    assert body["active"] is True and body["token_type"] == "refresh_token"
    assert body["sub"] == str(user.id)
    client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "client_id": "cinema-app",
            "refresh_token": tokens["refresh_token"],
        },
    )
    assert introspect(client, machine, tokens["refresh_token"]) == {"active": False}


def test_revoked_and_expired_tokens_are_inactive(
    client: FlaskClient, user: User, machine: MachineClient, services: Any
) -> None:
    tokens = password_login(client).json
    client.post("/oauth/revoke", data={"token": tokens["access_token"], "client_id": "cinema-app"})
    assert introspect(client, machine, tokens["access_token"]) == {"active": False}

    fresh = password_login(client).json
    codec = services.tokens.codec
    real_clock = codec._clock
    codec._clock = lambda: real_clock() + services.settings.access_token_ttl + 1
    try:
        assert introspect(client, machine, fresh["access_token"]) == {"active": False}
    finally:
        codec._clock = real_clock


def test_a_client_credentials_token_is_described(
    client: FlaskClient, machine: MachineClient
) -> None:
    token = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic
    ).json["access_token"]
    body = introspect(client, machine, token)
    assert body["active"] is True and body["sub"] == machine.client_id
    assert "roles" not in body and "sid" not in body


def test_introspection_needs_a_confidential_client(client: FlaskClient, user: User) -> None:
    tokens = password_login(client).json
    public = client.post(
        "/oauth/introspect", data={"token": tokens["access_token"], "client_id": "cinema-app"}
    )
    assert public.status_code == 401 and public.json["error"] == "invalid_client"
    anonymous = client.post("/oauth/introspect", data={"token": tokens["access_token"]})
    assert anonymous.status_code == 401


def test_introspection_needs_a_token(client: FlaskClient, machine: MachineClient) -> None:
    response = client.post("/oauth/introspect", data={}, headers=machine.basic)
    assert response.status_code == 400 and response.json["error"] == "invalid_request"


def test_a_token_given_twice_is_invalid_request(
    client: FlaskClient, machine: MachineClient
) -> None:
    token = machine_token(client, machine)
    response = client.post(
        "/oauth/introspect", data={"token": [token, token]}, headers=machine.basic
    )
    assert response.status_code == 400 and response.json["error"] == "invalid_request"


def test_basic_credentials_beside_a_client_secret_are_invalid_request(
    client: FlaskClient, machine: MachineClient
) -> None:
    response = client.post(
        "/oauth/introspect",
        data={"token": "x", "client_id": machine.client_id, "client_secret": machine.client_secret},
        headers=machine.basic,
    )
    assert response.status_code == 400 and response.json["error"] == "invalid_request"
