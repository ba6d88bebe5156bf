"""The production server (``python -m oidc_server.serve``), run for real as production runs it.

One worker with one thread and a 2 s ``WEB_TIMEOUT``, so that a request holding the thread
would show at once, and cut-offs come quickly. Oversized heads are granian's to refuse; slow
heads are cut off by its head deadline; bodies are awaited on the event loop under a deadline
and a size limit (``oidc_server/rsgi.py``), never in the one thread.
"""

from __future__ import annotations

import gc
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from oidc_server.app import create_app
from oidc_server.serve import MAX_HEAD_BYTES, Watchdog

from .support.server import COMMAND, ROOT, children, spawn_server
from .support.waiting import free_port, wait_for

#: The server's WEB_TIMEOUT here: its head and body deadlines and the watchdog's limit.
SHORT_TIMEOUT = 2
#: Seconds within which a cut-off must happen, or the test fails.
PATIENCE = 20.0


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    metrics: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=PATIENCE)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, timeout=PATIENCE)

    def workers(self) -> list[int]:
        return children(self.process.pid)

    def answers(self) -> bool:
        assert self.process.poll() is None, self.log.read_text()[-3000:]
        try:
            return self.get("/health/live").status_code == 200
        except requests.RequestException:
            return False


def start_server(folder: Path, signing_key_file: Path, **extra: str) -> Server:
    (folder / "keys").mkdir(parents=True)
    (folder / "keys" / signing_key_file.name).write_bytes(signing_key_file.read_bytes())
    port = free_port()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OIDC_", "DATABASE_", "REDIS_", "TEST_", "WEB_", "PROMETHEUS_"))
    }
    env.update(
        APP_ENV="test",
        HOST="127.0.0.1",
        PORT=str(port),
        WEB_CONCURRENCY="1",
        WEB_THREADS="1",
        WEB_TIMEOUT=str(SHORT_TIMEOUT),
        DATABASE_URL=f"sqlite:///{folder / 'unused.db'}",
        OIDC_KEYS_DIR=str(folder / "keys"),
        INSTANCE_DIR=str(folder / "instance"),
        SECRET_KEY="serve-test-secret-" + "k" * 32,
        PROMETHEUS_MULTIPROC_DIR=str(folder / "metrics"),
        LOG_LEVEL="info",
    )
    env.update(extra)
    log = folder / "server.log"
    server = Server(spawn_server(env, log), port, log, folder / "metrics")
    wait_for(server.answers, "the server to answer")
    return server


def stop(server: Server) -> None:
    server.process.terminate()
    server.process.wait(timeout=PATIENCE)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, signing_key_file: Path) -> Iterator[Server]:
    running = start_server(tmp_path_factory.mktemp("serve"), signing_key_file)
    try:
        yield running
    finally:
        stop(running)


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    """Status and everything read until the server closes the connection or goes quiet."""
    data = b""
    sock.settimeout(PATIENCE)
    while True:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
        if b"\r\n\r\n" in data:
            head, _, body = data.partition(b"\r\n\r\n")
            length = re.search(rb"content-length: (\d+)", head, re.I)
            if length and len(body) >= int(length.group(1)):
                break
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", data)
    assert match, data[:200]
    return int(match.group(1)), data.partition(b"\r\n\r\n")[2]


# Request heads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "request_head"),
    [
        (
            "one header too large",
            b"GET /refused-1 HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n",
        ),
        (
            "too many headers",
            b"GET /refused-2 HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: 1\r\n" % n for n in range(150))
            + b"\r\n",
        ),
        (
            "request line too long",
            b"GET /refused-3?" + b"q" * MAX_HEAD_BYTES + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ],
)
def test_an_oversized_request_head_is_refused_before_the_app(
    server: Server, name: str, request_head: bytes
) -> None:
    with server.connect() as sock:
        sock.sendall(request_head)
        status, _ = read_response(sock)
        assert status in (400, 414, 431)
    # The server answered on its own: the app wrote no access line for any of these paths.
    assert "/refused-" not in server.log.read_text()


def test_a_head_within_the_limit_reaches_the_app(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Fine: "
            + b"a" * (MAX_HEAD_BYTES // 2)
            + b"\r\n\r\n"
        )
        assert read_response(sock)[0] == 200


def trickle_until_cut_off(sock: socket.socket, trickle: bytes) -> float:
    """Send ``trickle`` a byte every 0.2 s; the seconds until the server closed the connection
    or answered (a 408, then it closes). Fails if neither happens within ``PATIENCE``."""
    sock.settimeout(0.2)
    started = time.monotonic()
    for byte in trickle:
        try:
            sock.send(bytes([byte]))
            sock.recv(65536)  # b"" (closed) or the answer: the server is done with us
            break
        except TimeoutError:  # nothing yet: keep trickling
            if time.monotonic() - started > PATIENCE:
                break
        except (ConnectionResetError, BrokenPipeError):
            break
    elapsed = time.monotonic() - started
    assert elapsed < PATIENCE, "the slow client was never cut off"
    return elapsed


class Meanwhile(threading.Thread):
    """GETs ``path`` every half second on fresh connections while a slow client is served."""

    def __init__(self, server: Server, path: str = "/health/live") -> None:
        super().__init__(daemon=True)
        self.server, self.path = server, path
        self.statuses: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        time.sleep(0.3)
        while not self.stop.is_set():
            self.statuses.append(self.server.get(self.path).status_code)
            self.stop.wait(0.5)


def test_a_slowloris_client_is_cut_off_and_others_are_served_meanwhile(server: Server) -> None:
    meanwhile = Meanwhile(server)
    with server.connect() as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
        meanwhile.start()
        elapsed = trickle_until_cut_off(sock, b"X-Slow: " + b"z" * 1000)
    meanwhile.stop.set()
    meanwhile.join()
    assert elapsed < SHORT_TIMEOUT + 3
    assert meanwhile.statuses and set(meanwhile.statuses) == {200}


def test_a_connection_that_never_speaks_is_closed(server: Server) -> None:
    with server.connect() as sock:
        started = time.monotonic()
        assert sock.recv(1) == b""
        assert time.monotonic() - started < SHORT_TIMEOUT + 3


def test_an_idle_keep_alive_connection_is_closed(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(sock)[0] == 200
        idle_since = time.monotonic()
        sock.settimeout(PATIENCE)
        assert sock.recv(1) == b""  # the server closed it: no thread or task kept waiting
        assert time.monotonic() - idle_since < SHORT_TIMEOUT + 3


# Request bodies -----------------------------------------------------------------------------

LOGIN_HEAD = (
    b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\n"
    b"Content-Type: application/json\r\nContent-Length: 2000\r\n\r\n"
)


def test_a_client_trickling_its_body_gets_a_408_and_holds_no_thread(server: Server) -> None:
    # The server has one thread: had the slow body held it, nobody else would be served.
    meanwhile = Meanwhile(server)
    with server.connect() as sock:
        sock.sendall(LOGIN_HEAD)
        meanwhile.start()
        trickle_until_cut_off(sock, b'{"login": "' + b"a" * 1900)
    meanwhile.stop.set()
    meanwhile.join()
    assert meanwhile.statuses and set(meanwhile.statuses) == {200}
    with server.connect() as sock:
        sock.sendall(LOGIN_HEAD + b"{")
        status, body = read_response(sock)
    assert status == 408
    assert json.loads(body)["error"] == "invalid_request"


def test_a_chunked_body_that_stops_coming_gets_a_408(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(
            b"POST /api/v1/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Transfer-Encoding: chunked\r\n\r\n2\r\n{"\r\n'
        )
        status, body = read_response(sock)
    assert status == 408
    assert json.loads(body)["error"] == "invalid_request"


def test_an_announced_oversized_body_is_refused_unread(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /oauth/token HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n")
        status, body = read_response(sock)  # answered though not one byte of the body was sent
    assert status == 413
    assert json.loads(body)["error"] == "invalid_request"


def test_an_oversized_chunked_body_is_refused(server: Server) -> None:
    chunk = b"a" * 16384
    body = (b"%x\r\n" % len(chunk) + chunk + b"\r\n") * 8 + b"0\r\n\r\n"  # 128 KiB > 64 KiB
    response = requests.post(
        server.url + "/oauth/token",
        data=iter([body[i : i + 4096] for i in range(0, len(body), 4096)]),
        headers={"Transfer-Encoding": "chunked"},
        timeout=PATIENCE,
    )
    assert response.status_code == 413
    assert response.json()["error"] == "invalid_request"


def test_a_chunked_body_reaches_the_app(server: Server) -> None:
    response = requests.post(
        server.url + "/oauth/token",
        data=iter([b"grant_type=client", b"_credentials"]),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        timeout=PATIENCE,
    )
    # Without the body the grant would be missing (unsupported_grant_type); with it, the
    # grant is read and only the client's credentials are missing.
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"


def test_answers_carry_the_apps_headers(
    server: Server,
) -> None:
    response = requests.get(
        server.url + "/health/live", headers={"X-Request-ID": "trace-1"}, timeout=PATIENCE
    )
    assert response.headers["X-Request-ID"] == "trace-1"
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-store"


def test_a_head_request_has_headers_and_no_body(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"HEAD /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b""


# Metrics, logs and workers ------------------------------------------------------------------


def test_metrics_are_written_to_the_configured_folder_and_served(server: Server) -> None:
    server.get("/health/live")
    scraped = server.get("/metrics").text
    assert 'http_requests_total{method="GET",route="/health/live",status="200"}' in scraped
    assert list(server.metrics.glob("*.db"))


def test_requests_not_run_for_gone_clients_are_counted(
    monkeypatch: pytest.MonkeyPatch, app: Flask
) -> None:
    # The adapter's part is tests/test_rsgi.py's; here, that the server wires it to the metric.
    from prometheus_client import generate_latest

    from oidc_server import app as app_module
    from oidc_server.observability import ABANDONED
    from oidc_server.serve import rsgi_app

    monkeypatch.setattr(app_module, "create_app", lambda: app)
    adapter = rsgi_app()
    try:
        before = ABANDONED._value.get()
        assert adapter.on_abandoned is not None
        adapter.on_abandoned()
        assert ABANDONED._value.get() == before + 1
        assert b"http_requests_abandoned_total" in generate_latest()
    finally:
        gc.unfreeze()
        adapter.pool.shutdown()


def test_the_production_adapter_answers_quick_requests_on_its_loop(
    monkeypatch: pytest.MonkeyPatch, app: Flask
) -> None:
    # Which requests are quick is tests/test_quick_requests.py's; here, that the server asks.
    from oidc_server import app as app_module
    from oidc_server.serve import rsgi_app

    monkeypatch.setattr(app_module, "create_app", lambda: app)
    adapter = rsgi_app()
    try:
        assert adapter.runs_on_loop is not None
        assert adapter.runs_on_loop("POST", "/oauth/token", b"grant_type=client_credentials")
        assert not adapter.runs_on_loop("POST", "/api/v1/auth/login", b"")
    finally:
        gc.unfreeze()
        adapter.pool.shutdown()


@pytest.mark.parametrize("rate_limits", [False, True], ids=["limits off", "limits on"])
def test_the_production_adapter_asks_the_direct_answers_first(
    monkeypatch: pytest.MonkeyPatch, settings: Any, token_store: Any, rate_limits: bool
) -> None:
    # What each direct path answers is tests/direct's; here, that the server asks them first:
    # the tokens only when no rate limit has to count the request, the role check (exempt
    # from rate limits) always.
    from oidc_server import app as app_module
    from oidc_server.direct import (
        DirectAnswers,
        DirectClientCredentials,
        DirectIntrospection,
        DirectRefresh,
        DirectRoleCheck,
        DirectUsersMe,
        DirectWellKnown,
    )
    from oidc_server.serve import rsgi_app

    built = create_app(replace(settings, ratelimit_enabled=rate_limits), store=token_store)
    monkeypatch.setattr(app_module, "create_app", lambda: built)
    adapter = rsgi_app()
    try:
        assert isinstance(adapter.answers_first, DirectAnswers)
        kinds = [type(answerer) for answerer in adapter.answers_first.answerers]
        if rate_limits:
            assert kinds == [DirectRoleCheck, DirectWellKnown]
        else:
            assert kinds == [
                DirectClientCredentials,
                DirectRefresh,
                DirectRoleCheck,
                DirectIntrospection,
                DirectUsersMe,
                DirectWellKnown,
            ]
        assert all(a.svc is built.extensions["oidc"] for a in adapter.answers_first.answerers)
        # One worker, one gathering of Redis reads: a role check and a token ready in the same
        # turn share a round trip.
        trips = {id(a._trips) for a in adapter.answers_first.answerers if hasattr(a, "_trips")}
        assert len(trips) == 1
    finally:
        gc.unfreeze()
        adapter.pool.shutdown()
        built.extensions["oidc"].db.dispose()


def test_the_servers_own_lines_are_json(server: Server) -> None:
    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    granian_lines = [json.loads(line) for line in lines if '"_granian"' in line]
    assert granian_lines, lines[:5]  # granian announces its workers at info level
    for line in lines:
        json.loads(line)  # every line, the app's and granian's, parses


def test_a_wedged_worker_is_killed_and_replaced(tmp_path: Path, signing_key_file: Path) -> None:
    server = start_server(tmp_path, signing_key_file)
    try:
        (wedged,) = wait_for(server.workers, "a worker")
        os.kill(wedged, signal.SIGSTOP)  # its event loop stops: it accepts and answers nothing
        wait_for(lambda: wedged not in server.workers(), "the wedged worker killed", PATIENCE)
        wait_for(server.answers, "a new worker answering", PATIENCE)
        assert server.workers() and wedged not in server.workers()
        assert "silent for" in server.log.read_text()
    finally:
        stop(server)


def test_a_metrics_folder_made_by_the_server_is_removed_at_exit(
    tmp_path: Path, signing_key_file: Path
) -> None:
    server = start_server(tmp_path, signing_key_file, PROMETHEUS_MULTIPROC_DIR="")
    server.get("/health/live")  # the worker now has its metrics files mapped
    (worker,) = server.workers()
    mapped = re.findall(
        r"(\S*/oidc-metrics-[^/\s]+)/\S+\.db$", Path(f"/proc/{worker}/maps").read_text(), re.M
    )
    assert mapped, "no metrics file mapped by the worker"
    folder = Path(mapped[0])
    assert folder.is_dir()
    stop(server)
    assert not folder.exists()


# The watchdog and the metrics folder, in-process --------------------------------------------


def test_the_watchdog_kills_only_silent_workers_and_forgets_dead_ones(tmp_path: Path) -> None:
    beats, metrics = tmp_path / "beats", tmp_path / "metrics"
    beats.mkdir()
    metrics.mkdir()
    silent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    lively = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    try:
        now = time.time()
        for pid, age in ((silent.pid, 10), (lively.pid, 1), (gone.pid, 1)):
            (beats / str(pid)).touch()
            os.utime(beats / str(pid), (now - age, now - age))
        for name in (f"gauge_livesum_{gone.pid}.db", f"counter_{gone.pid}.db"):
            (metrics / name).write_bytes(b"")
        assert Watchdog(beats, 5, metrics).check(now) == [silent.pid]
        assert silent.wait(timeout=PATIENCE) == -signal.SIGKILL
        assert lively.poll() is None
        # The dead worker's live gauges go, its counters stay (totals never go down).
        assert sorted(p.name for p in metrics.iterdir()) == [f"counter_{gone.pid}.db"]
        assert sorted(p.name for p in beats.iterdir()) == [str(lively.pid)]
    finally:
        for process in (silent, lively):
            process.kill()
            process.wait()


def test_the_metrics_folder_is_emptied_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from oidc_server.serve import _metrics_folder

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "counter_1.db").write_bytes(b"")
    (tmp_path / "histogram_2.db").write_bytes(b"")
    assert _metrics_folder() == (tmp_path, False)
    assert list(tmp_path.iterdir()) == []


def test_a_port_something_listens_on_is_refused(tmp_path: Path, signing_key_file: Path) -> None:
    # granian binds with SO_REUSEPORT: unchecked, a second server would share the port silently.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "WEB_"))},
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "APP_ENV": "test",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'unused.db'}",
            "OIDC_KEYS_DIR": str(signing_key_file.parent),
            "INSTANCE_DIR": str(tmp_path / "instance"),
        }
        refused = subprocess.run(
            COMMAND,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=PATIENCE * 3,
        )
    assert refused.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port}" in refused.stderr


@pytest.mark.parametrize(
    ("setting", "line"),
    [
        ({}, "Error: APP_ENV=production needs SECRET_KEY of at least 32 characters"),
        (
            {
                "SECRET_KEY": "k" * 40,
                "REDIS_URL": "rediss+cluster://:secret-pw@127.0.0.1:1?ssl_ca_cert=/ca.pem",
            },
            "Error: REDIS_URL: rediss+cluster:// URL has an unknown option 'ssl_ca_cert'",
        ),
    ],
    ids=["no secret key", "a misspelt REDIS_URL option"],
)
def test_a_setting_the_app_refuses_stops_the_server_with_one_line(
    tmp_path: Path, signing_key_file: Path, setting: dict[str, str], line: str
) -> None:
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("TEST_", "WEB_", "SECRET"))},
        "HOST": "127.0.0.1",
        "PORT": str(free_port()),
        "APP_ENV": "production",
        "DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/unused",
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "OIDC_KEYS_DIR": str(signing_key_file.parent),
        "INSTANCE_DIR": str(tmp_path / "instance"),
        **setting,
    }
    refused = subprocess.run(
        COMMAND, cwd=ROOT, env=env, capture_output=True, text=True, timeout=PATIENCE * 3
    )
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [line]  # not a worker's crash, respawned


@pytest.mark.parametrize("name", ["PORT", "WEB_CONCURRENCY", "WEB_THREADS", "WEB_TIMEOUT"])
def test_a_malformed_number_in_the_environment_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    from oidc_server.serve import ServeSettings

    monkeypatch.setenv(name, "four")
    with pytest.raises(SystemExit, match=f"{name} must be a whole number, not 'four'"):
        ServeSettings.from_env()


def test_no_timeout_means_granians_longest_head_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    from oidc_server.serve import ServeSettings

    monkeypatch.setenv("WEB_TIMEOUT", "0")
    settings = ServeSettings.from_env()
    assert settings.timeout == 0
    assert settings.head_timeout == 60.0  # granian accepts at most 60 s; 0 is not "none" there


def test_sigterm_lets_a_request_in_flight_finish(tmp_path: Path, signing_key_file: Path) -> None:
    server = start_server(tmp_path, signing_key_file)
    try:
        with server.connect() as sock:
            sock.sendall(
                b"POST /oauth/token HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 29\r\n\r\n"
                b"grant_type=client"
            )
            time.sleep(0.3)
            server.process.send_signal(signal.SIGTERM)  # a deploy or scale-down stops it
            time.sleep(0.5)
            sock.sendall(b"_credentials")
            status, body = read_response(sock)
        # The app read the whole body and answered (no client credentials were sent).
        assert (status, json.loads(body)["error"]) == (401, "invalid_client")
        assert server.process.wait(timeout=PATIENCE) == 0
    finally:
        if server.process.poll() is None:
            stop(server)


#: Allocates from 8 threads at once, then prints how many malloc arenas glibc has made.
_COUNT_ARENAS = """
import ctypes, re, sys, tempfile, threading
from oidc_server.serve import limit_malloc_arenas
if sys.argv[1] == "limit":
    assert limit_malloc_arenas(2)
together = threading.Barrier(8)
def allocate():
    together.wait()
    kept = [bytearray(100_000) for _ in range(50)]  # below the mmap threshold: from an arena
    together.wait()
threads = [threading.Thread(target=allocate) for _ in range(8)]
for thread in threads: thread.start()
for thread in threads: thread.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
with tempfile.NamedTemporaryFile() as report:
    out = ctypes.c_void_p(libc.fopen(report.name.encode(), b"w"))
    libc.malloc_info(0, out)
    libc.fclose(out)
    print(len(re.findall('<heap nr=', open(report.name).read())))
"""


def _arenas_made(mode: str) -> int:
    env = {key: value for key, value in os.environ.items() if key != "MALLOC_ARENA_MAX"}
    done = subprocess.run(
        [sys.executable, "-c", _COUNT_ARENAS, mode],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(done.stdout)


def test_malloc_arenas_are_capped_for_threads_started_afterwards() -> None:
    assert _arenas_made("free") > 2  # glibc's own default: an arena per thread, here up to 9
    assert _arenas_made("limit") == 2


def test_an_operators_malloc_arena_max_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from oidc_server.serve import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False


def _thread_heaps(pid: int) -> int:
    """glibc's heaps for arenas beyond the main one: 64 MiB-aligned anonymous mappings, a
    read-write part followed by its reservation, 64 MiB in all (glibc's HEAP_MAX_SIZE)."""
    heap = 64 * 1024 * 1024
    maps = [line.split() for line in Path(f"/proc/{pid}/maps").read_text().splitlines()]
    spans = [tuple(int(x, 16) for x in fields[0].split("-")) for fields in maps]
    found = 0
    for i, fields in enumerate(maps):
        start, end = spans[i]
        if start % heap or fields[1] != "rw-p" or len(fields) != 5:
            continue
        if i + 1 < len(maps) and spans[i + 1][0] == end and maps[i + 1][1] == "---p":
            end = spans[i + 1][1]
        found += end - start == heap
    return found


def _heaps_after_load(server: Server) -> list[int]:
    def call() -> None:
        for _ in range(20):
            server.get("/health/live")

    callers = [threading.Thread(target=call) for _ in range(16)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    return [_thread_heaps(pid) for pid in server.workers()]


def test_workers_run_with_capped_malloc_arenas(tmp_path: Path, signing_key_file: Path) -> None:
    capped = start_server(tmp_path / "capped", signing_key_file, WEB_THREADS="8")
    try:
        assert all(heaps <= 1 for heaps in _heaps_after_load(capped))
    finally:
        stop(capped)
    # The same load with glibc's arenas left to the operator (8): the check above can fail.
    free = start_server(tmp_path / "free", signing_key_file, WEB_THREADS="8", MALLOC_ARENA_MAX="8")
    try:
        assert all(heaps > 1 for heaps in _heaps_after_load(free))
    finally:
        stop(free)


def test_the_production_adapter_freezes_what_the_worker_built(
    monkeypatch: pytest.MonkeyPatch, app: Flask
) -> None:
    # Frozen objects are out of the collector's full passes, which would otherwise write into
    # every page the worker shares with the main process.
    from oidc_server import app as app_module
    from oidc_server.serve import rsgi_app

    built = app
    monkeypatch.setattr(app_module, "create_app", lambda: built)
    gc.unfreeze()
    adapter = rsgi_app()
    try:
        assert gc.get_freeze_count() > 0
        assert gc.is_tracked(built) and not any(o is built for o in gc.get_objects())
    finally:
        gc.unfreeze()
        adapter.pool.shutdown()


def test_a_worker_waiting_for_redis_says_each_new_failure_once_and_then_serves(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import asyncio

    import redis

    from oidc_server.serve import WaitingForRedis

    from .support.rsgi_fakes import Headers, Protocol, Scope

    served: list[str] = []

    class Built:
        async def __rsgi__(self, scope: Any, protocol: Any) -> None:
            served.append(scope.path)

        def __rsgi_del__(self, loop: Any) -> None:
            pass

    unreachable = redis.ConnectionError("Error 111 connecting to 127.0.0.1:7000")
    failures: list[Exception] = [unreachable, unreachable, KeyError("a key file"), unreachable]

    def build() -> Any:
        if failures:
            raise failures.pop(0)
        return Built()

    waiting = WaitingForRedis(build, None, unreachable)
    waiting.RETRY_SECONDS = 0.01

    def answer(path: str) -> Any:
        protocol = Protocol()
        asyncio.run(waiting.__rsgi__(Scope(Headers([]), method="GET", path=path), protocol))
        return protocol.answered

    assert answer("/health/live")[0] == 200
    status, headers, body = answer("/api/v1/users/me")
    assert (status, dict(headers)["retry-after"], json.loads(body)["error"]) == (
        503,
        "1",
        "temporarily_unavailable",
    )
    loop = asyncio.new_event_loop()  # granian's: only handed on (no heartbeat here)
    with caplog.at_level("INFO", logger="oidc_server.serve"):
        waiting.__rsgi_init__(loop)
        wait_for(lambda: waiting._app is not None, "the app built", deadline=10)
    assert answer("/health/ready") is None and served == ["/health/ready"]
    said = [(r.levelname, r.getMessage()) for r in caplog.records]
    # The failure it started with is not said again; a new one is, and the old one once more
    # when it comes back after it.
    assert said == [
        ("ERROR", "building the app failed"),
        ("WARNING", "Redis cannot be reached yet: Error 111 connecting to 127.0.0.1:7000"),
        ("INFO", "Redis reached: serving"),
    ]
    waiting.__rsgi_del__(loop)
    loop.close()
