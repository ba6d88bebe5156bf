"""GET /oauth/userinfo (OIDC Core §5.3)."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient

from oidc_server.models import User

from ..conftest import MachineClient, bearer, password_login


def test_userinfo_describes_the_user(client: FlaskClient, user: User) -> None:
    token = password_login(client).json["access_token"]
    response = client.get("/oauth/userinfo", headers=bearer(token))
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json == {
        "sub": str(user.id),
        "email": user.login,
        "email_verified": False,
        "preferred_username": user.login,
        "roles": [],
    }


def test_userinfo_claims_follow_the_scope(client: FlaskClient, user: User) -> None:
    token = password_login(client, scope="openid").json["access_token"]
    assert client.get("/oauth/userinfo", headers=bearer(token)).json == {"sub": str(user.id)}


def test_userinfo_needs_the_openid_scope(client: FlaskClient, user: User) -> None:
    token = password_login(client, scope="profile").json["access_token"]
    response = client.get("/oauth/userinfo", headers=bearer(token))
    assert response.status_code == 403
    assert response.json["error"] == "insufficient_scope"


def test_userinfo_refuses_machine_tokens(client: FlaskClient, services: Any) -> None:
    from ..conftest import make_client

    machine: MachineClient = make_client(services, scopes=["openid"])
    token = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic
    ).json["access_token"]
    response = client.get("/oauth/userinfo", headers=bearer(token))
    assert response.status_code == 401


def test_userinfo_without_a_token_challenges(client: FlaskClient) -> None:
    response = client.get("/oauth/userinfo")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_userinfo_of_a_deleted_user_is_refused(
    client: FlaskClient, user: User, services: Any
) -> None:
    token = password_login(client).json["access_token"]
    with services.db.session() as session:
        session.delete(session.get(User, user.id))
    assert client.get("/oauth/userinfo", headers=bearer(token)).status_code == 401
