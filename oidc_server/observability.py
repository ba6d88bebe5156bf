"""Request ids, access logs, log redaction and Prometheus metrics.

Every request gets an id: the caller's ``X-Request-ID`` when it is short and plain, else a
new one. It is echoed in the response and added to every log line written while the request
runs. Log lines pass a redaction filter that blanks known sensitive fields and anything
shaped like a JWT, one of our refresh tokens or an ``Authorization`` value.

Metrics use prometheus_client's default registry. In production ``oidc_server/serve.py`` sets
``PROMETHEUS_MULTIPROC_DIR`` before any worker imports this module, so each worker writes its
samples to files there and ``/metrics`` sums every worker's (prometheus_client's multiprocess
mode). Other modules count events through the small functions below, never the metric objects.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from flask import Flask, Response, has_request_context, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)

from .logs import JsonFormatter, json_line, timestamp

REQUEST_ID_HEADER = "X-Request-ID"
#: A caller's id is kept only if it is this plain: nothing that could forge a log field or a header.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:+/=-]{1,128}")
_ENVIRON_STARTED = "oidc.request_started"
UNMATCHED_ROUTE = "<unmatched>"
#: Probes and scrapes arrive every few seconds from every replica; their access lines are DEBUG.
_QUIET_ROUTES = frozenset({"/health/live", "/health/ready", "/metrics"})
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Label values given by callers; anything else is counted as "other" to bound cardinality.
_SANE_LABEL = re.compile(r"[a-z0-9_:+.-]{1,64}")  # fits urn:ietf:params:oauth:grant-type:*

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
access_log = logging.getLogger("oidc_server.access")

# prometheus_client chose its value class (in-process or multiprocess files) from this same
# variable when it was imported, so reading it once here keeps the view consistent with it.
_MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

HTTP_REQUESTS = Counter(
    "http_requests_total",
    "HTTP requests by method, route template and status code.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time from the request reaching the app to its response, by method and route template.",
    ["method", "route"],
    # argon2id logins take tens of milliseconds by design; JWKS and probes take about one.
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
TOKENS_ISSUED = Counter(
    "oidc_tokens_issued_total", "Access tokens issued, by grant type.", ["grant"]
)
LOGIN_FAILURES = Counter(
    "oidc_login_failures_total",
    "Failed sign-ins (unknown login, wrong password, disabled account), by method.",
    ["method"],
)
RATE_LIMITED = Counter(
    "oidc_rate_limited_total", "Requests refused by a rate limit, by route template.", ["route"]
)
ABANDONED = Counter(
    "http_requests_abandoned_total",
    "Requests not run because their client left while they waited for a worker thread.",
)
REFRESH_REUSE = Counter(
    "oidc_refresh_token_reuse_total",
    "Spent refresh tokens presented again; each ended its session (RFC 9700 section 4.14.2).",
)


# Counters other modules call ----------------------------------------------------------------


def _label(value: str) -> str:
    return value if _SANE_LABEL.fullmatch(value) else "other"


def tokens_issued(grant: str) -> None:
    """Count one token response of ``grant`` (a grant-type constant, never request input)."""
    TOKENS_ISSUED.labels(_label(grant)).inc()


def tokens_issued_counter(grant: str) -> Callable[[], None]:
    """``tokens_issued(grant)`` for a caller that counts many, its child looked up once."""
    return TOKENS_ISSUED.labels(_label(grant)).inc


def login_failed(method: str = "password") -> None:
    """Count one failed sign-in by ``method`` (``password``, ``google``, ``yandex``)."""
    LOGIN_FAILURES.labels(_label(method)).inc()


def rate_limited(route: str | None = None) -> None:
    """Count one request refused by a rate limit; ``route`` defaults to the current request's."""
    RATE_LIMITED.labels(route or current_route()).inc()


def refresh_reuse_detected() -> None:
    """Count one spent refresh token presented again."""
    REFRESH_REUSE.inc()


def current_route() -> str:
    """The current request's route template (``/oauth/token``), bounded for use as a label."""
    if not has_request_context() or request.url_rule is None:
        return UNMATCHED_ROUTE
    return request.url_rule.rule


def current_request_id() -> str | None:
    """The id of the request being handled in this thread, if any."""
    return _request_id.get()


# Logging ----------------------------------------------------------------------------------

REDACTED = "[redacted]"
#: Field names whose values are never logged, whatever they look like (compared lowercased).
SENSITIVE_KEYS = frozenset(
    {
        "password",
        "old_password",
        "new_password",
        "new_password1",
        "new_password2",
        "secret",
        "secret_key",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "code",
        "code_verifier",
        "assertion",
        "authorization",
        "cookie",
        "set-cookie",
        "api_key",
    }
)
_TOKEN_CHARS = r"A-Za-z0-9_-"
_SENSITIVE_TEXT = [
    # A JWS/JWT in compact form: its header is base64url JSON, so it starts with "eyJ".
    re.compile(rf"eyJ[{_TOKEN_CHARS}]{{4,}}\.[{_TOKEN_CHARS}]{{4,}}\.[{_TOKEN_CHARS}]*"),
    # Our refresh tokens: "<session id>.<secret>", both base64url (tokens/service.py).
    re.compile(rf"(?<![{_TOKEN_CHARS}])[{_TOKEN_CHARS}]{{16,}}\.[{_TOKEN_CHARS}]{{32,}}"),
]
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_KEY_VALUE = re.compile(
    r"(?i)\b(" + "|".join(sorted(re.escape(k) for k in SENSITIVE_KEYS)) + r")=([^&\s\"']+)"
)
_STANDARD_RECORD_FIELDS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
#: Matches wherever any of the patterns above could: one search tells most strings (an access
#: line's path, route, address) that there is nothing to blank, where the four substitutions
#: cost four times as much on every field of every line. Case-insensitive throughout, so it
#: matches a superset, never less.
_MAYBE_SENSITIVE = re.compile(
    "|".join(
        f"(?:{pattern.pattern.removeprefix('(?i)')})"
        for pattern in (*_SENSITIVE_TEXT, _AUTH_SCHEME, _KEY_VALUE)
    ),
    re.IGNORECASE,
)


def redact_text(text: str) -> str:
    """``text`` with tokens, credentials and sensitive ``key=value`` pairs blanked."""
    # Every pattern needs a ".", a "=" or whitespace: text with none of them (a request id, a
    # UUID path) is told apart by four scans in C, not the search (a third of a JWKS answer's
    # instructions, callgrind: docs/scaling.md, session 14). isprintable() is False for every
    # whitespace character but the space.
    if "." not in text and "=" not in text and " " not in text and text.isprintable():
        return text
    if _MAYBE_SENSITIVE.search(text) is None:
        return text
    for pattern in _SENSITIVE_TEXT:
        text = pattern.sub(REDACTED, text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    return _KEY_VALUE.sub(lambda m: f"{m.group(1)}={REDACTED}", text)


@functools.lru_cache(maxsize=1024)
def _redacted_once(text: str) -> str:
    return redact_text(text)


def redact_field(text: str) -> str:
    """``redact_text`` for a short field that recurs from line to line (a client's address, a
    path): remembered for the last 1,024 such strings up to 256 characters."""
    return _redacted_once(text) if len(text) <= 256 else redact_text(text)


def redact_value(value: Any, key: str | None = None) -> Any:
    """``value`` with sensitive entries blanked, looking into dicts, lists and tuples."""
    if key is not None and key.lower() in SENSITIVE_KEYS:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: redact_value(v, str(k)) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact_value(v) for v in value]
    return value


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to records written while a request is being handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = _request_id.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


class RedactFilter(logging.Filter):
    """Blanks secrets in a record's message, extra fields and traceback before it is written.

    The record is changed in place, so every handler after this one sees the redacted text.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: log what we have rather than nothing
            message = str(record.msg)
        record.msg, record.args = redact_text(message), None
        for name, value in list(record.__dict__.items()):
            if name not in _STANDARD_RECORD_FIELDS:
                setattr(record, name, redact_value(value, name))
        if record.exc_info:
            # Exception messages can quote what failed to parse; the traceback goes out as the
            # same "exc" field JsonFormatter writes, but redacted.
            record.exc = redact_text(logging.Formatter().formatException(record.exc_info))
            record.exc_info, record.exc_text = None, None
        return True


def install_log_filters(handlers: Iterable[logging.Handler] | None = None) -> None:
    """Add the request-id and redaction filters to ``handlers`` (default: root's JSON ones)."""
    if handlers is None:
        handlers = [
            h for h in logging.getLogger().handlers if isinstance(h.formatter, JsonFormatter)
        ]
    for handler in handlers:
        present = {type(f) for f in handler.filters}
        for kind in (RequestIdFilter, RedactFilter):
            if kind not in present:
                handler.addFilter(kind())


# Requests ---------------------------------------------------------------------------------

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def sane_request_id(value: str | None) -> str | None:
    """``value`` if it is acceptable as a request id, else None."""
    if value and _SANE_REQUEST_ID.fullmatch(value):
        return value
    return None


class RequestIdMiddleware:
    """Gives each request its id and start time before anything else in the app runs.

    A WSGI wrapper rather than a ``before_request`` hook so that requests refused by an
    earlier hook (a rate limit) or failing in routing still get an id, a header and a duration.
    """

    def __init__(self, app: WsgiApp) -> None:
        self.app = app

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request_id = request_id_for(environ.get("HTTP_X_REQUEST_ID"))
        environ[_ENVIRON_STARTED] = time.perf_counter()

        def _start_response(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            headers = [(k, v) for k, v in headers if k.lower() != REQUEST_ID_HEADER.lower()]
            headers.append((REQUEST_ID_HEADER, request_id))
            return start_response(status, headers, *exc_info)

        # Flask handles the whole request inside this call (the body it returns is already
        # built), so every log line of the request is written while the id is set.
        with request_id_bound(request_id):
            return self.app(environ, _start_response)


def request_id_for(caller_value: str | None) -> str:
    """The id of a request whose ``X-Request-ID`` header is ``caller_value``."""
    # 32 hex digits like uuid4().hex, all 128 bits random, at a quarter of its cost (every
    # answer makes one).
    return sane_request_id(caller_value) or os.urandom(16).hex()


@contextmanager
def request_id_bound(request_id: str) -> Iterator[None]:
    """Every log line written in this block carries ``request_id``."""
    token = _request_id.set(request_id)
    try:
        yield
    finally:
        _request_id.reset(token)


def record_request(
    method: str, route: str, status: int, duration: float, path: str, ip: str
) -> None:
    """Count a request, time it and write its access log line (``path`` without its query:
    query strings can carry codes and tokens)."""
    RequestRecorder(method, route, status).record(duration, path, ip)


class RequestRecorder:
    """``record_request`` for answers of one method, route and status, for a caller that
    gives many: the metrics' children are looked up once."""

    def __init__(self, method: str, route: str, status: int) -> None:
        label = method if method in _METHODS else "OTHER"
        self.status = status
        # Fixed for every line this recorder writes, so redacted once (a method outside
        # _METHODS is the client's text).
        self.logged_method, self.logged_route = redact_text(method), redact_text(route)
        self.count = HTTP_REQUESTS.labels(label, route, str(status))
        self.latency = HTTP_LATENCY.labels(label, route)
        self.level = logging.DEBUG if route in _QUIET_ROUTES else logging.INFO

    def record(self, duration: float, path: str, ip: str, request_id: str | None = None) -> None:
        """``request_id`` names the request in the access line, for a caller outside
        ``request_id_bound``."""
        self.count.inc()
        self.latency.observe(duration)
        if not access_log.isEnabledFor(self.level):
            return
        fields: dict[str, Any] = {
            "method": self.logged_method,
            "path": redact_field(path),
            "route": self.logged_route,
            "status": self.status,
            "duration_ms": round(duration * 1000, 2),
            "ip": redact_field(ip),
        }
        request_id = request_id or _request_id.get()
        if request_id is not None:
            fields["request_id"] = redact_text(request_id)
        write_access_line(self.level, fields)


def write_access_line(level: int, fields: dict[str, Any]) -> None:
    """Hand one access line, its ``fields`` already redacted, to the handlers of
    ``oidc_server.access`` and its parents that take ``level``.

    Access lines are the most frequent lines by far, and through logging's machinery (a
    LogRecord, the caller's frame, the filters' walk over every field, the formatter) one cost
    ~70 us, more than answering a JWKS request (docs/scaling.md, session 13). Their fields are
    few and fixed, so the caller redacts each, and the line a JSON handler writes is made once,
    as ``JsonFormatter`` makes it, and written to its stream. Any other handler (pytest's, an
    operator's) gets a LogRecord as usual.
    """
    line: str | None = None
    record: logging.LogRecord | None = None

    def as_record() -> logging.LogRecord:
        nonlocal record
        if record is None:
            record = access_log.makeRecord(
                access_log.name, level, __file__, 0, "request", None, None, extra=fields
            )
        return record

    logger: logging.Logger | None = access_log
    while logger is not None:
        for handler in logger.handlers:
            if level < handler.level:
                continue
            if type(handler.formatter) is not JsonFormatter or not isinstance(
                handler, logging.StreamHandler
            ):
                handler.handle(as_record())
                continue
            if line is None:
                line = json_line(
                    {
                        "ts": timestamp(time.time()),
                        "level": logging.getLevelName(level).lower(),
                        "logger": access_log.name,
                        "message": "request",
                        **fields,
                    }
                )
            handler.acquire()
            try:
                handler.stream.write(line + handler.terminator)
                handler.flush()
            except Exception:  # as in StreamHandler.emit: an unwritable log fails no request
                handler.handleError(as_record())
            finally:
                handler.release()
        logger = logger.parent if logger.propagate else None


def _record_request(response: Response) -> Response:
    started = request.environ.get(_ENVIRON_STARTED)
    duration = time.perf_counter() - started if started is not None else 0.0
    record_request(
        request.method,
        current_route(),
        response.status_code,
        duration,
        request.path,
        request.remote_addr or "",
    )
    return response


def metrics() -> Response:
    """Prometheus text exposition of every worker's metrics."""
    registry = REGISTRY
    if _MULTIPROC_DIR:
        # A fresh registry per scrape, as prometheus_client's multiprocess mode requires.
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    response = Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
    response.headers["Cache-Control"] = "no-store"
    return response


def init_app(app: Flask) -> None:
    """Wrap ``app`` for request ids, time and count its requests, and serve ``/metrics``."""
    install_log_filters()
    app.wsgi_app = RequestIdMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    app.after_request(_record_request)
    app.add_url_rule("/metrics", "metrics", metrics, methods=["GET"])
