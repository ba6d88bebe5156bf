"""`make bench`: production mode under load, one scenario at a time, figures as a table and JSON.

Starts the production server as `make run-prod` does (``python -m oidc_server.serve``, granian;
APP_ENV=production, rate limits off) on PostgreSQL and Redis, seeds a client, users, roles and
sessions, then loads each scenario with autocannon (bench/load.mjs) on loopback for a bounded
time. ``--growth`` then shows that cost does not grow with data: it copies the database as the
scenarios left it (1,000 users), grows the original by 1,000,000 users and 10,000,000
login-history rows, and measures login and history paging on the two alternately (a server
started for each turn), ``GROWTH_REPEATS`` times each, comparing medians. ``--partitioned``
partitions the login history by month before seeding (``partition_a_year_ago``).

    .venv/bin/python scripts/bench.py [--seconds 10] [--connections 32] [--workers N] [--growth]
                                      [--partitioned] [--only SCENARIO ...]

``--workers`` (or ``WEB_CONCURRENCY``) sets the worker processes, default serve.py's (one per
usable core); ``WEB_THREADS`` and ``WEB_TIMEOUT`` pass through to the server. Its log goes to
``bench-results/server.log``, at ``LOG_LEVEL=WARNING`` unless ``BENCH_LOG_LEVEL`` says
otherwise (``INFO``, the server's default, writes an access line per request).

Needs PostgreSQL and Redis (BENCH_DATABASE_URL, BENCH_REDIS_URL), Node.js and npm.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import multiprocessing
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from oidc_server.serve import default_workers, usable_cores

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BENCH_DIR = ROOT / "bench"
RESULTS = ROOT / "bench-results"
PASSWORD = "bench password 1234"
SCENARIOS = (
    "client_credentials",
    "password_login",
    "refresh",
    "introspection",
    "head_role_check",
    "users_me",
    "history_first_page",
    "history_deep_page",
    "jwks",
    "discovery",
)
#: Sessions seeded for the refresh scenario, each refreshed once: enough for its warm-up and
#: 10 s at 5,000 req/s (the run is timed; were they used up, the rest would count as errors).
REFRESH_SESSIONS = 60_000
#: Logins are counted only after this many seconds of load (bench/load.mjs ``settle``): 32
#: connections start 32 logins at once, so the first answers come only when the first batch of
#: concurrent argon2id hashes is done (~0.7 s on 2 cores); a 10 s count that includes that fill
#: read 6-8 % under the server's steady rate. The other scenarios answer in milliseconds.
LOGIN_SETTLE_SECONDS = 2
#: The growth run's scenarios, and how often each is measured on each side. Back-to-back runs
#: on a shared 2-core machine differ by 15-25 %, and measuring "before" and "after" minutes
#: apart (the growth takes 5-11) let the machine's drift read as a +19 % or a -20 % change in
#: two runs of session 5. So both databases are kept and measured alternately (small, grown,
#: grown, small, ...): drift falls on both alike. Their medians are compared.
GROWTH_SCENARIOS = ("password_login", "history_first_page", "history_deep_page")
#: Four rounds gave medians -10 % / -6 % where six, on the same two databases, gave +1 % / +0 %.
GROWTH_REPEATS = 6
#: Scenarios measured again over one connection, and paced over 32 (see ``scenarios``).
LATENCY_ALONE = {"head_role_check", "users_me"}
#: The paced runs' rates, as shares of the scenario's saturated rate.
PACED_SHARES = (0.25, 0.5)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ensure_database(url: str) -> None:
    base, _, name = url.rpartition("/")
    engine = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}):
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    engine.dispose()


def copy_database(url: str, copy_name: str) -> str:
    """A fresh copy of the database at ``url`` named ``copy_name``; its URL. Nobody may be
    connected to the original (PostgreSQL copies it as a template)."""
    base, _, name = url.rpartition("/")
    engine = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{copy_name}"'))
        for attempt in range(50):
            try:
                conn.execute(text(f'CREATE DATABASE "{copy_name}" TEMPLATE "{name}"'))
                break
            except OperationalError:  # a just-stopped server's sessions are still closing
                if attempt == 49:
                    raise
                time.sleep(0.1)
    engine.dispose()
    return f"{base}/{copy_name}"


def reset_database(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def fresh_environment(workers: int) -> dict[str, str]:
    """The production server's environment for a benchmark, over an emptied database
    (``BENCH_DATABASE_URL``) and Redis database (``BENCH_REDIS_URL``)."""
    db_url = os.environ.get(
        "BENCH_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/bench"
    )
    redis_url = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/8")
    ensure_database(db_url)
    reset_database(db_url)
    from redis.cluster import RedisCluster

    from oidc_server.tokens import redis_connect

    store = redis_connect.connect(redis_url)  # a Sentinel or Cluster URL too
    if isinstance(store, RedisCluster):
        store.flushdb(target_nodes=RedisCluster.PRIMARIES)
    else:
        store.flushdb()
    workdir = Path(tempfile.mkdtemp(prefix="oidc-bench-"))
    port = free_port()
    return {
        **os.environ,
        "APP_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(40),
        "DATABASE_URL": db_url,
        "REDIS_URL": redis_url,
        "RATELIMIT_ENABLED": "false",
        "OIDC_KEYS_DIR": str(workdir / "keys"),
        "INSTANCE_DIR": str(workdir / "instance"),
        "OIDC_ISSUER": f"http://127.0.0.1:{port}",
        "PORT": str(port),
        "HOST": "127.0.0.1",
        "WEB_CONCURRENCY": str(workers),
        # Access lines are off by default, as at the peers; BENCH_LOG_LEVEL=INFO counts them.
        "LOG_LEVEL": os.environ.get("BENCH_LOG_LEVEL", "WARNING"),
    }


def ensure_autocannon() -> None:
    if not (BENCH_DIR / "node_modules" / "autocannon").exists():
        subprocess.run(
            ["npm", "install", "--no-audit", "--no-fund", "--silent"], cwd=BENCH_DIR, check=True
        )


def load(spec: dict[str, Any], script: str = "load.mjs") -> dict[str, Any]:
    """Run one autocannon load (or ``paced.mjs``'s); the spec goes through a file (refresh
    bodies are many)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
        json.dump(spec, fh)
    try:
        out = subprocess.run(
            ["node", script, fh.name], cwd=BENCH_DIR, check=True, capture_output=True, text=True
        )
    finally:
        os.unlink(fh.name)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _argon2_worker(encoded: str, seconds: float, params: dict[str, int], out: Any) -> None:
    from oidc_server.security import PasswordHasher

    hasher = PasswordHasher(**params)
    count, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        hasher.verify(encoded, PASSWORD)
        count += 1
    out.put(count)


def argon2_rate(workers: int, seconds: float, params: dict[str, int]) -> float:
    """Verifications per second that `workers` processes manage with our argon2 parameters."""
    from oidc_server.security import PasswordHasher

    encoded = PasswordHasher(**params).hash(PASSWORD)
    queue: Any = multiprocessing.Queue()
    procs = [
        multiprocessing.Process(target=_argon2_worker, args=(encoded, seconds, params, queue))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    total = sum(queue.get() for _ in procs)
    for p in procs:
        p.join()
    return total / seconds


class Server:
    """The production server (``python -m oidc_server.serve``), as `make run-prod` starts it."""

    def __init__(self, env: dict[str, str], workers: int, log_name: str = "server.log") -> None:
        self.env, self.workers, self.log_name = env, workers, log_name
        self.url = f"http://127.0.0.1:{env['PORT']}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    def start(self) -> None:
        subprocess.run(
            [str(BIN / "oidc-server"), "db", "upgrade"],
            env=self.env,
            check=True,
            capture_output=True,
        )
        started = time.monotonic()
        # HOST, PORT, WEB_CONCURRENCY (= self.workers) and LOG_LEVEL come from the environment.
        with open(RESULTS / self.log_name, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "oidc_server.serve"],
                env=self.env,
                cwd=ROOT,
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        while True:
            try:
                requests.get(f"{self.url}/.well-known/openid-configuration", timeout=5)
                break
            except (requests.ConnectionError, requests.Timeout):
                if self.proc.poll() is not None or time.monotonic() - started > 60:
                    raise RuntimeError(f"server did not start; see bench-results/{self.log_name}")
                time.sleep(0.02)
        self.start_seconds = time.monotonic() - started

    def worker_pids(self) -> list[str]:
        assert self.proc is not None
        return subprocess.run(
            ["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True
        ).stdout.split()

    def cpu_seconds(self) -> float:
        """CPU time used so far by the server's processes (main process and workers)."""
        assert self.proc is not None
        ticks = 0
        for pid in [str(self.proc.pid), *self.worker_pids()]:
            with contextlib.suppress(FileNotFoundError):
                # After the command's closing parenthesis: state, ..., utime (14th), stime.
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
                ticks += int(fields[11]) + int(fields[12])
        return ticks / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, timeout: float = 120.0) -> None:
        """Return once the server has stopped working. When a load ends, the requests its
        connections had in flight are still queued in the workers (32 logins are seconds of
        argon2id), and whatever is measured next would share the CPU with them: session 5's
        argon2id reference, measured right after the logins, read low that way."""
        deadline = time.monotonic() + timeout
        last = self.cpu_seconds()
        while time.monotonic() < deadline:
            time.sleep(0.5)
            now = self.cpu_seconds()
            if now - last < 0.05:  # under a tenth of a core over the half second
                return
            last = now
        raise RuntimeError(f"the server was still busy {timeout:.0f}s after a load")

    def worker_memory_mb(self, field: str) -> list[float]:
        """Each worker's ``Rss`` (shared pages counted in full) or ``Pss`` (shared pages split
        between the processes sharing them), from /proc/PID/smaps_rollup."""
        sizes = []
        for pid in self.worker_pids():
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
            kb = next(
                int(line.split()[1]) for line in rollup.splitlines() if line.startswith(f"{field}:")
            )
            sizes.append(kb / 1024)
        return sizes

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def seed(env: dict[str, str], users: int, sessions: int = REFRESH_SESSIONS) -> dict[str, Any]:
    """A machine client, users with a role, and ``sessions`` ready sessions for refresh and
    bearer calls."""
    os.environ.update(env)
    from oidc_server.accounts import role_names
    from oidc_server.clients import create_client
    from oidc_server.config import Settings
    from oidc_server.models import Role, User, UserRole
    from oidc_server.services import Services
    from oidc_server.tokens.service import LoginContext

    settings = Settings.from_env()
    svc = Services.build(settings)
    svc.keyring.ensure_key()
    password_hash = svc.hasher.hash(PASSWORD)
    with svc.db.session() as session:
        machine = create_client(
            session,
            settings.secret_key,
            name="bench",
            grant_types=["client_credentials"],
            scopes=["roles:read", "roles:write"],
        )
        role = session.query(Role).filter_by(name="subscriber").one()
        session.execute(
            User.__table__.insert(),
            [
                {
                    "id": uuid.uuid4(),
                    "login": f"user{i}@bench.example",
                    "password_hash": password_hash,
                    "is_active": True,
                }
                for i in range(users)
            ],
        )
        first = session.query(User).filter_by(login="user0@bench.example").one()
        session.add(UserRole(user_id=first.id, role_id=role.id))
        session.flush()
        roles = role_names(session, first.id)
        user_id, role_id = str(first.id), str(role.id)
    sessions = [
        svc.tokens.start_session(
            LoginContext(
                user_id=user_id,
                client_id=settings.first_party_client_id,
                scope="openid profile email",
                roles=roles,
                auth_method="password",
            )
        )[0]
        for _ in range(sessions)
    ]
    svc.db.dispose()
    return {"machine": machine, "user_id": user_id, "role_id": role_id, "sessions": sessions}


def deep_cursor(url: str, user_token: str, pages: int = 50) -> str:
    """The cursor of page ``pages`` of the benchmark user's history (keyset, so cost is flat)."""
    cursor = ""
    for _ in range(pages):
        page = requests.get(
            f"{url}/api/v1/users/me/login-history",
            params={"limit": 20, **({"cursor": cursor} if cursor else {})},
            headers={"authorization": f"Bearer {user_token}"},
            timeout=10,
        ).json()
        cursor = page.get("next_cursor") or cursor
    return cursor


HISTORY_ROWS_SQL = """
INSERT INTO login_history (id, user_id, logged_in_at, method, success, user_agent, ip, device)
SELECT gen_random_uuid(), u.id, now() - random() * interval '365 days', 'password', true,
       'Mozilla/5.0 (bench)', '127.0.0.1', 'bench'
FROM users u CROSS JOIN generate_series(1, :per_user)
WHERE u.login LIKE :pattern
"""


def seed_history(db_url: str, user_id: str, own_rows: int, per_user: int, pattern: str) -> None:
    """``own_rows`` entries for the benchmark user and ``per_user`` for every user matching."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.execute(text(HISTORY_ROWS_SQL), {"per_user": per_user, "pattern": pattern})
        conn.execute(
            text("""
            INSERT INTO login_history (id, user_id, logged_in_at, method, success, device)
            SELECT gen_random_uuid(), :uid, now() - g * interval '1 minute', 'password', true,
                   'bench'
            FROM generate_series(1, :n) g"""),
            {"uid": user_id, "n": own_rows},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("VACUUM ANALYZE users"))
        conn.execute(text("VACUUM ANALYZE login_history"))
        # Write the seeded pages out now: otherwise the checkpointer flushes gigabytes on the
        # same two cores while the growth scenarios run, and the figures measure that.
        conn.execute(text("CHECKPOINT"))
    engine.dispose()


def partition_a_year_ago(db_url: str) -> list[str]:
    """Partition the (empty) login history as if converted 13 months ago and kept up daily:
    the history seeded next (up to 365 days old) lands in monthly partitions; the names."""
    from oidc_server.history_partitions import partition_login_history

    engine = create_engine(db_url)
    try:
        a_year_ago = datetime.now(UTC) - timedelta(days=395)
        result = partition_login_history(engine, now=a_year_ago, months_ahead=14)
    finally:
        engine.dispose()
    return [partition.name for partition in result.partitions]


def grow(db_url: str, users: int, rows: int) -> None:
    """Add ``users`` users (same hash) and ``rows`` history rows spread evenly over them."""
    engine = create_engine(db_url)
    with engine.begin() as conn:
        password_hash = conn.scalar(text("SELECT password_hash FROM users LIMIT 1"))
        conn.execute(
            text("""
            INSERT INTO users (id, login, password_hash, is_active, created_at, updated_at)
            SELECT gen_random_uuid(), 'grown' || i || '@bench.example', :h, true, now(), now()
            FROM generate_series(1, :n) i"""),
            {"h": password_hash, "n": users},
        )
    engine.dispose()
    seed_history(db_url, str(uuid.UUID(int=0)), 0, rows // users, "grown%")


def build_specs(server: Server, data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every scenario's request, built once: tokens, refresh bodies and the deep cursor."""
    url = server.url
    machine = data["machine"]
    basic = (
        "Basic "
        + base64.b64encode(f"{machine.client_id}:{machine.client_secret}".encode()).decode()
    )
    form = "application/x-www-form-urlencoded"
    client_token = requests.post(
        f"{url}/oauth/token",
        data={"grant_type": "client_credentials"},
        auth=(machine.client_id, machine.client_secret),
        timeout=5,
    ).json()["access_token"]
    user_token = data["sessions"][0]["access_token"]
    refresh_bodies = [
        f"grant_type=refresh_token&client_id=cinema-app&refresh_token={s['refresh_token']}"
        for s in data["sessions"][1:]
    ]
    login_body = json.dumps({"login": "user0@bench.example", "password": PASSWORD})
    specs = {
        "client_credentials": {
            "url": f"{url}/oauth/token",
            "method": "POST",
            "headers": {"authorization": basic, "content-type": form},
            "body": "grant_type=client_credentials",
        },
        "password_login": {
            "url": f"{url}/api/v1/auth/login",
            "method": "POST",
            "headers": {"content-type": "application/json"},
            "body": login_body,
            "settle": LOGIN_SETTLE_SECONDS,
        },
        "refresh": {
            "url": f"{url}/oauth/token",
            "method": "POST",
            "headers": {"content-type": form},
            "bodies": refresh_bodies,
        },
        "introspection": {
            "url": f"{url}/oauth/introspect",
            "method": "POST",
            "headers": {"authorization": basic, "content-type": form},
            "body": f"token={user_token}",
        },
        "head_role_check": {
            "url": f"{url}/api/v1/users/{data['user_id']}/roles/{data['role_id']}/",
            "method": "HEAD",
            "headers": {"authorization": f"Bearer {client_token}"},
        },
        "users_me": {
            "url": f"{url}/api/v1/users/me",
            "method": "GET",
            "headers": {"authorization": f"Bearer {user_token}"},
        },
        "history_first_page": {
            "url": f"{url}/api/v1/users/me/login-history?limit=20",
            "method": "GET",
            "headers": {"authorization": f"Bearer {user_token}"},
        },
        "history_deep_page": {
            "url": f"{url}/api/v1/users/me/login-history?limit=20&cursor="
            f"{deep_cursor(url, user_token)}",
            "method": "GET",
            "headers": {"authorization": f"Bearer {user_token}"},
        },
        "jwks": {"url": f"{url}/.well-known/jwks.json", "method": "GET"},
        "discovery": {"url": f"{url}/.well-known/openid-configuration", "method": "GET"},
    }
    assert tuple(specs) == SCENARIOS, "SCENARIOS lists every scenario, in order"
    return specs


def scenarios(
    server: Server,
    specs: dict[str, dict[str, Any]],
    seconds: int,
    conns: int,
    only: set[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Load each scenario of ``only`` (default: all) after a short warm-up; their figures.
    After every load the server is given time to finish what was still queued."""
    results = {}
    for name, request in specs.items():
        if only and name not in only:
            continue
        spec = {**request, "seconds": seconds, "connections": conns}
        if "bodies" in request:
            # Single-use bodies (refresh tokens): the warm-up and the run each spend their own,
            # and none is handed out again by a later call.
            load({**spec, "bodies": request["bodies"][:500]})
            spec["bodies"] = request["bodies"] = request["bodies"][500:]
        else:
            load({**spec, "seconds": 2})
        server.wait_idle()
        cpu_before = server.cpu_seconds()
        results[name] = load(spec)
        # The server's CPU per answered request: steadier than req/s on a machine whose
        # hypervisor takes a varying share of the cores (steal time is nobody's CPU time).
        answered = results[name]["ok"] + results[name]["bad"]
        results[name]["cpu_ms"] = round(
            (server.cpu_seconds() - cpu_before) * 1000 / max(1, answered), 3
        )
        server.wait_idle()
        _print_result(name, results[name])
        if name not in LATENCY_ALONE:
            continue
        # One request at a time: the latency of the request itself, without the queue that 32
        # connections build at saturation (mean latency = connections / throughput).
        results[f"{name}@1conn"] = load({**spec, "connections": 1})
        server.wait_idle()
        _print_result(f"{name}@1conn", results[f"{name}@1conn"])
        # 32 connections again, sent at a steady share of the rate just measured (an open
        # loop, bench/paced.mjs): the latency a service sees from a server that is busy but
        # not overloaded. autocannon cannot pace (its rate sends each second's quota at once).
        for share in PACED_SHARES:
            label = f"{name}@{share:.0%}"
            rate = max(1, round(results[name]["rps"] * share))
            results[label] = load({**spec, "rate": rate}, script="paced.mjs")
            server.wait_idle()
            _print_result(label, results[label])
    return results


def _print_result(label: str, result: dict[str, Any]) -> None:
    print(
        f"{label:<22} {result['rps']:>9.1f} {result['p50']:>7} {result['p99']:>7} "
        f"{result['bad']:>7} {result.get('cpu_ms', ''):>9}",
        flush=True,
    )


def alternate(
    sides: dict[str, Server], data: dict[str, Any], seconds: int, conns: int
) -> dict[str, dict[str, dict[str, Any]]]:
    """``GROWTH_SCENARIOS`` against each side's server, ``GROWTH_REPEATS`` times, the sides'
    order reversed every round (A B, B A, A B, ...); per side and scenario, the runs and
    median. One server runs at a time: with both up, whichever had started first measured
    5-10 % slower, whatever its database (tried with both orders)."""
    runs = {side: {name: [] for name in GROWTH_SCENARIOS} for side in sides}
    for round_ in range(GROWTH_REPEATS):
        order = list(sides) if round_ % 2 == 0 else list(reversed(sides))
        for side in order:
            print(f"-- {side}, round {round_ + 1}", flush=True)
            server = sides[side]
            server.start()
            try:
                measured = scenarios(
                    server, build_specs(server, data), seconds, conns, set(GROWTH_SCENARIOS)
                )
            finally:
                server.stop()
            for name in GROWTH_SCENARIOS:
                if measured[name]["bad"]:
                    raise RuntimeError(
                        f"{side}: {name} answered errors; its rate is not comparable"
                    )
                runs[side][name].append(measured[name]["rps"])
    return {
        side: {name: {"runs": r, "median": statistics.median(r)} for name, r in by_name.items()}
        for side, by_name in runs.items()
    }


def growth(
    server: Server, env: dict[str, str], data: dict[str, Any], args: argparse.Namespace
) -> dict[str, Any]:
    """Logins and history paging at 1,000 users against 1M users / 10M rows: the database as
    the scenarios left it is copied, the original grown, and the two measured alternately."""
    server.stop()
    db_url = env["DATABASE_URL"]
    small_url = copy_database(db_url, db_url.rpartition("/")[2] + "_small")
    print("growth: adding 1,000,000 users and 10,000,000 history rows ...", flush=True)
    started = time.monotonic()
    grow(db_url, users=1_000_000, rows=10_000_000)
    seeded = time.monotonic() - started
    print(f"seeded in {seeded:.0f}s")
    # The same issuer, keys and Redis: a token from one is good on the other.
    small = Server({**env, "DATABASE_URL": small_url}, server.workers, "server-small.log")
    server.start()
    try:
        # A new access token: the seeded one may expire (15 min) before the growth run ends.
        login = requests.post(
            f"{server.url}/api/v1/auth/login",
            json={"login": "user0@bench.example", "password": PASSWORD},
            timeout=30,
        )
        login.raise_for_status()
    finally:
        server.stop()
    now = {**data, "sessions": [{"access_token": login.json()["access_token"]}]}
    measured = alternate(
        {"1,000 users": small, "1M users": server}, now, args.seconds, args.connections
    )
    result: dict[str, Any] = {"seeded_seconds": round(seeded), "sides": measured}
    for name in GROWTH_SCENARIOS:
        small_rate = measured["1,000 users"][name]["median"]
        grown_rate = measured["1M users"][name]["median"]
        change = grown_rate / small_rate - 1
        result[f"{name}_change"] = round(change, 3)
        print(
            f"{name}: median {small_rate:.1f}/s at 1,000 users, {grown_rate:.1f}/s at 1M "
            f"({change:+.0%})"
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=0, help="default: serve.py's")
    parser.add_argument("--growth", action="store_true")
    parser.add_argument(
        "--partitioned",
        action="store_true",
        help="partition the login history by month first, as `oidc-server history partition` "
        "would have done a year ago, so the seeded year of history spreads over the months",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=SCENARIOS,
        metavar="SCENARIO",
        help="run only these scenarios (default: all)",
    )
    args = parser.parse_args()

    workers = (
        args.workers or int(os.environ.get("WEB_CONCURRENCY", 0)) or default_workers(usable_cores())
    )
    RESULTS.mkdir(exist_ok=True)
    ensure_autocannon()
    env = fresh_environment(workers)
    db_url = env["DATABASE_URL"]
    server = Server(env, workers)
    report: dict[str, Any] = {
        "workers": workers,
        "connections": args.connections,
        "seconds": args.seconds,
        "cpus": os.cpu_count(),
    }
    try:
        subprocess.run(
            [str(BIN / "oidc-server"), "db", "upgrade"], env=env, check=True, capture_output=True
        )
        if args.partitioned:
            report["partitions"] = partition_a_year_ago(db_url)
        data = seed(env, users=1000)
        # 10 history rows per user, and 2,000 for the user whose history is paged.
        seed_history(db_url, data["user_id"], 2000, 10, "user%")
        server.start()
        report["start_to_first_answer_s"] = round(server.start_seconds, 3)
        print(f"server: {workers} workers, first answer after {server.start_seconds:.2f}s")
        print(
            f"{'scenario':<22} {'req/s':>9} {'p50ms':>7} {'p99ms':>7} {'errors':>7} {'cpu/req':>9}"
        )
        only = set(args.only) if args.only else None
        # Logins run below, next to their reference.
        rest = (only or set(SCENARIOS)) - {"password_login"}
        specs = build_specs(server, data)
        report["scenarios"] = scenarios(server, specs, args.seconds, args.connections, rest)
        report["worker_rss_mb"] = [round(x, 1) for x in server.worker_memory_mb("Rss")]
        report["worker_pss_mb"] = [round(x, 1) for x in server.worker_memory_mb("Pss")]
        # The reference for logins: the same number of processes verifying our argon2id
        # hashes back to back, measured right after the login scenario so that both see the
        # machine in the same state; alternated twice, since a shared machine drifts.
        params = {"time_cost": 3, "memory_cost": 65536, "parallelism": 4}
        rates, logins = [], []
        for _ in range(2):
            if only is None or "password_login" in only:
                logins.append(
                    scenarios(server, specs, args.seconds, args.connections, {"password_login"})
                )
            rates.append(argon2_rate(workers, args.seconds, params))
            print(f"argon2id verify rate ({workers} processes): {rates[-1]:.1f}/s", flush=True)
        report["password_login_runs"] = [run["password_login"] for run in logins]
        report["argon2_verify_per_s"] = round(sum(rates) / len(rates), 1)
        if logins:
            login_rate = sum(run["password_login"]["rps"] for run in logins) / len(logins)
            report["login_share_of_argon2_rate"] = round(
                login_rate / report["argon2_verify_per_s"], 3
            )
            print(f"logins: {login_rate:.1f}/s = {report['login_share_of_argon2_rate']:.0%} of it")
        print(f"worker RSS MB: {report['worker_rss_mb']}")
        print(f"worker PSS MB: {report['worker_pss_mb']}")
        if args.growth:
            report["growth"] = growth(server, env, data, args)
    finally:
        server.stop()
    out = RESULTS / "bench.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
