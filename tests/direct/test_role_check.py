"""The role check answered before Flask (oidc_server/direct/role_check.py): the app's answer for
a plain check, and no answer at all for anything else, which the app then gives."""

from __future__ import annotations

import itertools
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from werkzeug.exceptions import HTTPException

from oidc_server.direct.role_check import ENDPOINT, DirectRoleCheck
from oidc_server.models import User
from oidc_server.rsgi import Answer, build_environ, run_wsgi
from oidc_server.tokens.access_tokens import AccessTokenCodec
from oidc_server.tokens.redis_store import RedisTokenStore
from tests.conftest import PASSWORD, MachineClient, make_client
from tests.support.direct import Answering, cut_off_from_redis, synchronously
from tests.support.observing import LogCapture, metric
from tests.support.roles import machine_token, role_id
from tests.support.rsgi_fakes import Headers, Scope

ROUTE = "/api/v1/users/<uuid:user_id>/roles/<uuid:role_id>/"


@pytest.fixture(autouse=True)
def _needs_redis(services: Any) -> None:
    # The role cache lives in Redis; without it every check is a miss, which the app answers.
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")


def check(
    token: str | None,
    user_id: Any,
    role: Any,
    *,
    slash: str = "",
    headers: list[tuple[str, str]] | None = None,
    **scope: Any,
) -> dict[str, Any]:
    """The environ the production adapter builds for a role check (``rsgi.build_environ``)."""
    pairs = [("host", "localhost"), ("x-request-id", "one-id-for-both")]
    if token is not None:
        pairs.append(("authorization", f"Bearer {token}"))
    given = {
        "method": "HEAD",
        "path": f"/api/v1/users/{user_id}/roles/{role}{slash}",
        "query_string": "",
        **scope,
    }
    return build_environ(Scope(Headers(pairs + (headers or [])), **given), b"")


def app_answer(app: Flask, environ: dict[str, Any]) -> Answer:
    return run_wsgi(app, dict(environ))


def direct(app: Flask) -> Answering:
    return synchronously(DirectRoleCheck.for_app(app))


def named(answer: Answer) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = answer
    return status, {name.lower(): value for name, value in headers}, body


@pytest.fixture
def reader(app: Flask, machine: MachineClient) -> str:
    return machine_token(app.test_client(), machine, "roles:read")


@pytest.fixture
def moderator(app: Flask, services: Any, user: User, machine: MachineClient) -> uuid.UUID:
    """The moderator role, given to ``user``."""
    role = role_id(services, "moderator")
    writer = machine_token(app.test_client(), machine, "roles:write")
    given = app.test_client().post(
        f"/api/v1/users/{user.id}/roles/{role}", headers={"Authorization": f"Bearer {writer}"}
    )
    assert given.status_code == 201
    return role


# The same answer as the app's ------------------------------------------------------------


@pytest.mark.parametrize("slash", ["", "/"], ids=["without slash", "with slash"])
@pytest.mark.parametrize("holds", [True, False], ids=["held", "not held"])
def test_the_answer_is_the_apps(
    app: Flask,
    services: Any,
    user: User,
    moderator: uuid.UUID,
    reader: str,
    slash: str,
    holds: bool,
) -> None:
    role = moderator if holds else role_id(services, "admin")
    environ = check(reader, user.id, role, slash=slash)
    from_app = app_answer(app, environ)  # fills the cache

    answered = direct(app)(environ, b"")

    assert answered is not None
    assert named(answered) == named(from_app)
    assert answered[0] == (200 if holds else 404) and answered[2] == b""


@pytest.mark.parametrize("who", ["user", "role"])
def test_an_unknown_user_or_role_is_404_as_the_app_says(
    app: Flask, services: Any, user: User, reader: str, who: str
) -> None:
    user_id = uuid.uuid4() if who == "user" else user.id
    role = uuid.uuid4() if who == "role" else role_id(services, "admin")
    environ = check(reader, user_id, role)
    from_app = app_answer(app, environ)

    answered = direct(app)(environ, b"")

    assert answered is not None and named(answered) == named(from_app)
    assert answered[0] == 404


def test_with_cors_on_the_answer_varies_by_origin_as_the_apps_does(
    app: Flask,
    app_with: Callable[..., Flask],
    user: User,
    moderator: uuid.UUID,
    reader: str,
) -> None:
    with_cors = app_with(cors_origins="https://cinema.example")
    environ = check(reader, user.id, moderator)
    from_app = app_answer(with_cors, environ)

    answered = direct(with_cors)(environ, b"")

    assert answered is not None and dict(answered[1])["Vary"] == "Origin"
    assert named(answered) == named(from_app)


def test_a_check_is_counted_and_logged_like_the_apps(
    app: Flask, user: User, moderator: uuid.UUID, reader: str, logs: LogCapture
) -> None:
    environ = check(reader, user.id, moderator)
    app_answer(app, environ)
    labels = {"method": "HEAD", "route": ROUTE}
    before = metric("http_requests_total", status="200", **labels)

    answered = direct(app)(environ, b"")

    assert answered is not None
    assert metric("http_requests_total", status="200", **labels) == before + 1
    lines = [line for line in logs.lines() if line.get("request_id") == "one-id-for-both"]
    assert [(line["route"], line["status"]) for line in lines] == [(ROUTE, 200)] * 2
    assert lines[0]["path"] == lines[1]["path"] == environ["PATH_INFO"]
    assert reader not in logs.text


def test_a_change_shows_in_the_next_check(
    app: Flask, services: Any, user: User, moderator: uuid.UUID, reader: str, machine: Any
) -> None:
    environ = check(reader, user.id, moderator)
    app_answer(app, environ)
    assert direct(app)(environ, b"")[0] == 200  # type: ignore[index]
    writer = machine_token(app.test_client(), machine, "roles:write")
    taken = app.test_client().delete(
        f"/api/v1/users/{user.id}/roles/{moderator}", headers={"Authorization": f"Bearer {writer}"}
    )
    assert taken.status_code == 204

    answered = direct(app)(environ, b"")
    # Either the cache was dropped (a miss: the app answers) or it says "not held".
    from_app = answered if answered is not None else app_answer(app, environ)
    assert from_app[0] == 404


# No answer: the app gives it -------------------------------------------------------------


def expired_token(services: Any, client_id: str) -> str:
    long_ago = AccessTokenCodec(
        services.keyring,
        issuer=services.settings.oidc_issuer,
        audience=services.settings.access_token_audience,
        ttl=60,
        clock=lambda: time.time() - 3600,
    )
    return long_ago.issue(subject=client_id, client_id=client_id, scope="roles:read")[0]


def test_anything_but_a_plain_check_is_left_to_the_app(
    app: Flask,
    services: Any,
    user: User,
    moderator: uuid.UUID,
    reader: str,
    machine: MachineClient,
) -> None:
    app_answer(app, check(reader, user.id, moderator))  # the cache holds the answer
    writer_only = machine_token(app.test_client(), machine, "roles:write")
    # A user's token with roles:read, from a first-party app allowed that scope.
    first_party = make_client(
        services, grant_types=["password"], scopes=["roles:read"], first_party=True
    )
    signed_in = app.test_client().post(
        "/oauth/token",
        data={"grant_type": "password", "username": user.login, "password": PASSWORD},
        headers=first_party.basic,
    )
    users_token = signed_in.json["access_token"]
    assert signed_in.json["scope"] == "roles:read"
    revoked = machine_token(app.test_client(), machine, "roles:read")
    app.test_client().post("/oauth/revoke", data={"token": revoked}, headers=machine.basic)

    declined: dict[str, tuple[dict[str, Any], int]] = {
        # why: (the request, what the app then answers)
        "no token": (check(None, user.id, moderator), 401),
        "a malformed token": (check("not.a.token", user.id, moderator), 401),
        "an expired token": (
            check(expired_token(services, machine.client_id), user.id, moderator),
            401,
        ),
        "a revoked token": (check(revoked, user.id, moderator), 401),
        "a user's token": (check(users_token, user.id, moderator), 403),
        "no roles:read": (check(writer_only, user.id, moderator), 403),
        "Basic credentials": (
            check(None, user.id, moderator, headers=[("authorization", "Basic eDp5")]),
            401,
        ),
        "a query string": (check(reader, user.id, moderator, query_string="x=1"), 200),
        "an Origin": (check(reader, user.id, moderator, headers=[("origin", "https://a.b")]), 200),
        "a GET": (check(reader, user.id, moderator, method="GET"), 405),
        "not a UUID": (check(reader, "someone", moderator), 404),
        "another route": (check(reader, user.id, moderator, slash="/more"), 404),
    }
    for why, (environ, app_status) in declined.items():
        assert direct(app)(environ, b"") is None, why
        assert app_answer(app, environ)[0] == app_status, why


def test_a_cache_miss_is_left_to_the_app_which_fills_it(
    app: Flask, user: User, moderator: uuid.UUID, reader: str
) -> None:
    environ = check(reader, user.id, moderator)
    assert direct(app)(environ, b"") is None  # nothing cached for the user yet
    assert app_answer(app, environ)[0] == 200
    answered = direct(app)(environ, b"")
    assert answered is not None and answered[0] == 200


def test_while_redis_cannot_be_reached_the_app_answers(
    app: Flask, services: Any, user: User, moderator: uuid.UUID, reader: str
) -> None:
    environ = check(reader, user.id, moderator)
    app_answer(app, environ)
    cut_off = cut_off_from_redis(services)

    cut_off_check = synchronously(DirectRoleCheck(cut_off, ROUTE, vary_origin=False))
    assert cut_off_check(environ, b"") is None


# Which paths are a role check: the app's routing says ------------------------------------

_AN_ID = str(uuid.UUID(int=0x1234567890ABCDEF1234567890ABCDEF))
_IDS = [
    _AN_ID,
    _AN_ID.upper(),
    _AN_ID[:9] + _AN_ID[9:].upper(),
    _AN_ID.replace("-", ""),
    _AN_ID[:-1],
    _AN_ID + "0",
    "{" + _AN_ID + "}",
    "urn:uuid:" + _AN_ID,
    _AN_ID.replace("1", "g"),
    "me",
    "",
]
_PATHS = [
    "".join(parts)
    for parts in itertools.product(
        ["/api/v1/users/", "/api/v1/Users/", "/api/v2/users/", "/api/v1/users//"],
        _IDS,
        ["/roles/", "/Roles/", "//roles/", "/role/", "/roles"],
        _IDS,
        ["", "/", "//", "/x", ".json", " ", "\n", "%2F"],
    )
]


def test_a_path_is_taken_for_a_role_check_only_when_the_apps_routing_says_so(
    app: Flask,
) -> None:
    urls = app.url_map.bind("localhost")
    paths = DirectRoleCheck.for_app(app).paths
    taken = 0
    for path in [*_PATHS, *("/" + path for path in _PATHS)]:
        try:
            endpoint, args = urls.match(path, "HEAD")
        except HTTPException:  # no route, another method's, or a redirect to the canonical path
            endpoint, args = None, {}
        ids = paths.fullmatch(path)
        if ids is not None:
            taken += 1
            assert endpoint == ENDPOINT, path
            assert (uuid.UUID(ids[1]), uuid.UUID(ids[2])) == (args["user_id"], args["role_id"])
        elif endpoint == ENDPOINT:
            # werkzeug's leniencies: a last "//", a first "//". The app answers those itself.
            assert path.endswith("//") or path.startswith("//"), path
    assert taken == 3 * 3 * 2  # three spellings of an id on each side, with and without "/"
