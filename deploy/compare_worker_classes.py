"""Compare gunicorn worker classes on this machine with ApacheBench (``ab``), loopback only.

Migrates the database, then starts ``gunicorn -c gunicorn.conf.py`` once per worker class
against it and a Redis (``DATABASE_URL``, ``REDIS_URL``; rate limits off, as benchmarks do),
drives four requests that span the workload (a JWKS read, a ``client_credentials`` token, a
userinfo call, and a password login paying for argon2id) and prints requests per second and
latency percentiles for each. Every run is bounded by ``-n`` requests and ab's own timeout.

    DATABASE_URL=postgresql+psycopg://... REDIS_URL=redis://127.0.0.1:6379/9 \\
        .venv/bin/python deploy/compare_worker_classes.py --classes sync gthread
"""

# ruff: noqa: S603, S607  (it runs ab, gunicorn and oidc-server with arguments it builds itself)
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PASSWORD = "bench password " + uuid.uuid4().hex[:8]


def _wait_ready(url: str, deadline: float) -> None:
    while True:
        try:
            with urllib.request.urlopen(url + "/health/ready", timeout=1) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit("server did not become ready")
        time.sleep(0.2)


def _post_form(url: str, form: dict[str, str], auth: tuple[str, str] | None = None) -> dict:
    data = "&".join(f"{k}={urllib.request.quote(v)}" for k, v in form.items()).encode()
    request = urllib.request.Request(url, data=data, method="POST")  # noqa: S310
    request.add_header("Content-Type", "application/x-www-form-urlencoded")
    if auth:
        raw = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {raw}")
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return json.loads(response.read())


def _ab(args: list[str]) -> dict[str, float]:
    """Run ab and read its throughput, failures and latency percentiles."""
    out = subprocess.run(
        ["ab", "-q", "-s", "30", *args], capture_output=True, text=True, check=True, timeout=600
    ).stdout
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"Failed requests:\s+(\d+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx responses:\s+(\d+)", out)
    pct = dict(re.findall(r"^\s+(50|95|99)%\s+(\d+)", out, re.M))
    return {
        "rps": rps,
        "failed": failed + (int(non2xx.group(1)) if non2xx else 0),
        "p50_ms": float(pct.get("50", "nan")),
        "p95_ms": float(pct.get("95", "nan")),
        "p99_ms": float(pct.get("99", "nan")),
    }


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
        raise SystemExit(f"oidc-server {' '.join(args[:2])} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def run_class(worker_class: str, env: dict[str, str], args: argparse.Namespace) -> dict:
    """Serve with ``worker_class`` and measure every scenario against it."""
    base = f"http://127.0.0.1:{args.port}"
    env = {**env, "GUNICORN_WORKER_CLASS": worker_class}
    server = subprocess.Popen(
        [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py")],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=args.server_log,
    )
    results: dict[str, dict[str, float]] = {}
    try:
        _wait_ready(base, time.monotonic() + 60)
        creds = json.loads(
            _cli(env, "clients", "create", "--name", "bench", "--grant-type",
                 "client_credentials", "--scope", "roles:read", "--json")
        )  # fmt: skip
        login = f"bench-{uuid.uuid4().hex[:8]}@example.com"
        _cli(env, "users", "create-admin", login, stdin=PASSWORD + "\n")
        user_token = _post_form(
            base + "/oauth/token",
            {"grant_type": "password", "client_id": "cinema-app", "username": login,
             "password": PASSWORD, "scope": "openid profile"},
        )["access_token"]  # fmt: skip
        work = Path(tempfile.mkdtemp(prefix="oidc-bench-"))
        (work / "cc").write_text("grant_type=client_credentials")
        (work / "login").write_text(
            f"grant_type=password&client_id=cinema-app&username={login}"
            f"&password={urllib.request.quote(PASSWORD)}"
        )
        basic = base64.b64encode(f"{creds['client_id']}:{creds['client_secret']}".encode())
        form = "application/x-www-form-urlencoded"
        c, n = str(args.concurrency), str(args.requests)
        keepalive = ["-k"] if args.keepalive else []
        # Warm every worker's pools and caches before measuring.
        _ab([*keepalive, "-n", "200", "-c", c, base + "/.well-known/jwks.json"])
        results["jwks"] = _ab([*keepalive, "-n", n, "-c", c, base + "/.well-known/jwks.json"])
        results["client_credentials"] = _ab(
            [*keepalive, "-n", n, "-c", c, "-p", str(work / "cc"), "-T", form,
             "-H", f"Authorization: Basic {basic.decode()}", base + "/oauth/token"]
        )  # fmt: skip
        results["userinfo"] = _ab(
            [*keepalive, "-n", n, "-c", c, "-H", f"Authorization: Bearer {user_token}",
             base + "/oauth/userinfo"]
        )  # fmt: skip
        results["password_login"] = _ab(
            [*keepalive, "-n", str(args.login_requests), "-c", c, "-p", str(work / "login"),
             "-T", form, base + "/oauth/token"]
        )  # fmt: skip
        shutil.rmtree(work, ignore_errors=True)
    finally:
        server.terminate()
        server.wait(timeout=30)
    return results


def main() -> None:
    """Measure each worker class named on the command line and print a table and JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", nargs="+", default=["sync", "gthread"])
    parser.add_argument("--port", type=int, default=8462)
    parser.add_argument("--workers", default=os.environ.get("WEB_CONCURRENCY", ""))
    parser.add_argument("--threads", default=os.environ.get("GUNICORN_THREADS", "4"))
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--login-requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keepalive", action="store_true", help="ab -k: reuse connections")
    parser.add_argument(
        "--server-log", type=argparse.FileType("a"), default=subprocess.DEVNULL,
        help="append gunicorn's log here",
    )  # fmt: skip
    args = parser.parse_args()
    if not os.environ.get("DATABASE_URL") or not os.environ.get("REDIS_URL"):
        raise SystemExit("set DATABASE_URL and REDIS_URL")
    keys = tempfile.mkdtemp(prefix="oidc-bench-keys-")
    env = {
        **os.environ,
        "HOST": "127.0.0.1",
        "PORT": str(args.port),
        "OIDC_ISSUER": f"http://127.0.0.1:{args.port}",
        "OIDC_KEYS_DIR": keys,
        "RATELIMIT_ENABLED": "false",
        "GUNICORN_THREADS": args.threads,
    }
    if args.workers:  # gunicorn itself fails on an empty WEB_CONCURRENCY
        env["WEB_CONCURRENCY"] = args.workers
    env.setdefault("SECRET_KEY", "bench-" + uuid.uuid4().hex + uuid.uuid4().hex)
    _cli(env, "db", "upgrade")
    # Rounds alternate the classes so that a noisy neighbour hurts both alike; medians are kept.
    runs: dict[str, list[dict[str, dict[str, float]]]] = {c: [] for c in args.classes}
    try:
        for _ in range(args.rounds):
            for worker_class in args.classes:
                runs[worker_class].append(run_class(worker_class, env, args))
    finally:
        shutil.rmtree(keys, ignore_errors=True)
    all_results = {
        worker_class: {
            scenario: {
                metric: statistics.median(run[scenario][metric] for run in class_runs)
                for metric in class_runs[0][scenario]
            }
            for scenario in class_runs[0]
        }
        for worker_class, class_runs in runs.items()
    }
    print(f"medians of {args.rounds} round(s), concurrency {args.concurrency}")
    header = ("scenario", "class", "req/s", "p50", "p95", "p99", "fail")
    print("{:<20} {:<8} {:>8} {:>6} {:>6} {:>6} {:>5}".format(*header))
    for scenario in next(iter(all_results.values())):
        for worker_class, results in all_results.items():
            r = results[scenario]
            print(
                f"{scenario:<20} {worker_class:<8} {r['rps']:>8.1f} {r['p50_ms']:>6.0f} "
                f"{r['p95_ms']:>6.0f} {r['p99_ms']:>6.0f} {r['failed']:>5.0f}"
            )
    print(json.dumps(all_results))


if __name__ == "__main__":
    main()
