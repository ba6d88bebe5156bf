"""CORS (Fetch standard) for the browser origins listed in ``CORS_ORIGINS``, and no others.

Written here rather than with flask-cors because the policy is small and strict, and a
dependency would bring options (wildcards, credentials, regexes) that must never be used:

- only exact configured origins are echoed in ``Access-Control-Allow-Origin``; ``*`` is
  refused at start-up, so a wildcard can never meet a credentialed request;
- ``Access-Control-Allow-Credentials`` is never sent: the API authenticates with bearer
  tokens in the ``Authorization`` header, not cookies, so browsers need no ambient credentials;
- a preflight (``OPTIONS`` with ``Access-Control-Request-Method``) from a listed origin gets
  204 with the path's methods and the request headers we accept; from any other origin 403;
- every response says ``Vary: Origin`` once CORS is on, so a shared cache never hands one
  origin's answer to another.
"""

from __future__ import annotations

import re

from flask import Flask, Response, current_app, jsonify, request

from .config import ConfigError

#: Request headers a browser script may send (beyond the CORS-safelisted ones).
ALLOWED_REQUEST_HEADERS = ("Authorization", "Content-Type", "X-Request-ID")
#: Response headers a browser script may read (beyond the CORS-safelisted ones).
EXPOSED_RESPONSE_HEADERS = (
    "Retry-After",
    "WWW-Authenticate",
    "X-Request-ID",
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
)
#: Seconds a browser may cache a preflight answer.
PREFLIGHT_MAX_AGE = 600

# scheme://host[:port], nothing else: an origin has no path, query or trailing slash.
_ORIGIN = re.compile(r"https?://[a-z0-9.-]+(?::\d{1,5})?|https?://\[[0-9a-f:.]+\](?::\d{1,5})?")
_EXTENSION_KEY = "cors.origins"


def parse_origins(text: str) -> frozenset[str]:
    """The origins of ``CORS_ORIGINS`` (lowercased); ``ConfigError`` for anything else."""
    origins = set()
    for raw in text.split():
        origin = raw.lower()
        if origin in {"*", "null"}:
            raise ConfigError(f"CORS_ORIGINS must list exact origins, not {raw!r}")
        if not _ORIGIN.fullmatch(origin):
            raise ConfigError(
                f"CORS_ORIGINS: {raw!r} is not an origin such as https://app.example.com "
                "(scheme, host and optional port; no path or trailing slash)"
            )
        origins.add(origin)
    return frozenset(origins)


def _allowed_origin() -> str | None:
    """The request's ``Origin`` if it is one of the configured ones."""
    origin = request.headers.get("Origin", "")
    allowed: frozenset[str] = current_app.extensions[_EXTENSION_KEY]
    # Browsers send the origin serialised in lowercase; compare the same way.
    return origin if origin.lower() in allowed else None


def _path_methods() -> list[str]:
    """Every method some route accepts at the request's path (several rules may share it)."""
    adapter = current_app.create_url_adapter(request)
    if adapter is None:
        return []
    return sorted(adapter.allowed_methods())


def _preflight() -> Response | None:
    """Answer a CORS preflight; other requests go on to their view."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    if "Origin" not in request.headers or request.url_rule is None:
        return None  # not a browser preflight, or no such path: routing answers
    origin = _allowed_origin()
    if origin is None:
        response = jsonify(error="cors_origin_not_allowed", message="this origin is not allowed")
        response.status_code = 403
        return response
    response = Response(status=204)
    response.headers.remove("Content-Type")  # no body, so no type
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Allow-Methods"] = ", ".join(_path_methods())
    response.headers["Access-Control-Allow-Headers"] = ", ".join(ALLOWED_REQUEST_HEADERS)
    response.headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE)
    return response


def _cors_headers(response: Response) -> Response:
    """Let a listed origin read the response; say that the answer varies by origin."""
    response.vary.add("Origin")
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response.vary.update(("Access-Control-Request-Method", "Access-Control-Request-Headers"))
    origin = _allowed_origin()
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_RESPONSE_HEADERS)
    return response


def enabled(app: Flask) -> bool:
    """Whether ``app`` allows any origin (and so says ``Vary: Origin`` on every response)."""
    return bool(app.extensions[_EXTENSION_KEY])


def init_app(app: Flask) -> None:
    """Answer preflights and add CORS headers, if ``CORS_ORIGINS`` lists any origin."""
    origins = parse_origins(app.extensions["oidc"].settings.cors_origins)
    app.extensions[_EXTENSION_KEY] = origins
    if not origins:
        return  # no cross-origin access at all: browsers get no CORS headers
    # Before the rate limiter's hook (registered later): a preflight is answered at once.
    app.before_request(_preflight)
    app.after_request(_cors_headers)
