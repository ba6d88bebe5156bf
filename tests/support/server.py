"""The production server (``python -m oidc_server.serve``), started for real by tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests

from oidc_server.config import Settings

from .cli import settings_env
from .waiting import free_port, wait_for

ROOT = Path(__file__).resolve().parents[2]
#: What `make run-prod` and the image run.
COMMAND = [sys.executable, "-m", "oidc_server.serve"]


def spawn_server(env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start the server with ``env``; everything it prints goes to ``log``."""
    with open(log, "wb") as sink:
        return subprocess.Popen(
            COMMAND, cwd=ROOT, env=dict(env), stdout=sink, stderr=subprocess.STDOUT
        )


@dataclass(frozen=True)
class RunningServer:
    url: str
    #: Everything the server printed (its JSON lines), complete once the block has exited.
    log: Path


@contextmanager
def production_server(
    settings: Settings, folder: Path, *, until: str = "/health/ready"
) -> Iterator[RunningServer]:
    """The production server on ``settings`` (their database, Redis, keys and secret), one
    worker, rate limits off, on a free port; inside the block once ``until`` answers 200
    (ready, unless told otherwise), stopped after."""
    port = free_port()
    env = {
        **settings_env(settings),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "WEB_CONCURRENCY": "1",
        "RATELIMIT_ENABLED": "false",
        "PROMETHEUS_MULTIPROC_DIR": str(folder / "metrics"),
    }
    running = RunningServer(f"http://127.0.0.1:{port}", folder / "server.log")
    process = spawn_server(env, running.log)

    def ready() -> bool:
        assert process.poll() is None, running.log.read_text()[-3000:]
        try:
            return requests.get(running.url + until, timeout=5).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(ready, f"the production server answering {until}")
        yield running
    finally:
        process.terminate()
        process.wait(timeout=30)


def children(pid: int) -> list[int]:
    """Live (not zombie) child processes of ``pid``: the server's workers."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found
