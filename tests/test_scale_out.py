"""Two servers, one database, one Redis: no node answers differently from another.

Two servers (each with two workers, started by ``python -m oidc_server.serve`` as in
production) on two ports share the test database (PostgreSQL with TEST_DATABASE_URL, else one
SQLite file) and a Redis this module starts for itself. A session started on one node is
refreshed and ended on the other; a key rotated through the CLI reaches both without a
restart; a rate limit hit on one holds on the other.

The end of the module checks ``oidc_server.tokens.redis_connect`` against real deployments
started the same way: a single server, a master behind Sentinel, and a three-node Cluster.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
import requests

from oidc_server.config import Settings
from oidc_server.direct.round_trips import RoundTrips
from oidc_server.tokens import redis_connect
from oidc_server.tokens.reads import read_together
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.store import RefreshRecord, RotateOutcome, Rotation, SessionRecord

from .support.cli import run_cli, settings_env
from .support.observing import sample
from .support.redis_deployments import SentinelDeployment, TlsRedis, start_redis, stop
from .support.server import spawn_server
from .support.waiting import free_port, wait_for

BIN = Path(sys.executable).parent
PASSWORD = "scale out password 1234"
ISSUER = "http://oidc.scale-out.test"
#: The login limit the rate-limit test exercises; every other test signs in from its own
#: (forwarded) client address, so none of them eats into another's budget.
LOGIN_LIMIT = 3
_addresses = itertools.count(1)


def client_address() -> dict[str, str]:
    """Headers that make the request come from a client address no other test uses."""
    n = next(_addresses)
    return {"X-Forwarded-For": f"198.51.100.{n % 250 + 1}"}


# Processes --------------------------------------------------------------------------------


@dataclass
class Node:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    metrics_dir: Path

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.get(self.url + path, timeout=10, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return requests.post(self.url + path, timeout=30, **kwargs)


@dataclass
class Cluster:
    a: Node
    b: Node
    settings: Settings
    #: Every password and token the tests handled, to look for in the nodes' logs at the end.
    secrets: list[str] = field(default_factory=list)

    def login(self, node: Node, email: str, **headers: str) -> dict[str, Any]:
        response = node.post(
            "/oauth/token",
            data={
                "grant_type": "password",
                "client_id": "cinema-app",
                "username": email,
                "password": PASSWORD,
                "scope": "openid profile",
            },
            headers={**client_address(), **headers},
        )
        assert response.status_code == 200, response.text
        body = response.json()
        self.secrets += [body["access_token"], body["refresh_token"]]
        return body

    def refresh(self, node: Node, refresh_token: str) -> requests.Response:
        response = node.post(
            "/oauth/token",
            data={
                "grant_type": "refresh_token",
                "client_id": "cinema-app",
                "refresh_token": refresh_token,
            },
            headers=client_address(),
        )
        if response.status_code == 200:
            self.secrets += [response.json()["access_token"], response.json()["refresh_token"]]
        return response

    def new_user(self) -> str:
        email = f"scale-{uuid.uuid4().hex[:10]}@example.com"
        created = run_cli(self.settings, "users", "create-admin", email, stdin=PASSWORD + "\n")
        assert created.returncode == 0, created.stderr
        return email


def start_node(env: dict[str, str], name: str, folder: Path) -> Node:
    port = free_port()
    log = folder / f"{name}.log"
    metrics_dir = folder / f"metrics-{name}"
    node_env = {**env, "PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    process = spawn_server(node_env, log)
    return Node(f"http://127.0.0.1:{port}", process, log, metrics_dir)


def wait_ready(node: Node) -> None:
    def ready() -> bool:
        assert node.process.poll() is None, node.log.read_text()[-4000:]
        try:
            return node.get("/health/ready").status_code == 200
        except requests.ConnectionError:
            return False

    wait_for(ready, f"{node.url} ready")


@pytest.fixture(scope="module")
def cluster(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    folder = tmp_path_factory.mktemp("scale-out")
    redis_process, redis_port = start_redis(folder / "redis")
    settings = Settings.from_env(
        {},
        app_env="test",
        database_url=database_url,
        redis_url=f"redis://127.0.0.1:{redis_port}/0",
        oidc_issuer=ISSUER,
        oidc_keys_dir=str(folder / "keys"),
        instance_dir=str(folder / "instance"),
        secret_key="scale-out-secret-" + "k" * 32,
        password_hash_time_cost=1,
        password_hash_memory_cost=1024,
        password_hash_parallelism=1,
    )
    env = settings_env(settings)
    env.update(
        # Production's checks too when the database is PostgreSQL (they refuse SQLite).
        APP_ENV="production" if database_url.startswith("postgresql") else "test",
        HOST="127.0.0.1",
        WEB_CONCURRENCY="2",
        WEB_THREADS="4",
        RATELIMIT_ENABLED="true",
        RATELIMIT_LOGIN=f"{LOGIN_LIMIT} per minute",
        # As behind the load balancer: the client address is the forwarded one.
        TRUST_PROXY_HEADERS="true",
        LOG_LEVEL="INFO",
    )
    upgraded = subprocess.run(
        [str(BIN / "oidc-server"), "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    nodes: list[Node] = []
    try:
        nodes = [start_node(env, name, folder) for name in ("a", "b")]
        for node in nodes:
            wait_ready(node)
        yield Cluster(nodes[0], nodes[1], settings)
    finally:
        for node in nodes:
            stop(node.process)
        stop(redis_process)


def steadily(check: Callable[[], bool], times: int = 5) -> Callable[[], bool]:
    """A check that holds once ``check`` has held ``times`` times in a row."""
    streak = 0

    def polled() -> bool:
        nonlocal streak
        streak = streak + 1 if check() else 0
        return streak >= times

    return polled


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def kid_of(jwt: str) -> str:
    header = jwt.split(".", 1)[0]
    return json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["kid"]


# Sessions across nodes --------------------------------------------------------------------


def test_a_session_started_on_one_node_is_refreshed_and_ended_on_the_other(
    cluster: Cluster,
) -> None:
    a, b = cluster.a, cluster.b
    first = cluster.login(a, cluster.new_user())
    assert b.get("/oauth/userinfo", headers=bearer(first["access_token"])).status_code == 200

    refreshed = cluster.refresh(b, first["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    second = refreshed.json()
    assert a.get("/oauth/userinfo", headers=bearer(second["access_token"])).status_code == 200

    revoked = b.post(
        "/oauth/revoke", data={"token": second["refresh_token"], "client_id": "cinema-app"}
    )
    assert revoked.status_code == 200
    # At once, on the other node: no waiting for a cache to expire.
    for token in (second["access_token"], first["access_token"]):
        assert a.get("/oauth/userinfo", headers=bearer(token)).status_code == 401
    assert cluster.refresh(a, second["refresh_token"]).status_code == 400


def test_a_refresh_token_reused_on_another_node_ends_the_session_everywhere(
    cluster: Cluster,
) -> None:
    a, b = cluster.a, cluster.b
    first = cluster.login(a, cluster.new_user())
    second = cluster.refresh(b, first["refresh_token"])
    assert second.status_code == 200
    assert cluster.refresh(a, first["refresh_token"]).status_code == 400  # spent: reuse
    assert cluster.refresh(b, second.json()["refresh_token"]).status_code == 400
    assert (
        b.get("/oauth/userinfo", headers=bearer(second.json()["access_token"])).status_code == 401
    )


# Keys across nodes ------------------------------------------------------------------------


def test_a_key_rotated_by_the_cli_is_used_and_published_by_both_nodes(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    before = cluster.login(a, cluster.new_user())
    old_kid = kid_of(before["access_token"])
    creds = run_cli(
        cluster.settings, "clients", "create", "--name", "scale-out",
        "--grant-type", "client_credentials", "--scope", "roles:read", "--json",
    )  # fmt: skip
    assert creds.returncode == 0, creds.stderr
    machine = json.loads(creds.stdout)
    cluster.secrets.append(machine["client_secret"])

    rotated = run_cli(cluster.settings, "keys", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    new_kid = json.loads(rotated.stdout)["kid"]
    assert new_kid != old_kid

    def serves_new_key(node: Node) -> bool:
        published = {k["kid"] for k in node.get("/.well-known/jwks.json").json()["keys"]}
        token = node.post(
            "/oauth/token",
            data={"grant_type": "client_credentials"},
            auth=(machine["client_id"], machine["client_secret"]),
        ).json()["access_token"]
        return new_kid in published and kid_of(token) == new_kid

    for node in (a, b):
        # Several answers in a row, so that both of the node's workers have been asked.
        wait_for(steadily(lambda node=node: serves_new_key(node)), f"{node.url} using {new_kid}")
        published = {k["kid"] for k in node.get("/.well-known/jwks.json").json()["keys"]}
        assert old_kid in published  # tokens signed before the rotation still verify
    assert b.get("/oauth/userinfo", headers=bearer(before["access_token"])).status_code == 200


# Rate limits across nodes -----------------------------------------------------------------


def test_a_rate_limit_hit_on_one_node_holds_on_the_other(cluster: Cluster) -> None:
    a, b = cluster.a, cluster.b
    email = cluster.new_user()
    address = client_address()
    body = {"login": email, "password": PASSWORD}
    for _ in range(LOGIN_LIMIT):
        response = a.post("/api/v1/auth/login", json=body, headers=address)
        assert response.status_code == 200, response.text
        cluster.secrets += [response.json()["access_token"], response.json()["refresh_token"]]
    refused = b.post("/api/v1/auth/login", json=body, headers=address)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["Retry-After"]) > 0
    assert a.post("/api/v1/auth/login", json=body, headers=address).status_code == 429
    # A limit per client: someone else signing in on the same node is still let in.
    other = b.post("/api/v1/auth/login", json=body, headers=client_address())
    assert other.status_code == 200, other.text
    cluster.secrets += [other.json()["access_token"], other.json()["refresh_token"]]


# Metrics and logs of a node ---------------------------------------------------------------


def test_a_nodes_metrics_sum_all_its_workers(cluster: Cluster) -> None:
    from concurrent.futures import ThreadPoolExecutor

    labels = {"method": "GET", "route": "/health/live", "status": "200"}
    before = sample(cluster.a.get("/metrics").text, "http_requests_total", **labels)
    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(lambda _: cluster.a.get("/health/live").status_code, range(40)))
    assert statuses == [200] * 40
    after = sample(cluster.a.get("/metrics").text, "http_requests_total", **labels)
    # Requests spread over both workers; each keeps its own count, the scrape sums them.
    assert after - before == 40
    assert len({p.name for p in cluster.a.metrics_dir.glob("counter_*.db")}) >= 2


def test_request_ids_reach_the_logs_and_no_secret_does(cluster: Cluster) -> None:
    request_id = f"scale-out-{uuid.uuid4().hex}"
    response = cluster.b.get("/.well-known/jwks.json", headers={"X-Request-ID": request_id})
    assert response.headers["X-Request-ID"] == request_id

    def logged() -> bool:
        return request_id in cluster.b.log.read_text()

    wait_for(logged, "the access line of the request")
    for node in (cluster.a, cluster.b):
        text = node.log.read_text()
        lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # all JSON
        access = [line for line in lines if line.get("logger") == "oidc_server.access"]
        assert access and all(line.get("request_id") for line in access)
        assert PASSWORD not in text
        leaked = [s for s in cluster.secrets if s in text]
        assert not leaked, f"{len(leaked)} token(s) or secret(s) in {node.log.name}"
    assert len(cluster.secrets) >= 10  # the earlier tests did hand out tokens to look for


# redis_connect against real deployments ----------------------------------------------------


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[int]:
    process, port = start_redis(tmp_path / "single")
    try:
        yield port
    finally:
        stop(process)


#: The options the token store gives its client (RedisTokenStore.from_url).
STORE_OPTIONS: dict[str, Any] = {
    "socket_timeout": 2,
    "socket_connect_timeout": 2,
    "health_check_interval": 30,
}


def _exercise_token_store(client: Any) -> None:
    """A session's whole life in the token store on ``client``: start, rotate, reuse, end."""
    store = RedisTokenStore(client)
    now = int(time.time())
    sid = uuid.uuid4().hex
    session = SessionRecord(sid, "user-1", "cinema-app", now, now, now, "password")
    record = RefreshRecord(sid, "user-1", "cinema-app", "openid", now, now + 60)
    store.start_session(session, "hash-1", record, ttl=60)
    assert store.rotate_refresh_token(Rotation(sid, "hash-1", "hash-2", now, 60)).outcome is (
        RotateOutcome.ROTATED
    )
    assert store.rotate_refresh_token(Rotation(sid, "hash-1", "hash-3", now, 60)).outcome is (
        RotateOutcome.REUSED
    )
    assert store.get_session(sid) is None  # reuse ended the session
    assert [s.sid for s in store.list_sessions("user-1")] == []

    # The same as steps of shared round trips (tokens.reads), beside a read of another slot,
    # once Redis no longer holds the script (as after a restart or a failover: NOSCRIPT).
    sid = uuid.uuid4().hex
    store.start_session(replace(session, sid=sid), "hash-1", replace(record, sid=sid), ttl=60)
    client.script_flush()
    rotated, reused, active = read_together(
        client,
        store.rotation(Rotation(sid, "hash-1", "hash-2", now, 60)),
        store.rotation(Rotation(sid, "hash-1", "hash-3", now, 60)),
        store.access_token_reads("some-jti", None),
    )
    assert (rotated.outcome, reused.outcome, active) == (
        RotateOutcome.ROTATED,
        RotateOutcome.REUSED,
        True,
    )
    assert store.get_session(sid) is None
    assert [s.sid for s in store.list_sessions("user-1")] == []

    # And gathered as the direct answers gather them (direct.round_trips): on the event loop's
    # own connections (it takes every deployment a REDIS_URL names, TLS included), and by
    # redis-py's blocking round trip, which clients the loop cannot take still use.
    for on_the_loop in (True, False):
        sid = uuid.uuid4().hex
        store.start_session(replace(session, sid=sid), "hash-1", replace(record, sid=sid), ttl=60)
        client.script_flush()
        # Reads use the services' Redis client alone.
        trips = RoundTrips(SimpleNamespace(redis=client))  # type: ignore[arg-type]
        assert trips._loop_redis is not None
        if not on_the_loop:
            trips._loop_redis = None

        async def gathered(trips: RoundTrips = trips, sid: str = sid) -> list[Any]:
            return list(
                await asyncio.gather(
                    trips.read(store.rotation(Rotation(sid, "hash-1", "hash-2", now, 60))),
                    trips.read(store.rotation(Rotation(sid, "hash-1", "hash-3", now, 60))),
                    trips.read(store.access_token_reads("some-jti", None)),
                )
            )

        [rotated], [reused], [active] = asyncio.run(gathered())
        assert (rotated.outcome, reused.outcome, active) == (
            RotateOutcome.ROTATED,
            RotateOutcome.REUSED,
            True,
        )
        assert store.get_session(sid) is None


def test_connect_reads_a_single_server_url_with_its_database(redis_server: int) -> None:
    client = redis_connect.connect(f"redis://127.0.0.1:{redis_server}/4", **STORE_OPTIONS)
    client.set("scale-out:probe", "1")
    assert redis.Redis(port=redis_server, db=4).get("scale-out:probe") == b"1"
    _exercise_token_store(client)


def test_connect_speaks_tls_to_a_single_server(redis_over_tls: TlsRedis) -> None:
    client = redis_connect.connect(redis_over_tls.url(2), **STORE_OPTIONS)
    assert isinstance(client.connection_pool.get_connection(), redis.SSLConnection)
    client.set("scale-out:probe", "over-tls")
    assert client.get("scale-out:probe") == b"over-tls"
    _exercise_token_store(client)


def test_connect_finds_the_master_through_sentinel(sentinel: SentinelDeployment) -> None:
    sentinel_port, master_port = sentinel.sentinel, sentinel.master
    client = redis_connect.connect(
        f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/3", **STORE_OPTIONS
    )
    client.set("scale-out:probe", "via-sentinel")
    assert redis.Redis(port=master_port, db=3).get("scale-out:probe") == b"via-sentinel"
    _exercise_token_store(client)


def test_connect_finds_the_master_through_sentinel_over_tls(
    sentinel_over_tls: SentinelDeployment,
) -> None:
    deployment = sentinel_over_tls
    client = redis_connect.connect(deployment.url(3), **STORE_OPTIONS)
    connection = client.connection_pool.get_connection()
    assert isinstance(connection, redis.sentinel.SentinelManagedSSLConnection)
    client.connection_pool.release(connection)
    client.set("scale-out:probe", "via-sentinel-over-tls")
    stored = deployment.client(deployment.master, db=3).get("scale-out:probe")
    assert stored == b"via-sentinel-over-tls"
    _exercise_token_store(client)


def test_connect_speaks_to_a_redis_cluster(emptied_cluster: list[int]) -> None:
    nodes = ",".join(f"127.0.0.1:{p}" for p in emptied_cluster[:2])  # discovery finds the third
    client = redis_connect.connect(f"redis+cluster://{nodes}", **STORE_OPTIONS)
    assert isinstance(client, redis.cluster.RedisCluster)
    assert len(client.get_primaries()) == 3
    _exercise_token_store(client)


def test_the_rate_limiter_shares_the_same_sentinel_and_database(
    sentinel: SentinelDeployment,
) -> None:
    from limits.storage import storage_from_string

    sentinel_port, master_port = sentinel.sentinel, sentinel.master
    uri, options = redis_connect.limiter_storage(
        f"redis+sentinel://127.0.0.1:{sentinel_port}/mymaster/5"
    )
    storage = storage_from_string(uri, **options)
    assert storage.incr("scale-out-limit", 60) == 1
    stored = redis.Redis(port=master_port, db=5).keys("*scale-out-limit*")
    assert len(stored) == 1


def test_the_rate_limiter_shares_the_same_cluster(emptied_cluster: list[int]) -> None:
    from limits.storage import storage_from_string

    nodes = ",".join(f"127.0.0.1:{p}" for p in emptied_cluster)
    uri, options = redis_connect.limiter_storage(f"redis+cluster://{nodes}")
    storage = storage_from_string(uri, **options)
    assert storage.incr("scale-out-limit", 60) == 1
    assert storage.incr("scale-out-limit", 60) == 2
    client = redis_connect.connect(f"redis+cluster://{nodes}")
    assert len(client.keys("*scale-out-limit*", target_nodes="primaries")) == 1


def test_connect_speaks_tls_to_a_cluster_trusting_the_urls_authority(
    tls_cluster_url: str,
) -> None:
    client = redis_connect.connect(tls_cluster_url, **STORE_OPTIONS)
    assert isinstance(client, redis.cluster.RedisCluster)
    assert len(client.get_primaries()) == 3
    for node in client.get_primaries():
        kwargs = node.redis_connection.connection_pool.connection_kwargs
        assert kwargs["ssl_ca_certs"].endswith("cert.pem")
    _exercise_token_store(client)


def test_the_rate_limiter_shares_the_same_sentinel_over_tls(
    sentinel_over_tls: SentinelDeployment,
) -> None:
    from limits.storage import storage_from_string

    deployment = sentinel_over_tls
    uri, options = redis_connect.limiter_storage(deployment.url(5))
    storage = storage_from_string(uri, **options)
    assert storage.incr("scale-out-limit", 60) == 1
    stored = deployment.client(deployment.master, db=5).keys("*scale-out-limit*")
    assert len(stored) == 1


def test_the_apps_rate_limiter_takes_the_urls_options_over_its_own(
    sentinel_over_tls: SentinelDeployment, settings: Settings
) -> None:
    from limits.storage import storage_from_string

    from oidc_server.app import create_app

    deployment = sentinel_over_tls
    url = deployment.url(6) + "&socket_timeout=1.5"
    app = create_app(replace(settings, redis_url=url))
    uri = app.config["RATELIMIT_STORAGE_URI"]
    options = app.config["RATELIMIT_STORAGE_OPTIONS"]
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (1.5, 2)
    assert storage_from_string(uri, **options).incr("scale-out-limit", 60) == 1
    assert len(deployment.client(deployment.master, db=6).keys("*scale-out-limit*")) == 1


def test_the_rate_limiter_shares_the_same_cluster_over_tls(tls_cluster_url: str) -> None:
    from limits.storage import storage_from_string

    uri, options = redis_connect.limiter_storage(tls_cluster_url)
    storage = storage_from_string(uri, **options)
    assert storage.incr("scale-out-limit", 60) == 1
    assert storage.incr("scale-out-limit", 60) == 2
    client = redis_connect.connect(tls_cluster_url)
    assert len(client.keys("*scale-out-limit*", target_nodes="primaries")) == 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h:6379/2", ("redis://h:6379/2", {})),
        ("rediss://:pw@h:6380/0", ("rediss://:pw@h:6380/0", {})),
        ("redis+cluster://h1:7000,h2:7001", ("redis+cluster://h1:7000,h2:7001", {})),
        ("rediss+cluster://u:pw@h1:7000", ("redis+cluster://u:pw@h1:7000", {"ssl": True})),
        ("redis+sentinel://s1:26379,s2/mymaster", ("redis+sentinel://s1:26379,s2/mymaster", {})),
        ("redis+sentinel://:pw@s1/mymaster/7", ("redis+sentinel://:pw@s1/mymaster", {"db": 7})),
        (
            "rediss+cluster://h1:7000?ssl_ca_certs=/ca.pem&socket_timeout=1.5",
            (
                "redis+cluster://h1:7000",
                {"ssl": True, "ssl_ca_certs": "/ca.pem", "socket_timeout": 1.5},
            ),
        ),
        (
            "redis+sentinel://s1/mymaster/2?socket_connect_timeout=3",
            (
                "redis+sentinel://s1/mymaster",
                {
                    "db": 2,
                    "socket_connect_timeout": 3.0,
                    "sentinel_kwargs": {"socket_connect_timeout": 3.0},
                },
            ),
        ),
        (
            "rediss+sentinel://:pw@s1,s2/mymaster?ssl_ca_certs=/ca.pem&ssl_check_hostname=true",
            (
                "redis+sentinel://:pw@s1,s2/mymaster",
                {
                    "ssl_ca_certs": "/ca.pem",
                    "ssl_check_hostname": True,
                    "ssl": True,
                    "sentinel_kwargs": {
                        "ssl_ca_certs": "/ca.pem",
                        "ssl_check_hostname": True,
                        "ssl": True,
                    },
                },
            ),
        ),
    ],
)
def test_limiter_storage_translates_urls_limits_reads_differently(
    url: str, expected: tuple[str, dict[str, Any]]
) -> None:
    assert redis_connect.limiter_storage(url) == expected


def test_a_tls_sentinel_urls_options_reach_the_sentinels_and_the_master() -> None:
    # Building the client does not connect. The URL's options win over the code's, as in
    # redis-py's own URLs; TLS and its authority apply to the Sentinels too.
    client = redis_connect.connect(
        "rediss+sentinel://s1:26379/cache?ssl_ca_certs=/etc/ca.pem&socket_timeout=0.5",
        socket_timeout=2,
        socket_connect_timeout=2,
    )
    pool = client.connection_pool
    assert pool.connection_class is redis.sentinel.SentinelManagedSSLConnection
    assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert pool.connection_kwargs["socket_timeout"] == 0.5
    (sentinel,) = pool.sentinel_manager.sentinels
    assert sentinel.connection_pool.connection_class is redis.SSLConnection
    sentinel_kwargs = sentinel.connection_pool.connection_kwargs
    assert (sentinel_kwargs["ssl_ca_certs"], sentinel_kwargs["socket_timeout"]) == (
        "/etc/ca.pem",
        0.5,
    )
    assert sentinel_kwargs["socket_connect_timeout"] == 2


def test_a_sentinel_url_names_every_sentinel_the_service_and_the_database() -> None:
    # Building the client does not connect: the Sentinels are asked on first use.
    client = redis_connect.connect(
        "redis+sentinel://user:p%40ss@10.0.0.1:26379,[::1]:26380,sentinel-3/cache/2"
    )
    pool = client.connection_pool
    assert pool.service_name == "cache"
    assert pool.connection_kwargs["db"] == 2
    assert pool.connection_kwargs["password"] == "p@ss"
    assert pool.connection_kwargs["username"] == "user"
    sentinels = [
        (s.connection_pool.connection_kwargs["host"], s.connection_pool.connection_kwargs["port"])
        for s in pool.sentinel_manager.sentinels
    ]
    assert sentinels == [("10.0.0.1", 26379), ("::1", 26380), ("sentinel-3", 26379)]
    password = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs["password"]
    assert password == "p@ss"


@pytest.mark.parametrize(
    "url",
    [
        "http://secret-pw@h:6379",
        "memcached://secret-pw@h",
        "redis+sentinel://:secret-pw@h1",
        "redis+sentinel://:secret-pw@h1/svc/not-a-number",
        "redis+sentinel://:secret-pw@h1/svc/1/extra",
        "redis+sentinel://:secret-pw@/svc",
        "redis+sentinel://:secret-pw@h1:port/svc",
        "redis+cluster://:secret-pw@h1:7000/3",
        "redis+cluster://:secret-pw@h1:7000?ssl_cert_reqs=none",  # TLS options need rediss+
        "redis+sentinel://:secret-pw@h1/svc?ssl_ca_certs=/ca.pem",
        "rediss+cluster://:secret-pw@h1:7000?ssl_ca_cert=/ca.pem",  # a misspelt option
        "rediss+cluster://:secret-pw@h1:7000?ssl_cert_reqs=secret-pw",
        "rediss+cluster://:secret-pw@h1:7000?ssl_ca_certs=",
        "redis+cluster://:secret-pw@h1:7000?socket_timeout=secret-pw",
        "redis+cluster://:secret-pw@h1:7000?socket_timeout=nan",
        "redis+cluster://:secret-pw@h1:7000?socket_timeout=-1",
        "redis+cluster://:secret-pw@h1:7000?socket_keepalive=maybe",
        "redis+cluster://:secret-pw@h1:7000?socket_timeout=1&socket_timeout=2",
        "redis+cluster://:secret-pw@h1:7000?secret-pw",
        "redis+cluster://:secret-pw@h1:7000#secret-pw",
        "rediss+sentinel://:secret-pw@h1",
    ],
)
def test_bad_urls_are_refused_without_echoing_the_password(url: str) -> None:
    for reader in (redis_connect.connect, redis_connect.limiter_storage):
        with pytest.raises(redis_connect.RedisUrlError) as refused:
            reader(url)
        assert "secret-pw" not in str(refused.value)
