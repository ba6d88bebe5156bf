"""gunicorn's ``gthread`` worker with deadlines, so that slow clients are cut off (slowloris).

The stock gthread worker (gunicorn 27) waits five seconds for a connection's first byte, but
once a byte has come it reads the rest of the request with a blocking socket and no time
limit: a client that trickles its headers a byte at a time holds a thread for as long as it
likes, and ``timeout`` never fires because the worker's main loop keeps beating. A few such
clients take every thread of every worker.

This worker gives each request a deadline, counted from the moment a thread takes it up:
``HEAD_TIMEOUT`` seconds (at most gunicorn's ``timeout``) to send the request line and headers,
and ``timeout`` seconds for the whole exchange (body in, response out). The main loop, which
wakes at least once a second, shuts down the socket of any request past its deadline; the
thread's blocked read or write then returns at once and the thread is free. ``timeout = 0``
turns the deadlines off, as it turns off gunicorn's own.

Behind nginx (docker-compose.yml) the proxy buffers whole requests and applies its own
``client_header_timeout`` and ``client_body_timeout`` first; this worker protects
``make run-prod`` and any deployment without such a proxy.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Any

from gunicorn.workers import gthread

#: Seconds a client has to send a request's line and headers (nginx's client_header_timeout
#: in deploy/nginx.conf is the same).
HEAD_TIMEOUT = 10.0


class ThreadWorker(gthread.ThreadWorker):
    """gthread with a per-request deadline enforced from the worker's main loop."""

    def init_process(self) -> None:
        self._deadlines: dict[Any, float] = {}
        self._deadlines_lock = threading.Lock()
        super().init_process()

    def _set_deadline(self, conn: Any, seconds: float) -> None:
        if self.cfg.timeout <= 0:
            return
        with self._deadlines_lock:
            self._deadlines[conn] = time.monotonic() + seconds

    def handle(self, conn: Any) -> Any:
        """Serve one request on ``conn`` (in a pool thread) under the head deadline."""
        self._set_deadline(conn, min(HEAD_TIMEOUT, float(self.cfg.timeout)))
        try:
            return super().handle(conn)
        finally:
            with self._deadlines_lock:
                self._deadlines.pop(conn, None)

    def handle_request(self, req: Any, conn: Any) -> Any:
        """The head has arrived: the rest of the exchange gets gunicorn's ``timeout``."""
        self._set_deadline(conn, float(self.cfg.timeout))
        return super().handle_request(req, conn)

    def murder_pending(self) -> None:
        """gthread's sweep of idle connections, then cut off requests past their deadline."""
        super().murder_pending()
        now = time.monotonic()
        with self._deadlines_lock:
            late = [
                conn
                for conn, deadline in self._deadlines.items()
                if deadline <= now and not conn.is_http2
            ]
            for conn in late:
                del self._deadlines[conn]
        for conn in late:
            self.log.warning("cutting off a request that overran its deadline: %s", conn.client)
            # Wakes the thread blocked on this socket, which then closes it; OSError: it did.
            with contextlib.suppress(OSError):
                conn.sock.shutdown(socket.SHUT_RDWR)
