"""Plain ``client_credentials`` requests answered before Flask (oidc_server/direct/token.py):
the same answer the app gives, and no answer at all for anything else, which the app then gives.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from oidc_server.clients import clients_changed
from oidc_server.direct.token import DirectClientCredentials
from oidc_server.models import OAuthClient
from oidc_server.rsgi import RECEIVED_AT, Answer
from oidc_server.tokens.redis_store import RedisTokenStore
from tests.conftest import MachineClient, make_client
from tests.support.direct import (
    FORM,
    Answering,
    app_answer,
    comparable_token_answer,
    cut_off_from_redis,
    form_post,
    synchronously,
)
from tests.support.observing import LogCapture, metric

PLAIN = b"grant_type=client_credentials"


def request(
    machine: MachineClient | None,
    body: bytes = PLAIN,
    *,
    headers: list[tuple[str, str]] | None = None,
    **scope: Any,
) -> dict[str, Any]:
    """A token request as the production adapter hands it over."""
    return form_post(scope.pop("path", "/oauth/token"), machine, body, headers=headers, **scope)


def cached(app: Flask, machine: MachineClient) -> MachineClient:
    """``machine``, after the app answered it once and so cached it in this worker."""
    status, _, body = app_answer(app, request(machine))
    assert status == 200, body
    return machine


def direct(app: Flask) -> Answering:
    made = DirectClientCredentials.for_app(app)
    assert made is not None
    return synchronously(made)


def comparable(app: Flask, answer: Answer) -> tuple[int, dict[str, str], dict[str, Any]]:
    """An answer without what differs between any two tokens: its time, id and signature."""
    return comparable_token_answer(app, answer)


# The same answer as the app's ------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (PLAIN, FORM),
        (b"grant_type=client_credentials&scope=roles%3Aread", FORM),
        (b"scope=roles%3Aread+roles%3Awrite&grant_type=client_credentials", FORM),
        (b"grant_type=client_credentials&scope=", FORM),
        (PLAIN, "Application/X-WWW-Form-URLEncoded "),
    ],
)
def test_the_answer_is_the_apps_but_for_the_token_itself(
    app: Flask, machine: MachineClient, body: bytes, content_type: str
) -> None:
    cached(app, machine)
    environ = request(machine, body, headers=[("x-request-id", "one-id-for-both")])
    environ["CONTENT_TYPE"] = content_type

    answered = direct(app)(environ, body)

    assert answered is not None
    assert comparable(app, answered) == comparable(app, app_answer(app, environ))


def test_without_a_request_id_each_answer_gets_a_new_one(
    app: Flask, machine: MachineClient
) -> None:
    cached(app, machine)
    ids = set()
    for _ in range(2):
        answered = direct(app)(request(machine), PLAIN)
        assert answered is not None
        ids.add(dict(answered[1])["X-Request-ID"])
    assert len(ids) == 2


def test_behind_a_trusted_proxy_the_forwarded_scheme_decides_hsts(
    app: Flask, app_with: Callable[..., Flask], machine: MachineClient
) -> None:
    proxied = app_with(trust_proxy_headers=True)
    cached(proxied, machine)
    forwarded = [("x-forwarded-proto", "https"), ("x-forwarded-for", "203.0.113.9")]
    environ = request(machine, headers=[*forwarded, ("x-request-id", "same")])

    answered = direct(proxied)(environ, PLAIN)

    assert answered is not None
    assert "Strict-Transport-Security" in dict(answered[1])
    assert comparable(proxied, answered) == comparable(proxied, app_answer(proxied, environ))
    assert environ["wsgi.url_scheme"] == "http"  # the request the app would get is untouched


def test_with_cors_on_the_answer_varies_by_origin_as_the_apps_does(
    app: Flask, app_with: Callable[..., Flask], machine: MachineClient
) -> None:
    with_cors = app_with(cors_origins="https://cinema.example")
    cached(with_cors, machine)
    environ = request(machine, headers=[("x-request-id", "same")])

    answered = direct(with_cors)(environ, PLAIN)

    assert answered is not None
    assert dict(answered[1])["Vary"] == "Origin"
    assert comparable(with_cors, answered) == comparable(with_cors, app_answer(with_cors, environ))


def test_the_token_is_counted_timed_and_logged_like_the_apps(
    app: Flask, machine: MachineClient, logs: LogCapture
) -> None:
    cached(app, machine)
    route = {"method": "POST", "route": "/oauth/token"}
    before = (
        metric("oidc_tokens_issued_total", grant="client_credentials"),
        metric("http_requests_total", status="200", **route),
        metric("http_request_duration_seconds_count", **route),
    )

    answered = direct(app)(request(machine, headers=[("x-request-id", "logged-id")]), PLAIN)

    assert answered is not None
    after = (
        metric("oidc_tokens_issued_total", grant="client_credentials"),
        metric("http_requests_total", status="200", **route),
        metric("http_request_duration_seconds_count", **route),
    )
    assert after == tuple(value + 1 for value in before)
    [line] = [line for line in logs.lines() if line.get("request_id") == "logged-id"]
    assert line["logger"] == "oidc_server.access"
    assert line["request_id"] == "logged-id"
    assert (line["method"], line["route"], line["path"], line["status"]) == (
        "POST",
        "/oauth/token",
        "/oauth/token",
        200,
    )
    assert line["ip"] == "10.1.2.3"  # the peer address, as the app logs it
    token = json.loads(answered[2])["access_token"]
    assert token not in logs.text and machine.client_secret not in logs.text


def test_a_request_that_arrived_before_a_generation_read_makes_no_other(
    app: Flask, machine: MachineClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.support.redis_trips import round_trips

    cached(app, machine)
    earlier = request(machine)
    assert direct(app)(request(machine), PLAIN) is not None  # reads: arrived after any read
    earlier[RECEIVED_AT] = time.monotonic() - 1
    with round_trips(monkeypatch) as sent:
        assert direct(app)(earlier, PLAIN) is not None
    assert sent == []


# No answer: the app gives it -------------------------------------------------------------


def other_client(app: Flask, **kwargs: Any) -> MachineClient:
    return cached_or_not(app, make_client(app.extensions["oidc"], **kwargs))


def cached_or_not(app: Flask, machine: MachineClient) -> MachineClient:
    app_answer(app, request(machine))  # the app caches the client whatever it answers
    return machine


def wrong_secret(machine: MachineClient) -> MachineClient:
    return MachineClient(machine.client_id, machine.client_secret + "x")


def unknown(machine: MachineClient) -> MachineClient:
    return MachineClient("no-such-client", machine.client_secret)


def basic(raw: bytes) -> list[tuple[str, str]]:
    return [("authorization", "Basic " + base64.b64encode(raw).decode())]


DECLINED: list[tuple[str, dict[str, Any], int]] = [
    # (why, how the request differs from a plain one, what the app then answers)
    ("another grant", {"body": b"grant_type=password&username=a&password=b"}, 400),
    ("an unknown grant", {"body": b"grant_type=magic"}, 400),
    ("no grant", {"body": b"scope=roles%3Aread"}, 400),
    ("an empty body", {"body": b""}, 400),
    ("the grant twice", {"body": PLAIN + b"&grant_type=client_credentials"}, 400),
    ("another client_id beside Basic", {"body": PLAIN + b"&client_id=cinema-app"}, 400),
    ("a client_secret beside Basic", {"body": PLAIN + b"&client_secret=x"}, 400),
    ("scope twice", {"body": PLAIN + b"&scope=roles%3Aread&scope=roles%3Aread"}, 400),
    ("a scope it may not have", {"body": PLAIN + b"&scope=openid"}, 400),
    ("an unknown scope", {"body": PLAIN + b"&scope=everything"}, 400),
    ("another parameter", {"body": PLAIN + b"&audience=elsewhere"}, 200),
    ("a pair without =", {"body": PLAIN + b"&junk"}, 200),
    ("a body not UTF-8", {"body": PLAIN + b"&scope=%ff"}, 400),
    ("bytes not UTF-8", {"body": b"grant_type=client_credentials\xff"}, 400),
    ("a query string", {"query_string": "scope=roles%3Aread"}, 400),
    ("an Origin", {"headers": [("origin", "https://elsewhere.example")]}, 200),
    ("a JSON body", {"content_type": "application/json"}, 400),
    ("a charset parameter", {"content_type": FORM + "; charset=utf-8"}, 200),
    ("no content type", {"content_type": None}, 400),
    ("a GET", {"method": "GET"}, 405),
    ("another path", {"path": "/oauth/token/"}, 404),
    ("a wrong secret", {"machine": wrong_secret}, 401),
    ("an unknown client", {"machine": unknown}, 401),
    ("no credentials", {"machine": lambda m: None}, 401),
    ("Basic without a colon", {"machine": lambda m: None, "headers": basic(b"justanid")}, 401),
    (
        "Basic not base64",
        {"machine": lambda m: None, "headers": [("authorization", "Basic *")]},
        401,
    ),
    ("Basic not UTF-8", {"machine": lambda m: None, "headers": basic(b"\xff\xfe:\xfd")}, 401),
    ("a Bearer", {"machine": lambda m: None, "headers": [("authorization", "Bearer x")]}, 401),
    ("http to a host not loopback", {"headers": [("host", "idp.example")]}, 400),
]


@pytest.mark.parametrize(("why", "change", "app_status"), DECLINED, ids=[d[0] for d in DECLINED])
def test_anything_but_a_plain_request_is_left_to_the_app(
    app: Flask, machine: MachineClient, why: str, change: dict[str, Any], app_status: int
) -> None:
    cached(app, machine)
    who = change.get("machine", lambda m: m)(machine)
    body = change.get("body", PLAIN)
    scope = {k: change[k] for k in ("method", "path", "query_string") if k in change}
    headers = list(change.get("headers", []))
    if any(name == "host" for name, _ in headers):
        scope["server"] = "idp.example:80"
    environ = request(who, body, headers=headers, **scope)
    if "content_type" in change:
        if change["content_type"] is None:
            environ.pop("CONTENT_TYPE")
        else:
            environ["CONTENT_TYPE"] = change["content_type"]
    if any(name == "host" for name, _ in headers):
        environ["HTTP_HOST"] = "idp.example"

    assert direct(app)(environ, body) is None
    assert app_answer(app, environ)[0] == app_status


def test_a_client_this_worker_has_not_cached_is_left_to_the_app(
    app: Flask, machine: MachineClient
) -> None:
    environ = request(machine)
    assert direct(app)(environ, PLAIN) is None
    assert app_answer(app, environ)[0] == 200  # which caches it
    assert direct(app)(request(machine), PLAIN) is not None


@pytest.mark.parametrize(
    "kwargs",
    [
        # A first-party app's client, without the client_credentials grant.
        {"grant_types": ["password"], "first_party": True},
        {"grant_types": ["refresh_token"]},
    ],
)
def test_a_client_without_the_grant_is_left_to_the_app(app: Flask, kwargs: Any) -> None:
    without = other_client(app, **kwargs)
    environ = request(without)
    assert direct(app)(environ, PLAIN) is None
    assert app_answer(app, environ)[0] == 400


def test_a_client_changed_since_it_was_cached_is_left_to_the_app(
    app: Flask, machine: MachineClient, services: Any
) -> None:
    cached(app, machine)
    with services.db.session() as session:
        session.query(OAuthClient).filter_by(client_id=machine.client_id).one().is_active = False
    clients_changed(services.store)

    environ = request(machine)
    assert direct(app)(environ, PLAIN) is None
    assert app_answer(app, environ)[0] == 401


def test_while_redis_cannot_be_reached_a_token_waits_for_no_read_until_the_lease_is_over(
    app: Flask, services: Any, machine: MachineClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")
    monkeypatch.setattr(services.client_cache, "lease", 60.0)
    cached(app, machine)  # and read the generation
    cut_off = cut_off_from_redis(services)
    token = synchronously(DirectClientCredentials(cut_off, vary_origin=False))
    # Within the lease of the app's read, a token needs nothing from Redis.
    assert token(request(machine), PLAIN)[0] == 200
    # After it, the generation must be read again: unreachable, so the app answers.
    monkeypatch.setattr(services.client_cache, "lease", 0.0)
    assert token(request(machine), PLAIN) is None


def test_not_used_while_rate_limits_are_on(app_with: Callable[..., Flask]) -> None:
    assert DirectClientCredentials.for_app(app_with(ratelimit_enabled=True)) is None
