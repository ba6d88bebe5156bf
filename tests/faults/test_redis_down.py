"""Redis down: whatever needs it answers 503 at once, nothing is accepted unchecked, and the
same process serves again by itself when Redis is back.

One server in production mode (rate limits on, as deployed) uses a Redis of its own,
which the tests kill (connections refused) or freeze with SIGSTOP (connections hang). Redis
keeps its data over the outage (AOF, fsync always), as production's does.

What this pins down:

- Everything that must consult the token store (sessions, refresh tokens, the denylist, the
  failed-login backoff) answers 503 ``temporarily_unavailable`` with ``Retry-After``: a token
  is never accepted without its revocation check, so a revoked one is refused during the
  outage too. That includes ``HEAD`` role checks: their bearer check reads the denylist
  before the role cache (which alone would fall back to the database) is ever asked.
- What needs only the database or the keys keeps working: discovery, JWKS, liveness and
  registration. Client authentication does not (it checks the clients' generation in the
  store), so neither does any grant.
- Rate limits: when its Redis is unreachable flask-limiter counts in the worker's memory
  (``in_memory_fallback_enabled``), so logins stay limited (per worker rather than
  cluster-wide) and are answered 503 anyway, before the password is checked, because the
  per-account backoff lives in the token store. Sign-in is never unlimited.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from .processes import PostgresInstance, RedisInstance, Server, wait_for
from .support import (
    FIRST_PARTY,
    PASSWORD,
    InFlight,
    Launcher,
    assert_unavailable,
    bearer,
    client_address,
    login,
    machine_client,
    new_email,
    register,
    table_locked,
)

#: Logins per minute per address; the rate-limit test goes past it during an outage.
LOGIN_LIMIT = 3


@dataclass
class World:
    """The server, its Redis, and tokens of every kind obtained while Redis was up."""

    server: Server
    redis: RedisInstance
    email: str
    user_id: str
    live: dict[str, Any]
    revoked: dict[str, Any]
    machine: Any
    client_token: str
    revoked_client_token: str
    role_id: str

    @property
    def basic(self) -> tuple[str, str]:
        return (self.machine.client_id, self.machine.client_secret)


def _client_token(server: Server, machine: Any) -> str:
    response = server.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(machine.client_id, machine.client_secret),
        headers=client_address(),
    )
    assert response.status_code == 200, response.text
    return response.json()["access_token"]


@pytest.fixture(scope="module")
def world(launch: Launcher) -> World:
    redis = launch.redis()
    server = launch.server(
        redis.url(0), RATELIMIT_ENABLED="true", RATELIMIT_LOGIN=f"{LOGIN_LIMIT} per minute"
    )
    email = new_email("redis-down")
    user_id = register(server, email)
    live = login(server, email)
    revoked = login(server, email)
    out = server.post("/api/v1/auth/logout", headers=bearer(revoked["access_token"]))
    assert out.status_code == 204, out.text
    machine = machine_client(launch.database_url)
    client_token = _client_token(server, machine)
    revoked_client_token = _client_token(server, machine)
    gone = server.post(
        "/oauth/revoke",
        data={"token": revoked_client_token},
        auth=(machine.client_id, machine.client_secret),
    )
    assert gone.status_code == 200, gone.text
    roles = server.get("/api/v1/roles/", headers=bearer(client_token))
    assert roles.status_code == 200, roles.text
    role_id = next(r["id"] for r in roles.json() if r["name"] == "subscriber")
    world = World(
        server, redis, email, user_id, live, revoked, machine, client_token,
        revoked_client_token, role_id,
    )  # fmt: skip
    # While Redis is up the revoked tokens are refused and the live ones accepted.
    for token, status in ((revoked["access_token"], 401), (live["access_token"], 200)):
        assert server.get("/api/v1/users/me", headers=bearer(token)).status_code == status
    assert server.get("/api/v1/roles/", headers=bearer(revoked_client_token)).status_code == 401
    return world


@pytest.fixture
def redis_down(world: World) -> Iterator[World]:
    """Redis killed for the test; started again (same port, same data) afterwards."""
    worker = world.server.worker()
    world.redis.stop()
    try:
        yield world
    finally:
        world.redis.start()
        world.server.wait_ready()
    assert world.server.worker() == worker, "the worker was replaced during the outage"


# Every call that needs the token store -----------------------------------------------------


def _password_grant(w: World, password: str = PASSWORD) -> requests.Response:
    return w.server.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "client_id": FIRST_PARTY,
            "username": w.email,
            "password": password,
        },
        headers=client_address(),
    )


def _refresh_grant(w: World) -> requests.Response:
    return w.server.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "client_id": FIRST_PARTY,
            "refresh_token": w.live["refresh_token"],
        },
        headers=client_address(),
    )


def _api_login(w: World, password: str = PASSWORD) -> requests.Response:
    return w.server.post(
        "/api/v1/auth/login",
        json={"login": w.email, "password": password},
        headers=client_address(),
    )


def _introspect(w: World, token: str) -> requests.Response:
    return w.server.post(
        "/oauth/introspect", data={"token": token}, auth=w.basic, headers=client_address()
    )


def _role_check(w: World) -> requests.Response:
    return w.server.head(
        f"/api/v1/users/{w.user_id}/roles/{w.role_id}/", headers=bearer(w.client_token)
    )


NEEDS_REDIS: dict[str, Callable[[World], requests.Response]] = {
    "token: password grant": _password_grant,
    # The per-account backoff is asked before the password is: no guessing during an outage.
    "token: password grant, wrong password": lambda w: _password_grant(w, "wrong password 1234"),
    "token: refresh grant": _refresh_grant,
    # Client authentication checks the clients' generation in the store (clients.ClientCache):
    # a client disabled meanwhile must not be served from a worker's stale copy.
    "token: client credentials": lambda w: w.server.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=w.basic,
        headers=client_address(),
    ),
    "api: login": _api_login,
    "api: login, wrong password": lambda w: _api_login(w, "wrong password 1234"),
    "api: refresh": lambda w: w.server.post(
        "/api/v1/auth/refresh",
        json={"refresh_token": w.live["refresh_token"], "grant_type": "refresh_token"},
        headers=client_address(),
    ),
    "api: logout": lambda w: w.server.post(
        "/api/v1/auth/logout", headers=bearer(w.live["access_token"])
    ),
    "api: users/me": lambda w: w.server.get(
        "/api/v1/users/me", headers=bearer(w.live["access_token"])
    ),
    "api: users/me, revoked token": lambda w: w.server.get(
        "/api/v1/users/me", headers=bearer(w.revoked["access_token"])
    ),
    "api: sessions": lambda w: w.server.get(
        "/api/v1/users/me/sessions", headers=bearer(w.live["access_token"])
    ),
    "oidc: userinfo": lambda w: w.server.get(
        "/oauth/userinfo", headers=bearer(w.live["access_token"])
    ),
    "introspection: user token": lambda w: _introspect(w, w.live["access_token"]),
    "introspection: revoked user token": lambda w: _introspect(w, w.revoked["access_token"]),
    "introspection: revoked client token": lambda w: _introspect(w, w.revoked_client_token),
    "introspection: refresh token": lambda w: _introspect(w, w.live["refresh_token"]),
    "revocation: refresh token": lambda w: w.server.post(
        "/oauth/revoke",
        data={"token": w.live["refresh_token"], "client_id": FIRST_PARTY},
        headers=client_address(),
    ),
    "roles: list": lambda w: w.server.get("/api/v1/roles/", headers=bearer(w.client_token)),
    "roles: list, revoked client token": lambda w: w.server.get(
        "/api/v1/roles/", headers=bearer(w.revoked_client_token)
    ),
    "roles: HEAD check": _role_check,
}


@pytest.mark.parametrize("call", NEEDS_REDIS.values(), ids=NEEDS_REDIS.keys())
def test_a_call_that_needs_redis_answers_503_while_it_is_down(
    redis_down: World, call: Callable[[World], requests.Response]
) -> None:
    assert_unavailable(call(redis_down))


def test_nothing_done_during_the_outage_took_effect(world: World) -> None:
    """The refused logouts, refreshes and revocations above changed nothing."""
    session = world.server.get("/api/v1/users/me", headers=bearer(world.live["access_token"]))
    assert session.status_code == 200, session.text
    refreshed = _refresh_grant(world)
    assert refreshed.status_code == 200, refreshed.text
    world.live = refreshed.json()


# What needs no Redis ---------------------------------------------------------------------


def test_discovery_keys_liveness_and_registration_work_without_redis(redis_down: World) -> None:
    server = redis_down.server
    assert server.get("/health/live").status_code == 200
    ready = server.get("/health/ready")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["token_store"] is False and checks["database"] is True
    assert server.get("/.well-known/jwks.json").json()["keys"]
    assert server.get("/.well-known/openid-configuration").json()["issuer"]
    # Registration is a database write only (its rate limit counts in memory meanwhile).
    created = server.post(
        "/api/v1/auth/register",
        json={"login": new_email("during-outage"), "password": PASSWORD},
        headers=client_address(),
    )
    assert created.status_code == 201, created.text


# Rate limits -------------------------------------------------------------------------------


def test_logins_stay_rate_limited_while_the_limiter_storage_is_down(redis_down: World) -> None:
    address = client_address()
    body = {"login": redis_down.email, "password": PASSWORD}
    for _ in range(LOGIN_LIMIT):
        attempt = redis_down.server.post("/api/v1/auth/login", json=body, headers=address)
        assert_unavailable(attempt)  # counted by the in-memory fallback, refused by the store
    refused = redis_down.server.post("/api/v1/auth/login", json=body, headers=address)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert refused.json()["error"] == "too_many_requests"


def test_redis_lost_in_the_middle_of_a_failed_login_is_no_500(
    world: World, fault_postgres: PostgresInstance
) -> None:
    """The limits were checked while Redis was up; it dies before the failure is counted.

    The failed attempt is counted after the view answers (``deduct_when``), so here the
    limiter meets the outage only then, in an ``after_request`` hook. The wrong password was
    checked and recorded by then: the answer is the 401 the caller earned.
    """
    with table_locked(fault_postgres, "login_history") as waiting:
        attempt = InFlight(lambda: _api_login(world, "wrong password 1234"))
        wait_for(waiting, "the failed login writing its history row")
        world.redis.stop()
    try:
        answered = attempt.outcome()
    finally:
        world.redis.start()
        world.server.wait_ready()
    assert isinstance(answered, requests.Response), answered
    assert answered.status_code == 401, answered.text


# A hung Redis ------------------------------------------------------------------------------


def test_a_hung_redis_answers_503_and_the_server_recovers(world: World) -> None:
    """SIGSTOP: connections are accepted but never answered; the client's timeout ends it."""
    worker = world.server.worker()
    world.redis.freeze()
    try:
        assert_unavailable(
            world.server.get("/api/v1/users/me", headers=bearer(world.live["access_token"]))
        )
    finally:
        world.redis.thaw()
    wait_for(world.server.answers, "ready again after the freeze")
    me = world.server.get("/api/v1/users/me", headers=bearer(world.live["access_token"]))
    assert me.status_code == 200, me.text
    assert world.server.worker() == worker


# Back again --------------------------------------------------------------------------------


def test_the_same_process_serves_again_when_redis_is_back(world: World) -> None:
    server = world.server
    assert server.process is not None
    master, worker = server.process.pid, server.worker()
    world.redis.stop()
    assert_unavailable(server.get("/api/v1/users/me", headers=bearer(world.live["access_token"])))
    world.redis.start()

    def serves() -> bool:
        me = server.get("/api/v1/users/me", headers=bearer(world.live["access_token"]))
        assert me.status_code in (200, 503), me.text
        return me.status_code == 200

    wait_for(serves, "users/me answered again after Redis came back")
    assert server.process.pid == master and server.process.poll() is None
    assert server.worker() == worker  # no restart: the same worker reconnected
    assert server.get("/health/ready").status_code == 200
    # Revocations made before the outage still hold; everything else works again.
    revoked = server.get("/api/v1/users/me", headers=bearer(world.revoked["access_token"]))
    assert revoked.status_code == 401
    introspected = _introspect(world, world.revoked_client_token)
    assert introspected.status_code == 200 and introspected.json() == {"active": False}
    assert _role_check(world).status_code == 404  # the user does not hold the role
    fresh = login(server, world.email)
    refreshed = server.post(
        "/api/v1/auth/refresh",
        json={"refresh_token": fresh["refresh_token"], "grant_type": "refresh_token"},
        headers=client_address(),
    )
    assert refreshed.status_code == 200, refreshed.text
    assert _api_login(world, "wrong password 1234").status_code == 401
