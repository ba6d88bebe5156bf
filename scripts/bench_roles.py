"""Benchmark the role check ``HEAD /api/v1/users/{user_id}/roles/{role_id}/`` under granian.

    BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1:5432/bench_h4 \\
    BENCH_REDIS_URL=redis://127.0.0.1:6379/12 \\
    .venv/bin/python scripts/bench_roles.py [--workers 2] [--threads N] [--connections 32] \\
        [--seconds 10]

Migrates the database (``oidc-server db upgrade``), makes a machine client and a user holding
the ``admin`` role with the real CLI, serves the app as ``make run-prod`` does (``python -m
oidc_server.serve`` with ``WEB_CONCURRENCY=N`` and ``WEB_THREADS``; rate limits off; its log
is ``server.log`` beside the temporary instance folder), and loads it with the shared Node
load generator (autocannon): a held role (200) and a role not held (404), once with the Redis
role cache and once with it off (``ROLES_CACHE_TTL=0``, one primary-key query per check).
Prints one JSON line per run; latencies are milliseconds.
The load generator must be installed first:

    mkdir -p /tmp/oidc-peers-h4 && cd /tmp/oidc-peers-h4 && \\
    cp /work/shared/peers/load.mjs /work/shared/peers/package.json . && npm install --silent
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests

from oidc_server.serve import ServeSettings

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PASSWORD = "bench-password-" + "x" * 8


def _cli(env: dict[str, str], *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(BIN / "oidc-server"), *args],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if done.returncode != 0:
        raise SystemExit(f"oidc-server {' '.join(args)} failed: {done.stderr.strip()}")
    return done.stdout


def _wait_until_up(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit("the server exited during start-up")
        try:
            if requests.get(f"{url}/health/live", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass  # not listening yet, or still importing
        time.sleep(0.2)
    raise SystemExit("the server did not answer within 30 s")


def _load(peers: Path, url: str, seconds: int, connections: int, token: str) -> dict[str, object]:
    out = subprocess.run(
        ["node", "load.mjs", url, "HEAD", str(seconds), str(connections), "", f"Bearer {token}"],
        cwd=peers,
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _serve_and_measure(
    env: dict[str, str], args: argparse.Namespace, cache_ttl: int, targets: dict[str, str]
) -> None:
    port = args.port
    url = f"http://127.0.0.1:{port}"
    server_env = {
        **env,
        "ROLES_CACHE_TTL": str(cache_ttl),
        "OIDC_ISSUER": url,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": str(args.workers),
        "WEB_THREADS": str(args.threads),
    }
    log = (Path(env["INSTANCE_DIR"]).parent / "server.log").open("ab")
    server = subprocess.Popen(
        [sys.executable, "-m", "oidc_server.serve"],
        env=server_env,
        cwd=ROOT,
        stdout=log,
        stderr=log,
    )
    try:
        _wait_until_up(url, server)
        token = requests.post(
            f"{url}/oauth/token",
            data={"grant_type": "client_credentials", "scope": "roles:read"},
            auth=(targets["client_id"], targets["client_secret"]),
            timeout=10,
        ).json()["access_token"]
        cases = {
            "held (200)": f"{url}/api/v1/users/{targets['user_id']}/roles/{targets['held']}/",
            "not held (404)": f"{url}/api/v1/users/{targets['user_id']}/roles/{targets['other']}/",
        }
        for name, target in cases.items():
            status = requests.head(target, headers={"Authorization": f"Bearer {token}"}, timeout=5)
            expected = 200 if name.startswith("held") else 404
            if status.status_code != expected:
                raise SystemExit(f"{name}: expected {expected}, got {status.status_code}")
            _load(Path(args.peers), target, 2, args.connections, token)  # warm-up
            result = _load(Path(args.peers), target, args.seconds, args.connections, token)
            print(
                json.dumps(
                    {
                        "case": name,
                        "cache": "redis" if cache_ttl > 0 else "off",
                        "workers": args.workers,
                        "threads": args.threads,
                        "connections": args.connections,
                        "rps": result["rps"],
                        "p50_ms": result["p50"],
                        "p99_ms": result["p99"],
                        "non_2xx": result["bad"],
                    }
                ),
                flush=True,
            )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        log.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--port", type=int, default=8754)
    parser.add_argument(
        "--threads", type=int, default=0, help="WEB_THREADS, per worker (default: serve.py's)"
    )
    parser.add_argument("--peers", default="/tmp/oidc-peers-h4")  # noqa: S108 - the documented place
    parser.add_argument(
        "--cache", choices=["both", "redis", "off"], default="both", help="which modes to run"
    )
    args = parser.parse_args()
    # serve.py's default, or WEB_THREADS from the environment, unless --threads says otherwise.
    args.threads = args.threads or ServeSettings.from_env().threads
    database_url = os.environ.get("BENCH_DATABASE_URL")
    redis_url = os.environ.get("BENCH_REDIS_URL")
    if not database_url or not redis_url:
        raise SystemExit("set BENCH_DATABASE_URL and BENCH_REDIS_URL (your own database and db)")

    workdir = Path(tempfile.mkdtemp(prefix="bench-roles-"))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("BENCH_", "TEST_"))},
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "OIDC_KEYS_DIR": str(workdir / "keys"),
        "INSTANCE_DIR": str(workdir / "instance"),
        "SECRET_KEY": secrets.token_urlsafe(48),
        "RATELIMIT_ENABLED": "false",
        "APP_ENV": "development",
    }
    _cli(env, "db", "upgrade")
    client = json.loads(
        _cli(
            env,
            "clients",
            "create",
            "--name",
            "bench",
            "--grant-type",
            "client_credentials",
            "--scope",
            "roles:read roles:write",
            "--json",
        )
    )
    user = json.loads(
        _cli(
            env,
            "users",
            "create-admin",
            f"bench-{uuid.uuid4().hex[:8]}@example.com",
            stdin=PASSWORD,
        )
    )
    # The ids of a role the user holds and one it does not.
    from oidc_server.config import Settings
    from oidc_server.db import Database
    from oidc_server.roles import find_role_by_name

    database = Database(Settings.from_env(env).resolved_database_url)
    with database.session() as session:
        held = find_role_by_name(session, "admin").id
        other = find_role_by_name(session, "subscriber").id
    database.dispose()
    targets = {
        "client_id": client["client_id"],
        "client_secret": client["client_secret"],
        "user_id": user["id"],
        "held": str(held),
        "other": str(other),
    }
    modes = {"both": [300, 0], "redis": [300], "off": [0]}[args.cache]
    for ttl in modes:
        _serve_and_measure(env, args, ttl, targets)


if __name__ == "__main__":
    main()
