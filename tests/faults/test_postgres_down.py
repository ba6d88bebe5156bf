"""PostgreSQL down: probes tell the truth, keys and discovery keep answering, database calls
answer 503, and the same process serves again by itself when PostgreSQL is back.

One server in production mode (``python -m oidc_server.serve``, as deployed) uses the fault
tests' own PostgreSQL cluster, which the tests stop with ``pg_ctl stop -m immediate`` (every
connection cut, as in a crash) and start again. The engine's ``pool_pre_ping`` replaces the
dead pooled connections afterwards.

What needs only Redis keeps working during the outage: signing out (a session ends in the
token store) and ``HEAD`` role checks already in the shared role cache. A check the cache
cannot answer asks the database, and so answers 503.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from .processes import PostgresInstance, Server, wait_for
from .support import (
    FIRST_PARTY,
    PASSWORD,
    Launcher,
    assert_unavailable,
    bearer,
    client_address,
    login,
    machine_client,
    new_email,
    register,
)


@dataclass
class World:
    server: Server
    postgres: PostgresInstance
    email: str
    user_id: str
    other_user_id: str
    live: dict[str, Any]
    leaving: dict[str, Any]
    machine: Any
    client_token: str
    role_id: str

    @property
    def basic(self) -> tuple[str, str]:
        return (self.machine.client_id, self.machine.client_secret)

    def role_check(self, user_id: str) -> requests.Response:
        return self.server.head(
            f"/api/v1/users/{user_id}/roles/{self.role_id}/", headers=bearer(self.client_token)
        )


@pytest.fixture(scope="module")
def world(launch: Launcher, fault_postgres: PostgresInstance) -> World:
    server = launch.server(launch.redis().url(0), RATELIMIT_ENABLED="true")
    email = new_email("pg-down")
    user_id = register(server, email)
    other_user_id = register(server, new_email("pg-down-other"))
    live, leaving = login(server, email), login(server, email)
    machine = machine_client(launch.database_url, scopes=("roles:read", "roles:write"))
    token = server.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(machine.client_id, machine.client_secret),
        headers=client_address(),
    )
    assert token.status_code == 200, token.text
    client_token = token.json()["access_token"]
    roles = server.get("/api/v1/roles/", headers=bearer(client_token)).json()
    role_id = next(r["id"] for r in roles if r["name"] == "subscriber")
    granted = server.post(f"/api/v1/users/{user_id}/roles/{role_id}", headers=bearer(client_token))
    assert granted.status_code == 201, granted.text
    world = World(
        server, fault_postgres, email, user_id, other_user_id, live, leaving, machine,
        client_token, role_id,
    )  # fmt: skip
    assert world.role_check(user_id).status_code == 200  # now in the role cache
    return world


@pytest.fixture
def postgres_down(world: World) -> Iterator[World]:
    """PostgreSQL stopped for the test, started again afterwards."""
    world.postgres.stop()
    try:
        yield world
    finally:
        world.postgres.start()
        world.server.wait_ready()


def test_probes_keys_and_discovery_while_postgres_is_down(postgres_down: World) -> None:
    server = postgres_down.server
    assert server.get("/health/live").status_code == 200
    ready = server.get("/health/ready")
    assert ready.status_code == 503
    checks = ready.json()["checks"]
    assert checks["database"] is False and checks["token_store"] is True
    jwks = server.get("/.well-known/jwks.json")
    assert jwks.status_code == 200 and jwks.json()["keys"]
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        metadata = server.get(path)
        assert metadata.status_code == 200 and metadata.json()["issuer"]


NEEDS_DATABASE: dict[str, Callable[[World], requests.Response]] = {
    "api: register": lambda w: w.server.post(
        "/api/v1/auth/register",
        json={"login": new_email("pg-outage"), "password": PASSWORD},
        headers=client_address(),
    ),
    "api: login": lambda w: w.server.post(
        "/api/v1/auth/login", json={"login": w.email, "password": PASSWORD},
        headers=client_address(),
    ),
    "token: password grant": lambda w: w.server.post(
        "/oauth/token",
        data={"grant_type": "password", "client_id": FIRST_PARTY, "username": w.email,
              "password": PASSWORD},
        headers=client_address(),
    ),
    # The user is looked up before the token is spent: a 503 leaves it usable (checked below).
    "token: refresh grant": lambda w: w.server.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "client_id": FIRST_PARTY,
              "refresh_token": w.live["refresh_token"]},
        headers=client_address(),
    ),
    "api: refresh": lambda w: w.server.post(
        "/api/v1/auth/refresh",
        json={"refresh_token": w.live["refresh_token"], "grant_type": "refresh_token"},
        headers=client_address(),
    ),
    "api: users/me": lambda w: w.server.get(
        "/api/v1/users/me", headers=bearer(w.live["access_token"])
    ),
    "api: login history": lambda w: w.server.get(
        "/api/v1/users/me/login-history", headers=bearer(w.live["access_token"])
    ),
    "api: change password": lambda w: w.server.post(
        "/api/v1/users/me/change-password",
        json={"old_password": PASSWORD, "new_password1": PASSWORD + " new",
              "new_password2": PASSWORD + " new"},
        headers=bearer(w.live["access_token"]),
    ),
    "oidc: userinfo": lambda w: w.server.get(
        "/oauth/userinfo", headers=bearer(w.live["access_token"])
    ),
    "introspection: user token": lambda w: w.server.post(
        "/oauth/introspect", data={"token": w.live["access_token"]}, auth=w.basic,
        headers=client_address(),
    ),
    "roles: list": lambda w: w.server.get("/api/v1/roles/", headers=bearer(w.client_token)),
    "roles: assign": lambda w: w.server.post(
        f"/api/v1/users/{w.other_user_id}/roles/{w.role_id}", headers=bearer(w.client_token)
    ),
    "roles: HEAD check the cache cannot answer": lambda w: w.role_check(w.other_user_id),
}  # fmt: skip


@pytest.mark.parametrize("call", NEEDS_DATABASE.values(), ids=NEEDS_DATABASE.keys())
def test_a_call_that_needs_the_database_answers_503_while_it_is_down(
    postgres_down: World, call: Callable[[World], requests.Response]
) -> None:
    assert_unavailable(call(postgres_down))


def test_sign_out_and_cached_role_checks_need_no_database(postgres_down: World) -> None:
    w = postgres_down
    assert w.role_check(w.user_id).status_code == 200
    out = w.server.post("/api/v1/auth/logout", headers=bearer(w.leaving["access_token"]))
    assert out.status_code == 204, out.text
    sessions = w.server.get("/api/v1/users/me/sessions", headers=bearer(w.live["access_token"]))
    assert sessions.status_code == 200, sessions.text
    assert w.leaving["access_token"] not in sessions.text
    assert len(sessions.json()) == 1  # the live one; the one signed out has ended


def test_the_same_process_serves_again_when_postgres_is_back(world: World) -> None:
    server = world.server
    worker = server.worker()
    world.postgres.stop()
    try:
        assert_unavailable(
            server.get("/api/v1/users/me", headers=bearer(world.live["access_token"]))
        )
    finally:
        world.postgres.start()

    def serves() -> bool:
        me = server.get("/api/v1/users/me", headers=bearer(world.live["access_token"]))
        assert me.status_code in (200, 503), me.text
        return me.status_code == 200

    wait_for(serves, "users/me answered again after PostgreSQL came back")
    assert server.worker() == worker  # no restart: the pool replaced its dead connections
    assert server.get("/health/ready").status_code == 200
    # The refresh token refused during the outages was never spent.
    refreshed = server.post(
        "/api/v1/auth/refresh",
        json={"refresh_token": world.live["refresh_token"], "grant_type": "refresh_token"},
        headers=client_address(),
    )
    assert refreshed.status_code == 200, refreshed.text
    assert login(server, world.email)["access_token"]
    register(server, new_email("pg-back"))
    # The sign-out made during the outage holds.
    gone = server.get("/api/v1/users/me", headers=bearer(world.leaving["access_token"]))
    assert gone.status_code == 401
    assert world.role_check(world.other_user_id).status_code == 404
