"""Plain refresh requests answered before Flask (oidc_server/direct/refresh.py): the grant's
answer, no answer for anything else (the grant gives it, the token unspent), and, once the
token has been sent to the store, never a second spend: the grant answers that spend's outcome.
"""

from __future__ import annotations

import copy
import json
import urllib.parse
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
import redis
from flask import Flask

from oidc_server.direct.refresh import DirectRefresh
from oidc_server.direct.round_trips import RoundTrips
from oidc_server.oauth.grants import SPEND_ATTEMPT
from oidc_server.rsgi import Answer
from oidc_server.tokens.loop_redis import LoopRedis
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.service import (
    RefreshTokenInvalid,
    RefreshTokenReused,
    RefreshTokenScopeExceeded,
)
from oidc_server.tokens.store import StoreUnavailable
from tests.conftest import PASSWORD, MachineClient, make_client, password_login
from tests.support.direct import (
    Answering,
    app_answer,
    comparable_token_answer,
    cut_off_from_redis,
    form_post,
    synchronously,
    token_claims,
)
from tests.support.observing import LogCapture, metric
from tests.support.waiting import free_port

PUBLIC = "cinema-app"


@pytest.fixture(autouse=True)
def _needs_redis(services: Any) -> None:
    # Cards live in Redis; without it every refresh needs the database, which the grant reads.
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")


def body(refresh_token: str, client_id: str | None = PUBLIC, **more: str) -> bytes:
    fields = {"grant_type": "refresh_token", "refresh_token": refresh_token, **more}
    if client_id is not None:
        fields["client_id"] = client_id
    return urllib.parse.urlencode(fields).encode()


def request(
    form: bytes,
    machine: MachineClient | None = None,
    *,
    headers: list[tuple[str, str]] | None = None,
    **scope: Any,
) -> dict[str, Any]:
    """A refresh request as the production adapter hands it over."""
    return form_post("/oauth/token", machine, form, headers=headers, **scope)


def signed_in(app: Flask, user: Any, client_id: str = PUBLIC, **extra: str) -> str:
    """A new session's refresh token."""
    answer = password_login(app.test_client(), user.login, PASSWORD, client_id=client_id, **extra)
    assert answer.status_code == 200, answer.json
    return answer.json["refresh_token"]


def ready(app: Flask, user: Any) -> str:
    """A refresh token that the direct path can answer: the client and the user's card cached
    by one refresh the grant answered."""
    status, _, answered = app_answer(app, request(body(signed_in(app, user))))
    assert status == 200, answered
    return json.loads(answered)["refresh_token"]


def direct(app: Flask) -> Answering:
    made = DirectRefresh.for_app(app)
    assert made is not None
    return synchronously(made)


def refreshed_by_the_app(app: Flask, refresh_token: str) -> int:
    return app_answer(app, request(body(refresh_token)))[0]


def comparable(app: Flask, answer: Answer) -> tuple[int, dict[str, str], dict[str, Any]]:
    """An answer without what differs between any two sessions' refreshes."""
    varying = ("iat", "exp", "jti", "sid", "auth_time")
    status, headers, payload = comparable_token_answer(app, answer, varying)
    _sid, _, user_id = payload.pop("refresh_token").split(".")
    payload["refresh_token_user"] = user_id
    return status, headers, payload


# The grant's answer ----------------------------------------------------------------------


@pytest.mark.parametrize("extra", [{}, {"scope": "openid"}])
def test_the_answer_is_the_grants_but_for_the_tokens_themselves(
    app: Flask, user: Any, extra: dict[str, str]
) -> None:
    by_app = request(body(ready(app, user), **extra), headers=[("x-request-id", "same")])
    mine = request(body(ready(app, user), **extra), headers=[("x-request-id", "same")])

    answered = direct(app)(mine, mine["wsgi.input"].getvalue())

    assert answered is not None
    assert comparable(app, answered) == comparable(app, app_answer(app, by_app))
    assert json.loads(answered[2])["refresh_token"].endswith("." + str(user.id))


def test_the_token_is_spent_and_its_successor_is_the_next_one(app: Flask, user: Any) -> None:
    presented = ready(app, user)
    environ = request(body(presented))

    answered = direct(app)(environ, body(presented))

    assert answered is not None
    successor = json.loads(answered[2])["refresh_token"]
    assert refreshed_by_the_app(app, successor) == 200


def test_a_confidential_client_with_basic_credentials(app: Flask, services: Any, user: Any) -> None:
    machine = make_client(
        services, grant_types=["password", "refresh_token"], scopes=["openid"], first_party=True
    )
    login = app.test_client().post(
        "/oauth/token",
        data={"grant_type": "password", "username": user.login, "password": PASSWORD},
        headers=machine.basic,
    )
    first = body(login.json["refresh_token"], client_id=None)
    status, _, answered = app_answer(app, request(first, machine))  # caches client and card
    assert status == 200, answered
    presented = body(json.loads(answered)["refresh_token"], client_id=None)

    answered = direct(app)(request(presented, machine), presented)

    assert answered is not None and answered[0] == 200
    assert token_claims(app, answered[2])["client_id"] == machine.client_id


def test_the_refresh_is_counted_and_logged_like_the_grants(
    app: Flask, user: Any, logs: LogCapture
) -> None:
    presented = ready(app, user)
    route = {"method": "POST", "route": "/oauth/token"}
    before = (
        metric("oidc_tokens_issued_total", grant="refresh_token"),
        metric("http_requests_total", status="200", **route),
    )

    answered = direct(app)(
        request(body(presented), headers=[("x-request-id", "logged-refresh")]), body(presented)
    )

    assert answered is not None
    after = (
        metric("oidc_tokens_issued_total", grant="refresh_token"),
        metric("http_requests_total", status="200", **route),
    )
    assert after == tuple(value + 1 for value in before)
    [line] = [line for line in logs.lines() if line.get("request_id") == "logged-refresh"]
    assert (line["route"], line["status"]) == ("/oauth/token", 200)
    successor = json.loads(answered[2])
    for secret in (presented, successor["refresh_token"], successor["access_token"]):
        assert secret not in logs.text


# No answer, nothing spent: the grant answers ---------------------------------------------

DECLINED: list[tuple[str, dict[str, Any], int]] = [
    # (why, how the request differs from a plain one, what the grant then answers)
    ("another parameter", {"more": {"audience": "elsewhere"}}, 200),
    ("a client secret in the form", {"more": {"client_secret": "x"}}, 401),
    ("no client", {"client_id": None}, 401),
    ("an unknown client", {"client_id": "no-such-client"}, 400),
    ("a Bearer beside the client id", {"headers": [("authorization", "Bearer x")]}, 200),
    ("a query string", {"query_string": "scope=openid"}, 400),
    ("an Origin", {"headers": [("origin", "https://elsewhere.example")]}, 200),
    ("the token twice", {"twice": True}, 400),
    ("a token that names no user", {"token": lambda t: t.rsplit(".", 1)[0]}, 400),
    ("a token naming no uuid", {"token": lambda t: t.rsplit(".", 1)[0] + ".nobody"}, 400),
    ("no token", {"token": lambda t: ""}, 400),
]


@pytest.mark.parametrize(("why", "change", "app_status"), DECLINED, ids=[d[0] for d in DECLINED])
def test_anything_but_a_plain_request_is_left_to_the_grant_unspent(
    app: Flask, user: Any, why: str, change: dict[str, Any], app_status: int
) -> None:
    presented = ready(app, user)
    token = change.get("token", lambda t: t)(presented)
    form = body(token, change.get("client_id", PUBLIC), **change.get("more", {}))
    if change.get("twice"):
        form += b"&refresh_token=" + token.encode()
    scope = {k: change[k] for k in ("query_string",) if k in change}
    environ = request(form, headers=change.get("headers"), **scope)

    assert direct(app)(environ, form) is None
    assert SPEND_ATTEMPT not in environ
    got = app_answer(app, environ)
    assert got[0] == app_status, got[2]
    if app_status != 200:
        assert refreshed_by_the_app(app, presented) == 200  # it was never spent


def test_a_user_whose_card_is_not_cached_is_left_to_the_grant(
    app: Flask, services: Any, user: Any
) -> None:
    presented = ready(app, user)
    services.role_cache.invalidate([user.id])
    environ = request(body(presented))

    assert direct(app)(environ, body(presented)) is None
    assert SPEND_ATTEMPT not in environ
    assert app_answer(app, environ)[0] == 200  # read from the database, and cached again
    second = ready(app, user)
    assert direct(app)(request(body(second)), body(second)) is not None


def test_a_client_without_the_grant_is_left_to_the_grant(
    app: Flask, services: Any, user: Any
) -> None:
    presented = ready(app, user)
    without = make_client(services, grant_types=["password"], first_party=True, scopes=[])
    environ = request(body(presented, client_id=None), without)
    app_answer(app, request(body("x.y", client_id=None), without))  # caches the client

    assert direct(app)(environ, body(presented, None)) is None
    assert SPEND_ATTEMPT not in environ
    assert app_answer(app, environ)[0] == 400


def test_while_redis_cannot_be_reached_nothing_is_sent(
    app: Flask, services: Any, user: Any
) -> None:
    presented = ready(app, user)
    environ = request(body(presented))

    cut_off = synchronously(DirectRefresh(cut_off_from_redis(services), vary_origin=False))
    assert cut_off(environ, body(presented)) is None
    assert SPEND_ATTEMPT not in environ
    assert refreshed_by_the_app(app, presented) == 200


def test_not_used_while_rate_limits_are_on(app_with: Callable[..., Flask]) -> None:
    assert DirectRefresh.for_app(app_with(ratelimit_enabled=True)) is None


# Sent to the store: the grant answers the outcome, never spending again ------------------


def test_a_reused_token_is_detected_once_and_the_grant_answers_it(
    app: Flask, user: Any, logs: LogCapture
) -> None:
    presented = ready(app, user)
    assert direct(app)(request(body(presented)), body(presented)) is not None
    detections = metric("oidc_refresh_token_reuse_total")
    environ = request(body(presented))

    assert direct(app)(environ, body(presented)) is None

    assert isinstance(environ[SPEND_ATTEMPT], RefreshTokenReused)
    status, _, answered = app_answer(app, environ)
    assert (status, json.loads(answered)["error"]) == (400, "invalid_grant")
    assert metric("oidc_refresh_token_reuse_total") == detections + 1
    assert sum("reuse detected" in line["message"] for line in logs.lines()) == 1


def test_a_token_the_store_does_not_know_is_refused_once_and_the_real_one_still_works(
    app: Flask, user: Any
) -> None:
    presented = ready(app, user)
    sid, secret, user_id = presented.split(".")
    forged = f"{sid}.{secret[::-1]}.{user_id}"  # names the user, whose card is cached
    environ = request(body(forged))

    assert direct(app)(environ, body(forged)) is None

    assert isinstance(environ[SPEND_ATTEMPT], RefreshTokenInvalid)
    assert not isinstance(environ[SPEND_ATTEMPT], RefreshTokenReused)
    status, _, answered = app_answer(app, environ)
    assert (status, json.loads(answered)["error"]) == (400, "invalid_grant")
    assert refreshed_by_the_app(app, presented) == 200


def test_a_scope_beyond_the_grant_is_refused_by_the_store_and_nothing_is_spent(
    app: Flask, user: Any
) -> None:
    presented = ready(app, user)
    form = body(presented, scope="openid roles:write")
    environ = request(form)

    assert direct(app)(environ, form) is None

    assert isinstance(environ[SPEND_ATTEMPT], RefreshTokenScopeExceeded)
    status, _, answered = app_answer(app, environ)
    assert (status, json.loads(answered)["error"]) == (400, "invalid_scope")
    assert refreshed_by_the_app(app, presented) == 200


def test_a_store_lost_during_the_spend_is_the_grants_to_answer(
    app: Flask, services: Any, user: Any
) -> None:
    presented = ready(app, user)
    # Redis goes away between the two round trips: the card is read, the spend is not heard.
    loses_redis = replace(services, tokens=copy.copy(services.tokens))
    trips = RoundTrips(loses_redis)
    spend = services.tokens.refresh_spend

    def spend_with_redis_gone(*args: Any) -> Any:
        nowhere = redis.Redis(port=free_port(), socket_connect_timeout=0.5)
        loses_redis.redis = nowhere
        # The round trips' own connection, read on the event loop, goes the same way.
        trips._loop_redis = LoopRedis.for_client(nowhere)
        return spend(*args)

    loses_redis.tokens.refresh_spend = spend_with_redis_gone  # type: ignore[method-assign]
    environ = request(body(presented))

    refresh = synchronously(DirectRefresh(loses_redis, vary_origin=False, trips=trips))
    assert refresh(environ, body(presented)) is None

    assert isinstance(environ[SPEND_ATTEMPT], StoreUnavailable)
    assert app_answer(app, environ)[0] == 503  # not a second spend through the working store
    assert refreshed_by_the_app(app, presented) == 200


def test_when_issuing_fails_after_the_spend_the_grant_issues_from_it(
    app: Flask, services: Any, user: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    presented = ready(app, user)
    environ = request(body(presented))
    issue = services.tokens.issue_after_refresh
    monkeypatch.setattr(services.tokens, "issue_after_refresh", _fails)

    with pytest.raises(RuntimeError):
        direct(app)(environ, body(presented))

    monkeypatch.setattr(services.tokens, "issue_after_refresh", issue)
    status, _, answered = app_answer(app, environ)
    assert status == 200, answered
    successor = json.loads(answered)["refresh_token"]
    assert refreshed_by_the_app(app, successor) == 200  # no reuse was detected: the session lives


def _fails(*args: Any) -> Any:
    raise RuntimeError("issuing failed")
