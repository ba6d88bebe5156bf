"""Gunicorn settings for production: `gunicorn -c gunicorn.conf.py` (make run-prod, the image).

Read from the environment, beside the app's own settings (``oidc_server/config.py``):

- ``HOST`` / ``PORT``: where to listen (the app's settings use the same two variables).
- ``WEB_CONCURRENCY``: worker processes; default ``2 * cores + 1``, at most ``MAX_DEFAULT_WORKERS``.
- ``GUNICORN_WORKER_CLASS`` (default ``gthread``) and ``GUNICORN_THREADS`` (default 4).
- ``GUNICORN_TIMEOUT`` (default 30 s): a worker silent for this long is killed and replaced.
- ``PROMETHEUS_MULTIPROC_DIR``: where workers write their metrics; a fresh temporary folder,
  removed at exit, when unset. Stale files in a given folder are cleared when gunicorn starts.
- ``LOG_LEVEL``: as for the app.

Every worker builds its own app (``preload_app = False``): no database engine, Redis pool or
key ring crosses a fork, and nothing one worker holds in memory can differ from another's for
longer than the key ring's one-second reload, because sessions, revocations, rate limits and
role caches live in Redis and keys in the shared keys folder. The master imports the code once
before forking (``on_starting``), which has no side effects: workers share those pages and start
in about half a second instead of each importing for two (seven with five workers on two cores).
"""

from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

#: More processes than this seldom help: the heavy work (argon2id, RS256 signing) is CPU-bound,
#: each worker holds its own PostgreSQL pool (up to ``threads`` connections in use) and each
#: argon2id hash in flight needs 64 MiB. Set ``WEB_CONCURRENCY`` to go past it deliberately.
MAX_DEFAULT_WORKERS = 12


def _int_env(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    return int(raw) if raw else default


def default_workers(cores: int) -> int:
    """Gunicorn's rule of thumb, ``2 * cores + 1``, capped at ``MAX_DEFAULT_WORKERS``."""
    return max(1, min(2 * cores + 1, MAX_DEFAULT_WORKERS))


def _usable_cores() -> int:
    # The cores this process may run on (a cpuset limits them), not all the machine's.
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _bind_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


wsgi_app = "oidc_server.app:create_app()"
bind = [_bind_address(os.environ.get("HOST", "127.0.0.1"), _int_env("PORT", 8000))]
workers = _int_env("WEB_CONCURRENCY", default_workers(_usable_cores()))
# gthread measured as fast as sync or faster for most requests (docs/scaling.md), and it keeps
# a slow or idle keep-alive client from holding a whole worker when no buffering proxy sits in
# front (make run-prod).
# "gthread" means gthread with per-request deadlines (oidc_server/gunicorn_worker.py): the stock
# one lets a client that trickles its headers hold a thread for ever (slowloris).
_WORKER_CLASSES = {"gthread": "oidc_server.gunicorn_worker.ThreadWorker"}
_worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
worker_class = _WORKER_CLASSES.get(_worker_class, _worker_class)
threads = _int_env("GUNICORN_THREADS", 4)
preload_app = False
timeout = _int_env("GUNICORN_TIMEOUT", 30)
# Oversized request heads are refused with 431 before the app sees them (gunicorn's defaults,
# spelled out because deploy/nginx.conf and docs/security.md rely on them).
limit_request_line = 4094
limit_request_fields = 100
limit_request_field_size = 8190
graceful_timeout = 30
keepalive = 5
# gunicornc's control socket is not used here, and would be made under a home folder that the
# image's user cannot write.
control_socket_disable = True
# The heartbeat file is touched constantly; /dev/shm keeps that off a container's overlay disk.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108

# The app writes one JSON access line per request, with its request id; gunicorn's own lines
# (worker starts, timeouts) are JSON too so one parser reads both.
accesslog = None
errorlog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()
# gunicorn.error propagates to the root handler, which the app's workers reuse (configure_logging
# finds it) and give the request-id and redaction filters. gunicorn.access stays silent.
logconfig_dict: dict[str, Any] = {
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
    "root": {"level": loglevel.upper(), "handlers": ["stderr"]},
    "loggers": {
        "gunicorn.error": {"level": loglevel.upper(), "handlers": [], "propagate": True},
        "gunicorn.access": {"level": "CRITICAL", "handlers": [], "propagate": False},
    },
}

# Prometheus multiprocess mode: set before any worker imports prometheus_client. A folder made
# here is remembered in the environment, because a reload (SIGHUP) runs this file again.
_CREATED_MARK = "OIDC_GUNICORN_CREATED_METRICS_DIR"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="oidc-metrics-")
    os.environ[_CREATED_MARK] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
metrics_dir = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
metrics_dir.mkdir(parents=True, exist_ok=True)


def on_starting(server: Any) -> None:
    """Empty the metrics folder (an earlier run's files would be summed in), then import the app."""
    for stale in metrics_dir.glob("*.db"):
        stale.unlink(missing_ok=True)
    importlib.import_module(wsgi_app.partition(":")[0])


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges; its counters stay so that totals never go down."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, str(metrics_dir))


def on_exit(server: Any) -> None:
    """Remove the metrics folder if this configuration made it."""
    if os.environ.get(_CREATED_MARK) == str(metrics_dir):
        shutil.rmtree(metrics_dir, ignore_errors=True)
