"""The direct answers on a Redis over TLS, behind Sentinel over TLS and on a Redis Cluster,
plain or over TLS (``REDIS_URL`` of ``rediss://``, ``rediss+sentinel://``, ``redis+cluster://``
and ``rediss+cluster://``, each TLS one with its private CA in the query): the worker's
round trips go on its event loop there too (``tokens.loop_redis``,
``tokens.loop_redis_cluster``), so a token, an introspection, ``/users/me``, a role check and
a refresh made together are all answered directly, their reads gathered (on a Cluster, one
pipeline per node); and the production server answers them over HTTP on each."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from flask import Flask

from oidc_server.accounts import create_user
from oidc_server.direct import answerer_for
from oidc_server.rsgi import build_environ
from oidc_server.tokens.loop_redis import LoopRedis
from oidc_server.tokens.loop_redis_cluster import LoopRedisCluster
from tests.conftest import PASSWORD, make_client, password_login, seeded_app
from tests.support.direct import app_answer, form_post, token_claims
from tests.support.redis_deployments import cluster_deployment, free_cluster_port
from tests.support.roles import machine_token, role_id
from tests.support.rsgi_fakes import Headers, Scope
from tests.support.server import production_server
from tests.support.waiting import wait_for


@pytest.fixture(params=["tls", "tls-sentinel", "cluster", "tls-cluster"])
def deployed_app(request: pytest.FixtureRequest, settings: Any) -> Iterator[Flask]:
    """The app on a Redis deployment of this test's own, as ``REDIS_URL`` names it (over TLS
    with the deployment's private certificate authority in the URL's query)."""
    if request.param == "tls":
        url = request.getfixturevalue("redis_over_tls").url(2)
    elif request.param == "tls-sentinel":
        url = request.getfixturevalue("sentinel_over_tls").url(2)
    elif request.param == "cluster":
        ports: list[int] = request.getfixturevalue("emptied_cluster")
        url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)
    else:
        url = request.getfixturevalue("tls_cluster_url")
    with seeded_app(replace(settings, redis_url=url)) as app:
        yield app


def bearer(path: str, token: str, method: str = "GET") -> dict[str, Any]:
    """The environ the production adapter builds for a bearer request without a body."""
    headers = Headers([("host", "localhost"), ("authorization", f"Bearer {token}")])
    return build_environ(Scope(headers, method=method, path=path, query_string=""), b"")


def form(path: str, fields: dict[str, str], machine: Any = None) -> tuple[dict[str, Any], bytes]:
    body = urllib.parse.urlencode(fields).encode()
    return form_post(path, machine, body), body


def test_requests_made_together_are_answered_directly_on_the_deployment(
    deployed_app: Flask,
) -> None:
    app, svc = deployed_app, deployed_app.extensions["oidc"]
    answers = answerer_for(app)
    loop_redis = answers.answerers[0]._trips._loop_redis  # type: ignore[attr-defined]
    assert isinstance(loop_redis, (LoopRedis, LoopRedisCluster))
    machine = make_client(svc)
    with svc.db.session() as session:
        user = create_user(session, svc.hasher, "deployed@example.com", PASSWORD)
    # What the app answers first, as in a worker: the client and the user's card cached.
    machine_access = machine_token(app.test_client(), machine)
    signed_in = password_login(app.test_client(), user.login, PASSWORD).json
    refresh_form = {"grant_type": "refresh_token", "client_id": "cinema-app"}
    first_refresh = {**refresh_form, "refresh_token": signed_in["refresh_token"]}
    status, _, first = app_answer(app, form("/oauth/token", first_refresh)[0])
    assert status == 200, first
    refresh_token = json.loads(first)["refresh_token"]
    role = role_id(svc, "moderator")
    role_check = f"/api/v1/users/{user.id}/roles/{role}"
    assert app_answer(app, bearer(role_check, machine_access, "HEAD"))[0] == 404  # now cached

    requests = [
        form("/oauth/token", {"grant_type": "client_credentials"}, machine),
        form("/oauth/introspect", {"token": machine_access}, machine),
        (bearer("/api/v1/users/me", signed_in["access_token"]), b""),
        (bearer(role_check, machine_access, "HEAD"), b""),
        form("/oauth/token", {**refresh_form, "refresh_token": refresh_token}),
    ]

    async def all_at_once() -> list[Any]:
        return list(await asyncio.gather(*(answers(environ, body) for environ, body in requests)))

    token, introspected, me, held, refreshed = asyncio.run(all_at_once())

    left = [i for i, a in enumerate((token, introspected, me, held, refreshed)) if a is None]
    assert left == []  # none left to the app
    assert [answer[0] for answer in (token, introspected, me, held, refreshed)] == [
        200,
        200,
        200,
        404,
        200,
    ]
    assert token_claims(app, token[2])["client_id"] == machine.client_id
    assert json.loads(introspected[2])["active"] is True
    assert json.loads(me[2])["login"] == user.login
    assert token_claims(app, refreshed[2])["sub"] == str(user.id)
    # The spent token again: the app finds the reuse and ends the session.
    again, body = form("/oauth/token", {**refresh_form, "refresh_token": refresh_token})
    assert asyncio.run(answers(again, body)) is None
    status, _, refused = app_answer(app, again)
    assert status == 400 and json.loads(refused)["error"] == "invalid_grant"
    successor = json.loads(refreshed[2])["refresh_token"]
    status, _, _ = app_answer(
        app, form("/oauth/token", {**refresh_form, "refresh_token": successor})[0]
    )
    assert status == 400  # the session ended with the reuse


def test_the_production_server_answers_over_http_on_the_deployment(
    deployed_app: Flask, tmp_path: Path
) -> None:
    svc = deployed_app.extensions["oidc"]
    machine = make_client(svc)
    with svc.db.session() as session:
        user = create_user(session, svc.hasher, "over-http@example.com", PASSWORD)
    role = role_id(svc, "moderator")
    basic = (machine.client_id, machine.client_secret)
    public = {"client_id": "cinema-app"}
    # The app's settings: its REDIS_URL is the deployment's.
    with production_server(svc.settings, tmp_path) as server:

        def call(method: str, path: str, **kwargs: Any) -> requests.Response:
            return requests.request(method, server.url + path, timeout=30, **kwargs)

        def token(_: int) -> requests.Response:
            form = {"grant_type": "client_credentials"}
            return call("POST", "/oauth/token", data=form, auth=basic)

        with ThreadPoolExecutor(8) as pool:
            tokens = list(pool.map(token, range(16)))
        assert [t.status_code for t in tokens] == [200] * 16
        jwks = jwt.PyJWKClient(server.url + "/.well-known/jwks.json")
        access = tokens[-1].json()["access_token"]
        claims = jwt.decode(
            access,
            jwks.get_signing_key_from_jwt(access).key,
            algorithms=["RS256"],
            audience=svc.settings.access_token_audience,
            issuer=svc.settings.oidc_issuer,
        )
        assert claims["client_id"] == machine.client_id
        introspected = call("POST", "/oauth/introspect", data={"token": access}, auth=basic)
        assert introspected.json()["active"] is True
        bearer = {"Authorization": f"Bearer {access}"}
        held = call("HEAD", f"/api/v1/users/{user.id}/roles/{role}", headers=bearer)
        assert held.status_code == 404

        login = {**public, "grant_type": "password", "username": user.login, "password": PASSWORD}
        signed_in = call("POST", "/oauth/token", data=login).json()
        users_bearer = {"Authorization": f"Bearer {signed_in['access_token']}"}
        me = call("GET", "/api/v1/users/me", headers=users_bearer)
        assert me.status_code == 200 and me.json()["login"] == user.login
        chain = [signed_in["refresh_token"]]
        for _ in range(3):
            form = {**public, "grant_type": "refresh_token", "refresh_token": chain[-1]}
            rotated = call("POST", "/oauth/token", data=form)
            assert rotated.status_code == 200, rotated.text
            chain.append(rotated.json()["refresh_token"])
        form = {**public, "grant_type": "refresh_token", "refresh_token": chain[0]}
        reused = call("POST", "/oauth/token", data=form)
        assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
    assert '"level": "error"' not in server.log.read_text()


def test_a_cluster_not_up_yet_is_waited_for_and_then_served(settings: Any, tmp_path: Path) -> None:
    # A Cluster's client reads the slot map as it is made, so a worker built while no node
    # answers used to exit, and granian, finding a crash loop, exited too. Now the worker is
    # alive and not ready, and serves once the Cluster answers: same process, no respawn.
    ports = [free_cluster_port() for _ in range(3)]
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in ports)
    with seeded_app(settings) as app:  # the database the server will find
        machine = make_client(app.extensions["oidc"])
    basic = (machine.client_id, machine.client_secret)
    token_request = {"grant_type": "client_credentials"}
    with production_server(
        replace(settings, redis_url=url), tmp_path, until="/health/live"
    ) as server:
        ready = requests.get(server.url + "/health/ready", timeout=10)
        refused = requests.post(
            server.url + "/oauth/token", data=token_request, auth=basic, timeout=10
        )
        assert ready.status_code == 503 and ready.json()["checks"]["token_store"] is False
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "1"
        assert refused.json()["error"] == "temporarily_unavailable"

        with cluster_deployment(tmp_path / "cluster", ports=ports):
            wait_for(
                lambda: requests.get(server.url + "/health/ready", timeout=10).ok,
                "the server ready once the Cluster answers",
            )
            token = requests.post(
                server.url + "/oauth/token", data=token_request, auth=basic, timeout=10
            )
            assert token.status_code == 200, token.text
    log = server.log.read_text()
    assert "Redis cannot be reached yet" in log and "Redis reached: serving" in log
    assert "Respawning" not in log and '"level": "error"' not in log
