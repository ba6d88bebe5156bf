"""Introspection answered before Flask (oidc_server/direct/introspection.py): the endpoint's answer
for an active access token, and no answer at all for anything else, which the app then gives."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask

from oidc_server.direct.introspection import DirectIntrospection
from oidc_server.models import User
from oidc_server.rsgi import RECEIVED_AT, Answer
from oidc_server.tokens.redis_store import RedisTokenStore
from tests.conftest import PASSWORD, MachineClient, make_client, password_login
from tests.support.direct import Answering, app_answer, cut_off_from_redis, form_post, synchronously
from tests.support.observing import metric
from tests.support.roles import machine_token

PATH = "/oauth/introspect"


def introspection(
    machine: MachineClient | None,
    token: str,
    *,
    extra: dict[str, str] | None = None,
    headers: list[tuple[str, str]] | None = None,
    **scope: Any,
) -> tuple[dict[str, Any], bytes]:
    body = urlencode({"token": token, **(extra or {})}).encode()
    return form_post(PATH, machine, body, headers=headers, **scope), body


def raw(machine: MachineClient, body: bytes) -> tuple[dict[str, Any], bytes]:
    return form_post(PATH, machine, body), body


def direct(app: Flask) -> Answering:
    made = DirectIntrospection.for_app(app)
    assert made is not None
    return synchronously(made)


def named(answer: Answer) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, body = answer
    by_name = {name.lower(): value for name, value in headers}
    assert by_name.pop("content-length") == str(len(body))
    return status, by_name, json.loads(body)


def cached(app: Flask, machine: MachineClient, token: str) -> None:
    """Let the app answer once, which caches the client (and a user's card) in this worker."""
    environ, _ = introspection(machine, token)
    assert app_answer(app, environ)[0] == 200


@pytest.fixture
def user_token(app: Flask, user: User) -> str:
    response = password_login(app.test_client(), user.login, PASSWORD)
    assert response.status_code == 200
    return response.json["access_token"]


# The same answer as the app's ------------------------------------------------------------


@pytest.mark.parametrize("hint", [None, "access_token"])
@pytest.mark.parametrize("whose", ["a machine's", "a user's"])
def test_the_answer_is_the_endpoints(
    app: Flask,
    services: Any,
    machine: MachineClient,
    user_token: str,
    whose: str,
    hint: str | None,
) -> None:
    if whose == "a user's" and not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it): cards are cached in Redis")
    token = machine_token(app.test_client(), machine) if whose == "a machine's" else user_token
    cached(app, machine, token)
    environ, body = introspection(
        machine,
        token,
        extra={"token_type_hint": hint} if hint else None,
        headers=[("x-request-id", "one-id-for-both")],
    )

    answered = direct(app)(environ, body)

    assert answered is not None
    assert named(answered) == named(app_answer(app, environ))
    assert json.loads(answered[2])["active"] is True


def test_a_user_token_shows_the_users_roles_as_they_are_now(
    app: Flask, services: Any, machine: MachineClient, user: User, user_token: str
) -> None:
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it): cards are cached in Redis")
    from tests.support.roles import role_id

    cached(app, machine, user_token)
    writer = machine_token(app.test_client(), machine, "roles:write")
    given = app.test_client().post(
        f"/api/v1/users/{user.id}/roles/{role_id(services, 'moderator')}",
        headers={"Authorization": f"Bearer {writer}"},
    )
    assert given.status_code == 201
    cached(app, machine, user_token)  # the change dropped the card; the app reads it again

    environ, body = introspection(machine, user_token)
    answered = direct(app)(environ, body)

    assert answered is not None
    assert "moderator" in json.loads(answered[2])["roles"]


def test_an_introspection_is_counted(app: Flask, machine: MachineClient) -> None:
    token = machine_token(app.test_client(), machine)
    cached(app, machine, token)
    labels = {"method": "POST", "route": PATH, "status": "200"}
    before = metric("http_requests_total", **labels)

    assert direct(app)(*introspection(machine, token)) is not None

    assert metric("http_requests_total", **labels) == before + 1


def test_a_request_that_arrived_before_a_generation_read_makes_one_round_trip(
    app: Flask, services: Any, machine: MachineClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.redis_trips import round_trips

    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")
    token = machine_token(app.test_client(), machine)
    cached(app, machine, token)
    earlier, body = introspection(machine, token)
    earlier[RECEIVED_AT] = time.monotonic() - 1
    with round_trips(monkeypatch) as sent:
        assert direct(app)(earlier, body) is not None
    assert sent == [1]  # the token's revocation read, with the generation or without it


# No answer: the app gives it -------------------------------------------------------------


def test_anything_but_an_active_access_token_of_a_cached_client_is_left_to_the_app(
    app: Flask, services: Any, machine: MachineClient, user_token: str
) -> None:
    token = machine_token(app.test_client(), machine)
    cached(app, machine, token)
    revoked = machine_token(app.test_client(), machine)
    app.test_client().post("/oauth/revoke", data={"token": revoked}, headers=machine.basic)
    wrong = MachineClient(machine.client_id, machine.client_secret + "x")
    unknown = MachineClient("no-such-client", machine.client_secret)
    uncached = make_client(services)

    declined: dict[str, tuple[tuple[dict[str, Any], bytes], int, bool | None]] = {
        # why: (the request, the app's status, the app's "active")
        "not a token": (introspection(machine, "not-a-token"), 200, False),
        "a revoked token": (introspection(machine, revoked), 200, False),
        "the refresh hint": (
            introspection(machine, token, extra={"token_type_hint": "refresh_token"}),
            200,
            True,
        ),
        "an unknown hint": (
            introspection(machine, token, extra={"token_type_hint": "other"}),
            200,
            True,
        ),
        "another field": (introspection(machine, token, extra={"x": "1"}), 200, True),
        "no token": (raw(machine, b"token_type_hint=access_token"), 400, None),
        "an empty token": (raw(machine, b"token="), 400, None),
        "a query string": (introspection(machine, token, query_string="a=1"), 400, None),
        "an Origin": (
            introspection(machine, token, headers=[("origin", "https://a.example")]),
            200,
            True,
        ),
        "a wrong secret": (introspection(wrong, token), 401, None),
        "an unknown client": (introspection(unknown, token), 401, None),
        "a client not cached": (introspection(uncached, token), 200, True),
        "no credentials": (introspection(None, token), 401, None),
        "http to a host not loopback": (
            introspection(machine, token, headers=[("host", "idp.example")]),
            400,
            None,
        ),
    }
    environ = declined["http to a host not loopback"][0][0]
    environ["HTTP_HOST"] = "idp.example"
    for why, ((environ, body), status, active) in declined.items():
        assert direct(app)(environ, body) is None, why
        answer = app_answer(app, environ)
        assert answer[0] == status, why
        if active is not None:
            assert json.loads(answer[2])["active"] is active, why


def test_a_users_token_whose_card_is_not_cached_is_left_to_the_app(
    app: Flask, services: Any, machine: MachineClient, user: User, user_token: str
) -> None:
    cached(app, machine, machine_token(app.test_client(), machine))
    services.role_cache.invalidate([user.id])
    environ, body = introspection(machine, user_token)

    assert direct(app)(environ, body) is None
    assert json.loads(app_answer(app, environ)[2])["username"] == user.login


def test_a_disabled_users_token_is_left_to_the_app_which_says_inactive(
    app: Flask, services: Any, machine: MachineClient, user: User, user_token: str
) -> None:
    cached(app, machine, user_token)
    with services.db.session() as session:
        session.get(User, user.id).is_active = False
    services.role_cache.invalidate([user.id])
    environ, body = introspection(machine, user_token)

    assert direct(app)(environ, body) is None
    assert json.loads(app_answer(app, environ)[2]) == {"active": False}


def test_while_redis_cannot_be_reached_the_app_answers(
    app: Flask, services: Any, machine: MachineClient
) -> None:
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")
    token = machine_token(app.test_client(), machine)
    cached(app, machine, token)
    cut_off = cut_off_from_redis(services)

    cut_off_path = synchronously(DirectIntrospection(cut_off, vary_origin=False))
    answered = cut_off_path(*introspection(machine, token))
    assert answered is None


def test_not_used_while_rate_limits_are_on(app_with: Callable[..., Flask]) -> None:
    assert DirectIntrospection.for_app(app_with(ratelimit_enabled=True)) is None


def test_a_token_for_a_malformed_user_id_is_left_to_the_app(
    app: Flask, services: Any, machine: MachineClient
) -> None:
    cached(app, machine, machine_token(app.test_client(), machine))
    odd = services.tokens.codec.issue(
        subject="not-a-uuid", client_id="cinema-app", scope="openid", session_id=str(uuid.uuid4())
    )[0]
    environ, body = introspection(machine, odd)

    assert direct(app)(environ, body) is None
    assert json.loads(app_answer(app, environ)[2]) == {"active": False}
