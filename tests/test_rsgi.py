"""The RSGI adapter: a request translated into WSGI and the answer back; quick requests
answered on the event loop, the others in the pool; queued requests whose client has gone are
not run."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from oidc_server.rsgi import build_environ, run_wsgi
from tests.support.rsgi_fakes import Headers, Protocol, Scope
from tests.support.server import ROOT
from tests.support.waiting import free_port, wait_for


def test_the_environ_carries_the_request() -> None:
    scope = Scope(
        Headers(
            [
                ("host", "auth.example"),
                ("content-type", "application/x-www-form-urlencoded"),
                ("content-length", "4"),
                ("x-request-id", "abc"),
            ]
        )
    )
    environ = build_environ(scope, b"a=b&")
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["PATH_INFO"] == "/oauth/token"
    assert environ["QUERY_STRING"] == "a=1"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("127.0.0.1", "8000")
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("10.1.2.3", "5555")
    assert environ["CONTENT_TYPE"] == "application/x-www-form-urlencoded"
    assert environ["CONTENT_LENGTH"] == "4"
    assert environ["HTTP_HOST"] == "auth.example"
    assert environ["HTTP_X_REQUEST_ID"] == "abc"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["wsgi.url_scheme"] == "http"
    assert environ["wsgi.input"].read() == b"a=b&"
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ


def test_an_ipv6_peer_loses_its_brackets() -> None:
    environ = build_environ(Scope(Headers([]), client="[::1]:4000", server="[::]:80"), b"")
    assert environ["REMOTE_ADDR"] == "::1"
    assert environ["SERVER_NAME"] == "::"


def test_repeated_headers_are_joined_and_cookies_with_semicolons() -> None:
    scope = Scope(
        Headers(
            [
                ("accept", "text/html"),
                ("accept", "application/json"),
                ("cookie", "a=1"),
                ("cookie", "b=2"),
            ]
        )
    )
    environ = build_environ(scope, b"")
    assert environ["HTTP_ACCEPT"] == "text/html, application/json"
    assert environ["HTTP_COOKIE"] == "a=1; b=2"


def test_a_header_with_an_underscore_cannot_shadow_its_dashed_twin() -> None:
    scope = Scope(Headers([("x-forwarded-for", "198.51.100.7"), ("x_forwarded_for", "1.1.1.1")]))
    environ = build_environ(scope, b"")
    assert environ["HTTP_X_FORWARDED_FOR"] == "198.51.100.7"


def test_a_non_ascii_path_arrives_as_wsgi_expects_it() -> None:
    environ = build_environ(Scope(Headers([]), path="/api/v1/roles/кино"), b"")
    # PEP 3333: the UTF-8 bytes, each carried as one latin-1 character.
    assert environ["PATH_INFO"].encode("latin-1").decode("utf-8") == "/api/v1/roles/кино"


def test_no_body_means_no_content_length() -> None:
    environ = build_environ(Scope(Headers([]), method="GET"), b"")
    assert environ["CONTENT_LENGTH"] == ""
    assert environ["wsgi.input"].read() == b""


def test_run_wsgi_collects_the_answer_and_closes_the_iterable() -> None:
    closed = []

    class Body(list[bytes]):
        def close(self) -> None:
            closed.append(True)

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("201 Created", [("content-type", "text/plain")])
        return Body([b"made ", environ["wsgi.input"].read()])

    environ = {"wsgi.input": io.BytesIO(b"it")}
    assert run_wsgi(app, environ) == (201, [("content-type", "text/plain")], b"made it")
    assert closed == [True]


@pytest.mark.parametrize("on_loop", [False, True], ids=["in the pool", "on the loop"])
def test_a_failure_outside_the_apps_own_handling_is_a_json_500(on_loop: bool) -> None:
    import asyncio

    from oidc_server.rsgi import RSGIServer

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])

        def body() -> Any:
            yield b"half"
            raise OSError("the file went away")

        return body()

    server = RSGIServer(
        app, threads=1, max_body=1024, body_timeout=1.0, runs_on_loop=lambda *_: on_loop
    )
    protocol = Protocol()
    asyncio.run(server.__rsgi__(Scope(Headers([]), method="GET"), protocol))
    assert protocol.answered is not None
    status, headers, body = protocol.answered
    assert status == 500
    assert ("content-type", "application/json") in headers
    assert b"server_error" in body and b"half" not in body


def _answer_with(answers_first: Any) -> tuple[tuple[int, Any, bytes] | None, list[bytes]]:
    """What the adapter answers to one request, and the bodies its app was called with."""
    import asyncio

    from oidc_server.rsgi import RSGIServer

    called: list[bytes] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        called.append(environ["wsgi.input"].read())
        start_response("200 OK", [("content-type", "text/plain")])
        return [b"from the app"]

    server = RSGIServer(
        app, threads=1, max_body=1024, body_timeout=1.0, answers_first=answers_first
    )
    protocol = Protocol(b"the body")
    asyncio.run(server.__rsgi__(Scope(Headers([("content-length", "8")])), protocol))
    return protocol.answered, called


def test_an_answer_given_first_is_sent_and_the_app_never_called() -> None:
    seen: list[tuple[str, bytes]] = []

    async def first(environ: dict[str, Any], body: bytes) -> Any:
        seen.append((environ["PATH_INFO"], body))
        return 201, [("content-type", "text/plain")], b"given first"

    answered, called = _answer_with(first)
    assert answered == (201, [("content-type", "text/plain")], b"given first")
    assert called == []
    assert seen == [("/oauth/token", b"the body")]


def test_without_an_answer_first_the_app_answers_with_the_whole_body() -> None:
    async def none(environ: dict[str, Any], body: bytes) -> Any:
        return None

    answered, called = _answer_with(none)
    assert answered is not None and answered[2] == b"from the app"
    assert called == [b"the body"]


def test_a_failure_answering_first_leaves_the_request_to_the_app(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(environ: dict[str, Any], body: bytes) -> Any:
        raise RuntimeError("a bug")

    answered, called = _answer_with(broken)
    assert answered is not None and answered[2] == b"from the app"
    assert called == [b"the body"]
    assert "answering before the app failed" in caplog.text


# Under granian --------------------------------------------------------------------------------


@pytest.fixture
def slow_app(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """granian serving tests/support/rsgi_app.py (one thread; /slow holds it for 1 s)."""
    record = tmp_path / "record"
    record.touch()
    port = free_port()
    env = {**os.environ, "RSGI_APP_RECORD": str(record), "RSGI_APP_SLOW_SECONDS": "1.0"}
    command = [str(Path(sys.executable).parent / "granian"), "--interface", "rsgi", "--factory"]
    command += ["--workers", "1", "--host", "127.0.0.1", "--port", str(port)]
    with open(tmp_path / "granian.log", "wb") as log:
        process = subprocess.Popen(
            [*command, "tests.support.rsgi_app:make"], cwd=ROOT, env=env, stdout=log, stderr=log
        )
    try:
        wait_for(lambda: _answers(port), "granian to answer")
        record.write_text("")
        yield port, record
    finally:
        process.terminate()
        process.wait(timeout=10)


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"GET /ping HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def _send(port: int, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
    return sock


def _status(sock: socket.socket) -> int:
    with sock:
        return int(sock.recv(64).split(b" ", 2)[1])


def test_a_queued_request_whose_client_left_is_not_run(slow_app: tuple[int, Path]) -> None:
    port, record = slow_app
    slow = _send(port, "/slow")
    wait_for(lambda: record.read_text().split() == ["/slow"], "the slow request to start")
    left = _send(port, "/left")  # waits for the one thread ...
    time.sleep(0.2)
    left.close()  # ... and its client gives up
    waiting = _send(port, "/waiting")  # waits too, and its client stays
    assert _status(slow) == 200
    assert _status(waiting) == 200
    # "abandoned" is written once the thread has moved on to /waiting: either order.
    assert sorted(record.read_text().split()) == [
        "/slow",
        "/slow:request",
        "/waiting",
        "/waiting:request",
        "abandoned",
    ]


def test_a_request_that_started_runs_to_its_end_when_its_client_leaves(
    slow_app: tuple[int, Path],
) -> None:
    port, record = slow_app
    leaving = _send(port, "/slow-then-left")
    wait_for(lambda: "/slow-then-left" in record.read_text().split(), "the request to start")
    leaving.close()
    assert _status(_send(port, "/next")) == 200  # served once the first one has finished
    assert record.read_text().split() == [
        "/slow-then-left",
        "/slow-then-left:request",
        "/next",
        "/next:request",
    ]


def test_a_client_that_leaves_halfway_through_its_body_is_not_answered_nor_an_error(
    slow_app: tuple[int, Path], tmp_path: Path
) -> None:
    port, record = slow_app
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = "POST /half HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        sock.sendall(head.encode() + b"only part of it")
        time.sleep(0.2)
    wait_for(lambda: "abandoned" in record.read_text().split(), "the request to be abandoned")
    assert _status(_send(port, "/next")) == 200
    assert record.read_text().split() == ["abandoned", "/next", "/next:request"]
    log = (tmp_path / "granian.log").read_text()
    assert "Traceback" not in log and "ProtocolClosed" not in log


def test_a_quick_request_is_answered_on_the_loop_while_the_only_thread_is_busy(
    slow_app: tuple[int, Path],
) -> None:
    port, record = slow_app
    slow = _send(port, "/slow")
    wait_for(lambda: record.read_text().split() == ["/slow"], "the slow request to start")
    assert _status(_send(port, "/quick")) == 200
    # Answered while /slow still held the only thread (for 1 s): it has not ended yet.
    assert "/slow:request" not in record.read_text().split()
    assert _status(slow) == 200
    assert record.read_text().split() == ["/slow", "/quick", "/quick:loop", "/slow:request"]
