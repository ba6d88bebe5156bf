"""`make soak`: bounded mixed traffic in production mode, watching worker memory and Redis keys.

    .venv/bin/python scripts/soak.py [--seconds 180] [--threads 6] [--workers N]
                                     [--access-ttl 20] [--refresh-ttl 40] [--sample-every 5]

Starts the production server as ``make run-prod`` does (``python -m oidc_server.serve``,
granian; ``APP_ENV=production``, rate limits off, production argon2id parameters;
``WEB_CONCURRENCY``, ``WEB_THREADS`` and ``WEB_TIMEOUT`` pass through, ``--workers`` sets the
first; its log goes to ``bench-results/soak-server.log``) on a PostgreSQL database of its own
(``SOAK_DATABASE_URL``, default ``postgresql+psycopg://postgres@127.0.0.1:5432/soak``,
dropped and created again with ``psql``) and a Redis database of its own (``SOAK_REDIS_URL``,
default ``redis://127.0.0.1:6379/11``, flushed first). A few client threads then run a
mix of registrations, logins, chained refreshes, ``users/me``, introspection, ``HEAD`` role
checks and logouts, and abandon some sessions as real clients do. Token lifetimes are short
(``--access-ttl``/``--refresh-ttl``) so that tokens and sessions expire during the run, and
the Redis key count should level off instead of growing.

Every few seconds it samples each worker's RSS (``/proc``), Redis ``DBSIZE`` with the keys
by kind, and the sessions the clients still hold. At the end it prints a summary (requests,
5xx, answers a correct server would not give, RSS first/last/max per worker, keys over time)
and writes everything to ``bench-results/soak.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis
import requests

from oidc_server.serve import ServeSettings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
RESULTS = ROOT / "bench-results"
PASSWORD = "soak test password 1234"
FIRST_PARTY = "cinema-app"
#: Client-side slack when deciding whether a token should still be alive (whole-second TTLs).
SLACK = 3.0
#: Sessions one client thread keeps; when full it abandons its oldest (left to expire).
SESSIONS_PER_THREAD = 12
#: The traffic mix: operation and relative weight.
MIX = {
    "register": 4,
    "login": 12,
    "refresh": 22,
    "users_me": 22,
    "introspect": 12,
    "role_check": 18,
    "logout": 10,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# Setup ------------------------------------------------------------------------------------


def recreate_database(url: str) -> None:
    """Drop and create the soak database with psql (it must be ours alone)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    assert name and name.replace("_", "").isalnum(), f"unexpected database name {name!r}"
    env = {**os.environ, "PGOPTIONS": "-c client_min_messages=warning"}
    if parts.password:
        env["PGPASSWORD"] = parts.password
    subprocess.run(
        ["psql", "-h", parts.hostname or "127.0.0.1", "-p", str(parts.port or 5432),
         "-U", parts.username or "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1",
         "-q", "-c", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)',
         "-c", f'CREATE DATABASE "{name}"'],
        env=env,
        check=True,
    )  # fmt: skip


def children(pid: int) -> list[int]:
    """Live child processes of ``pid`` (the server's workers)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """The production server (``python -m oidc_server.serve``), as ``make run-prod`` starts it."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.url = f"http://127.0.0.1:{env['PORT']}"
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "oidc_server.serve"],
                cwd=ROOT,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 120
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited; see {self.log}")
            try:
                if requests.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after 120 s; see {self.log}")
            time.sleep(0.1)

    def workers(self) -> list[int]:
        assert self.process is not None
        return children(self.process.pid)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def cli(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [str(BIN / "oidc-server"), *args], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"oidc-server {' '.join(args)} failed: {done.stderr}")
    return done.stdout


# Load ---------------------------------------------------------------------------------------


@dataclass
class Session:
    user: str
    access: str
    refresh: str
    access_at: float
    used_at: float


@dataclass
class Shared:
    """What every client thread reads, and the tallies they write under one lock."""

    url: str
    machine: tuple[str, str]
    users: list[str]
    role_id: str
    holders: set[str]
    user_ids: dict[str, str]
    access_ttl: int
    refresh_ttl: int
    stop_at: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    transport_errors: Counter[str] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    unexpected_count: int = 0
    held_sessions: dict[int, int] = field(default_factory=dict)
    registered: int = 0

    def note(self, op: str, status: int, seconds: float) -> None:
        with self.lock:
            self.statuses[op][status] += 1
            self.latencies[op].append(seconds)

    def wrong(self, what: str) -> None:
        with self.lock:
            self.unexpected_count += 1
            if len(self.unexpected) < 50:
                self.unexpected.append(what)


class Client(threading.Thread):
    """One client: its own HTTP connection, sessions and machine token."""

    def __init__(self, index: int, shared: Shared, seed: int) -> None:
        super().__init__(name=f"client-{index}", daemon=True)
        self.index = index
        self.s = shared
        self.http = requests.Session()
        self.random = random.Random(seed)  # noqa: S311 (traffic shape, not secrets)
        self.sessions: list[Session] = []
        self.client_token = ""
        self.client_token_at = 0.0
        self.ops = list(MIX)
        self.weights = [MIX[op] for op in self.ops]

    def call(self, op: str, method: str, path: str, **kwargs: Any) -> requests.Response | None:
        started = time.monotonic()
        try:
            response = self.http.request(method, self.s.url + path, timeout=60, **kwargs)
        except requests.RequestException as exc:
            with self.s.lock:
                self.s.transport_errors[f"{op}: {type(exc).__name__}"] += 1
            return None
        self.s.note(op, response.status_code, time.monotonic() - started)
        if response.status_code >= 500:
            self.s.wrong(f"{op}: {response.status_code} {response.text[:200]}")
        return response

    def run(self) -> None:
        while time.monotonic() < self.s.stop_at:
            op = self.random.choices(self.ops, self.weights)[0]
            if op in ("refresh", "users_me", "logout") and not self.sessions:
                op = "login"
            getattr(self, op)()
            with self.s.lock:
                self.s.held_sessions[self.index] = len(self.sessions)

    # Helpers ---------------------------------------------------------------------------------

    def alive(self, session: Session, now: float) -> bool:
        return now - session.used_at < self.s.refresh_ttl - SLACK

    def fresh(self, session: Session, now: float) -> bool:
        return now - session.access_at < self.s.access_ttl - SLACK and self.alive(session, now)

    def machine_token(self) -> str:
        if time.monotonic() - self.client_token_at > self.s.access_ttl - SLACK:
            response = self.call(
                "client_token", "POST", "/oauth/token",
                data={"grant_type": "client_credentials"}, auth=self.s.machine,
            )  # fmt: skip
            if response is not None and response.status_code == 200:
                self.client_token = response.json()["access_token"]
                self.client_token_at = time.monotonic()
        return self.client_token

    # Operations ------------------------------------------------------------------------------

    def register(self) -> None:
        email = f"soak-{uuid.uuid4().hex[:16]}@example.com"
        response = self.call(
            "register", "POST", "/api/v1/auth/register", json={"login": email, "password": PASSWORD}
        )
        if response is not None and response.status_code != 201:
            self.s.wrong(f"register: {response.status_code} {response.text[:200]}")
        elif response is not None:
            with self.s.lock:
                self.s.registered += 1

    def login(self) -> None:
        user = self.random.choice(self.s.users)
        response = self.call(
            "login", "POST", "/api/v1/auth/login", json={"login": user, "password": PASSWORD}
        )
        if response is None:
            return
        if response.status_code != 200:
            self.s.wrong(f"login: {response.status_code} {response.text[:200]}")
            return
        body, now = response.json(), time.monotonic()
        if len(self.sessions) >= SESSIONS_PER_THREAD:
            self.sessions.pop(0)  # abandoned, as an uninstalled app would: left to expire
        self.sessions.append(Session(user, body["access_token"], body["refresh_token"], now, now))

    def refresh(self) -> None:
        session = self.random.choice(self.sessions)
        sent = time.monotonic()
        response = self.call(
            "refresh", "POST", "/oauth/token",
            data={"grant_type": "refresh_token", "client_id": FIRST_PARTY,
                  "refresh_token": session.refresh},
        )  # fmt: skip
        if response is None:
            self.sessions.remove(session)  # fate unknown; never reuse it
            return
        if response.status_code == 200:
            body, now = response.json(), time.monotonic()
            session.access, session.refresh = body["access_token"], body["refresh_token"]
            session.access_at = session.used_at = now
            return
        self.sessions.remove(session)
        if response.status_code != 400 or self.alive(session, sent):
            self.s.wrong(f"refresh of a live session: {response.status_code} {response.text[:200]}")

    def users_me(self) -> None:
        session = self.random.choice(self.sessions)
        sent = time.monotonic()
        response = self.call(
            "users_me", "GET", "/api/v1/users/me",
            headers={"Authorization": f"Bearer {session.access}"},
        )  # fmt: skip
        if response is None:
            return
        if response.status_code == 200:
            if response.json()["login"] != session.user:
                self.s.wrong("users/me answered for another user")
        elif response.status_code == 401 and not self.fresh(session, sent):
            if not self.alive(session, sent):
                self.sessions.remove(session)
        else:
            self.s.wrong(f"users/me with a fresh token: {response.status_code}")

    def introspect(self) -> None:
        if not self.sessions:
            return self.role_check()
        session = self.random.choice(self.sessions)
        sent = time.monotonic()
        response = self.call(
            "introspect", "POST", "/oauth/introspect",
            data={"token": session.access}, auth=self.s.machine,
        )  # fmt: skip
        if response is None:
            return None
        if response.status_code != 200:
            self.s.wrong(f"introspect: {response.status_code} {response.text[:200]}")
        elif self.fresh(session, sent) and not response.json().get("active"):
            self.s.wrong("introspect: a fresh token of a live session was inactive")
        return None

    def role_check(self) -> None:
        user = self.random.choice(self.s.users)
        token = self.machine_token()
        response = self.call(
            "role_check", "HEAD",
            f"/api/v1/users/{self.s.user_ids[user]}/roles/{self.s.role_id}/",
            headers={"Authorization": f"Bearer {token}"},
        )  # fmt: skip
        if response is None:
            return
        expected = 200 if user in self.s.holders else 404
        if response.status_code == 401:
            self.client_token_at = 0.0  # expired a little early by the clock: fetch another
        elif response.status_code != expected:
            self.s.wrong(f"role check: {response.status_code}, expected {expected}")

    def logout(self) -> None:
        session = self.random.choice(self.sessions)
        self.sessions.remove(session)
        sent = time.monotonic()
        response = self.call(
            "logout", "POST", "/api/v1/auth/logout",
            headers={"Authorization": f"Bearer {session.access}"},
        )  # fmt: skip
        if response is None:
            return
        if response.status_code != 204 and (
            response.status_code != 401 or self.fresh(session, sent)
        ):
            self.s.wrong(f"logout: {response.status_code} {response.text[:200]}")


# Sampling -----------------------------------------------------------------------------------


def key_kinds(client: redis.Redis) -> dict[str, int]:
    kinds: Counter[str] = Counter()
    for raw in client.scan_iter(count=1000):
        key = raw.decode()
        if key.endswith(":session"):
            kinds["sessions"] += 1
        elif ":rt:" in key:
            kinds["refresh_tokens"] += 1
        elif key.startswith("oidc:deny:"):
            kinds["denied_access_tokens"] += 1
        elif key.startswith("oidc:user:"):
            kinds["user_session_indexes"] += 1
        elif key.startswith(("oidc:roles:", "oidc:rolegen:")):
            kinds["role_cache"] += 1
        else:
            kinds["other"] += 1
    return dict(kinds)


class Sampler(threading.Thread):
    def __init__(self, server: Server, redis_url: str, shared: Shared, every: float) -> None:
        super().__init__(name="sampler", daemon=True)
        self.server, self.shared, self.every = server, shared, every
        self.redis = redis.Redis.from_url(redis_url)
        self.started = time.monotonic()
        self.samples: list[dict[str, Any]] = []
        self.rss: dict[int, list[tuple[float, float]]] = defaultdict(list)
        self.done = threading.Event()

    def sample(self) -> None:
        t = round(time.monotonic() - self.started, 1)
        workers = self.server.workers()
        for pid in workers:
            size = rss_mib(pid)
            if size is not None:
                self.rss[pid].append((t, round(size, 1)))
        with self.shared.lock:
            held = sum(self.shared.held_sessions.values())
            requests_so_far = sum(sum(c.values()) for c in self.shared.statuses.values())
        kinds = key_kinds(self.redis)
        self.samples.append(
            {
                "t": t,
                "requests": requests_so_far,
                "redis_keys": self.redis.dbsize(),
                **kinds,
                "sessions_held_by_clients": held,
                "workers": workers,
            }
        )

    def run(self) -> None:
        while not self.done.wait(self.every):
            self.sample()


# Report -------------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarise(shared: Shared, sampler: Sampler, config: dict[str, Any]) -> dict[str, Any]:
    total = sum(sum(c.values()) for c in shared.statuses.values())
    five_xx = sum(n for c in shared.statuses.values() for s, n in c.items() if s >= 500)
    endpoints = {
        op: {
            "requests": sum(counts.values()),
            "statuses": dict(sorted(counts.items())),
            "p50_ms": round(percentile(shared.latencies[op], 0.5) * 1000, 1),
            "p99_ms": round(percentile(shared.latencies[op], 0.99) * 1000, 1),
        }
        for op, counts in sorted(shared.statuses.items())
    }
    rss = {
        str(pid): {
            "first_mib": points[0][1],
            "last_mib": points[-1][1],
            "max_mib": max(p[1] for p in points),
            "samples": points,
        }
        for pid, points in sampler.rss.items()
    }
    keys = [s["redis_keys"] for s in sampler.samples]
    half = len(keys) // 2
    return {
        "config": config,
        "requests": total,
        "requests_per_second": round(total / config["seconds"], 1),
        "status_5xx": five_xx,
        "transport_errors": dict(shared.transport_errors),
        "unexpected_answers": shared.unexpected_count,
        "unexpected_examples": shared.unexpected,
        "registered": shared.registered,
        "endpoints": endpoints,
        "worker_rss": rss,
        "worker_pids_seen": sorted(int(p) for p in rss),
        "redis": sampler.samples,
        "redis_keys_second_half": {
            "min": min(keys[half:]) if keys else 0,
            "max": max(keys[half:]) if keys else 0,
            "mean": round(statistics.fmean(keys[half:]), 1) if keys else 0,
        },
    }


def print_summary(report: dict[str, Any]) -> None:
    cfg = report["config"]
    print(
        f"\nsoak: {cfg['seconds']} s, {cfg['threads']} client threads, "
        f"{cfg['workers']} workers x {cfg['threads_per_worker']} threads, "
        f"ACCESS_TOKEN_TTL={cfg['access_ttl']} REFRESH_TOKEN_TTL={cfg['refresh_ttl']}"
    )
    print(
        f"requests: {report['requests']} ({report['requests_per_second']}/s), "
        f"5xx: {report['status_5xx']}, transport errors: "
        f"{sum(report['transport_errors'].values())}, "
        f"unexpected answers: {report['unexpected_answers']}"
    )
    print(f"\n{'endpoint':<14}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}  statuses")
    for op, e in report["endpoints"].items():
        print(f"{op:<14}{e['requests']:>9}{e['p50_ms']:>9}{e['p99_ms']:>9}  {e['statuses']}")
    print(f"\n{'worker pid':<12}{'first MiB':>10}{'last MiB':>10}{'max MiB':>10}")
    for pid, r in report["worker_rss"].items():
        print(f"{pid:<12}{r['first_mib']:>10}{r['last_mib']:>10}{r['max_mib']:>10}")
    print(f"\n{'t s':>6}{'requests':>10}{'keys':>7}{'sessions':>10}{'held':>6}{'rt':>7}{'deny':>6}")
    for s in report["redis"]:
        print(
            f"{s['t']:>6}{s['requests']:>10}{s['redis_keys']:>7}{s.get('sessions', 0):>10}"
            f"{s['sessions_held_by_clients']:>6}{s.get('refresh_tokens', 0):>7}"
            f"{s.get('denied_access_tokens', 0):>6}"
        )
    if report["unexpected_examples"]:
        print("\nunexpected answers (first ones):")
        for line in report["unexpected_examples"][:10]:
            print("  " + line)


# Main ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=180)
    parser.add_argument("--threads", type=int, default=6)
    parser.add_argument("--workers", type=int, default=0, help="default: serve.py's")
    parser.add_argument("--access-ttl", type=int, default=20)
    parser.add_argument("--refresh-ttl", type=int, default=40)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--users", type=int, default=40, help="accounts that sign in")
    args = parser.parse_args()

    db_url = os.environ.get(
        "SOAK_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/soak"
    )
    redis_url = os.environ.get("SOAK_REDIS_URL", "redis://127.0.0.1:6379/11")
    RESULTS.mkdir(exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="oidc-soak-"))
    recreate_database(db_url)
    redis.Redis.from_url(redis_url).flushdb()

    env = {
        k: v
        for k, v in os.environ.items()
        if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV") or k.startswith("WEB_")
    }
    env.update(
        APP_ENV="production",
        DATABASE_URL=db_url,
        REDIS_URL=redis_url,
        SECRET_KEY=secrets.token_urlsafe(48),
        OIDC_ISSUER="http://127.0.0.1",
        OIDC_KEYS_DIR=str(folder / "keys"),
        INSTANCE_DIR=str(folder / "instance"),
        RATELIMIT_ENABLED="false",
        ACCESS_TOKEN_TTL=str(args.access_ttl),
        REFRESH_TOKEN_TTL=str(args.refresh_ttl),
        HOST="127.0.0.1",
        PORT=str(free_port()),
        LOG_LEVEL="WARNING",
        PROMETHEUS_MULTIPROC_DIR=str(folder / "metrics"),
    )
    if args.workers:
        env["WEB_CONCURRENCY"] = str(args.workers)
    cli(env, "db", "upgrade")
    machine = json.loads(
        cli(
            env, "clients", "create", "--name", "soak", "--grant-type", "client_credentials",
            "--scope", "roles:read roles:write", "--json",
        )
    )  # fmt: skip
    server = Server(env, RESULTS / "soak-server.log")
    server.start()
    try:
        auth = (machine["client_id"], machine["client_secret"])
        token = requests.post(
            server.url + "/oauth/token", data={"grant_type": "client_credentials"},
            auth=auth, timeout=30,
        ).json()["access_token"]  # fmt: skip
        bearer = {"Authorization": f"Bearer {token}"}
        roles = requests.get(server.url + "/api/v1/roles/", headers=bearer, timeout=30).json()
        role_id = next(r["id"] for r in roles if r["name"] == "subscriber")
        users, user_ids, holders = [], {}, set()
        for i in range(args.users):
            email = f"soak-user-{i}@example.com"
            made = requests.post(
                server.url + "/api/v1/auth/register",
                json={"login": email, "password": PASSWORD},
                timeout=60,
            )
            made.raise_for_status()
            users.append(email)
            user_ids[email] = made.json()["id"]
            if i % 2 == 0:
                granted = requests.post(
                    f"{server.url}/api/v1/users/{user_ids[email]}/roles/{role_id}",
                    headers=bearer,
                    timeout=30,
                )
                granted.raise_for_status()
                holders.add(email)

        shared = Shared(
            url=server.url, machine=auth, users=users, role_id=role_id, holders=holders,
            user_ids=user_ids, access_ttl=args.access_ttl, refresh_ttl=args.refresh_ttl,
            stop_at=time.monotonic() + args.seconds,
        )  # fmt: skip
        sampler = Sampler(server, redis_url, shared, args.sample_every)
        sampler.sample()
        sampler.start()
        clients = [Client(i, shared, seed=i) for i in range(args.threads)]
        print(f"soak: {args.seconds} s against {server.url} ({len(server.workers())} workers)")
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        sampler.done.set()
        sampler.join()
        sampler.sample()
        config = {
            "seconds": args.seconds,
            "threads": args.threads,
            "workers": len(server.workers()),
            # WEB_THREADS reaches the server unchanged (see env), so this is its figure.
            "threads_per_worker": ServeSettings.from_env().threads,
            "access_ttl": args.access_ttl,
            "refresh_ttl": args.refresh_ttl,
            "sample_every": args.sample_every,
            "users": args.users,
            "mix": MIX,
        }
        report = summarise(shared, sampler, config)
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
    log_text = server.log.read_text(errors="replace")
    report["server_log_errors"] = sum(
        1
        for line in log_text.splitlines()
        if '"level": "error"' in line or '"level": "critical"' in line or "Traceback" in line
    )
    (RESULTS / "soak.json").write_text(json.dumps(report, indent=2))
    print_summary(report)
    print(
        f"\nserver log error lines: {report['server_log_errors']}; written bench-results/soak.json"
    )
    failed = report["status_5xx"] or report["unexpected_answers"] or report["transport_errors"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
