"""Linked accounts: explicit linking, listing, unlinking and the last-way-to-sign-in rule."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import select

from oidc_server.models import SocialAccount

from ..conftest import bearer, make_client, password_login
from .conftest import APP_REDIRECT, app_code, browser_sign_in, counts

ACCOUNTS = "/api/v1/users/me/social-accounts/"


def link(client: Any, token: str, fake: Any, provider: str) -> Any:
    return client.post(
        f"{ACCOUNTS}{provider}",
        json={"code": app_code(fake, provider), "redirect_uri": APP_REDIRECT},
        headers=bearer(token),
    )


def social_sign_in(client: Any, provider: str) -> str:
    resp = browser_sign_in(client, provider)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["access_token"]


@pytest.fixture
def viewer_token(client: Any, user: Any) -> str:
    resp = password_login(client)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    return resp.get_json()["access_token"]


def test_link_then_sign_in_reaches_the_same_user(client, services, user, viewer_token, fake):
    fake.identity["google"]["email"] = "viewer@example.com"
    assert browser_sign_in(client, "google").status_code == 409  # not merged by email

    resp = link(client, viewer_token, fake, "google")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    account = resp.get_json()
    assert set(account) == {"id", "provider", "subject", "email", "linked_at"}
    assert account["provider"] == "google"
    assert account["subject"] == fake.identity["google"]["sub"]
    assert account["email"] == "viewer@example.com"
    uuid.UUID(account["id"])

    token = social_sign_in(client, "google")
    assert services.tokens.verify_access_token(token)["sub"] == str(user.id)
    assert counts(services) == {"users": 1, "social_accounts": 1, "login_history": 2}


def test_linking_again_is_idempotent(client, services, user, viewer_token, fake):
    first = link(client, viewer_token, fake, "yandex")
    second = link(client, viewer_token, fake, "yandex")
    assert (first.status_code, second.status_code) == (201, 200)
    assert first.get_json() == second.get_json()
    assert counts(services)["social_accounts"] == 1


def test_linking_an_unverified_identity_keeps_no_email(client, services, viewer_token, fake):
    fake.identity["google"]["email_verified"] = False
    resp = link(client, viewer_token, fake, "google")
    assert resp.status_code == 201
    assert resp.get_json()["email"] is None


def test_identity_of_another_user_cannot_be_linked(client, services, viewer_token, fake):
    social_sign_in(client, "google")  # makes alice@gmail.com's user, linked to that identity
    resp = link(client, viewer_token, fake, "google")
    assert resp.status_code == 409
    assert resp.get_json()["error"] == "social_account_linked_elsewhere"
    with services.db.session() as session:
        (account,) = session.scalars(select(SocialAccount)).all()
        assert account.email == "alice@gmail.com"


def test_link_errors(client, viewer_token, fake):
    unknown = client.post(
        f"{ACCOUNTS}github",
        json={"code": "a", "redirect_uri": APP_REDIRECT},
        headers=bearer(viewer_token),
    )
    assert unknown.status_code == 404 and unknown.get_json()["error"] == "provider_not_found"
    bad_uri = client.post(
        f"{ACCOUNTS}google",
        json={"code": app_code(fake, "google"), "redirect_uri": "https://evil.example/"},
        headers=bearer(viewer_token),
    )
    assert bad_uri.status_code == 400
    assert bad_uri.get_json()["error"] == "invalid_redirect_uri"
    fake.faults.add("id_token_wrong_aud")
    wrong_aud = link(client, viewer_token, fake, "google")
    assert wrong_aud.status_code == 400 and wrong_aud.get_json()["error"] == "invalid_id_token"
    fake.faults = {"expire_codes"}
    expired = link(client, viewer_token, fake, "yandex")
    assert expired.status_code == 400 and expired.get_json()["error"] == "invalid_grant"
    fake.faults = {"down"}
    down = link(client, viewer_token, fake, "yandex")
    assert down.status_code == 502 and down.get_json()["error"] == "provider_error"
    invalid = client.post(f"{ACCOUNTS}google", json={}, headers=bearer(viewer_token))
    assert invalid.status_code == 422


def test_list_shows_only_the_callers_accounts(client, services, viewer_token, fake):
    other = social_sign_in(client, "google")  # another user, with a Google account
    link(client, viewer_token, fake, "yandex")
    resp = client.get(ACCOUNTS, headers=bearer(viewer_token))
    assert resp.status_code == 200
    (only,) = resp.get_json()
    assert (only["provider"], only["subject"], only["email"]) == (
        "yandex",
        "1000034426",
        "alice@yandex.ru",
    )
    assert datetime.fromisoformat(only["linked_at"]).utcoffset() == timedelta(0)
    theirs = client.get(ACCOUNTS, headers=bearer(other)).get_json()
    assert [a["provider"] for a in theirs] == ["google"]


def test_password_user_can_unlink_their_only_social_account(
    client, services, user, viewer_token, fake
):
    account_id = link(client, viewer_token, fake, "google").get_json()["id"]
    resp = client.delete(f"{ACCOUNTS}{account_id}", headers=bearer(viewer_token))
    assert resp.status_code == 204 and resp.get_data() == b""
    assert client.get(ACCOUNTS, headers=bearer(viewer_token)).get_json() == []
    # Unlinked for good: the Google identity now makes a new account (its own email).
    fake.identity["google"]["email"] = "new-person@gmail.com"
    token = social_sign_in(client, "google")
    assert services.tokens.verify_access_token(token)["sub"] != str(user.id)
    assert counts(services) == {"users": 2, "social_accounts": 1, "login_history": 2}


def test_last_way_to_sign_in_cannot_be_unlinked(client, services, fake):
    token = social_sign_in(client, "google")  # a user without a password
    (google,) = client.get(ACCOUNTS, headers=bearer(token)).get_json()
    refused = client.delete(f"{ACCOUNTS}{google['id']}", headers=bearer(token))
    assert refused.status_code == 409
    assert refused.get_json()["error"] == "last_sign_in_method"

    yandex = link(client, token, fake, "yandex").get_json()
    assert client.delete(f"{ACCOUNTS}{google['id']}", headers=bearer(token)).status_code == 204
    last = client.delete(f"{ACCOUNTS}{yandex['id']}", headers=bearer(token))
    assert last.status_code == 409 and last.get_json()["error"] == "last_sign_in_method"
    assert [a["provider"] for a in client.get(ACCOUNTS, headers=bearer(token)).get_json()] == [
        "yandex"
    ]


@pytest.mark.parametrize("which", ["other_users", "random", "malformed", "empty_uuid"])
def test_unlink_of_what_is_not_yours_is_404(client, services, viewer_token, fake, which):
    theirs = social_sign_in(client, "google")
    their_id = client.get(ACCOUNTS, headers=bearer(theirs)).get_json()[0]["id"]
    link(client, viewer_token, fake, "yandex")  # so the last-method rule is not what answers
    target = {
        "other_users": their_id,
        "random": str(uuid.uuid4()),
        "malformed": "not-a-uuid",
        "empty_uuid": "00000000-0000-0000-0000-000000000000",
    }[which]
    resp = client.delete(f"{ACCOUNTS}{target}", headers=bearer(viewer_token))
    assert resp.status_code == 404
    assert resp.get_json()["error"] == "not_found"
    assert counts(services)["social_accounts"] == 2


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", ACCOUNTS),
        ("post", f"{ACCOUNTS}google"),
        ("delete", f"{ACCOUNTS}{uuid.uuid4()}"),
    ],
)
def test_accounts_need_a_users_bearer_token(client, services, fake, method, path):
    kwargs = {"json": {"code": "a", "redirect_uri": APP_REDIRECT}} if method == "post" else {}
    anonymous = getattr(client, method)(path, **kwargs)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"].startswith("Bearer")
    forged = getattr(client, method)(path, headers=bearer("not.a.token"), **kwargs)
    assert forged.status_code == 401
    if method == "post":  # authentication comes before body validation
        assert client.post(path, json={}).status_code == 401
    machine = make_client(services)
    token = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic
    ).get_json()["access_token"]
    as_machine = getattr(client, method)(path, headers=bearer(token), **kwargs)
    assert as_machine.status_code == 403


def test_revoked_session_cannot_manage_accounts(client, services, fake):
    token = social_sign_in(client, "yandex")
    claims = services.tokens.verify_access_token(token)
    services.tokens.end_session(claims["sid"])
    assert client.get(ACCOUNTS, headers=bearer(token)).status_code == 401
