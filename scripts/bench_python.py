"""Our own Python's share of each direct answer: a worker's app driven in this process.

Real-HTTP figures (``make bench``) move with whatever else the machine does: on a shared
machine the same signature took 0.34 ms and 0.74 ms a second apart (docs/scaling.md, session
14). This builds the app a worker serves (``serve.rsgi_app``: the Flask app behind the RSGI
adapter, the direct answers, the access log at ``BENCH_LOG_LEVEL``), seeded as ``make bench``
seeds it, and hands it the requests of ``bench.py``'s scenarios as granian would (scope and
body), ``--concurrency`` at a time so that their Redis reads are gathered as in a worker. It
prints the CPU per answer; with ``--instructions`` it runs under callgrind and prints
instructions per answer instead, which are the same from run to run whatever the machine is
doing, so a change to our Python shows to the percent. Left out either way: granian (HTTP
parsing, writing the answer), the kernel, Redis's own work.

    .venv/bin/python scripts/bench_python.py [--instructions] [--requests 400]
        [--concurrency 8] [SCENARIO ...]

Needs what ``make bench`` needs (PostgreSQL, Redis, ``cd bench && npm ci`` is not needed);
``--instructions`` needs valgrind.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import logging.config
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # scripts/bench.py: the environment, the seed and the requests

#: The scenarios the direct answers serve (the rest go through Flask in a thread). Each
#: refresh spends a refresh token of its own: ``prepare`` seeds as many sessions as are used.
DIRECT = (
    "client_credentials",
    "refresh",
    "introspection",
    "head_role_check",
    "users_me",
    "jwks",
    "discovery",
)
_SPECS_ENV = "BENCH_PYTHON_SPECS"


class _Headers(dict[str, str]):
    """granian's request headers: lower-case names, ``get`` and ``in``."""


class _Scope:
    proto = "http"
    http_version = "1.1"
    scheme = "http"
    client = "127.0.0.1:50000"

    def __init__(self, spec: dict[str, Any], body_text: str) -> None:
        url = urllib.parse.urlsplit(spec["url"])
        self.server = url.netloc
        self.method = spec["method"]
        self.path = url.path
        self.query_string = url.query
        body = body_text.encode()
        headers = {"host": url.netloc, **{k.lower(): v for k, v in spec.get("headers", {}).items()}}
        if body:
            headers["content-length"] = str(len(body))
        self.headers = _Headers(headers)
        self.body = body


class _Protocol:
    """granian's RSGI protocol for one request whose body has arrived."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.status = 0

    async def __call__(self) -> bytes:
        return self.body

    def response_bytes(self, status: int, headers: Any, body: bytes) -> None:
        self.status = status

    async def client_disconnect(self) -> None:
        await asyncio.sleep(3600)


def prepare(args: argparse.Namespace) -> dict[str, Any]:
    """Seed as ``make bench`` does and build the scenarios' requests (their tokens come from
    a running server, stopped again before anything is measured)."""
    bench.RESULTS.mkdir(exist_ok=True)
    env = bench.fresh_environment(workers=1)
    subprocess.run(
        [str(bench.BIN / "oidc-server"), "db", "upgrade"], env=env, check=True, capture_output=True
    )
    # A session for the bearer scenarios, and one for each refresh (warm-up included).
    refreshes = _warm_up(args) + _measured(args) if "refresh" in args.scenarios else 0
    data = bench.seed(env, users=10, sessions=2 + refreshes)
    bench.seed_history(env["DATABASE_URL"], data["user_id"], 100, 10, "user%")
    server = bench.Server(env, workers=1, log_name="server-python.log")
    server.start()
    try:
        specs = bench.build_specs(server, data)
    finally:
        server.stop()
    return {"env": env, "specs": {name: specs[name] for name in args.scenarios}}


def measure(prepared: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """Per answer of each scenario: CPU microseconds, or instructions under callgrind."""
    os.environ.update(prepared["env"])
    from oidc_server import serve

    logging.config.dictConfig(serve.log_config(os.environ["LOG_LEVEL"].lower()))
    app = serve.rsgi_app()
    flask_app, through_flask = app.app, []

    def counted(environ: dict[str, Any], start_response: Any) -> Any:
        through_flask.append(environ["PATH_INFO"])
        return flask_app(environ, start_response)

    app.app = counted  # a request the direct answers leave to the app is not what is measured
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    app.__rsgi_init__(loop)

    async def answer(
        spec: dict[str, Any], bodies: Iterator[str], count: int, statuses: list[int]
    ) -> None:
        for _ in range(count):
            scope = _Scope(spec, next(bodies))
            protocol = _Protocol(scope.body)
            await app.__rsgi__(scope, protocol)
            statuses.append(protocol.status)

    async def load(spec: dict[str, Any], bodies: Iterator[str], total: int) -> list[int]:
        statuses: list[int] = []
        each = total // args.concurrency
        await asyncio.gather(
            *(answer(spec, bodies, each, statuses) for _ in range(args.concurrency))
        )
        return statuses

    figures = {}
    for name, spec in prepared["specs"].items():
        # A refresh token is spent once, so each refresh has a body of its own.
        bodies = (
            iter(spec["bodies"]) if "bodies" in spec else itertools.repeat(spec.get("body", ""))
        )
        loop.run_until_complete(load(spec, bodies, _warm_up(args)))  # caches fill, as in a worker
        total = _measured(args)
        if args.instructions:
            _callgrind("-z")
            _callgrind("-i", "on")
        through_flask.clear()
        started = time.process_time()
        statuses = loop.run_until_complete(load(spec, bodies, total))
        spent = time.process_time() - started
        if args.instructions:
            _callgrind("-i", "off")
            _callgrind(f"--dump={name}")
        wrong = [status for status in statuses if status >= 300]
        if wrong or through_flask:
            raise SystemExit(
                f"{name}: {len(wrong)} answers not 2xx, {len(through_flask)} left to the app"
            )
        figures[name] = spent * 1e6 / total
    return figures


def _warm_up(args: argparse.Namespace) -> int:
    """Requests of each scenario answered before measuring: caches fill, as in a worker."""
    return 8 * args.concurrency


def _measured(args: argparse.Namespace) -> int:
    """Requests of each scenario measured: a whole number of rounds of ``--concurrency``."""
    return args.requests - args.requests % args.concurrency


def _callgrind(*args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True, capture_output=True)


def instructions(prepared: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    """Instructions per answer: this script again, under callgrind, one dump per scenario."""
    out = Path(tempfile.mkdtemp(prefix="oidc-callgrind-"))
    specs = out / "prepared.json"
    specs.write_text(json.dumps(prepared))
    command = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}/callgrind.out",
        sys.executable,
        __file__,
        "--instructions",
        f"--requests={args.requests}",
        f"--concurrency={args.concurrency}",
        *args.scenarios,
    ]
    with open(bench.RESULTS / "server-python.log", "ab") as log:
        subprocess.run(command, env={**os.environ, _SPECS_ENV: str(specs)}, check=True, stderr=log)
    total = _measured(args)
    figures = {}
    for dump in out.glob("callgrind.out.*"):
        text = dump.read_text()
        trigger = next(line for line in text.splitlines() if line.startswith("desc: Trigger:"))
        name = trigger.rsplit(" ", 1)[-1]
        counted = next(line for line in text.splitlines() if line.startswith("totals:"))
        if name in args.scenarios:
            figures[name] = int(counted.split()[1]) / total
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help=f"of {', '.join(DIRECT)}")
    parser.add_argument("--instructions", action="store_true", help="count under callgrind")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    args.scenarios = args.scenarios or list(DIRECT)
    unknown = set(args.scenarios) - set(DIRECT)
    if unknown:
        parser.error(f"not a direct answer's scenario: {', '.join(sorted(unknown))}")
    within = os.environ.get(_SPECS_ENV)
    if within:  # this script run by itself under callgrind
        measure(json.loads(Path(within).read_text()), args)
        return
    prepared = prepare(args)
    level = prepared["env"]["LOG_LEVEL"]
    if args.instructions:
        figures, unit = instructions(prepared, args), "instructions"
    else:
        stderr = os.dup(2)
        with open(bench.RESULTS / "server-python.log", "ab") as log:
            os.dup2(log.fileno(), 2)  # the access lines, as a worker writes them
        try:
            figures, unit = measure(prepared, args), "CPU us"
        finally:
            os.dup2(stderr, 2)
    print(f"LOG_LEVEL={level}, {args.concurrency} at a time; {unit} per answer:")
    for name in args.scenarios:
        print(f"  {name:<20} {figures[name]:>12,.1f}")


if __name__ == "__main__":
    main()
