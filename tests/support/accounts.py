"""Helpers for the /api/v1 account tests: signing up and in, apps with throttling switched on."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from werkzeug.test import TestResponse

from oidc_server.app import create_app
from oidc_server.bootstrap import ensure_default_roles, ensure_first_party_client
from oidc_server.config import Settings
from oidc_server.models import LoginHistory, User
from oidc_server.tokens.memory_store import MemoryTokenStore
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.store import TokenStore

from ..conftest import PASSWORD, _clean_database

CHROME_ON_WINDOWS = (
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36"
)
SAFARI_ON_IPHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1"
)


def api_login(
    client: FlaskClient,
    login: str = "viewer@example.com",
    password: str = PASSWORD,
    *,
    ip: str = "127.0.0.1",
    user_agent: str = "pytest",
) -> TestResponse:
    """POST /api/v1/auth/login from the given address and user agent."""
    return client.post(
        "/api/v1/auth/login",
        json={"login": login, "password": password},
        environ_base={"REMOTE_ADDR": ip, "HTTP_USER_AGENT": user_agent},
    )


def signed_in(client: FlaskClient, login: str = "viewer@example.com", **kwargs: Any) -> Any:
    """The token response of a successful API login."""
    response = api_login(client, login, **kwargs)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json


def register(
    client: FlaskClient, login: str, password: str, *, ip: str = "127.0.0.1"
) -> TestResponse:
    return client.post(
        "/api/v1/auth/register",
        json={"login": login, "password": password},
        environ_base={"REMOTE_ADDR": ip},
    )


@contextmanager
def fresh_app(settings: Settings, store: TokenStore, **overrides: Any) -> Iterator[Flask]:
    """An app like the ``app`` fixture's, on an empty database, with ``overrides`` applied."""
    _clean_database(settings.resolved_database_url)
    app_settings = replace(settings, **overrides)
    app = create_app(app_settings, store=store)
    with app.extensions["oidc"].db.session() as session:
        ensure_default_roles(session)
        ensure_first_party_client(session, app_settings)
    try:
        yield app
    finally:
        app.extensions["oidc"].db.dispose()


def throttled_app(
    settings: Settings, store: TokenStore, **overrides: Any
) -> AbstractContextManager[Flask]:
    """A fresh app with rate limits and the login backoff on, and ``overrides`` applied."""
    return fresh_app(settings, store, ratelimit_enabled=True, **overrides)


def row_counts(services: Any) -> tuple[int, int]:
    """How many users and login-history entries exist."""
    with services.db.session() as session:
        users = session.scalar(select(func.count()).select_from(User))
        history = session.scalar(select(func.count()).select_from(LoginHistory))
    return int(users or 0), int(history or 0)


def live_session_count(store: TokenStore) -> int:
    """How many sessions the token store holds, for every user."""
    if isinstance(store, RedisTokenStore):
        return sum(1 for _ in store.redis.scan_iter(match=f"{store.prefix}:*:session"))
    assert isinstance(store, MemoryTokenStore)
    return sum(
        1
        for key in list(store._sessions._items)  # the test's own view into its own store
        if store._sessions.get(key) is not None
    )


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, now: float = 1_900_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
