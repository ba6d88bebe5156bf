"""A small WSGI app behind our RSGI adapter, served by granian in tests of the adapter.

Each request's path is appended to the file named by ``RSGI_APP_RECORD`` as it starts to run,
then ``path:loop`` or ``path:request`` as it ends (where it ran: the event loop's thread or a
pool thread), and ``abandoned`` for each request the adapter did not run; paths under
``/slow`` hold their thread for ``RSGI_APP_SLOW_SECONDS``. One thread, so that a second request
must queue; paths under ``/quick`` run on the event loop.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from oidc_server.rsgi import RSGIServer


def _record(line: str) -> None:
    with open(os.environ["RSGI_APP_RECORD"], "a") as fh:
        fh.write(line + "\n")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ["PATH_INFO"]
    _record(path)
    if path.startswith("/slow"):
        time.sleep(float(os.environ["RSGI_APP_SLOW_SECONDS"]))
    where = "request" if threading.current_thread().name.startswith("request") else "loop"
    _record(f"{path}:{where}")
    start_response("200 OK", [("content-type", "text/plain"), ("content-length", "2")])
    return [b"ok"]


def make() -> RSGIServer:
    """granian's factory."""
    return RSGIServer(
        app,
        threads=1,
        max_body=1024,
        body_timeout=5.0,
        on_abandoned=lambda: _record("abandoned"),
        runs_on_loop=lambda method, path, body: path.startswith("/quick"),
    )
