"""Rate limits (429 with Retry-After) and the per-account failed-login backoff."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask.testing import FlaskClient

from oidc_server.accounts import create_user
from oidc_server.config import Settings
from oidc_server.login_backoff import BackoffPolicy
from oidc_server.tokens.store import TokenStore

from ..conftest import PASSWORD, bearer, make_client, password_login
from ..support.accounts import FakeClock, api_login, register, row_counts, throttled_app

GENEROUS = "1000 per minute"
NEW_PASSWORD = "usher with a torch"


def add_viewer(app: Any, login: str = "viewer@example.com") -> None:
    svc = app.extensions["oidc"]
    with svc.db.session() as session:
        create_user(session, svc.hasher, login, PASSWORD)


def assert_rate_limited(response: Any) -> int:
    """A 429 in the /api/v1 error shape with a usable Retry-After; returns the wait."""
    assert response.status_code == 429, response.get_data(as_text=True)
    assert response.json["error"] == "too_many_requests"
    assert response.json["message"]
    retry_after = int(response.headers["Retry-After"])
    assert retry_after >= 1
    return retry_after


# Limits -----------------------------------------------------------------------------------


def test_logins_beyond_the_per_ip_limit_get_429_with_retry_after(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(settings, token_store, ratelimit_login="2 per minute") as app:
        add_viewer(app)
        client = app.test_client()
        assert api_login(client, ip="192.0.2.10").status_code == 200
        assert api_login(client, ip="192.0.2.10", password="wrong guess").status_code == 401
        refused = api_login(client, ip="192.0.2.10")
        assert 1 <= assert_rate_limited(refused) <= 60
        assert refused.headers["X-RateLimit-Limit"] == "2"
        assert refused.headers["X-RateLimit-Remaining"] == "0"
        assert int(refused.headers["X-RateLimit-Reset"]) >= int(time.time())
        assert api_login(client, ip="192.0.2.11").status_code == 200


def test_the_password_grant_shares_the_login_limit(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(settings, token_store, ratelimit_login="2 per minute") as app:
        add_viewer(app)
        client = app.test_client()
        assert api_login(client).status_code == 200
        assert password_login(client).status_code == 200
        assert_rate_limited(api_login(client))
        assert_rate_limited(password_login(client))


def test_failed_logins_per_account_are_limited_from_any_address(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(
        settings,
        token_store,
        ratelimit_login=GENEROUS,
        ratelimit_login_per_account="2 per hour",
        login_backoff_threshold=0,
    ) as app:
        add_viewer(app)
        client = app.test_client()
        # Successful sign-ins never use the allowance up.
        for _ in range(3):
            assert api_login(client).status_code == 200
        assert api_login(client, password="guess 1", ip="192.0.2.1").status_code == 401
        assert api_login(client, password="guess 2", ip="192.0.2.2").status_code == 401
        assert_rate_limited(api_login(client, password="guess 3", ip="192.0.2.3"))
        # The token endpoint's password grant counts into the same allowance.
        assert_rate_limited(password_login(client, password="guess 4"))
        # The login is what is limited, in any spelling, not the addresses.
        assert_rate_limited(api_login(client, "VIEWER@example.com", ip="192.0.2.4"))
        assert api_login(client, "someone.else@example.com", ip="192.0.2.1").status_code == 401


def test_registrations_per_ip_are_limited(settings: Settings, token_store: TokenStore) -> None:
    with throttled_app(settings, token_store, ratelimit_register="2 per minute") as app:
        client = app.test_client()
        assert register(client, "one@example.com", NEW_PASSWORD).status_code == 201
        assert register(client, "two@example.com", NEW_PASSWORD).status_code == 201
        assert_rate_limited(register(client, "three@example.com", NEW_PASSWORD))
        assert (
            register(client, "three@example.com", NEW_PASSWORD, ip="192.0.2.50").status_code == 201
        )


def test_taken_login_answers_are_limited_harder(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(
        settings, token_store, ratelimit_register=GENEROUS, ratelimit_register_conflict="1 per hour"
    ) as app:
        add_viewer(app)
        client = app.test_client()
        assert register(client, "viewer@example.com", NEW_PASSWORD).status_code == 409
        # After the allowance of "taken" answers, this address may not probe any further.
        assert_rate_limited(register(client, "Viewer@example.com", NEW_PASSWORD))
        assert_rate_limited(register(client, "fresh@example.com", NEW_PASSWORD))
        assert row_counts(app.extensions["oidc"])[0] == 1
        other = register(client, "fresh@example.com", NEW_PASSWORD, ip="192.0.2.60")
        assert other.status_code == 201


def test_refreshes_per_ip_are_limited_on_both_doors(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(settings, token_store, ratelimit_refresh="2 per minute") as app:
        add_viewer(app)
        client = app.test_client()
        tokens = api_login(client).json
        first = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
        assert first.status_code == 200
        second = client.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "client_id": "cinema-app",
                "refresh_token": first.json["refresh_token"],
            },
        )
        assert second.status_code == 200
        assert_rate_limited(
            client.post(
                "/api/v1/auth/refresh", json={"refresh_token": second.json["refresh_token"]}
            )
        )


def test_the_default_limit_covers_other_routes_but_not_probes(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(settings, token_store, ratelimit_default="3 per minute") as app:
        add_viewer(app)
        client = app.test_client()
        token = api_login(client).json["access_token"]
        assert client.get("/api/v1/users/me", headers=bearer(token)).status_code == 200
        assert client.get("/api/v1/users/me", headers=bearer(token)).status_code == 200
        assert client.get("/api/v1/users/me", headers=bearer(token)).status_code == 200
        assert_rate_limited(client.get("/api/v1/users/me", headers=bearer(token)))
        for _ in range(5):
            assert client.get("/health/live").status_code == 200
            assert client.get("/.well-known/jwks.json").status_code == 200


def test_the_token_endpoint_has_its_own_limit(settings: Settings, token_store: TokenStore) -> None:
    with throttled_app(settings, token_store, ratelimit_token="2 per minute") as app:
        machine = make_client(app.extensions["oidc"])
        client = app.test_client()
        form = {"grant_type": "client_credentials"}
        assert client.post("/oauth/token", data=form, headers=machine.basic).status_code == 200
        assert client.post("/oauth/token", data=form, headers=machine.basic).status_code == 200
        assert_rate_limited(client.post("/oauth/token", data=form, headers=machine.basic))


def test_allowed_responses_describe_the_limit_without_retry_after(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(settings, token_store, ratelimit_login="5 per minute") as app:
        add_viewer(app)
        client = app.test_client()
        first, second = api_login(client), api_login(client)
        assert first.headers["X-RateLimit-Limit"] == "5"
        assert first.headers["X-RateLimit-Remaining"] == "4"
        assert second.headers["X-RateLimit-Remaining"] == "3"
        assert "Retry-After" not in first.headers


def test_rate_limits_and_backoff_are_off_when_disabled(client: FlaskClient, services: Any) -> None:
    assert services.settings.ratelimit_enabled is False
    with services.db.session() as session:
        create_user(session, services.hasher, "viewer@example.com", PASSWORD)
    for _ in range(25):
        response = api_login(client, password="wrong guess")
        assert response.status_code == 401
        assert "X-RateLimit-Limit" not in response.headers
    assert api_login(client).status_code == 200


def test_limits_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "RATELIMIT_ENABLED": "false",
            "RATELIMIT_LOGIN": "3 per minute",
            "RATELIMIT_LOGIN_PER_ACCOUNT": "7 per hour",
            "RATELIMIT_REGISTER_CONFLICT": "1 per day",
            "RATELIMIT_CHANGE_PASSWORD": "4 per hour",
            "LOGIN_BACKOFF_THRESHOLD": "9",
            "LOGIN_BACKOFF_MAX_DELAY": "60",
            "SECRET_KEY": "k" * 40,
        }
    )
    assert settings.ratelimit_enabled is False
    assert settings.ratelimit_login == "3 per minute"
    assert settings.ratelimit_login_per_account == "7 per hour"
    assert settings.ratelimit_register_conflict == "1 per day"
    assert settings.ratelimit_change_password == "4 per hour"
    assert settings.login_backoff_threshold == 9
    assert settings.login_backoff_max_delay == 60


# The failed-login backoff -------------------------------------------------------------------


def backoff_app(settings: Settings, token_store: TokenStore) -> Any:
    """Rate limits out of the way; backoff after 3 failures, 1 s doubling up to 8 s."""
    return throttled_app(
        settings,
        token_store,
        ratelimit_login=GENEROUS,
        ratelimit_login_per_account=GENEROUS,
        ratelimit_change_password=GENEROUS,
        login_backoff_threshold=3,
        login_backoff_base_delay=1,
        login_backoff_max_delay=8,
    )


def with_clock(app: Any) -> FakeClock:
    clock = FakeClock()
    app.extensions["login_backoff"].clock = clock
    return clock


def test_after_repeated_failures_even_the_right_password_must_wait(
    settings: Settings, token_store: TokenStore
) -> None:
    with backoff_app(settings, token_store) as app:
        add_viewer(app)
        with_clock(app)
        client = app.test_client()
        for _ in range(3):
            assert api_login(client, password="wrong guess").status_code == 401
        history_before = row_counts(app.extensions["oidc"])[1]
        refused = api_login(client)
        assert assert_rate_limited(refused) == 1
        assert refused.json["message"] == (
            "too many failed sign-in attempts for this account; retry later"
        )
        # The password was not even checked: no history entry for the refused attempt.
        assert row_counts(app.extensions["oidc"])[1] == history_before


def test_the_wait_doubles_with_each_failure_and_success_ends_it(
    settings: Settings, token_store: TokenStore
) -> None:
    with backoff_app(settings, token_store) as app:
        add_viewer(app)
        clock = with_clock(app)
        client = app.test_client()
        for _ in range(3):
            api_login(client, password="wrong guess")
        waits = []
        for _ in range(4):
            wait = assert_rate_limited(api_login(client, password="wrong guess"))
            waits.append(wait)
            clock.advance(wait)
            assert api_login(client, password="wrong guess").status_code == 401
        assert waits == [1, 2, 4, 8]
        assert assert_rate_limited(api_login(client)) == 8  # capped at the maximum
        clock.advance(8)
        assert api_login(client).status_code == 200
        # Success forgets every failure: the next mistake is answered, not throttled.
        assert api_login(client, password="wrong guess").status_code == 401
        assert api_login(client, password="wrong guess").status_code == 401


def test_unknown_logins_back_off_exactly_like_real_ones(
    settings: Settings, token_store: TokenStore
) -> None:
    with backoff_app(settings, token_store) as app:
        add_viewer(app)
        with_clock(app)
        client = app.test_client()
        known = [api_login(client, password="wrong guess") for _ in range(5)]
        unknown = [api_login(client, "ghost@example.com", "wrong guess") for _ in range(5)]
        assert [r.status_code for r in known] == [401, 401, 401, 429, 429]
        assert [(r.status_code, r.json, r.headers.get("Retry-After")) for r in unknown] == [
            (r.status_code, r.json, r.headers.get("Retry-After")) for r in known
        ]


def test_the_token_endpoint_shares_the_backoff(settings: Settings, token_store: TokenStore) -> None:
    with backoff_app(settings, token_store) as app:
        add_viewer(app)
        with_clock(app)
        client = app.test_client()
        for _ in range(2):
            assert api_login(client, password="wrong guess").status_code == 401
        assert password_login(client, password="wrong guess").status_code == 400
        refused = password_login(client)
        assert assert_rate_limited(refused) == 1
        assert_rate_limited(api_login(client))


def test_other_accounts_are_not_slowed_down(settings: Settings, token_store: TokenStore) -> None:
    with backoff_app(settings, token_store) as app:
        add_viewer(app)
        add_viewer(app, "neighbour@example.com")
        with_clock(app)
        client = app.test_client()
        for _ in range(4):
            api_login(client, password="wrong guess")
        assert_rate_limited(api_login(client))
        assert api_login(client, "neighbour@example.com").status_code == 200


def test_wrong_current_passwords_in_a_password_change_count_too(
    settings: Settings, token_store: TokenStore
) -> None:
    with backoff_app(settings, token_store) as app:
        add_viewer(app)
        with_clock(app)
        client = app.test_client()
        token = api_login(client).json["access_token"]
        body = {"new_password1": NEW_PASSWORD, "new_password2": NEW_PASSWORD}
        for _ in range(3):
            wrong = client.post(
                "/api/v1/users/me/change-password",
                json={"old_password": "wrong guess", **body},
                headers=bearer(token),
            )
            assert wrong.status_code == 403
        refused = client.post(
            "/api/v1/users/me/change-password",
            json={"old_password": PASSWORD, **body},
            headers=bearer(token),
        )
        assert assert_rate_limited(refused) == 1
        assert_rate_limited(api_login(client))


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0), (4, 0), (5, 1), (6, 2), (7, 4), (12, 128), (13, 256), (14, 300), (10_000, 300)],
)
def test_the_backoff_delay_grows_exponentially_to_its_cap(failures: int, delay: int) -> None:
    policy = BackoffPolicy(threshold=5, base_delay=1, max_delay=300, window=900)
    assert policy.delay_after(failures) == delay


def test_a_threshold_of_zero_turns_the_backoff_off() -> None:
    assert BackoffPolicy(threshold=0).delay_after(1_000) == 0
