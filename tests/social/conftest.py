"""Fixtures of the social sign-in tests: stand-in Google and Yandex, and the app pointed at them.

The app is configured only through environment variables (``Settings.from_env``), exactly as an
operator would configure it; the fields the shared ``settings`` fixture sets for test isolation
(database, Redis, keys, cheap argon2) are carried over as overrides.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from flask.testing import FlaskClient
from sqlalchemy import func, select

from oidc_server.config import Settings
from oidc_server.models import LoginHistory, SocialAccount, User

from ..support.fake_providers import FakeProviders

#: Redirect URIs an operator allowed for apps that run the provider's flow themselves.
APP_REDIRECT = "https://app.cinema.example/oauth/callback"
NATIVE_REDIRECT = "com.cinema.app:/oauth2redirect"
#: The fields the shared fixture sets for isolation; everything else comes from the env.
ISOLATION_FIELDS = (
    "app_env",
    "database_url",
    "redis_url",
    "oidc_issuer",
    "oidc_keys_dir",
    "instance_dir",
    "secret_key",
    "password_hash_time_cost",
    "password_hash_memory_cost",
    "password_hash_parallelism",
    "ratelimit_enabled",
)


@pytest.fixture
def fake() -> Iterator[FakeProviders]:
    with FakeProviders() as providers:
        yield providers


def provider_env(fake: FakeProviders) -> dict[str, str]:
    """The environment an operator sets to enable both providers."""
    return {
        "GOOGLE_CLIENT_ID": fake.clients["google"][0],
        "GOOGLE_CLIENT_SECRET": fake.clients["google"][1],
        "GOOGLE_METADATA_URL": fake.google_metadata_url,
        "YANDEX_CLIENT_ID": fake.clients["yandex"][0],
        "YANDEX_CLIENT_SECRET": fake.clients["yandex"][1],
        "YANDEX_AUTHORIZE_URL": fake.yandex_authorize_url,
        "YANDEX_TOKEN_URL": fake.yandex_token_url,
        "YANDEX_USERINFO_URL": fake.yandex_userinfo_url,
        "SOCIAL_REDIRECT_URIS": f"{APP_REDIRECT} {NATIVE_REDIRECT}",
    }


def settings_from_env(base: Settings, env: dict[str, str]) -> Settings:
    return Settings.from_env(env, **{name: getattr(base, name) for name in ISOLATION_FIELDS})


@pytest.fixture
def settings(settings: Settings, fake: FakeProviders) -> Settings:
    """The shared settings, with the providers enabled through the environment."""
    return settings_from_env(settings, provider_env(fake))


# Flow helpers -------------------------------------------------------------------------------
def start(client: FlaskClient, provider: str) -> str:
    """GET our login endpoint; returns the provider authorization URL it redirects to."""
    resp = client.get(f"/api/v1/social/login/{provider}")
    assert resp.status_code == 302, resp.get_data(as_text=True)
    return resp.headers["Location"]


def authorize(url: str) -> str:
    """What the browser does at the provider: returns the URL it is redirected back to."""
    resp = requests.get(url, allow_redirects=False, timeout=5)
    assert resp.status_code == 302, resp.text
    return resp.headers["Location"]


def local(url: str) -> str:
    """Path and query of a URL on our server, for the Flask test client."""
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == "http://localhost", url
    return f"{parts.path}?{parts.query}"


def callback_url(client: FlaskClient, provider: str) -> str:
    return local(authorize(start(client, provider)))


def browser_sign_in(client: FlaskClient, provider: str) -> Any:
    """The whole browser flow: our 302, the provider's approval, our callback."""
    return client.get(callback_url(client, provider))


def query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def s256(verifier: str) -> str:
    """RFC 7636 §4.2 S256 code challenge."""
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def new_verifier() -> str:
    return secrets.token_urlsafe(48)


def app_code(
    fake: FakeProviders,
    provider: str,
    *,
    redirect_uri: str = APP_REDIRECT,
    verifier: str | None = None,
    nonce: str | None = None,
) -> str:
    """A code as an app gets it after running the provider's flow itself."""
    challenge = s256(verifier) if verifier else None
    return fake.issue_code(
        provider,
        redirect_uri=redirect_uri,
        code_challenge=challenge,
        code_challenge_method="S256" if challenge else None,
        nonce=nonce,
    )


# Database helpers ---------------------------------------------------------------------------
def counts(services: Any) -> dict[str, int]:
    """Rows of the tables a sign-in writes: nothing may be half-created."""
    with services.db.session() as session:
        return {
            model.__tablename__: session.scalar(select(func.count()).select_from(model)) or 0
            for model in (User, SocialAccount, LoginHistory)
        }


NOTHING = {"users": 0, "social_accounts": 0, "login_history": 0}
