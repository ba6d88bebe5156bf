"""The JWKS and discovery documents answered before Flask (oidc_server/direct/well_known.py):
byte for byte the views' answers, a rotated key published at once, anything else left."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from oidc_server.direct.well_known import DISCOVERY_PATHS, JWKS_PATH, DirectWellKnown
from oidc_server.rsgi import Answer, build_environ, run_wsgi
from tests.support.direct import Answering, synchronously
from tests.support.observing import metric
from tests.support.rsgi_fakes import Headers, Scope

PATHS = [JWKS_PATH, *DISCOVERY_PATHS]


def get(
    path: str, method: str = "GET", *, headers: list[tuple[str, str]] | None = None, **scope: Any
) -> dict[str, Any]:
    pairs = [("host", "localhost"), ("x-request-id", "one-id-for-both"), *(headers or [])]
    return build_environ(
        Scope(Headers(pairs), method=method, path=path, **{"query_string": "", **scope}), b""
    )


def named(answer: Answer) -> tuple[int, dict[str, str], bytes]:
    status, headers, body = answer
    return status, {name.lower(): value for name, value in headers}, body


def direct(app: Flask) -> Answering:
    made = DirectWellKnown.for_app(app)
    assert made is not None
    return synchronously(made)


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("path", PATHS)
def test_the_answer_is_the_views_byte_for_byte(app: Flask, path: str, method: str) -> None:
    environ = get(path, method)

    answered = direct(app)(environ, b"")

    assert answered is not None
    assert named(answered) == named(run_wsgi(app, dict(environ)))
    assert dict(answered[1])["Cache-Control"].startswith("public, max-age=")


def test_behind_a_trusted_proxy_and_with_cors_the_answer_is_the_apps(
    app: Flask, app_with: Callable[..., Flask]
) -> None:
    both = app_with(trust_proxy_headers=True, cors_origins="https://cinema.example")
    environ = get(JWKS_PATH, headers=[("x-forwarded-proto", "https")])

    answered = direct(both)(environ, b"")

    assert answered is not None and "Strict-Transport-Security" in dict(answered[1])
    assert named(answered) == named(run_wsgi(both, dict(environ)))


def test_a_rotated_key_is_published_in_the_next_answer(app: Flask, services: Any) -> None:
    answerer = direct(app)
    before = answerer(get(JWKS_PATH), b"")
    services.keyring.rotate()

    after = answerer(get(JWKS_PATH), b"")

    assert before is not None and after is not None
    assert after[2] != before[2]
    assert after[2] == run_wsgi(app, get(JWKS_PATH))[2]


def test_an_answer_is_counted(app: Flask) -> None:
    labels = {"method": "GET", "route": JWKS_PATH, "status": "200"}
    before = metric("http_requests_total", **labels)
    assert direct(app)(get(JWKS_PATH), b"") is not None
    assert metric("http_requests_total", **labels) == before + 1


def test_anything_else_is_left_to_the_app(app: Flask) -> None:
    declined: dict[str, tuple[dict[str, Any], int]] = {
        "a POST": (get(JWKS_PATH, "POST"), 405),
        "a query string": (get(JWKS_PATH, query_string="x=1"), 200),
        "an Origin": (get(JWKS_PATH, headers=[("origin", "https://a.example")]), 200),
        "another path": (get("/.well-known/other"), 404),
        "a trailing slash": (get(JWKS_PATH + "/"), 404),
    }
    for why, (environ, app_status) in declined.items():
        assert direct(app)(environ, b"") is None, why
        assert run_wsgi(app, dict(environ))[0] == app_status, why
