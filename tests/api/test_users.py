"""/api/v1/users/me and /api/v1/users/me/change-password, end to end."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import delete, select

from oidc_server.accounts import create_user
from oidc_server.models import Role, User, UserRole
from oidc_server.tokens.service import LoginContext

from ..conftest import PASSWORD, bearer
from ..support.accounts import api_login, signed_in

NEW_PASSWORD = "the projectionist sleeps"


def change_password(client: FlaskClient, token: str, **body: Any) -> Any:
    payload = {
        "old_password": PASSWORD,
        "new_password1": NEW_PASSWORD,
        "new_password2": NEW_PASSWORD,
        **body,
    }
    return client.post("/api/v1/users/me/change-password", json=payload, headers=bearer(token))


# GET /users/me ----------------------------------------------------------------------------


def test_me_describes_the_callers_account(client: FlaskClient, user: User) -> None:
    tokens = signed_in(client)
    response = client.get("/api/v1/users/me", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    body = response.json
    assert body == {
        "id": str(user.id),
        "login": "viewer@example.com",
        "roles": [],
        "has_password": True,
        "created_at": body["created_at"],
    }
    assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None


def test_me_shows_roles_as_they_are_now_not_as_in_the_token(
    client: FlaskClient, user: User, services: Any
) -> None:
    tokens = signed_in(client)
    with services.db.session() as session:
        subscriber = session.scalar(select(Role).where(Role.name == "subscriber"))
        session.add(UserRole(user_id=user.id, role_id=subscriber.id))
    response = client.get("/api/v1/users/me", headers=bearer(tokens["access_token"]))
    assert response.json["roles"] == ["subscriber"]
    assert services.tokens.verify_access_token(tokens["access_token"])["roles"] == []


def test_a_social_only_account_has_no_password(client: FlaskClient, services: Any) -> None:
    with services.db.session() as session:
        social = create_user(session, services.hasher, "social@example.com", None)
    token, _ = services.tokens.start_session(
        LoginContext(
            user_id=str(social.id),
            client_id="cinema-app",
            scope="openid",
            roles=[],
            auth_method="google",
        )
    )
    response = client.get("/api/v1/users/me", headers=bearer(token["access_token"]))
    assert response.status_code == 200
    assert response.json["has_password"] is False


def test_me_of_a_deleted_user_is_401(client: FlaskClient, user: User, services: Any) -> None:
    tokens = signed_in(client)
    with services.db.session() as session:
        session.execute(delete(User).where(User.id == user.id))
    response = client.get("/api/v1/users/me", headers=bearer(tokens["access_token"]))
    assert response.status_code == 401
    assert response.json["error"] == "invalid_token"


def test_me_needs_a_users_bearer_token(client: FlaskClient, machine: Any) -> None:
    assert client.get("/api/v1/users/me").status_code == 401
    assert client.get("/api/v1/users/me", headers=bearer("forged")).status_code == 401
    machine_token = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic
    ).json["access_token"]
    assert client.get("/api/v1/users/me", headers=bearer(machine_token)).status_code == 403


# POST /users/me/change-password -------------------------------------------------------------


def test_changing_the_password_ends_every_other_session(
    client: FlaskClient, user: User, services: Any
) -> None:
    here = signed_in(client, user_agent="this phone")
    elsewhere = [signed_in(client, user_agent=f"device {n}") for n in range(2)]
    response = change_password(client, here["access_token"])
    assert response.status_code == 204
    # Other devices: access tokens refused, refresh tokens dead.
    for device in elsewhere:
        me = client.get("/api/v1/users/me", headers=bearer(device["access_token"]))
        assert me.status_code == 401
        refreshed = client.post(
            "/api/v1/auth/refresh", json={"refresh_token": device["refresh_token"]}
        )
        assert refreshed.status_code == 401
    # This device stays signed in and can keep refreshing.
    assert client.get("/api/v1/users/me", headers=bearer(here["access_token"])).status_code == 200
    refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": here["refresh_token"]})
    assert refreshed.status_code == 200
    assert [s.user_agent for s in services.store.list_sessions(str(user.id))] == ["this phone"]


def test_after_a_change_only_the_new_password_signs_in(client: FlaskClient, user: User) -> None:
    tokens = signed_in(client)
    assert change_password(client, tokens["access_token"]).status_code == 204
    assert api_login(client, password=PASSWORD).status_code == 401
    assert api_login(client, password=NEW_PASSWORD).status_code == 200


def test_a_wrong_current_password_is_403_and_changes_nothing(
    client: FlaskClient, user: User, services: Any
) -> None:
    tokens = signed_in(client)
    other = signed_in(client)
    response = change_password(client, tokens["access_token"], old_password="a wrong guess")
    assert response.status_code == 403
    assert response.json == {
        "error": "wrong_password",
        "message": "the current password is not correct",
    }
    assert api_login(client, password=PASSWORD).status_code == 200
    assert client.get("/api/v1/users/me", headers=bearer(other["access_token"])).status_code == 200


def test_new_passwords_that_differ_are_422_on_new_password2(
    client: FlaskClient, user: User
) -> None:
    tokens = signed_in(client)
    response = change_password(
        client, tokens["access_token"], new_password2="the projectionist wakes"
    )
    assert response.status_code == 422
    assert response.json["details"] == {"new_password2": ["The new passwords do not match."]}
    assert api_login(client, password=PASSWORD).status_code == 200


@pytest.mark.parametrize(
    ("new_password", "code"),
    [
        ("short", "password_too_short"),
        ("sunshine", "password_too_common"),
        ("Viewer@Example.com", "password_is_login"),
    ],
)
def test_a_weak_new_password_is_422_on_new_password1(
    client: FlaskClient, user: User, new_password: str, code: str
) -> None:
    tokens = signed_in(client)
    response = change_password(
        client, tokens["access_token"], new_password1=new_password, new_password2=new_password
    )
    assert response.status_code == 422
    assert response.json["error"] == code
    assert list(response.json["details"]) == ["new_password1"]
    assert api_login(client, password=PASSWORD).status_code == 200


def test_a_social_only_account_cannot_change_a_password_it_lacks(
    client: FlaskClient, services: Any
) -> None:
    with services.db.session() as session:
        social = create_user(session, services.hasher, "social@example.com", None)
    token, _ = services.tokens.start_session(
        LoginContext(
            user_id=str(social.id),
            client_id="cinema-app",
            scope="openid",
            roles=[],
            auth_method="yandex",
        )
    )
    response = change_password(client, token["access_token"])
    assert response.status_code == 403
    assert response.json["error"] == "no_password"


def test_changing_the_password_needs_a_bearer_token(client: FlaskClient, user: User) -> None:
    response = client.post(
        "/api/v1/users/me/change-password",
        json={"old_password": PASSWORD, "new_password1": "x" * 9, "new_password2": "x" * 9},
    )
    assert response.status_code == 401
    assert api_login(client, password=PASSWORD).status_code == 200
