"""The WSGI app served through granian's RSGI interface, with the request body read before it runs.

granian's own WSGI mode hands a request to a Python thread before its body has arrived, so a
client that trickles its body holds that thread for as long as it likes. Through RSGI the
request reaches Python with its body unread, and granian reads it asynchronously (in Rust)
when asked. So here the body is awaited on the worker's event loop, under a deadline and a size
limit, holding no thread; only a complete request is handed to a thread of the pool that runs
the (blocking) Flask app.

What is refused here, before the app sees the request:

- a body larger than ``max_body`` bytes: 413, unread when ``Content-Length`` announces it;
- a body that has not fully arrived ``body_timeout`` seconds after the head: 408;
- a request whose client closed its connection before its body had arrived: not answered
  (nobody is there), and told to ``on_abandoned`` rather than raised into granian's error log.

And a request that had to wait for a thread is not run at all if its client has gone by the
time a thread is free (``on_abandoned`` is told): under overload, say 32 logins queued behind
argon2id, clients and load balancers give up, and hashing for them would only lengthen the
queue for those still waiting. A request that got a thread at once is not watched (watching
costs a task), and one that has started always runs to its end. (A client that only
half-closes, shutting its sending side while it waits, counts as gone: granian 2.8 closes such
a connection without an answer whether or not the request runs, as tried by hand.)

Quick requests are not handed to a thread at all: when ``runs_on_loop`` says so (for us,
``oidc_server/quick_requests.py``: token grants, introspection, role checks, discovery, whose
work is CPU and a Redis round trip or two), the app answers on the event loop itself. For
a request that signs a token the hand-off cost 14-28 % of its CPU: the loop's
wake-up write, and, after each RS256 signature (which runs without the GIL), the loop and the
other request threads contending to take the GIL back (docs/scaling.md, session 9).
Everything that can wait on something slow (argon2id, PostgreSQL pages, another server) still
runs in the pool, so the loop keeps reading and answering meanwhile.

Before either, ``answers_first`` may answer a request without the app at all (for us,
``oidc_server/direct``: the most frequent requests, in their plain form); when it returns
None, the app answers as above.

Each request's environ carries the time it arrived (``RECEIVED_AT``, ``time.monotonic()`` when
granian handed over its head), before any wait for its body or a thread: what the app may
have read since then is current for it (``oidc_server/oauth/clients_generation.py``).

The request line and headers are granian's to bound: its HTTP/1 header read timeout and
buffer size (``oidc_server/serve.py``).
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from granian.rsgi import ProtocolClosed

log = logging.getLogger(__name__)

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Headers = list[tuple[str, str]]
Answer = tuple[int, Headers, bytes]
#: ``(method, path, body) -> bool``: whether a request is answered on the event loop.
LoopPredicate = Callable[[str, str, bytes], bool]
#: ``(environ, body) -> answer or None``, awaited: a request answered before the app, on the
#: event loop.
FirstAnswer = Callable[[dict[str, Any], bytes], Awaitable["Answer | None"]]

#: The environ key of the time a request arrived (``time.monotonic()``).
RECEIVED_AT = "oidc_server.received_at"

#: Headers WSGI places under their own names rather than as ``HTTP_*``.
_UNPREFIXED = {"content-type": "CONTENT_TYPE", "content-length": "CONTENT_LENGTH"}


class BodyTooLarge(Exception):
    """The request body is larger than the server accepts."""


def _error(status: int, error: str, description: str) -> Answer:
    body = json.dumps({"error": error, "error_description": description}).encode()
    headers = [
        ("content-type", "application/json"),
        ("content-length", str(len(body))),
        ("cache-control", "no-store"),
        ("x-content-type-options", "nosniff"),
        ("connection", "close"),
    ]
    return status, headers, body


def _split_address(address: str) -> tuple[str, str]:
    """``"1.2.3.4:80"`` or ``"[::1]:80"`` into host and port."""
    host, _, port = address.rpartition(":")
    return host.strip("[]"), port


def build_environ(scope: Any, body: bytes) -> dict[str, Any]:
    """A WSGI environ (PEP 3333) for an RSGI request scope and its whole body."""
    server_host, server_port = _split_address(scope.server)
    remote_host, remote_port = _split_address(scope.client)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope.method,
        "SCRIPT_NAME": "",
        # WSGI carries the path as latin-1 decoded bytes; RSGI gives it already percent-decoded
        # as UTF-8 text, as werkzeug expects to receive it back.
        "PATH_INFO": scope.path.encode("utf-8", "surrogateescape").decode("latin-1"),
        "QUERY_STRING": scope.query_string,
        "SERVER_NAME": server_host,
        "SERVER_PORT": server_port,
        "SERVER_PROTOCOL": f"HTTP/{scope.http_version}",
        "REMOTE_ADDR": remote_host,
        "REMOTE_PORT": remote_port,
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.scheme,
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in scope.headers.items():
        name = name.lower()
        if "_" in name:
            # "X_Forwarded_For" would land on the same key as "X-Forwarded-For": drop it, as
            # nginx does, so no proxy-set header can be shadowed this way.
            continue
        key = _UNPREFIXED.get(name) or "HTTP_" + name.upper().replace("-", "_")
        if key in environ:
            environ[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value
        else:
            environ[key] = value
    environ.setdefault("CONTENT_LENGTH", str(len(body)) if body else "")
    return environ


def run_wsgi(app: WSGIApp, environ: dict[str, Any]) -> Answer:
    """Call ``app`` and collect its whole response (ours are small JSON, HTML or files)."""
    started: list[Any] = []

    def start_response(status: str, headers: Headers, exc_info: Any = None) -> Callable[..., Any]:
        started[:] = [int(status.split(" ", 1)[0]), headers]
        return lambda data: None  # the legacy write() callable; nothing of ours uses it

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started
    return status, headers, body


class RSGIServer:
    """An RSGI application that runs a WSGI app once its request has fully arrived."""

    def __init__(
        self,
        app: WSGIApp,
        *,
        threads: int,
        max_body: int,
        body_timeout: float | None,
        on_loop_start: Callable[[asyncio.AbstractEventLoop], None] | None = None,
        on_abandoned: Callable[[], None] | None = None,
        runs_on_loop: LoopPredicate | None = None,
        answers_first: FirstAnswer | None = None,
    ) -> None:
        self.app = app
        self.runs_on_loop = runs_on_loop
        self.answers_first = answers_first
        self.max_body = max_body
        self.body_timeout = body_timeout
        self.on_loop_start = on_loop_start
        self.on_abandoned = on_abandoned
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="request")
        #: Requests handed to the pool and not yet answered; only the event loop changes it.
        self.in_pool = 0

    def __rsgi_init__(self, loop: asyncio.AbstractEventLoop) -> None:
        """granian calls this in the worker once its event loop exists."""
        if self.on_loop_start is not None:
            self.on_loop_start(loop)

    async def __rsgi__(self, scope: Any, protocol: Any) -> None:
        received_at = time.monotonic()
        if scope.proto != "http":  # websockets: none of ours
            protocol.close(1008)
            return
        try:
            if "content-length" in scope.headers or "transfer-encoding" in scope.headers:
                # asyncio.timeout, not wait_for: no task per request (3.11+).
                async with asyncio.timeout(self.body_timeout):
                    body = await self._read_body(scope, protocol)
            else:
                # No body announced, none to wait for: a GET, a HEAD. The timeout's timer was
                # a sixth of a JWKS answer's Python (docs/scaling.md, session 14).
                body = b""
        except BodyTooLarge:
            status, headers, payload = _error(
                413, "invalid_request", f"the request body is larger than {self.max_body} bytes"
            )
        except TimeoutError:
            status, headers, payload = _error(
                408, "invalid_request", "the request body did not arrive in time"
            )
        except ProtocolClosed:
            self._abandoned("client gone before its request body arrived; not run", scope)
            return  # nobody to answer
        else:
            environ = build_environ(scope, body)
            environ[RECEIVED_AT] = received_at
            answer = await self._answer_first(environ, body)
            if answer is None:
                if self.runs_on_loop is not None and self.runs_on_loop(
                    scope.method, scope.path, body
                ):
                    answer = self._run_guarded(environ)
                else:
                    answer = await self._run_in_pool(environ, protocol)
            if answer is None:
                self._abandoned("client gone before its request ran; not run", scope)
                return  # nobody to answer
            status, headers, payload = answer
        protocol.response_bytes(status, headers, payload)

    async def _run_in_pool(self, environ: dict[str, Any], protocol: Any) -> Answer | None:
        """The app's answer from a pool thread, or None if the client left while it waited."""
        # Every thread busy: this request will wait, so watch for its client leaving.
        gone = (
            asyncio.ensure_future(protocol.client_disconnect())
            if self.in_pool >= self.threads
            else None
        )
        self.in_pool += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, self._run_unless_gone, environ, gone
            )
        finally:
            self.in_pool -= 1
            if gone is not None:
                gone.cancel()

    def _run_unless_gone(
        self, environ: dict[str, Any], gone: asyncio.Future[None] | None
    ) -> Answer | None:
        """In a pool thread: the app's answer, or None if the client left while it waited."""
        if gone is not None and gone.done():
            return None
        return self._run_guarded(environ)

    def _abandoned(self, message: str, scope: Any) -> None:
        log.info(message, extra={"method": scope.method, "path": scope.path})
        if self.on_abandoned is not None:
            self.on_abandoned()

    async def _answer_first(self, environ: dict[str, Any], body: bytes) -> Answer | None:
        """``answers_first``'s answer, if it has one; on the event loop."""
        if self.answers_first is None:
            return None
        try:
            return await self.answers_first(environ, body)
        except Exception:
            # A bug there must not cost the request its answer: the app gives it.
            log.exception("answering before the app failed; the app answers")
            return None

    def _run_guarded(self, environ: dict[str, Any]) -> Answer:
        try:
            return run_wsgi(self.app, environ)
        except Exception:
            # Flask answers its own errors; this is a failure outside it (the response's
            # iterable, this adapter): still a JSON answer, and the traceback in the logs.
            log.exception("the app failed outside its own error handling")
            return _error(500, "server_error", "internal error")

    def __rsgi_del__(self, loop: asyncio.AbstractEventLoop) -> None:
        """granian calls this when the worker stops: let running requests finish."""
        self.pool.shutdown(wait=True)

    async def _read_body(self, scope: Any, protocol: Any) -> bytes:
        announced = scope.headers.get("content-length")
        if announced is not None:
            try:
                length = int(announced)
            except ValueError:
                length = -1  # hyper refuses malformed lengths before we get here
            if length > self.max_body:
                raise BodyTooLarge
            if length >= 0:
                return await protocol() if length else b""
        if "transfer-encoding" not in scope.headers:
            return b""
        chunks: list[bytes] = []
        size = 0
        async for chunk in protocol:
            size += len(chunk)
            if size > self.max_body:
                raise BodyTooLarge
            chunks.append(chunk)
        return b"".join(chunks)
