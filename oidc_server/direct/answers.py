"""What every direct answer shares with the app's: headers, request id, metrics, access line."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, ClassVar, Self

from flask import Flask
from werkzeug.datastructures import Headers

from .. import cors, observability
from ..app import behind_trusted_proxy
from ..rsgi import Answer
from ..security_headers import add_security_headers
from ..services import Services
from .round_trips import RoundTrips


class AnswerShape:
    """The answers of one route with one status, as the app's hooks shape them.

    ``headers`` are the view's own (say Authlib's ``Content-Type`` and ``Cache-Control``);
    the security headers (``security_headers.add_security_headers``), ``Vary: Origin`` when
    CORS is on, ``Content-Length`` and ``X-Request-ID`` are added as the app adds them, and
    the answer is counted, timed and logged (``observability``) as the app's would be.
    ``path_like`` stands for every path of the route: the security headers depend on the path
    only through ``security_headers.carries_tokens``, the same for all of a route's paths.
    """

    def __init__(
        self,
        svc: Services,
        *,
        method: str,
        route: str,
        path_like: str,
        status: int,
        headers: list[tuple[str, str]],
        vary_origin: bool,
    ) -> None:
        self.status = status
        self._head = method == "HEAD"
        self._recorder = observability.RequestRecorder(method, route, status)
        # By whether the request came over TLS: nothing else changes them.
        self._headers = {
            secure: self._fixed(svc, path_like, headers, secure, vary_origin)
            for secure in (False, True)
        }

    @classmethod
    def of_path(
        cls,
        svc: Services,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        *,
        vary_origin: bool,
    ) -> AnswerShape:
        """The 200 answers of a route that is the one path ``path``."""
        return cls(
            svc,
            method=method,
            route=path,
            path_like=path,
            status=200,
            headers=headers,
            vary_origin=vary_origin,
        )

    @classmethod
    def get_and_head(
        cls, svc: Services, path: str, headers: list[tuple[str, str]], *, vary_origin: bool
    ) -> dict[str, AnswerShape]:
        """``of_path`` for ``GET`` and ``HEAD``, by method."""
        return {
            method: cls.of_path(svc, method, path, headers, vary_origin=vary_origin)
            for method in ("GET", "HEAD")
        }

    @staticmethod
    def _fixed(
        svc: Services,
        path: str,
        headers: list[tuple[str, str]],
        is_secure: bool,
        vary_origin: bool,
    ) -> list[tuple[str, str]]:
        made = Headers(headers)
        add_security_headers(made, path=path, is_secure=is_secure, settings=svc.settings)
        if vary_origin:
            made["Vary"] = "Origin"  # cors._cors_headers, for a request without an Origin
        return made.to_wsgi_list()

    def answer(self, environ: dict[str, Any], body: bytes, started: float) -> Answer:
        """The answer with ``body`` to the request of ``environ``, which arrived at ``started``
        (``time.perf_counter``); counted and logged. To ``HEAD``, as werkzeug answers it: the
        ``GET``'s headers, ``Content-Length`` included, without the body."""
        request_id = observability.request_id_for(environ.get("HTTP_X_REQUEST_ID"))
        headers = [
            *self._headers[environ["wsgi.url_scheme"] == "https"],
            ("Content-Length", str(len(body))),
            (observability.REQUEST_ID_HEADER, request_id),
        ]
        self._recorder.record(
            time.perf_counter() - started,
            environ["PATH_INFO"],
            environ.get("REMOTE_ADDR") or "",
            request_id,
        )
        return self.status, headers, b"" if self._head else body


def json_writer(app: Flask) -> Callable[[Any], bytes] | None:
    """A body as the app's JSON provider writes it (``app.json.response``: compact, the
    provider's key order and escaping, a final newline); None when the app would indent it
    (debug), which the direct answers do not copy."""
    compact = getattr(app.json, "compact", None)
    if compact is False or (compact is None and app.debug):
        return None
    dumps = app.json.dumps

    def write(document: Any) -> bytes:
        return (dumps(document, separators=(",", ":")) + "\n").encode()

    return write


class ProxiedView:
    """The environ as the app sees it behind ``TRUST_PROXY_HEADERS`` (client address and
    scheme from one proxy hop); the environ itself, unchanged, when the setting is off."""

    def __init__(self, svc: Services) -> None:
        self._proxy_fix = (
            behind_trusted_proxy(lambda environ, start_response: ())
            if svc.settings.trust_proxy_headers
            else None
        )

    def __call__(self, environ: dict[str, Any]) -> dict[str, Any]:
        if self._proxy_fix is None:
            return environ
        seen = dict(environ)  # the app still gets the request as it came
        self._proxy_fix(seen, None)
        return seen


class FormPostAnswer:
    """What the direct answers to form POSTs share (a token, a refresh, an introspection): one
    path and the 200 answer its view gives (``HEADERS``, the view's own), the request as the
    app sees it (``ProxiedView``), the worker's gathered Redis reads (``RoundTrips``).

    None of them is used while rate limits are on: flask-limiter counts these routes in its own
    keys, which only its hooks keep.
    """

    PATH: ClassVar[str]
    HEADERS: ClassVar[list[tuple[str, str]]]

    def __init__(
        self, svc: Services, *, vary_origin: bool, trips: RoundTrips | None = None
    ) -> None:
        self.svc = svc
        self._trips = trips or RoundTrips(svc)
        self._seen = ProxiedView(svc)
        self._shape = AnswerShape.of_path(
            svc, "POST", self.PATH, self.HEADERS, vary_origin=vary_origin
        )

    @classmethod
    def for_app(cls, app: Flask, trips: RoundTrips | None = None) -> Self | None:
        """The direct path for ``app``'s endpoint; None while rate limits are on."""
        svc: Services = app.extensions["oidc"]
        if svc.settings.ratelimit_enabled:
            return None
        return cls(svc, vary_origin=cors.enabled(app), trips=trips)
