"""POST /oauth/revoke (RFC 7009) for JWT access tokens and opaque refresh tokens."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from oidc_server.models import User

from ..conftest import MachineClient, bearer, make_client, password_login


def revoke(client: FlaskClient, token: str, **extra: Any) -> Any:
    return client.post("/oauth/revoke", data={"token": token, "client_id": "cinema-app", **extra})


def test_revoking_an_access_token_denies_it_at_once(
    client: FlaskClient, user: User, services: Any
) -> None:
    tokens = password_login(client).json
    assert client.get("/oauth/userinfo", headers=bearer(tokens["access_token"])).status_code == 200
    response = revoke(client, tokens["access_token"], token_type_hint="access_token")
    assert response.status_code == 200
    assert client.get("/oauth/userinfo", headers=bearer(tokens["access_token"])).status_code == 401
    # The session itself goes on: its refresh token still works.
    refreshed = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "client_id": "cinema-app",
            "refresh_token": tokens["refresh_token"],
        },
    )
    assert refreshed.status_code == 200


def test_revoking_a_refresh_token_ends_its_session(
    client: FlaskClient, user: User, services: Any
) -> None:
    tokens = password_login(client).json
    assert (
        revoke(client, tokens["refresh_token"], token_type_hint="refresh_token").status_code == 200
    )
    assert client.get("/oauth/userinfo", headers=bearer(tokens["access_token"])).status_code == 401
    refreshed = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "client_id": "cinema-app",
            "refresh_token": tokens["refresh_token"],
        },
    )
    assert refreshed.status_code == 400


def test_a_wrong_hint_still_finds_the_token(client: FlaskClient, user: User) -> None:
    tokens = password_login(client).json
    assert (
        revoke(client, tokens["refresh_token"], token_type_hint="access_token").status_code == 200
    )
    assert client.get("/oauth/userinfo", headers=bearer(tokens["access_token"])).status_code == 401


def test_unknown_tokens_answer_200(client: FlaskClient) -> None:
    """RFC 7009 §2.2: an invalid token is not an error for the revocation endpoint."""
    assert revoke(client, "no-such-token").status_code == 200
    assert revoke(client, "a.b.c").status_code == 200


def test_client_credentials_tokens_can_be_revoked_by_their_client(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    token = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic
    ).json["access_token"]
    assert (
        client.post("/oauth/revoke", data={"token": token}, headers=machine.basic).status_code
        == 200
    )
    assert services.tokens.verify_access_token(token) is None


def test_a_client_cannot_revoke_another_clients_token(
    client: FlaskClient, user: User, services: Any, machine: MachineClient
) -> None:
    tokens = password_login(client).json
    response = client.post(
        "/oauth/revoke", data={"token": tokens["access_token"]}, headers=machine.basic
    )
    assert response.status_code == 400
    assert services.tokens.verify_access_token(tokens["access_token"]) is not None


def test_revocation_needs_a_token_and_a_known_client(client: FlaskClient, services: Any) -> None:
    missing = client.post("/oauth/revoke", data={"client_id": "cinema-app"})
    assert missing.status_code == 400 and missing.json["error"] == "invalid_request"
    unknown = client.post("/oauth/revoke", data={"token": "x", "client_id": "ghost"})
    # RFC 6749 §5.2: 401 is required only when credentials came in the Authorization header.
    assert unknown.status_code == 400 and unknown.json["error"] == "invalid_client"
    # §2.1: the hint only orders the search; an unknown one is not an error.
    assert revoke(client, "x", token_type_hint="id_token").status_code == 200
    other = make_client(services)
    wrong_secret = client.post(
        "/oauth/revoke",
        data={"token": "x"},
        headers=MachineClient(other.client_id, "wrong").basic,
    )
    assert wrong_secret.status_code == 401


def test_a_token_given_twice_is_invalid_request_and_nothing_is_revoked(
    client: FlaskClient, user: User
) -> None:
    tokens = password_login(client).json
    access = tokens["access_token"]
    response = client.post(
        "/oauth/revoke", data={"token": [access, access], "client_id": "cinema-app"}
    )
    assert response.status_code == 400 and response.json["error"] == "invalid_request"
    assert client.get("/oauth/userinfo", headers=bearer(access)).status_code == 200


def test_a_token_in_the_url_is_invalid_request_and_nothing_is_revoked(
    client: FlaskClient, user: User
) -> None:
    access = password_login(client).json["access_token"]
    response = client.post(f"/oauth/revoke?token={access}", data={"client_id": "cinema-app"})
    assert response.status_code == 400 and response.json["error"] == "invalid_request"
    # The token in the body, and only its hint in the URL: refused all the same.
    hint_in_url = client.post(
        "/oauth/revoke?token_type_hint=access_token",
        data={"token": access, "client_id": "cinema-app"},
    )
    assert hint_in_url.status_code == 400 and hint_in_url.json["error"] == "invalid_request"
    assert client.get("/oauth/userinfo", headers=bearer(access)).status_code == 200
