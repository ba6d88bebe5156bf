"""The browser flow end to end: our 302, the stand-in provider's approval, our callback."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pytest
import requests
from flask import Flask
from sqlalchemy import select

from oidc_server.app import create_app
from oidc_server.models import LoginHistory, SocialAccount, User
from oidc_server.tokens.memory_store import MemoryTokenStore

from ..conftest import LiveServer
from ..support.fake_providers import FakeProviders
from .conftest import (
    NOTHING,
    authorize,
    browser_sign_in,
    counts,
    local,
    provider_env,
    query,
    settings_from_env,
    start,
)

IDENTITY = {
    "google": ("109876543210987654321", "alice@gmail.com"),
    "yandex": ("1000034426", "alice@yandex.ru"),
}


def assert_token_response(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.get_json()
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "openid profile email"
    assert body["access_token"] and body["refresh_token"] and body["expires_in"] > 0
    return body


@pytest.mark.parametrize("provider", ["google", "yandex"])
def test_first_sign_in_creates_a_passwordless_user(client, services, fake, provider):
    body = assert_token_response(browser_sign_in(client, provider))

    claims = services.tokens.verify_access_token(body["access_token"])
    assert claims is not None and claims["client_id"] == "cinema-app"
    subject, email = IDENTITY[provider]
    with services.db.session() as session:
        user = session.get(User, uuid.UUID(claims["sub"]))
        assert user is not None and user.login == email and not user.has_password
        (account,) = session.scalars(select(SocialAccount)).all()
        assert (account.user_id, account.provider, account.subject, account.email) == (
            user.id,
            provider,
            subject,
            email,
        )
        (entry,) = session.scalars(select(LoginHistory)).all()
        assert (entry.user_id, entry.method, entry.success) == (user.id, provider, True)
        assert entry.session_id == claims["sid"]
    session_record = services.store.get_session(claims["sid"])
    assert session_record is not None and session_record.auth_method == provider

    # The session is real: its refresh token works at the token endpoint.
    refreshed = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": body["refresh_token"],
            "client_id": "cinema-app",
        },
    )
    assert refreshed.status_code == 200, refreshed.get_data(as_text=True)


@pytest.mark.parametrize("provider", ["google", "yandex"])
def test_repeat_sign_in_finds_the_same_user(client, services, fake, provider):
    first = assert_token_response(browser_sign_in(client, provider))
    # The address changed at the provider: the account is still found by its subject.
    fake.identity[provider]["email" if provider == "google" else "default_email"] = (
        "renamed@example.org"
    )
    second = assert_token_response(browser_sign_in(client, provider))
    sub = services.tokens.verify_access_token(first["access_token"])["sub"]
    assert services.tokens.verify_access_token(second["access_token"])["sub"] == sub
    assert counts(services) == {"users": 1, "social_accounts": 1, "login_history": 2}
    with services.db.session() as session:
        account = session.scalars(select(SocialAccount)).one()
        assert account.email == "renamed@example.org"  # the provider's current verified address
        assert session.scalars(select(User)).one().login == IDENTITY[provider][1]


def test_google_request_carries_state_nonce_and_pkce(client, fake):
    location = start(client, "google")
    params = query(location)
    assert location.startswith(f"{fake.google_issuer}/authorize?")
    assert params["client_id"] == "google-client-id"
    assert params["redirect_uri"] == "http://localhost/api/v1/social/callback/google"
    assert params["response_type"] == "code"
    assert set(params["scope"].split()) == {"openid", "email", "profile"}
    assert params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43
    assert len(params["state"]) >= 20 and len(params["nonce"]) >= 20
    # A second start gets fresh values.
    again = query(start(client, "google"))
    for name in ("state", "nonce", "code_challenge"):
        assert again[name] != params[name]


def test_state_is_kept_server_side_not_in_a_cookie(client, fake):
    resp = client.get("/api/v1/social/login/yandex")
    assert resp.status_code == 302
    assert "Set-Cookie" not in resp.headers
    assert resp.headers["Cache-Control"] == "no-store"
    # A client with no cookies at all can finish the flow.
    callback = local(authorize(resp.headers["Location"]))
    fresh = client.application.test_client()
    assert_token_response(fresh.get(callback))


def test_another_worker_can_finish_the_flow(app: Flask, settings, token_store, fake):
    """Two app instances sharing the store and database, like two server workers."""
    other = create_app(settings, store=token_store)
    try:
        callback = local(authorize(start(app.test_client(), "google")))
        assert_token_response(other.test_client().get(callback))
    finally:
        other.extensions["oidc"].db.dispose()


def test_yandex_exchange_uses_pkce_and_the_oauth_scheme(client, fake):
    assert_token_response(browser_sign_in(client, "yandex"))
    token_call = next(r for r in fake.requests_log if r["path"] == "/yandex/token")
    authorize_call = next(r for r in fake.requests_log if r["path"] == "/yandex/authorize")
    assert authorize_call["args"]["code_challenge_method"] == "S256"
    assert len(token_call["form"]["code_verifier"]) >= 43
    info_call = next(r for r in fake.requests_log if r["path"] == "/yandex/info")
    assert info_call["headers"]["Authorization"].startswith("OAuth y0_")
    assert info_call["args"] == {"format": "json"}


def test_replayed_callback_is_refused(client, services, fake):
    callback = local(authorize(start(client, "google")))
    assert_token_response(client.get(callback))
    replay = client.get(callback)
    assert replay.status_code == 400
    assert replay.get_json()["error"] == "invalid_state"
    assert counts(services) == {"users": 1, "social_accounts": 1, "login_history": 1}


@pytest.mark.parametrize(
    "url",
    [
        "/api/v1/social/callback/google?code=abc&state=forged-state-value",
        "/api/v1/social/callback/google?code=abc",
        "/api/v1/social/callback/yandex?state=&code=abc",
    ],
)
def test_unknown_or_missing_state_is_refused(client, services, fake, url):
    resp = client.get(url)
    assert resp.status_code == 400
    assert resp.get_json() == {
        "error": "invalid_state",
        "message": "the sign-in state is unknown, expired or already used; start the sign-in again",
    }
    assert counts(services) == NOTHING
    assert not [r for r in fake.requests_log if r["path"].endswith("/token")]


def test_state_of_another_provider_is_refused(client, services, fake):
    callback = local(authorize(start(client, "google")))
    resp = client.get(callback.replace("/callback/google", "/callback/yandex"))
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_state"
    # The state was spent by that attempt: it cannot be used for its own provider either.
    assert client.get(callback).get_json()["error"] == "invalid_state"
    assert counts(services) == NOTHING


def test_expired_state_is_refused(app: Flask, settings, fake):
    now = [1_000_000.0]
    store = MemoryTokenStore(clock=lambda: now[0])
    instance = create_app(settings, store=store)
    try:
        client = instance.test_client()
        callback = local(authorize(start(client, "yandex")))
        now[0] += settings.social_state_ttl + 1
        resp = client.get(callback)
        assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_state"
        assert counts(instance.extensions["oidc"]) == NOTHING
    finally:
        instance.extensions["oidc"].db.dispose()


def test_callback_without_code_is_refused(client, services, fake):
    state = query(start(client, "yandex"))["state"]
    resp = client.get(f"/api/v1/social/callback/yandex?state={state}")
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_request"
    assert counts(services) == NOTHING


@pytest.mark.parametrize("provider", ["google", "yandex"])
def test_denied_consent(client, services, fake, provider):
    fake.faults.add("deny")
    location = authorize(start(client, provider))
    assert query(location)["error"] == "access_denied"
    resp = client.get(local(location))
    assert resp.status_code == 403
    assert resp.get_json()["error"] == "access_denied"
    assert counts(services) == NOTHING
    # The state was spent: the same state cannot be reused with a code.
    state = query(location)["state"]
    retry = client.get(f"/api/v1/social/callback/{provider}?state={state}&code=x")
    assert retry.get_json()["error"] == "invalid_state"


def test_other_provider_errors_are_reported_without_echoing_text(client, services, fake):
    state = query(start(client, "google"))["state"]
    resp = client.get(
        f"/api/v1/social/callback/google?state={state}&error=<script>&error_description=boom"
    )
    assert resp.status_code == 400
    body = resp.get_json()
    assert body["error"] == "authorization_failed" and "<script>" not in body["message"]
    assert counts(services) == NOTHING


@pytest.mark.parametrize("provider", ["google", "yandex"])
def test_expired_code(client, services, fake, provider):
    fake.faults.add("expire_codes")
    resp = browser_sign_in(client, provider)
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "invalid_grant"
    assert counts(services) == NOTHING


@pytest.mark.parametrize(
    "fault",
    [
        "id_token_wrong_aud",
        "id_token_wrong_nonce",
        "id_token_bad_signature",
        "id_token_wrong_iss",
        "id_token_expired",
    ],
)
def test_google_id_token_checks(client, services, fake, fault):
    fake.faults.add(fault)
    resp = browser_sign_in(client, "google")
    assert resp.status_code == 400, resp.get_data(as_text=True)
    assert resp.get_json()["error"] == "invalid_id_token"
    assert counts(services) == NOTHING
    assert services.store.list_sessions("") == []


@pytest.mark.parametrize(
    ("provider", "fault"),
    [
        ("google", "token_500"),
        ("google", "token_garbage"),
        ("yandex", "token_500"),
        ("yandex", "token_garbage"),
        ("yandex", "userinfo_500"),
        ("yandex", "down"),
    ],
)
def test_provider_failures_after_the_redirect(client, services, fake, provider, fault):
    location = authorize(start(client, provider))
    fake.faults.add(fault)
    resp = client.get(local(location))
    assert resp.status_code == 502, resp.get_data(as_text=True)
    assert resp.get_json()["error"] == "provider_error"
    assert counts(services) == NOTHING


def test_google_down_at_the_start(client, fake):
    fake.faults.add("google:down")
    resp = client.get("/api/v1/social/login/google")
    assert resp.status_code == 502
    assert resp.get_json()["error"] == "provider_error"
    assert "Location" not in resp.headers


def test_provider_unreachable(app: Flask, settings, token_store, fake):
    env = {
        **provider_env(fake),
        "YANDEX_TOKEN_URL": FakeProviders.dead_url(),
        "GOOGLE_METADATA_URL": FakeProviders.dead_url() + "/.well-known/openid-configuration",
    }
    instance = create_app(settings_from_env(settings, env), store=token_store)
    try:
        client = instance.test_client()
        assert client.get("/api/v1/social/login/google").status_code == 502
        resp = client.get(local(authorize(start(client, "yandex"))))
        assert resp.status_code == 502 and resp.get_json()["error"] == "provider_error"
        assert counts(instance.extensions["oidc"]) == NOTHING
    finally:
        instance.extensions["oidc"].db.dispose()


@pytest.mark.parametrize("claims", [{"email_verified": False}, {"email": None}])
def test_google_unverified_email_creates_nothing(client, services, fake, claims):
    fake.identity["google"].update(claims)
    resp = browser_sign_in(client, "google")
    assert resp.status_code == 403
    assert resp.get_json()["error"] == "verified_email_required"
    assert counts(services) == NOTHING


def test_yandex_without_email_creates_nothing(client, services, fake):
    del fake.identity["yandex"]["default_email"]
    resp = browser_sign_in(client, "yandex")
    assert resp.status_code == 403 and resp.get_json()["error"] == "verified_email_required"
    assert counts(services) == NOTHING


def test_linked_identity_signs_in_even_when_its_email_is_unverified(client, services, fake):
    assert_token_response(browser_sign_in(client, "google"))
    fake.identity["google"]["email_verified"] = False
    fake.identity["google"]["email"] = "someone-else@example.com"
    assert_token_response(browser_sign_in(client, "google"))
    with services.db.session() as session:
        # The unverified address is not stored anywhere.
        assert session.scalars(select(SocialAccount)).one().email == "alice@gmail.com"


def test_existing_email_is_not_merged(client, services, user, fake):
    fake.identity["google"]["email"] = "Viewer@Example.COM"  # the user fixture's login
    resp = browser_sign_in(client, "google")
    assert resp.status_code == 409
    body = resp.get_json()
    assert body["error"] == "account_exists_link_required"
    assert "/api/v1/users/me/social-accounts/google" in body["message"]
    assert counts(services) == {"users": 1, "social_accounts": 0, "login_history": 0}
    assert services.store.list_sessions(str(user.id)) == []


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/social/login/github",
        "/api/v1/social/callback/github?code=a&state=b",
        "/api/v1/social/login/Google",
    ],
)
def test_unknown_provider_is_404(client, path):
    resp = client.get(path)
    assert resp.status_code == 404
    assert resp.get_json()["error"] == "provider_not_found"


def test_provider_without_client_id_is_404(app: Flask, settings, token_store, fake):
    env = {k: v for k, v in provider_env(fake).items() if not k.startswith("YANDEX_")}
    instance = create_app(settings_from_env(settings, env), store=token_store)
    try:
        client = instance.test_client()
        assert client.get("/api/v1/social/login/yandex").status_code == 404
        assert client.get("/api/v1/social/callback/yandex?code=a&state=b").status_code == 404
        post = client.post(
            "/api/v1/social/login/yandex", json={"code": "a", "redirect_uri": "https://x.example"}
        )
        assert post.status_code == 404 and post.get_json()["error"] == "provider_not_found"
        assert client.get("/api/v1/social/login/google").status_code == 302
    finally:
        instance.extensions["oidc"].db.dispose()


def test_whole_flow_over_real_http(live_server: LiveServer, fake):
    """Browser flow with every hop over HTTP: our server, the provider, our callback."""
    for provider in ("yandex", "google"):
        resp = requests.get(
            f"{live_server.url}/api/v1/social/login/{provider}", allow_redirects=False, timeout=5
        )
        assert resp.status_code == 302
        callback = authorize(resp.headers["Location"])
        assert callback.startswith(f"{live_server.url}/api/v1/social/callback/{provider}?")
        done = requests.get(callback, allow_redirects=False, timeout=5)
        assert done.status_code == 200, done.text
        assert done.headers["Cache-Control"] == "no-store"
        token = done.json()["access_token"]
        userinfo = requests.get(
            f"{live_server.url}/oauth/userinfo",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        )
        assert userinfo.status_code == 200
    svc = live_server.app.extensions["oidc"]
    # The same person at two providers with two different verified emails: two users.
    assert counts(svc) == {"users": 2, "social_accounts": 2, "login_history": 2}


def test_no_secrets_in_logs(client, fake, caplog):
    caplog.set_level(logging.DEBUG)
    location = start(client, "google")
    with caplog.at_level(logging.CRITICAL):  # the browser's own requests are not our logs
        callback = local(authorize(location))
    body = assert_token_response(client.get(callback))
    token_call = next(r for r in fake.requests_log if r["path"] == "/google/token")
    secrets = [
        token_call["form"]["code"],
        token_call["form"]["code_verifier"],
        query(location)["nonce"],
        query(location)["state"],
        body["access_token"],
        body["refresh_token"],
        "google-secret",
    ]
    logged = caplog.text + "".join(repr(r.__dict__) for r in caplog.records)
    assert caplog.records  # the sign-in itself is logged
    for secret in secrets:
        assert secret not in logged
