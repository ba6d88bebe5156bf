"""Private PostgreSQL, Redis and app server processes that the fault tests stop, freeze and kill.

Nothing here touches the shared services (PostgreSQL on 5432, Redis on 6379): every instance
listens on a free loopback port and keeps its files in a folder of its own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import redis
import requests

from ..support.server import children, spawn_server
from ..support.waiting import free_port, wait_for

#: The client-side limit of one HTTP request to a server under test.
REQUEST_TIMEOUT = 30.0
#: granian exits (crash-loop detection) when a worker slot dies again within 5.5 s of its
#: last respawn; a worker is killed again only once its replacement is older than this.
RESPAWN_GRACE = 6.5


def _tail(path: Path, size: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


# PostgreSQL ---------------------------------------------------------------------------------


def postgres_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` live: ``PG_BINDIR``, the newest packaged one, or PATH."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    packaged = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if packaged:
        return packaged[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; set PG_BINDIR")


class PostgresInstance:
    """A throwaway PostgreSQL cluster: trust auth, loopback only, no fsync (tests only).

    ``initdb`` refuses to run as root, so as root every server command runs as the
    ``postgres`` OS user, in a folder that user owns.
    """

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.data = folder / "data"
        self.log = folder / "postgres.log"
        self.port = port or free_port()
        self.bindir = postgres_bindir()
        self._as_postgres = os.geteuid() == 0

    def _run(self, *args: str) -> None:
        prefix = ["runuser", "-u", "postgres", "--"] if self._as_postgres else []
        done = subprocess.run(
            [*prefix, *args], capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, f"{args[0]} failed: {done.stderr}\n{_tail(self.log)}"

    def init(self) -> None:
        if self._as_postgres:
            shutil.chown(self.folder, "postgres", "postgres")
        self._run(
            str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres",
            "--auth=trust", "--encoding=UTF8", "--no-sync",
        )  # fmt: skip

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 "
            # Only the OS must not crash for these to be safe: an immediate stop keeps every
            # committed transaction (synchronous_commit stays on for that reason).
            "-c fsync=off -c full_page_writes=off"
        )
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip

    def stop(self) -> None:
        """Stop at once, as a crash would: every connection is cut."""
        pg_ctl = str(self.bindir / "pg_ctl")
        self._run(pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def is_running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str) -> str:
        """The SQLAlchemy URL of ``database``."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def dsn(self, database: str) -> str:
        """The libpq connection string of ``database`` (for psycopg directly)."""
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def create_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.dsn("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

    def destroy(self) -> None:
        if self.is_running():
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


# Redis --------------------------------------------------------------------------------------


class RedisInstance:
    """A private redis-server. With AOF fsynced on every write it keeps its data over a crash,
    as production's Redis with AOF does, so a stop-and-start is an outage, not a data loss."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.log = folder / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=10, socket_connect_timeout=10)

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--dir", str(self.folder), "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--daemonize", "no", "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        client = self.client()

        def answers() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, f"redis-server exited: {_tail(self.log)}"
            try:
                return bool(client.ping())
            except redis.ConnectionError:
                return False
            except redis.BusyLoadingError:
                return False

        wait_for(answers, f"redis-server on port {self.port}")
        client.close()

    def stop(self) -> None:
        """Kill the server (a crash); its port refuses connections until ``start``."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)
        self.process = None

    def freeze(self) -> None:
        """SIGSTOP: the port still accepts connections, but nothing answers (a hung server)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


# The server under test ----------------------------------------------------------------------


class Server:
    """The app under granian, started by ``python -m oidc_server.serve`` as in production.

    The process started is granian's main process; its children are the workers (forked), and
    it starts a new worker in place of one that dies.
    """

    def __init__(self, env: dict[str, str], folder: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / f"server-{self.port}.log"
        self.env = {
            **env,
            "PORT": str(self.port),
            "PROMETHEUS_MULTIPROC_DIR": str(folder / f"metrics-{self.port}"),
        }
        self.process: subprocess.Popen[bytes] | None = None
        #: When the last replacement of a killed worker was seen (``time.monotonic()``).
        self._respawned: float | None = None

    def start(self) -> None:
        self.process = spawn_server(self.env, self.log)
        self.wait_ready()

    def logs(self) -> str:
        return _tail(self.log)

    def request(
        self, method: str, path: str, timeout: float = REQUEST_TIMEOUT, **kwargs: Any
    ) -> requests.Response:
        return requests.request(method, self.url + path, timeout=timeout, **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def head(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("HEAD", path, **kwargs)

    def workers(self) -> list[int]:
        assert self.process is not None
        return children(self.process.pid)

    def worker(self) -> int:
        """The pid of the one worker (these servers run ``WEB_CONCURRENCY=1``)."""
        workers = wait_for(self.workers, "a server worker")
        assert len(workers) == 1, f"expected one worker, found {workers}"
        return workers[0]

    def assert_running(self) -> None:
        assert self.process is not None
        code = self.process.poll()
        assert code is None, f"the server exited (status {code}):\n{self.logs()}"

    def answers(self, path: str = "/health/ready") -> bool:
        self.assert_running()
        try:
            return self.get(path, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self) -> None:
        wait_for(self.answers, f"{self.url} ready")

    def wait_until_killable(self) -> None:
        """Sleep until a worker kill would not look like a crash loop to granian.

        Call it before setting up what the kill interrupts (a request that waits only so long).
        """
        if self._respawned is not None:
            time.sleep(max(0.0, self._respawned + RESPAWN_GRACE - time.monotonic()))

    def kill_worker(self) -> int:
        """SIGKILL the worker; returns the victim once granian has started its replacement."""
        since = None if self._respawned is None else time.monotonic() - self._respawned
        assert since is None or since >= RESPAWN_GRACE, (
            f"a kill {since:.1f} s after the last respawn would stop the whole server"
        )
        victim = self.worker()
        os.kill(victim, signal.SIGKILL)

        def replaced() -> list[int]:
            self.assert_running()
            return [pid for pid in self.workers() if pid != victim]

        wait_for(replaced, f"a worker in place of {victim}")
        # Seen after granian noted the respawn, so the grace counted from here is long enough.
        self._respawned = time.monotonic()
        wait_for(lambda: victim not in self.workers(), f"worker {victim} gone")
        return victim

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        workers = self.workers()
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
        for pid in workers:  # a main process killed outright leaves its workers behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
