"""Rate limits (flask-limiter) and the per-account failed-login backoff, bound to an app.

Limits are counted in the same Redis as the token store when ``REDIS_URL`` is set (so every
worker shares them), in process memory otherwise. Every value comes from settings at request
time (``RATELIMIT_*``), and ``RATELIMIT_ENABLED=false`` turns all of it off, the backoff too:

- every route: ``RATELIMIT_DEFAULT`` per client IP (health probes and discovery exempt);
- logins (``/api/v1/auth/login`` and the ``password`` grant of ``/oauth/token``, which
  share their buckets): ``RATELIMIT_LOGIN`` per IP and ``RATELIMIT_LOGIN_PER_ACCOUNT`` failed
  attempts per login;
- refreshes (``/api/v1/auth/refresh`` and the ``refresh_token`` grant): ``RATELIMIT_REFRESH``
  per IP;
- registration: ``RATELIMIT_REGISTER`` per IP, and ``RATELIMIT_REGISTER_CONFLICT`` answers
  of "login taken" per IP, since each of those tells whether an account exists;
- password changes: ``RATELIMIT_CHANGE_PASSWORD`` per IP;
- ``/oauth/token`` as a whole: ``RATELIMIT_TOKEN`` per IP.

A refused request gets 429 in the /api/v1 error shape with ``Retry-After`` (seconds), and
every limited response carries ``X-RateLimit-Limit``, ``X-RateLimit-Remaining`` and
``X-RateLimit-Reset`` (epoch seconds) for the tightest limit that applied.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable

from flask import Flask, Response, current_app, jsonify, request
from flask_limiter import Limiter, RequestLimit

from . import observability
from .context import client_ip, services
from .login_backoff import BackoffPolicy, LoginBackoff, account_key
from .tokens import redis_connect
from .web import health, wellknown

log = logging.getLogger(__name__)

TOKEN_ENDPOINT = "oauth.token"


def _setting(name: str) -> Callable[[], str]:
    """A limit read from the current app's settings on each request."""

    def provider() -> str:
        return str(getattr(services().settings, name))

    provider.__name__ = f"setting_{name}"
    return provider


def ip_key() -> str:
    """The client's address (the proxy's client when ``TRUST_PROXY_HEADERS`` is on)."""
    return client_ip() or "unknown"


def _body_too_large() -> bool:
    limit = current_app.config.get("MAX_CONTENT_LENGTH")
    return limit is not None and (request.content_length or 0) > limit


def _form_value(name: str) -> str:
    """A form field of the request, or "" when the body cannot be read.

    Limit callbacks must never raise: flask-limiter takes any exception for a storage outage.
    A body that is too large or malformed is answered properly by the view itself.
    """
    if _body_too_large():
        return ""
    try:
        value = request.form.get(name, "")
    except Exception:
        return ""
    return value if isinstance(value, str) else ""


def _json_value(name: str) -> str:
    """A top-level string of the JSON body, or "" (same rule as ``_form_value``)."""
    if _body_too_large():
        return ""
    try:
        body = request.get_json(silent=True)
    except Exception:
        return ""
    value = body.get(name) if isinstance(body, dict) else None
    return value if isinstance(value, str) else ""


def login_key() -> str:
    """The account a sign-in attempt is for, as a digest: limits never store email addresses."""
    login = _form_value("username") if request.endpoint == TOKEN_ENDPOINT else _json_value("login")
    try:
        return account_key(login) if login else "no-login"
    except Exception:  # lone surrogates and the like: the view rejects those with 4xx
        return "unreadable-login"


def _not_grant(grant_type: str) -> Callable[[], bool]:
    def exempt() -> bool:
        return request.endpoint == TOKEN_ENDPOINT and _form_value("grant_type") != grant_type

    return exempt


def _failed_sign_in(response: Response) -> bool:
    # 401 from /api/v1/auth/login, 400 invalid_grant from /oauth/token.
    return response.status_code in (400, 401)


def _too_many_requests(limit: RequestLimit) -> Response:
    """The 429 answer, in the /api/v1 error shape."""
    observability.rate_limited()
    retry_after = max(1, math.ceil(limit.window.reset_time - time.time()))
    response = jsonify(
        error="too_many_requests",
        message=f"too many requests (at most {limit.limit}); retry after {retry_after} s",
    )
    response.status_code = 429
    response.headers["Retry-After"] = str(retry_after)
    return response


limiter = Limiter(
    key_func=ip_key,
    default_limits=[_setting("ratelimit_default")],
    key_prefix="oidc-rl",
    # Headers are written by ``_rate_limit_headers``: flask-limiter would put Retry-After on
    # every response, and overwrite the backoff's own Retry-After with its window's reset.
    headers_enabled=False,
    on_breach=_too_many_requests,
    # If Redis goes away the token store answers 503 anyway; counting in memory meanwhile
    # keeps the limiter from turning every request into a 500.
    in_memory_fallback_enabled=True,
    # The fallback only takes over at the next check: a deduction made after the view
    # (``deduct_when``) when Redis went away during the request would otherwise raise from
    # an after_request hook, a 500 (tests/faults/test_redis_down.py). Swallowed, it is
    # logged and that one attempt goes uncounted here (the login backoff counted it).
    swallow_errors=True,
)

login_per_ip = limiter.shared_limit(
    _setting("ratelimit_login"), scope="login-ip", exempt_when=_not_grant("password")
)
login_per_account = limiter.shared_limit(
    _setting("ratelimit_login_per_account"),
    scope="login-account",
    key_func=login_key,
    exempt_when=_not_grant("password"),
    # Only failures count: the owner signing in on many devices never meets this limit.
    deduct_when=_failed_sign_in,
)
refresh_per_ip = limiter.shared_limit(
    _setting("ratelimit_refresh"), scope="refresh-ip", exempt_when=_not_grant("refresh_token")
)
register_per_ip = limiter.limit(_setting("ratelimit_register"))
register_conflicts_per_ip = limiter.limit(
    _setting("ratelimit_register_conflict"),
    scope="conflict",
    deduct_when=lambda response: response.status_code == 409,
)
change_password_per_ip = limiter.limit(_setting("ratelimit_change_password"))
token_per_ip = limiter.limit(_setting("ratelimit_token"))


def _rate_limit_headers(response: Response) -> Response:
    """Describe the tightest limit that applied to this request."""
    current = limiter.current_limit
    if current is None:
        return response
    try:
        reset_at, remaining = current.reset_at, current.remaining
    except Exception:  # storage gone between the check and now: headers are optional
        log.warning("rate limit storage unavailable while writing headers")
        return response
    response.headers["X-RateLimit-Limit"] = str(current.limit.amount)
    response.headers["X-RateLimit-Remaining"] = str(max(0, remaining))
    response.headers["X-RateLimit-Reset"] = str(reset_at)
    return response


def login_backoff() -> LoginBackoff | None:
    """The app's failed-login backoff, or None when throttling is switched off."""
    return current_app.extensions.get("login_backoff")


def init_app(app: Flask) -> None:
    """Bind the limiter and the backoff to ``app``; call after every blueprint is registered."""
    settings = app.extensions["oidc"].settings
    # Cluster and Sentinel URLs are translated for the limits library (see redis_connect).
    storage_uri, storage_options = (
        redis_connect.limiter_storage(settings.redis_url)
        if settings.redis_url
        else ("memory://", {})
    )
    app.config.update(
        RATELIMIT_ENABLED=settings.ratelimit_enabled,
        RATELIMIT_STORAGE_URI=storage_uri,
        RATELIMIT_STORAGE_OPTIONS=(
            {"socket_timeout": 2, "socket_connect_timeout": 2, **storage_options}
            if settings.redis_url
            else {}
        ),
    )
    app.extensions["login_backoff"] = (
        LoginBackoff(
            app.extensions["oidc"].store,
            BackoffPolicy(
                threshold=settings.login_backoff_threshold,
                base_delay=settings.login_backoff_base_delay,
                max_delay=settings.login_backoff_max_delay,
                window=settings.login_backoff_window,
            ),
        )
        if settings.ratelimit_enabled
        else None
    )
    if not settings.ratelimit_enabled:
        limiter.init_app(app)  # records the switch; registers nothing
        return
    # Registered before the limiter's own hook so that it runs after it (Flask runs
    # after_request functions in reverse), once deductions are done.
    app.after_request(_rate_limit_headers)
    limiter.init_app(app)
    limiter.exempt(health.bp)
    limiter.exempt(wellknown.bp)
    # /oauth/token is not ours to decorate; wrap its view once per app instead.
    view = app.view_functions[TOKEN_ENDPOINT]
    for limit in (token_per_ip, refresh_per_ip, login_per_account, login_per_ip):
        view = limit(view)
    app.view_functions[TOKEN_ENDPOINT] = view
