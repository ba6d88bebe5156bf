"""Production server: granian (an HTTP server written in Rust) running the app through RSGI.

    python -m oidc_server.serve        (make run-prod, the image's command)
    python -m oidc_server.serve --check  (load the app once, print the settings, exit)

Read from the environment, beside the app's own settings (``oidc_server/config.py``):

- ``HOST`` / ``PORT``: where to listen (the app's settings use the same two variables).
- ``WEB_CONCURRENCY``: worker processes; default one per usable core, at most
  ``MAX_DEFAULT_WORKERS``. Each is an event loop that reads requests (in Rust) and answers the
  quick ones itself (``oidc_server/quick_requests.py``), and a pool of ``WEB_THREADS``
  threads (default 4) that run the Flask app on the other complete requests.
- ``WEB_TIMEOUT`` (default 30 s): a request body must have arrived within it (else 408), and a
  worker whose event loop has not ticked for this long is killed and replaced. ``0`` turns
  both off. The request line and headers have ``min(HEAD_TIMEOUT, WEB_TIMEOUT)``.
- ``PROMETHEUS_MULTIPROC_DIR``: where workers write their metrics; a fresh temporary folder,
  removed at exit, when unset. Stale files in a given folder are cleared at start.
- ``LOG_LEVEL``: as for the app. granian's own lines are JSON like the app's.
- ``MALLOC_ARENA_MAX``: glibc's own variable; when unset, the server caps it at
  ``MALLOC_ARENAS`` for itself and its workers (``limit_malloc_arenas``).

Why granian and not gunicorn (docs/scaling.md has the figures): the same app served 25-30 %
more ``client_credentials`` tokens on the same cores, and much more for cheap requests, because
HTTP parsing and connection handling leave Python. Slow clients hold no thread: heads are read
by granian under a deadline, bodies are awaited on the event loop (``oidc_server/rsgi.py``).

Every worker builds its own app after the fork: no database engine, Redis pool or key ring
crosses it. The main process imports the code first, so workers share those pages.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import gc
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("oidc_server.serve")

#: More processes than this seldom help: the heavy work (argon2id, RS256 signing) is CPU-bound,
#: each worker holds its own PostgreSQL pool (up to ``threads`` connections in use) and each
#: argon2id hash in flight needs 64 MiB. Set ``WEB_CONCURRENCY`` to go past it deliberately.
MAX_DEFAULT_WORKERS = 12
#: Seconds a client has to send a request's line and headers (nginx's client_header_timeout
#: in deploy/nginx.conf is the same).
HEAD_TIMEOUT = 10.0
#: Largest request head (request line and headers together) accepted; a larger one is refused
#: with 431 before the app sees it. Also deploy/nginx.conf's large_client_header_buffers.
MAX_HEAD_BYTES = 16 * 1024
#: How often a worker proves that its event loop runs, in seconds.
HEARTBEAT_INTERVAL = 1.0
_HEARTBEATS_ENV = "OIDC_SERVE_HEARTBEATS_DIR"
#: glibc malloc arenas per process. glibc gives every thread that allocates an arena of its
#: own, up to 8 per core, and each arena keeps memory freed in it for its next allocations; a
#: worker runs ``WEB_THREADS`` request threads beside granian's. With two, workers ended the
#: benchmark's scenarios (``scripts/bench.py --seconds 4``) about 3 MB smaller
#: (docs/scaling.md), at no cost in throughput that it could see: the threads take turns on
#: the GIL anyway.
MALLOC_ARENAS = 2
_M_ARENA_MAX = -8  # glibc's <malloc.h>


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a whole number, not {raw!r}") from None


def usable_cores() -> int:
    """The cores this process may run on (a cpuset limits them), not all the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def default_workers(cores: int) -> int:
    """One worker per core: a worker's event loop and threads keep its core busy on their own."""
    return max(1, min(cores, MAX_DEFAULT_WORKERS))


@dataclass(frozen=True)
class ServeSettings:
    host: str
    port: int
    workers: int
    threads: int
    timeout: int
    log_level: str

    @classmethod
    def from_env(cls) -> ServeSettings:
        return cls(
            host=os.environ.get("HOST", "127.0.0.1"),
            port=_int_env("PORT", 8000),
            workers=max(1, _int_env("WEB_CONCURRENCY", default_workers(usable_cores()))),
            threads=max(1, _int_env("WEB_THREADS", 4)),
            timeout=max(0, _int_env("WEB_TIMEOUT", 30)),
            log_level=os.environ.get("LOG_LEVEL", "info").strip().lower() or "info",
        )

    @property
    def bind(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def head_timeout(self) -> float:
        return min(HEAD_TIMEOUT, self.timeout) if self.timeout else 60.0  # granian's maximum


# In each worker -----------------------------------------------------------------------------


def rsgi_app() -> Any:
    """The factory granian calls in each worker: the Flask app behind the RSGI adapter; or,
    while a Redis Cluster cannot be reached, a stand-in that builds it once it can
    (``WaitingForRedis``)."""
    heartbeats = os.environ.get(_HEARTBEATS_ENV)
    on_loop_start = _heartbeat(Path(heartbeats)) if heartbeats else None
    try:
        return _built_app(on_loop_start)
    except _redis_unreachable() as unreachable:
        # A single server or Sentinel is connected on first use: only a Cluster's client
        # (the token store's and the rate limiter's) reads the slot map as it is made. The
        # app had configured the logs before it reached Redis.
        log.warning("Redis cannot be reached yet; not ready until it can: %s", unreachable)
        return WaitingForRedis(lambda: _built_app(None), on_loop_start, unreachable)


def _redis_unreachable() -> tuple[type[Exception], ...]:
    """What building the app raises when its Redis cannot be reached: what the store calls
    unavailable (``redis_connect.UNAVAILABLE``), and ``RedisClusterException``, by which a
    Cluster's client says no node answered (also a node not in cluster mode: waited for too,
    and logged)."""
    from redis.exceptions import RedisClusterException

    from .tokens.redis_connect import UNAVAILABLE

    return (RedisClusterException, *UNAVAILABLE)


def _built_app(on_loop_start: Callable[[Any], None] | None) -> Any:
    from .app import create_app
    from .direct import answerer_for
    from .observability import ABANDONED
    from .quick_requests import QuickRequests
    from .rsgi import RSGIServer

    settings = ServeSettings.from_env()
    app = create_app()
    # What exists now (the code, the app, its pools) lives as long as the worker. Frozen, the
    # collector's full passes no longer walk those ~127,000 objects (50-70 ms each), and so no
    # longer write into the pages the worker shares with the main process: 13 MB less of
    # each worker's own memory (PSS 67 -> 54 MB, docs/scaling.md, session 10).
    gc.freeze()
    return RSGIServer(
        app,
        threads=settings.threads,
        max_body=app.config["MAX_CONTENT_LENGTH"],
        body_timeout=float(settings.timeout) if settings.timeout else None,
        on_loop_start=on_loop_start,
        on_abandoned=ABANDONED.inc,
        runs_on_loop=QuickRequests(app.url_map),
        answers_first=answerer_for(app),
    )


class WaitingForRedis:
    """A worker's RSGI app while its Redis Cluster cannot be reached: alive (``/health/live``
    200), not ready, every other request 503 with ``Retry-After``; the real app is built again
    in a thread every ``RETRY_SECONDS`` and serves every request from the moment it is built.
    Without this the worker would exit, granian would find a crash loop and the server exit
    (docs/scaling.md, Redis)."""

    RETRY_SECONDS = 1.0
    #: Between two log lines of the same failure: one a minute, not one a second.
    LOG_EVERY_SECONDS = 60.0

    def __init__(
        self,
        build: Callable[[], Any],
        on_loop_start: Callable[[Any], None] | None,
        first_failure: Exception,
    ) -> None:
        self._build = build
        self._first_failure = repr(first_failure)
        self._on_loop_start = on_loop_start
        self._app: Any = None
        self._stopped = threading.Event()

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._on_loop_start is not None:
            self._on_loop_start(loop)
        threading.Thread(target=self._keep_building, name="waiting-for-redis", daemon=True).start()

    def _keep_building(self) -> None:
        said, said_at = self._first_failure, time.monotonic()
        while not self._stopped.wait(self.RETRY_SECONDS):
            try:
                self._app = self._build()
            except Exception as failed:  # the worker stays unready and tries again
                now = time.monotonic()
                if repr(failed) != said or now - said_at >= self.LOG_EVERY_SECONDS:
                    said, said_at = repr(failed), now
                    if isinstance(failed, _redis_unreachable()):
                        log.warning("Redis cannot be reached yet: %s", failed)
                    else:
                        log.exception("building the app failed")
                continue
            log.info("Redis reached: serving")
            return

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        app = self._app
        if app is not None:
            await app.__rsgi__(scope, protocol)
            return
        if scope.proto != "http":
            protocol.close(1008)
            return
        headers: list[tuple[str, str]] = []
        if scope.path == "/health/live":
            status, body = 200, {"status": "ok"}
        elif scope.path == "/health/ready":  # as the app's readiness says it
            status, body = 503, {"status": "unavailable", "checks": {"token_store": False}}
        else:
            body = {
                "error": "temporarily_unavailable",
                "error_description": "the token store cannot be reached yet",
            }
            status, headers = 503, [("retry-after", "1")]
        headers += [("content-type", "application/json"), ("cache-control", "no-store")]
        protocol.response_bytes(status, headers, json.dumps(body).encode())

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stopped.set()
        if self._app is not None:
            self._app.__rsgi_del__(loop)


def _heartbeat(folder: Path) -> Any:
    """Touch ``folder/<pid>`` from the worker's event loop every second: proof that it runs."""

    def start(loop: Any) -> None:
        beat = folder / str(os.getpid())

        def tick() -> None:
            beat.touch()
            loop.call_later(HEARTBEAT_INTERVAL, tick)

        loop.call_soon_threadsafe(tick)

    return start


# In the main process ------------------------------------------------------------------------


class Watchdog(threading.Thread):
    """Kills any worker whose heartbeat is older than ``timeout``; granian starts another.

    A worker's event loop stops ticking when the process is wedged (the GIL held by a stuck C
    call, a deadlock, SIGSTOP): requests already routed to it would wait for ever.
    """

    def __init__(self, folder: Path, timeout: float, metrics: Path) -> None:
        super().__init__(name="worker-watchdog", daemon=True)
        self.folder, self.timeout, self.metrics = folder, timeout, metrics
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(HEARTBEAT_INTERVAL):
            self.check(time.time())

    def check(self, now: float) -> list[int]:
        """Kill the workers silent for longer than ``timeout``; returns their pids. Also
        forgets the workers that have gone, with their live gauges (prometheus_client's
        multiprocess mode; their counters stay, so totals never go down)."""
        from prometheus_client import multiprocess

        killed = []
        for beat in self.folder.iterdir():
            try:
                pid, age = int(beat.name), now - beat.stat().st_mtime
            except (ValueError, FileNotFoundError):
                continue
            if not _alive(pid):
                beat.unlink(missing_ok=True)
                multiprocess.mark_process_dead(pid, str(self.metrics))
            elif age > self.timeout:
                log.error("worker %s silent for %.0f s: killing it", pid, age)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                beat.unlink(missing_ok=True)
                killed.append(pid)
        return killed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (dead, not yet reaped) still answers signal 0.
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return False
    return True


def limit_malloc_arenas(arenas: int = MALLOC_ARENAS) -> bool:
    """Cap glibc's malloc arenas for this process and the workers it will fork, unless
    ``MALLOC_ARENA_MAX`` is set (the operator's value, which glibc read at start, stands).
    False when nothing was changed: set by the environment, or a C library without it."""
    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return mallopt(_M_ARENA_MAX, arenas) == 1


def log_config(level: str) -> dict[str, Any]:
    """granian's loggers, JSON on stderr like the app's; its access log stays off (the app
    writes one line per request with its request id)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": "oidc_server.logs.JsonFormatter"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "json",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {
            "_granian": {"level": level.upper(), "handlers": [], "propagate": True},
            "granian.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
        },
    }


def refuse_a_taken_port(host: str, port: int) -> None:
    """Exit if something already listens on ``host:port``.

    granian binds with SO_REUSEPORT, so a second server started on a taken port (a second
    ``make run-prod``, a stale process) would start silently and take half the connections.
    A bind without SO_REUSEPORT fails if anything listens there.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is no owner
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise SystemExit(f"cannot listen on {host}:{port}: {exc.strerror}") from exc


def _metrics_folder() -> tuple[Path, bool]:
    """The Prometheus multiprocess folder, emptied; True if made here (removed at exit)."""
    made = not os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if made:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="oidc-metrics-")
    folder = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.db"):  # an earlier run's files would be summed in
        stale.unlink(missing_ok=True)
    return folder, made


def build_server(settings: ServeSettings) -> Any:
    from granian.constants import HTTPModes, Interfaces
    from granian.http import HTTP1Settings
    from granian.log import LogLevels
    from granian.server import Server

    return Server(
        "oidc_server.serve:rsgi_app",
        address=settings.host,
        port=settings.port,
        interface=Interfaces.RSGI,
        factory=True,
        workers=settings.workers,
        # HTTP/1.1 only: TLS and HTTP/2 end at the load balancer, and granian's HTTP/2 limits
        # (16 MB of headers by default) are not the ones documented here.
        http=HTTPModes.http1,
        websockets=False,
        http1_settings=HTTP1Settings(
            header_read_timeout=int(settings.head_timeout * 1000),
            max_buffer_size=MAX_HEAD_BYTES,
        ),
        respawn_failed_workers=True,
        respawn_interval=0.5,
        workers_kill_timeout=settings.timeout or None,
        log_level=LogLevels(settings.log_level),
        log_dictconfig=log_config(settings.log_level),
        log_access=False,
    )


def check(settings: ServeSettings) -> dict[str, Any]:
    """Build one worker's app and the server from this environment, without serving; returns
    what would be served (``--check``: a deployment's command and variables, validated)."""
    _built_app(None)  # strict: a Redis that cannot be reached is an error here
    build_server(settings)
    return {**asdict(settings), "head_timeout": settings.head_timeout, "bind": settings.bind}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m oidc_server.serve", description=__doc__)
    parser.add_argument(
        "--check",
        action="store_true",
        help="load the app once with this environment, print the settings as JSON and exit",
    )
    args = parser.parse_args(argv)
    settings = ServeSettings.from_env()
    limit_malloc_arenas()  # before any thread exists, here or in a forked worker
    # Before the app is imported: prometheus_client picks its storage from this variable.
    metrics, made_metrics = _metrics_folder()
    heartbeats = Path(tempfile.mkdtemp(prefix="oidc-heartbeats-"))
    os.environ[_HEARTBEATS_ENV] = str(heartbeats)
    watchdog = None
    try:
        if args.check:
            print(json.dumps(check(settings)))
            return
        refuse_a_taken_port(settings.host, settings.port)
        # Imported once here, before the fork, so that workers share these pages.
        importlib.import_module("oidc_server.app")
        from .config import ConfigError, Settings
        from .db import import_driver

        try:
            app_settings = Settings.from_env()
        except ConfigError as exc:
            # Here, not in every worker: granian would restart them until it gave up.
            raise SystemExit(f"Error: {exc}") from None
        import_driver(app_settings.resolved_database_url)
        server = build_server(settings)
        if settings.timeout:
            watchdog = Watchdog(heartbeats, settings.timeout, metrics)
            watchdog.start()
        server.serve()
    finally:
        if watchdog:
            watchdog.stopped.set()
        shutil.rmtree(heartbeats, ignore_errors=True)
        if made_metrics:
            shutil.rmtree(metrics, ignore_errors=True)


if __name__ == "__main__":
    main()
