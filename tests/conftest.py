"""Shared fixtures: real PostgreSQL and Redis when TEST_DATABASE_URL / TEST_REDIS_URL are set.

CI sets both and must fail, not skip, when either is unreachable. Without them the suite
runs on SQLite and the in-process store (the embedded mode).
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text
from werkzeug.serving import make_server

from oidc_server.app import create_app
from oidc_server.bootstrap import ensure_default_roles, ensure_first_party_client
from oidc_server.clients import create_client
from oidc_server.config import Settings
from oidc_server.db import Database, upgrade
from oidc_server.models import Base
from oidc_server.tokens.memory_store import MemoryTokenStore
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.store import TokenStore

from .faults.processes import RedisInstance
from .support.observing import LogCapture
from .support.redis_deployments import (
    SentinelDeployment,
    TlsRedis,
    cluster_deployment,
    sentinel_deployment,
    tls_redis,
)

TEST_DATABASE_URL = os.environ.get("TEST_DATABASE_URL", "")
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "")
PASSWORD = "correct horse battery staple"


def _reset_postgres_schema(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated database for the whole run: PostgreSQL in CI, else a SQLite file."""
    if TEST_DATABASE_URL:
        try:
            _reset_postgres_schema(TEST_DATABASE_URL)
        except Exception as exc:  # CI must fail loudly, never skip
            pytest.exit(f"TEST_DATABASE_URL is set but unreachable: {exc}", returncode=3)
        url = TEST_DATABASE_URL
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'test.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def redis_client() -> Iterator[redis.Redis | None]:
    if not TEST_REDIS_URL:
        yield None
        return
    client = redis.Redis.from_url(TEST_REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.exit(f"TEST_REDIS_URL is set but unreachable: {exc}", returncode=3)
    yield client
    client.close()


@pytest.fixture
def empty_redis(redis_client: redis.Redis | None) -> redis.Redis:
    """The test Redis database, emptied; the test is skipped without TEST_REDIS_URL (CI always
    sets it)."""
    if redis_client is None:
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")
    redis_client.flushdb()
    return redis_client


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisInstance]:
    """A redis-server of this test's own on a spare port, to freeze, stop or kill."""
    instance = RedisInstance(tmp_path / "redis")
    instance.start()
    yield instance
    if instance.process is not None:
        instance.thaw()  # as tests/faults does before stopping one
    instance.stop()


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[SentinelDeployment]:
    """A master and its replica behind one Sentinel of this test's own."""
    with sentinel_deployment(tmp_path / "sentinel") as deployment:
        yield deployment


@pytest.fixture
def sentinel_over_tls(tmp_path: Path) -> Iterator[SentinelDeployment]:
    """As ``sentinel``, every one of them speaking TLS only (``rediss+sentinel://``)."""
    with sentinel_deployment(tmp_path / "tls-sentinel", tls=True) as deployment:
        yield deployment


@pytest.fixture
def redis_over_tls(tmp_path: Path) -> Iterator[TlsRedis]:
    """A redis-server of this test's own that speaks TLS only."""
    with tls_redis(tmp_path / "tls-redis") as server:
        yield server


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[list[int]]:
    """A three-node Redis Cluster of this test's own; its nodes' ports."""
    with cluster_deployment(tmp_path / "cluster") as ports:
        yield ports


@pytest.fixture(scope="session")
def shared_redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """A three-node Redis Cluster for the run, for tests that stop or move nothing in it; its
    nodes' ports."""
    with cluster_deployment(tmp_path_factory.mktemp("shared-cluster")) as ports:
        yield ports


@pytest.fixture
def emptied_cluster(shared_redis_cluster: list[int]) -> list[int]:
    """The run's shared Cluster, emptied for this test; its nodes' ports."""
    for port in shared_redis_cluster:
        with redis.Redis(port=port) as node:
            node.flushdb()
    return shared_redis_cluster


@pytest.fixture(scope="session")
def _shared_tls_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("tls-cluster")
    with cluster_deployment(folder, tls=True) as ports:
        nodes = ",".join(f"127.0.0.1:{port}" for port in ports)
        yield f"rediss+cluster://{nodes}?ssl_ca_certs={folder / 'tls' / 'cert.pem'}"


@pytest.fixture
def tls_cluster_url(_shared_tls_cluster: str) -> str:
    """The ``REDIS_URL`` of a three-node Redis Cluster that speaks TLS only, with its private
    certificate authority (``rediss+cluster://...?ssl_ca_certs=``), emptied for this test.
    One cluster serves the run: the tests that use it stop no node."""
    from oidc_server.tokens import redis_connect

    client = redis_connect.connect(_shared_tls_cluster)
    client.flushdb(target_nodes="primaries")
    client.close()
    return _shared_tls_cluster


@pytest.fixture(scope="session")
def signing_key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One RSA key for the run: generating 2048-bit keys per test would dominate the suite."""
    from oidc_server.keys import write_new_key

    return write_new_key(tmp_path_factory.mktemp("keys")).path


@pytest.fixture
def settings(tmp_path: Path, database_url: str, signing_key_file: Path) -> Settings:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    shutil.copy2(signing_key_file, keys_dir / signing_key_file.name)
    return make_settings(tmp_path, database_url)


def make_settings(folder: Path, database_url: str) -> Settings:
    """Test settings: keys and instance files under ``folder``, rate limits off."""
    return Settings.from_env(
        {},
        app_env="test",
        database_url=database_url,
        redis_url=TEST_REDIS_URL,
        oidc_issuer="http://localhost",
        oidc_keys_dir=str(folder / "keys"),
        instance_dir=str(folder / "instance"),
        secret_key="test-secret-key-" + "x" * 32,
        # Cheap argon2 so the suite is fast; the parameters are still argon2id.
        password_hash_time_cost=1,
        password_hash_memory_cost=1024,
        password_hash_parallelism=1,
        ratelimit_enabled=False,
    )


def _clean_database(url: str) -> None:
    database = Database(url)
    with database.session() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
    database.dispose()


@pytest.fixture
def token_store(redis_client: redis.Redis | None) -> Iterator[TokenStore]:
    """The store the app uses: Redis when TEST_REDIS_URL is set, else in-process."""
    if redis_client is None:
        yield MemoryTokenStore()
        return
    redis_client.flushdb()
    yield RedisTokenStore(redis_client)
    redis_client.flushdb()


@contextmanager
def seeded_app(settings: Settings, store: TokenStore | None = None) -> Iterator[Flask]:
    """An app on an emptied database with the default roles and the first-party client; its
    store ``store``, or the one its settings name."""
    _clean_database(settings.resolved_database_url)
    app = create_app(settings, store=store)
    svc = app.extensions["oidc"]
    with svc.db.session() as session:
        ensure_default_roles(session)
        ensure_first_party_client(session, settings)
    yield app
    svc.db.dispose()


@pytest.fixture
def app(settings: Settings, token_store: TokenStore) -> Iterator[Flask]:
    with seeded_app(settings, token_store) as app:
        yield app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def services(app: Flask) -> Any:
    return app.extensions["oidc"]


@dataclass
class MachineClient:
    client_id: str
    client_secret: str

    @property
    def basic(self) -> dict[str, str]:
        raw = f"{self.client_id}:{self.client_secret}".encode()
        return {"Authorization": "Basic " + base64.b64encode(raw).decode()}


def make_client(services: Any, **kwargs: Any) -> MachineClient:
    defaults: dict[str, Any] = {
        "name": "test machine",
        "grant_types": ["client_credentials"],
        "scopes": ["roles:read", "roles:write"],
    }
    defaults.update(kwargs)
    with services.db.session() as session:
        new = create_client(session, services.settings.secret_key, **defaults)
    return MachineClient(new.client_id, new.client_secret or "")


@pytest.fixture
def machine(services: Any) -> MachineClient:
    """A confidential client with client_credentials and the roles scopes."""
    return make_client(services)


@pytest.fixture
def user(services: Any) -> Any:
    from oidc_server.accounts import create_user

    with services.db.session() as session:
        created = create_user(session, services.hasher, "viewer@example.com", PASSWORD)
    return created


def password_login(
    client: FlaskClient,
    username: str = "viewer@example.com",
    password: str = PASSWORD,
    **extra: str,
) -> Any:
    return client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "client_id": "cinema-app",
            "username": username,
            "password": password,
            **extra,
        },
    )


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@dataclass
class LiveServer:
    url: str
    app: Flask


@pytest.fixture
def live_server(settings: Settings, token_store: TokenStore) -> Iterator[LiveServer]:
    """The app over real HTTP on a free loopback port, for third-party client libraries."""
    _clean_database(settings.resolved_database_url)
    # Bind first so the issuer can name the port, then hand the server the real app.
    server = make_server("127.0.0.1", 0, Flask(__name__), threaded=True)
    live_settings = replace(settings, oidc_issuer=f"http://127.0.0.1:{server.server_port}")
    app = create_app(live_settings, store=token_store)
    with app.extensions["oidc"].db.session() as session:
        ensure_default_roles(session)
        ensure_first_party_client(session, live_settings)
    server.app = app
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield LiveServer(url=live_settings.oidc_issuer, app=app)
    server.shutdown()
    server.server_close()
    app.extensions["oidc"].db.dispose()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With TEST_REQUIRE_SERVICES=1 (CI), a skipped test fails the run: nothing is skipped."""
    if os.environ.get("TEST_REQUIRE_SERVICES") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter else 0
    if skipped:
        print(f"\nFAIL: {skipped} tests were skipped; CI runs every test.")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def logs(app: Flask) -> Iterator[LogCapture]:
    """Everything logged through the root logger at INFO and above during the test."""
    capture = LogCapture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(capture.handler)
    root.setLevel(logging.INFO)
    yield capture
    root.removeHandler(capture.handler)
    root.setLevel(level)
