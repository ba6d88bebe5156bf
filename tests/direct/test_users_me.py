"""``/api/v1/users/me`` answered before Flask (oidc_server/direct/users_me.py): the view's answer
for a plain request, and no answer at all for anything else, which the app then gives."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from oidc_server.direct.answers import json_writer
from oidc_server.direct.users_me import DirectUsersMe
from oidc_server.models import User
from oidc_server.rsgi import Answer, build_environ, run_wsgi
from oidc_server.tokens.redis_store import RedisTokenStore
from tests.conftest import PASSWORD, MachineClient, password_login
from tests.support.direct import Answering, cut_off_from_redis, synchronously
from tests.support.observing import metric
from tests.support.roles import machine_token, role_id
from tests.support.rsgi_fakes import Headers, Scope

PATH = "/api/v1/users/me"


@pytest.fixture(autouse=True)
def _needs_redis(services: Any) -> None:
    # Cards live in Redis; without it every request is a miss, which the view answers.
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")


@pytest.fixture
def user_token(app: Flask, user: User) -> str:
    response = password_login(app.test_client(), user.login, PASSWORD)
    assert response.status_code == 200
    return response.json["access_token"]


def me(
    token: str | None,
    method: str = "GET",
    *,
    headers: list[tuple[str, str]] | None = None,
    **scope: Any,
) -> dict[str, Any]:
    """The environ the production adapter builds (``rsgi.build_environ``) for ``/users/me``."""
    pairs = [("host", "localhost"), ("x-request-id", "one-id-for-both")]
    if token is not None:
        pairs.append(("authorization", f"Bearer {token}"))
    given = {"method": method, "path": PATH, "query_string": "", **scope}
    return build_environ(Scope(Headers(pairs + (headers or [])), **given), b"")


def app_answer(app: Flask, environ: dict[str, Any]) -> Answer:
    return run_wsgi(app, dict(environ))


def direct(app: Flask) -> Answering:
    made = DirectUsersMe.for_app(app)
    assert made is not None
    return synchronously(made)


def named(answer: Answer) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = answer
    return status, {name.lower(): value for name, value in headers}, body


# The same answer as the app's ------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_the_answer_is_the_views_byte_for_byte(
    app: Flask, user: User, user_token: str, method: str
) -> None:
    environ = me(user_token, method)
    from_app = app_answer(app, environ)  # caches the card

    answered = direct(app)(environ, b"")

    assert answered is not None
    assert named(answered) == named(from_app)
    if method == "GET":
        assert b'"login":"' + user.login.encode() + b'"' in answered[2]
    else:
        assert answered[2] == b"" and int(dict(answered[1])["Content-Length"]) > 0


def test_a_change_to_the_account_shows_in_the_next_answer(
    app: Flask, services: Any, user: User, user_token: str, machine: MachineClient
) -> None:
    environ = me(user_token)
    answering = direct(app)  # one worker's: it remembers the bodies it wrote
    app_answer(app, environ)  # caches the card
    before = answering(environ, b"")
    assert before is not None and b'"roles":[]' in before[2]
    writer = machine_token(app.test_client(), machine, "roles:write")
    given = app.test_client().post(
        f"/api/v1/users/{user.id}/roles/{role_id(services, 'moderator')}",
        headers={"Authorization": f"Bearer {writer}"},
    )
    assert given.status_code == 201
    from_app = app_answer(app, environ)  # the card was dropped: the view reads it anew

    after = answering(environ, b"")

    assert after is not None and b'"roles":["moderator"]' in after[2]
    assert named(after) == named(from_app)
    assert answering(environ, b"") == after


def test_with_cors_on_the_answer_varies_by_origin_as_the_apps_does(
    app: Flask, app_with: Callable[..., Flask], user_token: str
) -> None:
    with_cors = app_with(cors_origins="https://cinema.example")
    environ = me(user_token)
    from_app = app_answer(with_cors, environ)

    answered = direct(with_cors)(environ, b"")

    assert answered is not None and named(answered) == named(from_app)


def test_an_answer_is_counted(app: Flask, user_token: str) -> None:
    environ = me(user_token)
    app_answer(app, environ)
    labels = {"method": "GET", "route": PATH, "status": "200"}
    before = metric("http_requests_total", **labels)

    assert direct(app)(environ, b"") is not None

    assert metric("http_requests_total", **labels) == before + 1


# No answer: the app gives it -------------------------------------------------------------


def test_anything_but_a_plain_request_is_left_to_the_app(
    app: Flask, services: Any, user: User, user_token: str, machine: MachineClient
) -> None:
    app_answer(app, me(user_token))  # the card is cached
    ended = password_login(app.test_client(), user.login, PASSWORD).json["access_token"]
    revoked = app.test_client().post(
        "/oauth/revoke", data={"token": ended, "client_id": "cinema-app"}
    )
    assert revoked.status_code == 200
    machines = machine_token(app.test_client(), machine)

    declined: dict[str, tuple[dict[str, Any], int]] = {
        "no token": (me(None), 401),
        "a malformed token": (me("not.a.token"), 401),
        "a revoked token": (me(ended), 401),
        "a machine's token": (me(machines), 403),
        "Basic credentials": (me(None, headers=[("authorization", "Basic eDp5")]), 401),
        "a query string": (me(user_token, query_string="x=1"), 200),
        "an Origin": (me(user_token, headers=[("origin", "https://a.example")]), 200),
        "a POST": (me(user_token, "POST"), 405),
        "a trailing slash": (me(user_token, path=PATH + "/"), 404),
    }
    for why, (environ, app_status) in declined.items():
        assert direct(app)(environ, b"") is None, why
        assert app_answer(app, environ)[0] == app_status, why


def test_a_card_not_cached_is_left_to_the_app(
    app: Flask, services: Any, user: User, user_token: str
) -> None:
    environ = me(user_token)
    app_answer(app, environ)
    services.role_cache.invalidate([user.id])

    assert direct(app)(environ, b"") is None
    assert app_answer(app, environ)[0] == 200  # which caches it again
    assert direct(app)(environ, b"") is not None


def test_a_disabled_user_is_left_to_the_app_which_refuses(
    app: Flask, services: Any, user: User, user_token: str
) -> None:
    environ = me(user_token)
    app_answer(app, environ)
    with services.db.session() as session:
        session.get(User, user.id).is_active = False
    services.role_cache.invalidate([user.id])

    assert direct(app)(environ, b"") is None
    assert app_answer(app, environ)[0] == 401


def test_while_redis_cannot_be_reached_the_app_answers(
    app: Flask, services: Any, user_token: str
) -> None:
    environ = me(user_token)
    app_answer(app, environ)
    cut_off = cut_off_from_redis(services)

    me_path = synchronously(DirectUsersMe(cut_off, json_writer(app), vary_origin=False))
    answer = me_path(environ, b"")
    assert answer is None


def test_not_used_while_rate_limits_are_on(app_with: Callable[..., Flask]) -> None:
    assert DirectUsersMe.for_app(app_with(ratelimit_enabled=True)) is None
