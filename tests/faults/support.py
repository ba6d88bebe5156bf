"""What the fault tests share: the servers' environment, accounts, and the 503 they expect."""

from __future__ import annotations

import itertools
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import requests

from oidc_server.clients import create_client
from oidc_server.db import Database

from .processes import PostgresInstance, RedisInstance, Server

PASSWORD = "fault tolerant password 1234"
SECRET_KEY = "fault-tests-secret-" + "f" * 32
ISSUER = "http://oidc.faults.test"
FIRST_PARTY = "cinema-app"
#: The database (on the fault tests' own PostgreSQL) that every server under test uses.
FAULTS_DATABASE = "faults"
#: Variables of the test runner's environment that a server under test may inherit.
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TMPDIR", "VIRTUAL_ENV")
_addresses = itertools.count(1)
_folders = itertools.count(1)


def server_env(
    folder: Path, database_url: str, redis_url: str, signing_key: Path, **extra: str
) -> dict[str, str]:
    """A production-mode environment (``APP_ENV=production``) for one server under test."""
    own = folder / f"server-{next(_folders)}"
    (own / "keys").mkdir(parents=True)
    shutil.copy2(signing_key, own / "keys" / signing_key.name)
    env = {k: v for k, v in os.environ.items() if k in _INHERITED}
    env.update(
        APP_ENV="production",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        SECRET_KEY=SECRET_KEY,
        OIDC_ISSUER=ISSUER,
        OIDC_KEYS_DIR=str(own / "keys"),
        INSTANCE_DIR=str(own / "instance"),
        HOST="127.0.0.1",
        WEB_CONCURRENCY="1",
        WEB_THREADS="4",
        # Cheap argon2id so that the tests are about faults, not hashing.
        PASSWORD_HASH_TIME_COST="1",
        PASSWORD_HASH_MEMORY_COST="1024",
        PASSWORD_HASH_PARALLELISM="1",
        RATELIMIT_ENABLED="false",
        # Each test signs in from its own forwarded address, so per-address limits of one
        # test never reach another.
        TRUST_PROXY_HEADERS="true",
        LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


def client_address() -> dict[str, str]:
    """Headers that make a request come from a client address no other request used."""
    n = next(_addresses)
    return {"X-Forwarded-For": f"203.0.113.{n % 250 + 1}"}


def new_email(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}@example.com"


def register(server: Server, email: str) -> str:
    """Create an account through the API; returns its id."""
    created = server.post(
        "/api/v1/auth/register",
        json={"login": email, "password": PASSWORD},
        headers=client_address(),
    )
    assert created.status_code == 201, created.text
    return str(created.json()["id"])


def login(server: Server, email: str) -> dict[str, Any]:
    """Sign in through the API; returns the token response."""
    response = server.post(
        "/api/v1/auth/login",
        json={"login": email, "password": PASSWORD},
        headers=client_address(),
    )
    assert response.status_code == 200, response.text
    return response.json()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **client_address()}


def machine_client(database_url: str, scopes: tuple[str, ...] = ("roles:read",)) -> Any:
    """A confidential client with ``client_credentials`` (and the right to introspect)."""
    database = Database(database_url)
    try:
        with database.session() as session:
            made = create_client(
                session,
                SECRET_KEY,
                name=f"faults-{uuid.uuid4().hex[:6]}",
                grant_types=["client_credentials"],
                scopes=list(scopes),
            )
    finally:
        database.dispose()
    return made


def assert_unavailable(response: requests.Response) -> None:
    """503 with ``Retry-After`` and, except for HEAD, the JSON error body."""
    assert response.status_code == 503, f"{response.status_code}: {response.text[:500]}"
    assert int(response.headers["Retry-After"]) > 0
    if response.request.method != "HEAD":
        assert response.headers["Content-Type"].startswith("application/json")
        assert response.json()["error"] == "temporarily_unavailable"


class Launcher:
    """Starts a module's Redis and app server processes and stops them all at the module's end."""

    def __init__(self, folder: Path, database_url: str, signing_key: Path) -> None:
        self.folder = folder
        self.database_url = database_url
        self.signing_key = signing_key
        self._redis: list[RedisInstance] = []
        self._servers: list[Server] = []

    def redis(self) -> RedisInstance:
        instance = RedisInstance(self.folder / f"redis-{len(self._redis)}")
        self._redis.append(instance)
        instance.start()
        return instance

    def server(self, redis_url: str, **env: str) -> Server:
        server = Server(
            server_env(self.folder, self.database_url, redis_url, self.signing_key, **env),
            self.folder,
        )
        self._servers.append(server)
        server.start()
        return server

    def close(self) -> None:
        for server in self._servers:
            server.stop()
        for instance in self._redis:
            if instance.process is not None:
                instance.thaw()  # a frozen server cannot be killed cleanly otherwise
            instance.stop()


class InFlight:
    """One HTTP request running in a thread, so the test can act while it waits."""

    def __init__(self, send: Callable[[], requests.Response]) -> None:
        self._outcome: requests.Response | BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(send,), daemon=True)
        self._thread.start()

    def _run(self, send: Callable[[], requests.Response]) -> None:
        try:
            self._outcome = send()
        except BaseException as exc:  # the worker was killed: the connection broke
            self._outcome = exc

    def outcome(self) -> requests.Response | BaseException | None:
        self._thread.join(timeout=60)
        assert not self._thread.is_alive(), "the request never finished"
        return self._outcome

    def assert_cut_off(self) -> None:
        """The worker died before answering: the client saw the connection break."""
        outcome = self.outcome()
        assert isinstance(outcome, requests.ConnectionError), (
            f"the request was answered ({outcome!r}): the kill came too late"
        )


@contextmanager
def table_locked(postgres: PostgresInstance, table: str) -> Iterator[Callable[[], list[int]]]:
    """Hold an exclusive lock on ``table``; yields "which backends wait for it"."""
    dsn = postgres.dsn(FAULTS_DATABASE)
    with psycopg.connect(dsn) as holder, psycopg.connect(dsn) as watcher:
        holder.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")

        def waiting() -> list[int]:
            rows = watcher.execute(
                "SELECT pid FROM pg_locks WHERE NOT granted AND relation = %s::regclass",
                (table,),
            ).fetchall()
            watcher.commit()
            return [row[0] for row in rows]

        try:
            yield waiting
        finally:
            holder.rollback()
