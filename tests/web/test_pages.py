"""The sign-in pages: headers, stylesheet, Google/Yandex returning to the authorization, CLI."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from flask.testing import FlaskClient

from oidc_server.config import Settings

from ..social.conftest import provider_env, settings_from_env
from ..support.cli import run_cli
from ..support.fake_providers import FakeProviders
from ..support.op import authorize, authorize_params, follow, make_rp, pkce_pair, query_of, redeem


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    with FakeProviders() as providers:
        yield providers


@pytest.fixture
def settings(settings: Settings, fake: FakeProviders) -> Settings:
    return settings_from_env(settings, provider_env(fake))


@pytest.mark.parametrize("path", ["/login", "/logout", "/oauth/authorize?client_id=x"])
def test_every_page_forbids_framing_and_caching(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.mimetype == "text/html"
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    assert response.headers["X-Frame-Options"] == "DENY"
    assert "no-store" in response.headers["Cache-Control"]


def test_the_login_page_works_without_javascript_and_labels_its_fields(client: FlaskClient) -> None:
    response = client.get("/login")
    page = response.get_data(as_text=True)
    assert "<script" not in page
    assert '<label for="email">' in page and '<label for="password">' in page
    assert 'name="csrf_token"' in page and 'name="viewport"' in page
    cookie = response.headers["Set-Cookie"]
    assert "op_csrf=" in cookie and "HttpOnly" in cookie and "SameSite=Lax" in cookie
    assert "Continue with Google" in page and "Continue with Yandex" in page
    css = client.get("/static/op.css")
    assert css.status_code == 200 and "max-width" in css.get_data(as_text=True)
    css.close()


def test_the_session_cookie_is_httponly_lax_and_secure_on_https(
    settings: Settings, token_store: Any, user: Any
) -> None:
    from dataclasses import replace

    from oidc_server.app import create_app

    from ..conftest import PASSWORD
    from ..support.op import hidden_fields

    base = "https://id.cinema.example"
    app = create_app(replace(settings, oidc_issuer=base), store=token_store)
    browser = app.test_client()
    login_page = browser.get("/login", base_url=base)
    fields = hidden_fields(login_page.get_data(as_text=True))
    data = {**fields, "email": "viewer@example.com", "password": PASSWORD}
    response = browser.post("/login", data=data, base_url=base)
    cookie = next(c for c in response.headers.getlist("Set-Cookie") if c.startswith("op_session="))
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie
    app.extensions["oidc"].db.dispose()


@pytest.mark.parametrize("provider", ["google", "yandex"])
def test_continue_with_a_provider_returns_to_the_pending_authorization(
    client: FlaskClient, services: Any, fake: FakeProviders, provider: str
) -> None:
    rp = make_rp(services, first_party=True)
    verifier, challenge = pkce_pair()
    params = authorize_params(rp, challenge)
    login_page = follow(client, authorize(client, params))
    href = next(
        line.split('href="')[1].split('"')[0].replace("&amp;", "&")
        for line in login_page.get_data(as_text=True).splitlines()
        if f"/login/social/{provider}" in line
    )
    to_provider = client.get(href)
    assert to_provider.status_code == 302
    back = requests.get(to_provider.headers["Location"], allow_redirects=False, timeout=5)
    parts = urlsplit(back.headers["Location"])
    assert parts.path == f"/login/social/{provider}/callback"
    signed_in = client.get(f"{parts.path}?{parts.query}")
    assert signed_in.status_code == 303
    answer = follow(client, signed_in)
    query = query_of(answer.headers["Location"])
    assert query["state"] == params["state"]
    tokens = redeem(client, rp, query["code"], verifier).json
    sessions = client.get(
        "/api/v1/users/me/sessions", headers={"Authorization": f"Bearer {tokens['access_token']}"}
    ).json
    assert [s["auth_method"] for s in sessions] == [provider]


def test_a_forged_provider_callback_is_refused(client: FlaskClient) -> None:
    response = client.get("/login/social/google/callback?code=x&state=forged")
    assert response.status_code == 400 and "Sign-in expired" in response.get_data(as_text=True)
    assert client.get("/login/social/myspace").status_code == 404


def test_login_next_never_leaves_the_server(client: FlaskClient, services: Any, user: Any) -> None:
    from ..support.op import submit_login

    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example"):
        page = client.get("/login", query_string={"next": target})
        response = submit_login(client, page)
        assert response.headers["Location"] == "/signed-in"


def test_clients_create_registers_a_web_app_and_a_tv_app(settings: Settings, app: Any) -> None:
    web = run_cli(
        settings,
        "clients",
        "create",
        "--name",
        "Partner web",
        "--grant-type",
        "authorization_code",
        "--grant-type",
        "refresh_token",
        "--redirect-uri",
        "https://partner.example/cb",
        "--redirect-uri",
        "https://partner.example/cb2",
        "--post-logout-redirect-uri",
        "https://partner.example/",
        "--scope",
        "openid profile email",
        "--json",
    )
    assert web.returncode == 0, web.stderr
    tv = run_cli(
        settings,
        "clients",
        "create",
        "--name",
        "Cinema TV",
        "--grant-type",
        "urn:ietf:params:oauth:grant-type:device_code",
        "--public",
        "--first-party",
        "--scope",
        "openid profile",
        "--json",
    )
    assert tv.returncode == 0, tv.stderr
    assert json.loads(tv.stdout)["client_secret"] is None
    from oidc_server.clients import find_client

    with app.extensions["oidc"].db.session() as session:
        row = find_client(session, settings.secret_key, json.loads(web.stdout)["client_id"])
    assert row is not None and row.redirect_uris == (
        "https://partner.example/cb",
        "https://partner.example/cb2",
    )
    assert row.post_logout_redirect_uris == ("https://partner.example/",) and not row.is_first_party
    bad = run_cli(
        settings,
        "clients",
        "create",
        "--name",
        "x",
        "--grant-type",
        "authorization_code",
        "--redirect-uri",
        "http://evil.example/cb",
    )
    assert bad.returncode != 0 and "loopback" in bad.stderr
    missing = run_cli(
        settings, "clients", "create", "--name", "x", "--grant-type", "authorization_code"
    )
    assert missing.returncode != 0 and "redirect-uri" in missing.stderr
