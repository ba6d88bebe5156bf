"""Whatever arrives, the direct answers (oidc_server/direct) leave it to the app; never raise.

Inputs: requests to each direct route with random methods, paths around the real ones,
query strings, content types, ``Authorization`` values (random text, Basic of random bytes,
Bearer of random text) and bodies of random bytes or forms with random fields. None of them
carries credentials that could earn an answer, so every one must be left to the app. With a
real client's credentials or token, an answer given must be a success the app agrees with.
"""

from __future__ import annotations

import base64
from typing import Any

from flask import Flask
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from oidc_server.direct import answerer_for
from oidc_server.rsgi import build_environ, run_wsgi
from tests.conftest import MachineClient
from tests.support.direct import synchronously
from tests.support.roles import machine_token
from tests.support.rsgi_fakes import Headers, Scope

PATHS = st.sampled_from(
    [
        "/oauth/token",
        "/oauth/introspect",
        "/api/v1/users/me",
        "/api/v1/users/00000000-0000-0000-0000-000000000001/roles/"
        "00000000-0000-0000-0000-000000000002",
        "/api/v1/users/me/",
        "/oauth/token/",
        "/api/v1/users/x/roles/y",
    ]
)
TEXT = st.text(max_size=60)
AUTHORIZATION = st.one_of(
    TEXT,
    st.binary(max_size=40).map(lambda raw: "Basic " + base64.b64encode(raw).decode()),
    TEXT.map(lambda text: "Basic " + text),
    TEXT.map(lambda text: "Bearer " + text),
)
FORM_BODY = st.dictionaries(
    st.sampled_from(["grant_type", "scope", "token", "token_type_hint", "x", ""]),
    st.one_of(st.sampled_from(["client_credentials", "access_token", "roles:read"]), TEXT),
    max_size=4,
).map(lambda fields: "&".join(f"{k}={v}" for k, v in fields.items()).encode("utf-8", "replace"))
BODY = st.one_of(st.binary(max_size=80), FORM_BODY)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT"]),
    path=PATHS,
    query=st.sampled_from(["", "a=1"]),
    content_type=st.sampled_from(
        ["application/x-www-form-urlencoded", "application/json", "", "text/plain; x=y"]
    ),
    authorization=st.one_of(st.none(), AUTHORIZATION),
    body=BODY,
)
def test_a_direct_answer_is_given_or_left_never_raised(
    app: Flask,
    method: str,
    path: str,
    query: str,
    content_type: str,
    authorization: str | None,
    body: bytes,
) -> None:
    answer = synchronously(answerer_for(app))
    pairs = [("host", "localhost"), ("content-type", content_type)]
    if authorization is not None:
        pairs.append(("authorization", authorization))
    environ: dict[str, Any] = build_environ(
        Scope(Headers(pairs), method=method, path=path, query_string=query), body
    )

    given_answer = answer(environ, body)

    if given_answer is not None:  # random credentials cannot have earned one
        raise AssertionError(f"answered {given_answer[0]} for {method} {path}")


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
# A request that is answered, so the agreement is checked whatever hypothesis draws.
@example(
    method="POST",
    path="/oauth/token",
    content_type="application/x-www-form-urlencoded",
    bearer=False,
    body=b"grant_type=client_credentials",
)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST"]),
    path=PATHS,
    content_type=st.sampled_from(["application/x-www-form-urlencoded", "application/json"]),
    bearer=st.booleans(),
    body=BODY,
)
def test_with_real_credentials_an_answer_is_a_success_the_app_agrees_with(
    app: Flask,
    machine: MachineClient,
    method: str,
    path: str,
    content_type: str,
    bearer: bool,
    body: bytes,
) -> None:
    token = machine_token(app.test_client(), machine)  # also caches the client
    authorization = f"Bearer {token}" if bearer else machine.basic["Authorization"]
    pairs = [("host", "localhost"), ("content-type", content_type)]
    pairs.append(("authorization", authorization))
    environ = build_environ(Scope(Headers(pairs), method=method, path=path, query_string=""), body)

    given_answer = synchronously(answerer_for(app))(environ, body)

    if given_answer is not None:
        environ["wsgi.input"].seek(0)
        assert given_answer[0] in (200, 404)
        assert given_answer[0] == run_wsgi(app, environ)[0]
