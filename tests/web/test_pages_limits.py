"""The /login form applies the limits, backoff and history of POST /api/v1/auth/login."""

from __future__ import annotations

from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import select
from werkzeug.test import TestResponse

from oidc_server.accounts import create_user
from oidc_server.config import Settings
from oidc_server.models import LoginHistory
from oidc_server.tokens.store import TokenStore

from ..conftest import PASSWORD
from ..support.accounts import FakeClock, throttled_app
from ..support.op import hidden_fields
from ..test_observability import metric

GENEROUS = "1000 per minute"
WRONG = "wrong guess"
EMAIL = "viewer@example.com"


def add_viewer(app: Any) -> Any:
    svc = app.extensions["oidc"]
    with svc.db.session() as session:
        return create_user(session, svc.hasher, EMAIL, PASSWORD).id


def form_login(
    client: FlaskClient, password: str = PASSWORD, *, ip: str = "192.0.2.20"
) -> TestResponse:
    """Fetch /login for its CSRF token, then post the form from ``ip``."""
    environ = {"REMOTE_ADDR": ip, "HTTP_USER_AGENT": "pytest-browser"}
    page = client.get("/login", environ_base=environ)
    assert page.status_code == 200
    fields = hidden_fields(page.get_data(as_text=True))
    return client.post(
        "/login",
        data={**fields, "email": EMAIL, "password": password},
        environ_base=environ,
    )


def history(app: Any) -> list[tuple[str, bool, str | None]]:
    with app.extensions["oidc"].db.session() as session:
        rows = session.scalars(select(LoginHistory).order_by(LoginHistory.logged_in_at)).all()
        return [(row.method, row.success, row.session_id) for row in rows]


def test_the_form_gets_429_beyond_the_per_ip_login_limit(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(
        settings,
        token_store,
        ratelimit_login="2 per minute",
        ratelimit_login_per_account=GENEROUS,
        login_backoff_threshold=0,
    ) as app:
        add_viewer(app)
        client = app.test_client()
        assert form_login(client).status_code == 303
        assert form_login(client, WRONG).status_code == 401
        refused = form_login(client)
        # The limiter's JSON 429 becomes a page for a person (pages.py after_request).
        assert refused.status_code == 429
        assert refused.mimetype == "text/html"
        assert "Too many attempts" in refused.get_data(as_text=True)
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert "op_session=" not in refused.headers.get("Set-Cookie", "")
        # The bucket is the address's, and it is shared with the API login.
        assert form_login(client, ip="192.0.2.21").status_code == 303
        api = client.post(
            "/api/v1/auth/login",
            json={"login": EMAIL, "password": PASSWORD},
            environ_base={"REMOTE_ADDR": "192.0.2.20"},
        )
        assert api.status_code == 429


def test_failed_form_logins_per_account_are_limited_from_any_address(
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
        assert form_login(client, WRONG, ip="192.0.2.30").status_code == 401
        assert form_login(client, WRONG, ip="192.0.2.31").status_code == 401
        assert form_login(client, ip="192.0.2.32").status_code == 429


def test_repeated_wrong_passwords_make_even_the_right_one_wait(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(
        settings,
        token_store,
        ratelimit_login=GENEROUS,
        ratelimit_login_per_account=GENEROUS,
        login_backoff_threshold=3,
        login_backoff_base_delay=1,
        login_backoff_max_delay=8,
    ) as app:
        add_viewer(app)
        clock = FakeClock()
        app.extensions["login_backoff"].clock = clock
        client = app.test_client()
        failures = metric("oidc_login_failures_total", method="password")
        limited = metric("oidc_rate_limited_total", route="/login")
        for _ in range(3):
            assert form_login(client, WRONG).status_code == 401
        # Counted as the password grant and /api/v1/auth/login count theirs.
        assert metric("oidc_login_failures_total", method="password") == failures + 3
        rows_before = len(history(app))
        refused = form_login(client)
        assert metric("oidc_rate_limited_total", route="/login") == limited + 1
        # The page's own answer: the form again, with the wait, and no session cookie.
        assert refused.status_code == 429
        assert refused.mimetype == "text/html"
        assert refused.headers["Retry-After"] == "1"
        assert "Try again in 1 seconds" in refused.get_data(as_text=True)
        assert "op_session=" not in refused.headers.get("Set-Cookie", "")
        # The password was not checked: the refused attempt is not in the history.
        assert len(history(app)) == rows_before
        clock.advance(1)
        assert form_login(client).status_code == 303


def test_form_sign_ins_write_login_history(settings: Settings, token_store: TokenStore) -> None:
    with throttled_app(
        settings, token_store, ratelimit_login=GENEROUS, ratelimit_login_per_account=GENEROUS
    ) as app:
        add_viewer(app)
        client = app.test_client()
        assert form_login(client, WRONG).status_code == 401
        signed_in = form_login(client)
        assert signed_in.status_code == 303
        rows = history(app)
        assert [(method, success) for method, success, _ in rows] == [
            ("password", False),
            ("password", True),
        ]
        assert rows[0][2] is None
        # The successful row names the browser's session, the one its cookie proves.
        cookie = client.get_cookie("op_session")
        assert cookie is not None
        assert rows[1][2] == cookie.value.split(".", 1)[0]
        assert token_store.get_session(rows[1][2]) is not None
