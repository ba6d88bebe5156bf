"""The app flow: an app ran the provider's flow itself and hands us the code."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from flask import Flask

from oidc_server.app import create_app
from oidc_server.tokens.redis_store import RedisTokenStore

from ..support.fake_providers import FakeProviders
from .conftest import (
    APP_REDIRECT,
    NATIVE_REDIRECT,
    NOTHING,
    app_code,
    counts,
    new_verifier,
    query,
    s256,
)

LOGIN = "/api/v1/social/login/{}"


def post(client: Any, provider: str, **body: Any) -> Any:
    return client.post(LOGIN.format(provider), json=body)


def run_provider_flow(fake: FakeProviders, provider: str, verifier: str) -> str:
    """What the app does: send the user to the provider and catch the code on its own URI."""
    url = (
        requests.get(fake.google_metadata_url, timeout=5).json()["authorization_endpoint"]
        if provider == "google"
        else fake.yandex_authorize_url
    )
    resp = requests.get(
        url,
        params={
            "client_id": fake.clients[provider][0],
            "redirect_uri": NATIVE_REDIRECT,
            "response_type": "code",
            "scope": "openid email profile" if provider == "google" else "login:email",
            "state": "app-state",
            "code_challenge": s256(verifier),
            "code_challenge_method": "S256",
        },
        allow_redirects=False,
        timeout=5,
    )
    assert resp.status_code == 302
    back = query(resp.headers["Location"])
    assert back["state"] == "app-state"
    return back["code"]


@pytest.mark.parametrize("provider", ["google", "yandex"])
def test_app_flow_signs_in(client, services, fake, provider):
    verifier = new_verifier()
    code = run_provider_flow(fake, provider, verifier)
    resp = post(client, provider, code=code, redirect_uri=NATIVE_REDIRECT, code_verifier=verifier)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.headers["Cache-Control"] == "no-store"
    body = resp.get_json()
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    claims = services.tokens.verify_access_token(body["access_token"])
    assert claims is not None and claims["scope"] == "openid profile email"
    assert counts(services) == {"users": 1, "social_accounts": 1, "login_history": 1}
    token_call = [r for r in fake.requests_log if r["path"] == f"/{provider}/token"][-1]
    assert token_call["form"]["redirect_uri"] == NATIVE_REDIRECT
    assert token_call["form"]["code_verifier"] == verifier


def test_app_flow_without_pkce(client, fake):
    code = app_code(fake, "yandex")
    resp = post(client, "yandex", code=code, redirect_uri=APP_REDIRECT)
    assert resp.status_code == 200, resp.get_data(as_text=True)


def test_callback_uri_is_always_allowed(client, fake):
    callback = "http://localhost/api/v1/social/callback/google"
    code = app_code(fake, "google", redirect_uri=callback)
    assert post(client, "google", code=code, redirect_uri=callback).status_code == 200


@pytest.mark.parametrize(
    "redirect_uri",
    [
        "https://evil.example/oauth/callback",
        APP_REDIRECT + "/",
        "http://localhost/api/v1/social/callback/yandex",  # another provider's callback
    ],
)
def test_redirect_uri_must_be_configured(client, services, fake, redirect_uri):
    code = app_code(fake, "google", redirect_uri=redirect_uri)
    resp = post(client, "google", code=code, redirect_uri=redirect_uri)
    assert resp.status_code == 400
    assert resp.get_json()["error"] == "invalid_redirect_uri"
    assert not [r for r in fake.requests_log if r["path"].endswith("/token")]
    assert counts(services) == NOTHING


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"redirect_uri": APP_REDIRECT}, "code"),
        ({"code": "abc"}, "redirect_uri"),
        ({"code": "", "redirect_uri": APP_REDIRECT}, "code"),
        ({"code": 5, "redirect_uri": APP_REDIRECT}, "code"),
        ({"code": "abc", "redirect_uri": APP_REDIRECT, "code_verifier": "short"}, "code_verifier"),
        ({"code": "abc", "redirect_uri": APP_REDIRECT, "extra": "x"}, "extra"),
    ],
)
def test_invalid_body_is_422(client, fake, body, field):
    resp = client.post(LOGIN.format("google"), json=body)
    assert resp.status_code == 422
    payload = resp.get_json()
    assert set(payload) == {"error", "message", "details"}
    assert field in payload["details"]


def test_body_that_is_not_json_is_a_4xx(client, fake):
    resp = client.post(LOGIN.format("google"), data="code=abc", content_type="text/plain")
    assert 400 <= resp.status_code < 500
    assert resp.get_json()["error"]


def test_wrong_verifier_or_used_code_is_invalid_grant(client, services, fake):
    verifier = new_verifier()
    code = app_code(fake, "yandex", verifier=verifier)
    wrong = post(
        client, "yandex", code=code, redirect_uri=APP_REDIRECT, code_verifier=new_verifier()
    )
    assert wrong.status_code == 400 and wrong.get_json()["error"] == "invalid_grant"
    # The provider burnt the code on that attempt, as real providers do.
    again = post(client, "yandex", code=code, redirect_uri=APP_REDIRECT, code_verifier=verifier)
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"
    assert counts(services) == NOTHING


def test_nonce_is_checked_when_the_app_gives_one(client, services, fake):
    code = app_code(fake, "google", nonce="app-nonce-1")
    wrong = post(client, "google", code=code, redirect_uri=APP_REDIRECT, nonce="app-nonce-2")
    assert wrong.status_code == 400 and wrong.get_json()["error"] == "invalid_id_token"
    code = app_code(fake, "google", nonce="app-nonce-1")
    right = post(client, "google", code=code, redirect_uri=APP_REDIRECT, nonce="app-nonce-1")
    assert right.status_code == 200


@pytest.mark.parametrize(
    "fault", ["id_token_wrong_aud", "id_token_bad_signature", "id_token_wrong_iss"]
)
def test_id_token_is_verified_in_the_app_flow_too(client, services, fake, fault):
    fake.faults.add(fault)
    resp = post(client, "google", code=app_code(fake, "google"), redirect_uri=APP_REDIRECT)
    assert resp.status_code == 400 and resp.get_json()["error"] == "invalid_id_token"
    assert counts(services) == NOTHING


@pytest.mark.parametrize("fault", ["down", "token_500", "token_garbage", "userinfo_500"])
def test_provider_failure_is_502(client, services, fake, fault):
    fake.faults.add(f"yandex:{fault}")
    resp = post(client, "yandex", code=app_code(fake, "yandex"), redirect_uri=APP_REDIRECT)
    assert resp.status_code == 502 and resp.get_json()["error"] == "provider_error"
    assert counts(services) == NOTHING


def test_wrong_client_secret_is_a_provider_error_not_the_users(client, services, fake):
    fake.clients["yandex"] = (fake.clients["yandex"][0], "rotated-secret")
    resp = post(client, "yandex", code=app_code(fake, "yandex"), redirect_uri=APP_REDIRECT)
    assert resp.status_code == 502 and resp.get_json()["error"] == "provider_error"


def test_store_down_keeps_the_new_account_but_no_history(app: Flask, settings, fake):
    """The session cannot start: its history row is withdrawn; the new user and social account
    commit before the session starts and stay (valid without a session; the next try finds them).
    """
    dead_port = FakeProviders.dead_url().rsplit(":", 1)[1]
    store = RedisTokenStore.from_url(f"redis://127.0.0.1:{dead_port}/0")
    instance = create_app(settings, store=store)
    try:
        resp = post(
            instance.test_client(),
            "google",
            code=app_code(fake, "google"),
            redirect_uri=APP_REDIRECT,
        )
        assert resp.status_code == 503
        assert resp.get_json()["error"] == "temporarily_unavailable"
        assert counts(instance.extensions["oidc"]) == {
            "users": 1,
            "social_accounts": 1,
            "login_history": 0,
        }
    finally:
        instance.extensions["oidc"].db.dispose()
        store.redis.close()
