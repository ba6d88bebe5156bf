"""Abuse resistance: credential stuffing both ways, and requests too big, too deep or too slow.

Guessing is slowed per account (the backoff and ``RATELIMIT_LOGIN_PER_ACCOUNT``, whatever
the address) and per address (``RATELIMIT_LOGIN``, whatever the account), with every limit
at its default. Oversized bodies and passwords are refused before anything reads or hashes
them. Oversized request heads and slow clients are refused by the production server
(tests/test_serve.py); deploy/nginx.conf does the same in front of it.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from oidc_server.accounts import create_user
from oidc_server.config import Settings
from oidc_server.passwords_policy import MAX_LENGTH as PASSWORD_MAX_LENGTH
from oidc_server.security import PasswordHasher
from oidc_server.serve import HEAD_TIMEOUT, MAX_HEAD_BYTES
from oidc_server.tokens.store import TokenStore

from .conftest import PASSWORD, bearer, password_login
from .support.accounts import FakeClock, api_login, throttled_app

ROOT = Path(__file__).resolve().parent.parent


def add_user(app: Flask, login: str = "viewer@example.com") -> None:
    svc = app.extensions["oidc"]
    with svc.db.session() as session:
        create_user(session, svc.hasher, login, PASSWORD)


def token_login(client: FlaskClient, login: str, password: str, ip: str) -> TestResponse:
    """The password grant of /oauth/token: the second door, sharing the first one's limits."""
    return client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "client_id": "cinema-app",
            "username": login,
            "password": password,
        },
        environ_base={"REMOTE_ADDR": ip},
    )


def attempt(client: FlaskClient, n: int, login: str, password: str, ip: str) -> TestResponse:
    """Attempt ``n``: odd ones through /oauth/token, even ones through /api/v1/auth/login."""
    if n % 2:
        return token_login(client, login, password, ip)
    return api_login(client, login, password, ip=ip)


def is_refused_guess(response: TestResponse) -> bool:
    """A wrong password, as either door answers it (401 here, 400 invalid_grant there)."""
    return response.status_code in (400, 401)


def backoff_clock(app: Flask) -> FakeClock:
    clock = FakeClock()
    app.extensions["login_backoff"].clock = clock
    return clock


# Credential stuffing ------------------------------------------------------------------------


def test_many_addresses_guessing_one_account_are_slowed_at_once(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(settings, token_store) as app:  # every limit at its default
        add_user(app)
        clock = backoff_clock(app)
        client = app.test_client()
        answers = [
            attempt(client, n, "viewer@example.com", f"guess {n}", ip=f"203.0.113.{n + 1}")
            for n in range(9)
        ]
        threshold = settings.login_backoff_threshold
        assert all(is_refused_guess(r) for r in answers[:threshold])
        # From then on no password is even checked, from any of the (all distinct) addresses.
        for refused in answers[threshold:]:
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) >= 1
        # A slowdown, not a lockout: once the wait is served, the owner signs in.
        clock.advance(int(answers[-1].headers["Retry-After"]))
        assert api_login(client, ip="198.51.100.7").status_code == 200


def test_a_patient_guesser_still_meets_the_hourly_cap_per_account(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(settings, token_store) as app:
        add_user(app)
        clock = backoff_clock(app)
        client = app.test_client()
        guesses, waits = 0, 0
        for n in range(80):
            response = attempt(client, n, "viewer@example.com", f"guess {n}", f"203.0.113.{n + 1}")
            if is_refused_guess(response):
                guesses += 1
                continue
            assert response.status_code == 429
            if response.json["message"].startswith("too many failed sign-in attempts"):
                waits += 1  # the backoff: the guesser waits as told, then goes on
                clock.advance(int(response.headers["Retry-After"]))
                continue
            break  # the per-account limit, counted in real time: no waiting it out here
        else:
            pytest.fail("80 guesses at one account were never capped")
        assert guesses == 20  # RATELIMIT_LOGIN_PER_ACCOUNT's default, 20 per hour
        assert waits >= guesses - settings.login_backoff_threshold
        assert int(response.headers["Retry-After"]) > 60


def test_one_address_guessing_many_accounts_is_slowed(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(settings, token_store) as app:  # RATELIMIT_LOGIN: 10 per minute
        add_user(app)
        client = app.test_client()
        logins = ["viewer@example.com"] + [f"user{n}@example.com" for n in range(10)]
        answers = [
            attempt(client, n, login, "Winter2025!", "203.0.113.66")
            for n, login in enumerate(logins)
        ]
        assert all(is_refused_guess(r) for r in answers[:10])
        assert answers[10].status_code == 429
        assert int(answers[10].headers["Retry-After"]) >= 1
        # Per address: another one is still answered, and no account was slowed down.
        assert (
            api_login(client, "user3@example.com", "Winter2025!", ip="203.0.113.67").status_code
            == 401
        )
        assert api_login(client, ip="203.0.113.68").status_code == 200


def test_a_forged_x_forwarded_for_does_not_escape_the_per_address_limit(
    settings: Settings, token_store: TokenStore
) -> None:
    def run(trust_proxy: bool, forwarded: Callable[[int], str]) -> list[int]:
        with throttled_app(
            settings, token_store, ratelimit_login="3 per minute", trust_proxy_headers=trust_proxy
        ) as app:
            client = app.test_client()
            return [
                client.post(
                    "/api/v1/auth/login",
                    json={"login": f"user{n}@example.com", "password": "Winter2025!"},
                    headers={"X-Forwarded-For": forwarded(n)},
                    environ_base={"REMOTE_ADDR": "10.0.0.2"},
                ).status_code
                for n in range(4)
            ]

    # Straight to the app: the header is the client's own text and is ignored.
    assert run(False, lambda n: f"198.51.100.{n}") == [401, 401, 401, 429]
    # Behind one trusted proxy: only the address the proxy appended counts.
    assert run(True, lambda n: f"198.51.100.{n}, 203.0.113.9") == [401, 401, 401, 429]


def test_wrong_passwords_at_the_erase_endpoint_count_into_the_login_backoff(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(settings, token_store, login_backoff_threshold=2) as app:
        add_user(app)
        clock = backoff_clock(app)
        client = app.test_client()
        token = api_login(client).json["access_token"]

        def erase(password: str) -> TestResponse:
            return client.delete(
                "/api/v1/users/me", json={"password": password}, headers=bearer(token)
            )

        assert [erase("wrong guess").status_code for _ in range(2)] == [403, 403]
        refused = erase(PASSWORD)  # a stolen token cannot be used to guess the password fast
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert api_login(client).status_code == 429  # the same counter as sign-in's
        clock.advance(int(refused.headers["Retry-After"]))
        assert erase(PASSWORD).status_code == 204


# Oversized and deep bodies, long passwords --------------------------------------------------


class CountedBody(io.RawIOBase):
    """A 50 MiB request body that counts attempts to read it."""

    SIZE = 50 * 1024 * 1024

    def __init__(self) -> None:
        self.reads = 0
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.position, io.SEEK_END: self.SIZE}[whence]
        self.position = base + offset
        return self.position

    def readinto(self, buffer: Any) -> int:
        self.reads += 1
        size = min(len(buffer), self.SIZE - self.position)
        buffer[:size] = b"x" * size
        self.position += size
        return size


@pytest.mark.parametrize(
    ("method", "path", "content_type"),
    [
        ("POST", "/api/v1/auth/login", "application/json"),
        ("POST", "/api/v1/auth/register", "application/json"),
        ("DELETE", "/api/v1/users/me", "application/json"),
        ("POST", "/oauth/token", "application/x-www-form-urlencoded"),
        ("POST", "/oauth/introspect", "application/x-www-form-urlencoded"),
    ],
)
def test_an_oversized_body_is_refused_unread(
    settings: Settings, token_store: TokenStore, method: str, path: str, content_type: str
) -> None:
    with throttled_app(settings, token_store) as app:
        body = CountedBody()
        response = app.test_client().open(
            path, method=method, input_stream=body, content_type=content_type
        )
        assert response.status_code == 413
        assert response.json["error"] == "request_entity_too_large"
        assert body.reads == 0


def test_deeply_nested_json_to_the_erase_endpoint_is_a_400(client: FlaskClient, user: Any) -> None:
    token = password_login(client).json["access_token"]
    response = client.delete(
        "/api/v1/users/me",
        data="[" * 20_000 + "]" * 20_000,  # within the body limit
        content_type="application/json",
        headers=bearer(token),
    )
    assert response.status_code == 400 and response.is_json


class CountingHasher(PasswordHasher):
    """argon2id as configured, counting every hash and verification."""

    calls = 0

    def hash(self, password: str) -> str:
        self.calls += 1
        return super().hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        self.calls += 1
        return super().verify(stored_hash, password)


def test_passwords_are_bounded_before_any_hashing(
    client: FlaskClient, services: Any, user: Any
) -> None:
    token = password_login(client).json["access_token"]
    hasher = CountingHasher(1, 1024, 1)
    services.hasher = hasher
    too_long = "p" * (PASSWORD_MAX_LENGTH + 1)
    refused = {
        "login": api_login(client, password=too_long),
        "register": client.post(
            "/api/v1/auth/register", json={"login": "new@example.com", "password": too_long}
        ),
        "password grant": password_login(client, password=too_long),
        "change password": client.post(
            "/api/v1/users/me/change-password",
            json={
                "old_password": too_long,
                "new_password1": "a b c d e f",
                "new_password2": "a b c d e f",
            },
            headers=bearer(token),
        ),
        "erase": client.delete(
            "/api/v1/users/me", json={"password": too_long}, headers=bearer(token)
        ),
    }
    assert {name: r.status_code for name, r in refused.items()} == {
        "login": 422,
        "register": 422,
        "password grant": 400,
        "change password": 422,
        "erase": 422,
    }
    assert hasher.calls == 0
    # The longest allowed password is hashed like any other: the count above could move.
    assert api_login(client, password="p" * PASSWORD_MAX_LENGTH).status_code == 401
    assert hasher.calls == 1


# nginx in front -----------------------------------------------------------------------------


def nginx_directive(name: str) -> list[str]:
    text = (ROOT / "deploy" / "nginx.conf").read_text()
    found = re.findall(rf"^\s*{name}\s+([^;]+);", text, re.MULTILINE)
    assert len(found) == 1, f"{name} should be set once in deploy/nginx.conf"
    return found[0].split()


def seconds(value: str) -> int:
    return int(value.removesuffix("s"))


def size(value: str) -> int:
    units = {"k": 1024, "m": 1024 * 1024}
    return int(value[:-1]) * units[value[-1]] if value[-1] in units else int(value)


def test_nginx_cuts_off_slow_and_oversized_clients_before_the_app() -> None:
    # No slower than the server's own deadlines (HEAD_TIMEOUT, WEB_TIMEOUT's default 30 s).
    assert seconds(nginx_directive("client_header_timeout")[0]) <= HEAD_TIMEOUT
    assert seconds(nginx_directive("client_body_timeout")[0]) <= 10
    assert seconds(nginx_directive("send_timeout")[0]) <= 30
    count, buffer = nginx_directive("large_client_header_buffers")
    assert int(count) * size(buffer) <= MAX_HEAD_BYTES  # never more than the server takes
    # Bodies the app refuses with its own JSON 413 still reach it, nothing much bigger does.
    body_limit = size(nginx_directive("client_max_body_size")[0])
    assert Settings().max_content_length < body_limit <= 1024 * 1024
