"""A worker killed (SIGKILL) in the middle of registration, login or refresh leaves no
half-created user, no session that login history does not show, and no refresh token spent
twice.

The app runs under the production server (granian) with one worker that runs one request at a
time (``WEB_THREADS=1``), against the fault tests' own PostgreSQL and a Redis of this module's
own. The kill lands mid-operation deterministically, without any hook in the app: the test
makes the step it aims at wait, sees the worker waiting there, and kills it. granian starts a
new worker in its place, but stops altogether if that one dies too within 5.5 s: before each
kill the test lets the previous replacement grow older than that.

- A database step waits on a table the test has locked (``LOCK TABLE ... IN ACCESS
  EXCLUSIVE MODE`` in an open transaction); ``pg_locks`` shows the worker's backend waiting.
- A Redis step waits on ``CLIENT PAUSE ... WRITE``; ``CLIENT LIST`` shows the worker's
  connection blocked (flag ``b``). The app's Redis client gives up after 2 s, so the kill
  comes first.

Afterwards the lock is released (or Redis unpaused), and the test waits until the killed
worker's database backend has ended before it looks: only then can nothing more happen.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
import redis
import requests

from ..support.op import hidden_fields
from .processes import PostgresInstance, RedisInstance, Server, wait_for
from .support import (
    FAULTS_DATABASE,
    FIRST_PARTY,
    PASSWORD,
    InFlight,
    Launcher,
    bearer,
    client_address,
    login,
    new_email,
    register,
    table_locked,
)


@dataclass
class Crash:
    server: Server
    redis: RedisInstance
    postgres: PostgresInstance

    def sql(self) -> psycopg.Connection[Any]:
        return psycopg.connect(self.postgres.dsn(FAULTS_DATABASE))

    def scalar(self, query: str, *params: Any) -> Any:
        with self.sql() as conn:
            row = conn.execute(query, params).fetchone()
        return None if row is None else row[0]


@pytest.fixture(scope="module")
def crash(launch: Launcher, fault_postgres: PostgresInstance) -> Crash:
    redis_instance = launch.redis()
    server = launch.server(redis_instance.url(0), WEB_THREADS="1")
    return Crash(server, redis_instance, fault_postgres)


def backend_ended(crash: Crash, pid: int) -> bool:
    return crash.scalar("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", pid) == 0


@contextmanager
def writes_paused(crash: Crash) -> Iterator[Callable[[], bool]]:
    """Redis holds every write (``CLIENT PAUSE WRITE``); yields "is a client blocked"."""
    control = crash.redis.client()
    control.client_pause(60_000, all=False)

    def blocked() -> bool:
        return any("b" in client["flags"] for client in control.client_list())

    try:
        yield blocked
    finally:
        control.client_unpause()
        control.close()


def kill_mid_request(
    crash: Crash, send: Callable[[], requests.Response], waiting: Callable[[], Any], where: str
) -> Any:
    """Send a request, wait until it waits at ``where``, SIGKILL the worker."""
    # Before the request: the Redis steps wait only 2 s, the kill must come within them.
    crash.server.wait_until_killable()
    request = InFlight(send)
    found = wait_for(waiting, f"the request waiting {where}")
    crash.server.kill_worker()
    request.assert_cut_off()
    return found


def live_sessions(crash: Crash, user_id: str) -> dict[str, dict[str, str]]:
    """The user's sessions in the token store, found by scanning (not through its index)."""
    client = crash.redis.client()
    found = {}
    for key in client.scan_iter(match="oidc:*:session", count=1000):
        fields = {k.decode(): v.decode() for k, v in client.hgetall(key).items()}
        if fields.get("user_id") == user_id:
            found[fields["sid"]] = fields
    client.close()
    return found


def history_sessions(crash: Crash, user_id: str) -> set[str]:
    with crash.sql() as conn:
        rows = conn.execute(
            "SELECT session_id FROM login_history WHERE user_id = %s AND success",
            (user_id,),
        ).fetchall()
    return {row[0] for row in rows}


def api_login(crash: Crash, email: str) -> Callable[[], requests.Response]:
    return lambda: crash.server.post(
        "/api/v1/auth/login",
        json={"login": email, "password": PASSWORD},
        headers=client_address(),
    )


def refresh(crash: Crash, refresh_token: str) -> requests.Response:
    return crash.server.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "client_id": FIRST_PARTY,
            "refresh_token": refresh_token,
        },
        headers=client_address(),
    )


# Registration ------------------------------------------------------------------------------


def test_a_registration_killed_inside_its_insert_creates_nothing(crash: Crash) -> None:
    email = new_email("crash-register")
    send = lambda: crash.server.post(  # noqa: E731
        "/api/v1/auth/register",
        json={"login": email, "password": PASSWORD},
        headers=client_address(),
    )
    with table_locked(crash.postgres, "users") as waiting:
        (backend,) = kill_mid_request(crash, send, waiting, "to insert into users")
    wait_for(lambda: backend_ended(crash, backend), "the killed worker's backend to end")
    crash.server.wait_ready()
    assert crash.scalar("SELECT count(*) FROM users WHERE login = %s", email) == 0
    # Nothing half-made stands in the way: the same registration now simply works.
    user_id = register(crash.server, email)
    assert crash.scalar("SELECT count(*) FROM users WHERE login = %s", email) == 1
    assert live_sessions(crash, user_id) == {}


# Login -------------------------------------------------------------------------------------


def test_a_login_killed_while_writing_its_history_leaves_no_session(crash: Crash) -> None:
    email = new_email("crash-login-db")
    user_id = register(crash.server, email)
    with table_locked(crash.postgres, "login_history") as waiting:
        (backend,) = kill_mid_request(
            crash, api_login(crash, email), waiting, "to insert into login_history"
        )
    wait_for(lambda: backend_ended(crash, backend), "the killed worker's backend to end")
    crash.server.wait_ready()
    assert history_sessions(crash, user_id) == set()
    # A session nobody can see in the history (and whose tokens nobody received) is an orphan.
    assert live_sessions(crash, user_id) == {}
    # The next login works, and its session is in the history.
    tokens = login(crash.server, email)
    sessions = live_sessions(crash, user_id)
    assert len(sessions) == 1 and set(sessions) == history_sessions(crash, user_id)
    me = crash.server.get("/api/v1/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200


def test_a_login_killed_while_starting_its_session_leaves_no_unrecorded_session(
    crash: Crash,
) -> None:
    email = new_email("crash-login-redis")
    user_id = register(crash.server, email)
    with writes_paused(crash) as blocked:
        kill_mid_request(crash, api_login(crash, email), blocked, "on the paused Redis")
    crash.server.wait_ready()
    # Every session the store holds for the user has its history row (there may be a history
    # row whose session never started: its tokens were never handed out).
    assert set(live_sessions(crash, user_id)) <= history_sessions(crash, user_id)
    tokens = login(crash.server, email)
    assert set(live_sessions(crash, user_id)) <= history_sessions(crash, user_id)
    assert crash.server.get("/api/v1/users/me", headers=bearer(tokens["access_token"])).ok


def test_a_login_refused_because_redis_is_down_leaves_no_history(crash: Crash) -> None:
    """The history row committed before the session start is withdrawn when the start fails.

    (With rate limits on, as in production, the failed-login backoff already refuses the
    login before the password is checked; this server runs without them.)
    """
    email = new_email("crash-login-down")
    user_id = register(crash.server, email)
    crash.redis.stop()
    try:
        refused = api_login(crash, email)()
    finally:
        crash.redis.start()
    assert refused.status_code == 503, refused.text
    assert history_sessions(crash, user_id) == set()
    crash.server.wait_ready()
    login(crash.server, email)
    assert set(live_sessions(crash, user_id)) == history_sessions(crash, user_id)


def form_login(crash: Crash, email: str) -> Callable[[], requests.Response]:
    """The browser's /login form, its CSRF cookie and token fetched first (before any lock)."""
    browser = requests.Session()
    address = client_address()
    page = browser.get(crash.server.url + "/login", headers=address, timeout=30)
    assert page.status_code == 200
    fields = hidden_fields(page.text)
    return lambda: browser.post(
        crash.server.url + "/login",
        data={**fields, "email": email, "password": PASSWORD},
        headers=address,
        allow_redirects=False,
        timeout=30,
    )


def test_a_browser_login_killed_while_writing_its_history_leaves_no_session(
    crash: Crash,
) -> None:
    email = new_email("crash-form-db")
    user_id = register(crash.server, email)
    send = form_login(crash, email)
    with table_locked(crash.postgres, "login_history") as waiting:
        (backend,) = kill_mid_request(crash, send, waiting, "to insert into login_history")
    wait_for(lambda: backend_ended(crash, backend), "the killed worker's backend to end")
    crash.server.wait_ready()
    assert history_sessions(crash, user_id) == set()
    # The history commits before the browser session starts, so none was left behind.
    assert live_sessions(crash, user_id) == {}
    signed_in = form_login(crash, email)()
    assert signed_in.status_code == 303, signed_in.text
    sessions = live_sessions(crash, user_id)
    assert len(sessions) == 1 and set(sessions) == history_sessions(crash, user_id)


# Refresh -----------------------------------------------------------------------------------


def _spent_at_most_once(crash: Crash, user_id: str, tokens: dict[str, Any]) -> str:
    """Present the refresh token whose rotation was interrupted; it must rotate at most once.

    Returns which case held: "not rotated" (it then works exactly once, and its second use is
    reuse that ends the session) or "rotated" (the killed worker's rotation went through: the
    token is spent, and presenting it is reuse that ends the session).
    """
    old = tokens["refresh_token"]
    first = refresh(crash, old)
    if first.status_code == 200:
        successor = first.json()
        second = refresh(crash, old)
        assert second.status_code == 400 and second.json()["error"] == "invalid_grant"
        # Reuse ended the session: the successor is dead as well.
        assert refresh(crash, successor["refresh_token"]).status_code == 400
        case = "not rotated"
    else:
        assert first.status_code == 400 and first.json()["error"] == "invalid_grant"
        case = "rotated"
    assert live_sessions(crash, user_id) == {}
    me = crash.server.get("/api/v1/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 401
    return case


def test_a_refresh_killed_before_its_rotation_still_works_exactly_once(crash: Crash) -> None:
    email = new_email("crash-refresh-db")
    user_id = register(crash.server, email)
    tokens = login(crash.server, email)
    # Loading the user (and its roles) comes before the rotation; it waits on user_roles.
    with table_locked(crash.postgres, "user_roles") as waiting:
        (backend,) = kill_mid_request(
            crash,
            lambda: refresh(crash, tokens["refresh_token"]),
            waiting,
            "to read user_roles",
        )
    wait_for(lambda: backend_ended(crash, backend), "the killed worker's backend to end")
    crash.server.wait_ready()
    assert _spent_at_most_once(crash, user_id, tokens) == "not rotated"


def test_a_refresh_killed_during_its_rotation_is_spent_at_most_once(crash: Crash) -> None:
    email = new_email("crash-refresh-redis")
    user_id = register(crash.server, email)
    tokens = login(crash.server, email)
    (sid,) = live_sessions(crash, user_id)
    with writes_paused(crash) as blocked:
        kill_mid_request(
            crash, lambda: refresh(crash, tokens["refresh_token"]), blocked, "in the rotation"
        )
    crash.server.wait_ready()
    client: redis.Redis = crash.redis.client()
    unspent = [
        key
        for key in client.scan_iter(match=f"oidc:{{{sid}}}:rt:*")
        if client.hget(key, "spent") == b"0"
    ]
    client.close()
    assert len(unspent) == 1  # the old token, or its successor: never two live ones
    _spent_at_most_once(crash, user_id, tokens)
