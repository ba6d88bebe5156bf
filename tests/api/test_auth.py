"""/api/v1/auth: register, login, refresh, logout and logout-all, end to end."""

from __future__ import annotations

import statistics
import time
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import select

from oidc_server.accounts import create_user
from oidc_server.config import Settings
from oidc_server.models import LoginHistory, User
from oidc_server.tokens.store import TokenStore

from ..conftest import PASSWORD, bearer, make_client, password_login
from ..support.accounts import (
    CHROME_ON_WINDOWS,
    api_login,
    fresh_app,
    register,
    row_counts,
    signed_in,
)

NEW_PASSWORD = "popcorn at midnight"

# Register ---------------------------------------------------------------------------------


def test_registering_creates_an_account_under_the_normalised_login(
    client: FlaskClient, services: Any
) -> None:
    response = register(client, "Film.Lover@Example.COM", NEW_PASSWORD)
    assert response.status_code == 201
    assert response.json["login"] == "film.lover@example.com"
    with services.db.session() as session:
        created = session.get(User, uuid.UUID(response.json["id"]))
        assert created is not None and created.login == "film.lover@example.com"
        assert created.password_hash and NEW_PASSWORD not in created.password_hash
    assert api_login(client, "FILM.LOVER@example.com", NEW_PASSWORD).status_code == 200


def test_internationalised_addresses_register_in_composed_lowercase_form(
    client: FlaskClient,
) -> None:
    response = register(client, "Jose\u0301@Exa\u0308mple.com", NEW_PASSWORD)
    assert response.status_code == 201
    assert response.json["login"] == "jos\u00e9@ex\u00e4mple.com"
    assert api_login(client, "jos\u00e9@ex\u00e4mple.com", NEW_PASSWORD).status_code == 200


def test_a_taken_login_is_409_whatever_its_case(
    client: FlaskClient, user: User, services: Any
) -> None:
    before = row_counts(services)
    response = register(client, "VIEWER@example.com", NEW_PASSWORD)
    assert response.status_code == 409
    assert response.json == {"error": "login_taken", "message": "this login is already registered"}
    assert row_counts(services) == before


@pytest.mark.parametrize(
    ("login", "password", "code", "field"),
    [
        ("not-an-email", NEW_PASSWORD, "invalid_email", "login"),
        ("someone@", NEW_PASSWORD, "invalid_email", "login"),
        ("short@example.com", "seven77", "password_too_short", "password"),
        ("common@example.com", "iloveyou", "password_too_common", "password"),
        ("common@example.com", "BaseBall", "password_too_common", "password"),
        ("common@example.com", "12345678", "password_too_common", "password"),
        ("moviefan@example.com", "MovieFan@Example.com", "password_is_login", "password"),
        ("cinephile@example.com", "cinephile", "password_is_login", "password"),
    ],
)
def test_invalid_registrations_are_422_naming_the_field(
    client: FlaskClient, services: Any, login: str, password: str, code: str, field: str
) -> None:
    response = register(client, login, password)
    assert response.status_code == 422, response.json
    assert response.json["error"] == code
    assert list(response.json["details"]) == [field]
    assert row_counts(services) == (0, 0)


def test_a_password_over_1024_characters_is_refused_before_hashing(
    client: FlaskClient, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str] = []
    original = services.hasher.hash
    monkeypatch.setattr(services.hasher, "hash", lambda pw: hashed.append(pw) or original(pw))
    response = register(client, "long@example.com", "x" * 1025)
    assert response.status_code == 422
    assert "password" in response.json["details"]
    assert hashed == []
    assert row_counts(services) == (0, 0)


def test_long_unicode_passwords_up_to_1024_characters_are_welcome(client: FlaskClient) -> None:
    password = ("фильм 🎬 \u200f" * 200)[:1024]
    assert register(client, "unicode@example.com", password).status_code == 201
    assert api_login(client, "unicode@example.com", password).status_code == 200


# Login ------------------------------------------------------------------------------------


def test_login_answers_an_rfc6749_token_response(
    client: FlaskClient, user: User, services: Any
) -> None:
    response = api_login(client)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Pragma"] == "no-cache"
    body = response.json
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == services.settings.access_token_ttl
    claims = services.tokens.verify_access_token(body["access_token"])
    assert body["refresh_token"].startswith(claims["sid"] + ".")
    assert claims["sub"] == str(user.id)
    assert claims["client_id"] == services.settings.first_party_client_id


def test_login_is_recorded_in_the_history_with_the_device(
    client: FlaskClient, user: User, services: Any
) -> None:
    tokens = signed_in(client, ip="203.0.113.7", user_agent=CHROME_ON_WINDOWS)
    sid = services.tokens.verify_access_token(tokens["access_token"])["sid"]
    with services.db.session() as session:
        entry = session.scalars(select(LoginHistory)).one()
    assert (entry.user_id, entry.method, entry.success) == (user.id, "password", True)
    assert entry.ip == "203.0.113.7"
    assert entry.user_agent == CHROME_ON_WINDOWS
    assert entry.device is not None and entry.device.startswith("Chrome 120")
    assert entry.session_id == sid


def test_a_failed_login_of_a_known_user_is_recorded_as_failed(
    client: FlaskClient, user: User, services: Any
) -> None:
    assert api_login(client, password="not the password").status_code == 401
    with services.db.session() as session:
        entry = session.scalars(select(LoginHistory)).one()
    assert entry.user_id == user.id and entry.success is False and entry.session_id is None


def test_unknown_login_wrong_password_and_disabled_account_get_one_answer(
    client: FlaskClient, user: User, services: Any
) -> None:
    with services.db.session() as session:
        create_user(session, services.hasher, "disabled@example.com", PASSWORD)
        session.execute(
            User.__table__.update()
            .where(User.login == "disabled@example.com")
            .values(is_active=False)
        )
    answers = [
        api_login(client, "nobody@example.com", PASSWORD),
        api_login(client, "viewer@example.com", "not the password"),
        api_login(client, "disabled@example.com", PASSWORD),
        api_login(client, "not even an email", PASSWORD),
    ]
    first = answers[0]
    assert first.status_code == 401
    assert first.json == {"error": "invalid_credentials", "message": "invalid login or password"}
    for other in answers[1:]:
        assert other.status_code == first.status_code
        assert other.get_data() == first.get_data()
        assert stable_headers(other) == stable_headers(first)


def stable_headers(response: Any) -> dict[str, str]:
    """Headers that do not change from one request to the next (no ids, no dates)."""
    return {k: v for k, v in response.headers.items() if k not in {"X-Request-ID", "Date"}}


def test_unknown_login_and_wrong_password_take_the_same_time(
    settings: Settings, token_store: TokenStore
) -> None:
    """Medians of interleaved runs agree within a generous factor."""
    # argon2 at OWASP's minimum cost (19 MiB, t=2) rather than the suite's token cost, so
    # that, as in production, the hash dominates. Without the hash that unknown logins still cost
    # the ratio is about 0.1; with it, about 1.
    with fresh_app(
        settings,
        token_store,
        password_hash_time_cost=2,
        password_hash_memory_cost=19_456,
        password_hash_parallelism=1,
    ) as app:
        unknown, wrong = _time_failed_logins(app, runs=25)
    ratio = statistics.median(unknown) / statistics.median(wrong)
    assert 0.5 < ratio < 2.0, f"unknown/wrong median ratio {ratio:.2f}"


def _time_failed_logins(app: Any, runs: int) -> tuple[list[float], list[float]]:
    """Durations of interleaved failed logins: unknown login, then wrong password."""
    svc = app.extensions["oidc"]
    with svc.db.session() as session:
        create_user(session, svc.hasher, "viewer@example.com", PASSWORD)
    client = app.test_client()

    def duration(login: str, password: str) -> float:
        started = time.perf_counter()
        response = api_login(client, login, password)
        elapsed = time.perf_counter() - started
        assert response.status_code == 401
        return elapsed

    for _ in range(3):  # warm-up: connections, caches
        duration("nobody@example.com", PASSWORD)
        duration("viewer@example.com", "wrong password")
    unknown, wrong = [], []
    for _ in range(runs):
        unknown.append(duration("nobody@example.com", PASSWORD))
        wrong.append(duration("viewer@example.com", "wrong password"))
    return unknown, wrong


# Refresh ----------------------------------------------------------------------------------


def test_refresh_returns_new_tokens_and_spends_the_old_one(
    client: FlaskClient, user: User, services: Any
) -> None:
    tokens = signed_in(client)
    response = client.post(
        "/api/v1/auth/refresh",
        json={"refresh_token": tokens["refresh_token"], "grant_type": "refresh_token"},
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    fresh = response.json
    assert fresh["token_type"] == "Bearer"
    assert fresh["refresh_token"] != tokens["refresh_token"]
    old_sid = services.tokens.verify_access_token(tokens["access_token"])["sid"]
    assert services.tokens.verify_access_token(fresh["access_token"])["sid"] == old_sid
    # grant_type may be left out; the successor works once.
    assert (
        client.post(
            "/api/v1/auth/refresh", json={"refresh_token": fresh["refresh_token"]}
        ).status_code
        == 200
    )


def test_a_spent_refresh_token_is_401_and_ends_its_session(client: FlaskClient, user: User) -> None:
    tokens = signed_in(client)
    first = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert first.status_code == 200
    replay = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert replay.status_code == 401
    assert replay.json["error"] == "invalid_grant"
    # Reuse detection: the legitimate successor and the session's access tokens die too.
    successor = client.post(
        "/api/v1/auth/refresh", json={"refresh_token": first.json["refresh_token"]}
    )
    assert successor.status_code == 401
    me = client.get("/api/v1/users/me", headers=bearer(first.json["access_token"]))
    assert me.status_code == 401


@pytest.mark.parametrize(
    "refresh_token",
    ["garbage", "no-such-session.secret", "x" * 256, "a.b.c", "."],
)
def test_unknown_refresh_tokens_are_401(
    client: FlaskClient, user: User, refresh_token: str
) -> None:
    response = client.post("/api/v1/auth/refresh", json={"refresh_token": refresh_token})
    assert response.status_code == 401
    assert response.json == {
        "error": "invalid_grant",
        "message": "the refresh token is invalid, expired or revoked",
    }


def test_a_refresh_token_of_another_client_is_401(
    client: FlaskClient, user: User, services: Any
) -> None:
    other = make_client(
        services,
        name="partner app",
        grant_types=["password", "refresh_token"],
        scopes=["openid"],
        confidential=False,
        first_party=True,
    )
    issued = password_login(client, client_id=other.client_id)
    assert issued.status_code == 200
    response = client.post(
        "/api/v1/auth/refresh", json={"refresh_token": issued.json["refresh_token"]}
    )
    assert response.status_code == 401


def test_refresh_with_another_grant_type_is_422(client: FlaskClient, user: User) -> None:
    tokens = signed_in(client)
    response = client.post(
        "/api/v1/auth/refresh",
        json={"refresh_token": tokens["refresh_token"], "grant_type": "password"},
    )
    assert response.status_code == 422
    assert "grant_type" in response.json["details"]


# Logout -----------------------------------------------------------------------------------


def test_logout_ends_the_session_at_once(
    client: FlaskClient, user: User, services: Any, machine: Any
) -> None:
    tokens = signed_in(client)
    other_device = signed_in(client)
    response = client.post("/api/v1/auth/logout", headers=bearer(tokens["access_token"]))
    assert response.status_code == 204
    assert response.get_data() == b""
    # The access token is refused here, by introspection, and the refresh token is dead.
    me = client.get("/api/v1/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401
    assert 'error="invalid_token"' in me.headers["WWW-Authenticate"]
    introspection = client.post(
        "/oauth/introspect", data={"token": tokens["access_token"]}, headers=machine.basic
    )
    assert introspection.json == {"active": False}
    refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 401
    # The other device stays signed in.
    assert (
        client.get("/api/v1/users/me", headers=bearer(other_device["access_token"])).status_code
        == 200
    )


def test_logout_all_signs_out_of_every_device(
    client: FlaskClient, user: User, services: Any
) -> None:
    devices = [signed_in(client) for _ in range(3)]
    response = client.post("/api/v1/auth/logout-all", headers=bearer(devices[0]["access_token"]))
    assert response.status_code == 204
    assert services.store.list_sessions(str(user.id)) == []
    for device in devices:
        me = client.get("/api/v1/users/me", headers=bearer(device["access_token"]))
        assert me.status_code == 401
        refreshed = client.post(
            "/api/v1/auth/refresh", json={"refresh_token": device["refresh_token"]}
        )
        assert refreshed.status_code == 401


@pytest.mark.parametrize("path", ["/api/v1/auth/logout", "/api/v1/auth/logout-all"])
def test_logging_out_needs_a_users_bearer_token(
    client: FlaskClient, machine: Any, path: str
) -> None:
    anonymous = client.post(path)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    assert set(anonymous.json) >= {"error", "message"}
    forged = client.post(path, headers=bearer("not.a.jwt"))
    assert forged.status_code == 401
    machine_token = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic
    ).json["access_token"]
    assert client.post(path, headers=bearer(machine_token)).status_code == 403
