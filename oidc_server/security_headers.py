"""Security headers on every response (RFC 9700 §4.16, RFC 6819 §5.1.6, RFC 6749 §5.1).

- ``X-Content-Type-Options: nosniff``: JSON is never sniffed into HTML or script.
- ``Referrer-Policy: no-referrer``: no URL of ours (with a code or state in it) leaks onward.
- ``X-Frame-Options: DENY`` and CSP ``frame-ancestors 'none'``: nothing of ours is framed
  (clickjacking); the first for old browsers, the second for current ones.
- ``Content-Security-Policy``: ``default-src 'none'`` for everything (JSON loads nothing), except
  the Swagger UI page, whose policy allows exactly its scripts and styles from the CDN it is
  configured with and its own inline start-up script by hash. A view may set its own policy.
- ``Strict-Transport-Security`` when the request came over TLS (``request.is_secure``, which
  honours ``X-Forwarded-Proto`` with ``TRUST_PROXY_HEADERS``) or ``OIDC_ISSUER`` is https.
- ``Cache-Control: no-store`` and ``Pragma: no-cache`` on everything carrying a token or a
  credential (forced on the routes in ``NO_STORE_PATHS``), and as the default wherever a view
  set no caching policy of its own (discovery and JWKS keep their public caching).
"""

from __future__ import annotations

import base64
import hashlib
import re
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request
from werkzeug.datastructures import Headers

from .config import Settings

NOSNIFF = "nosniff"
NO_REFERRER = "no-referrer"
FRAME_DENY = "DENY"
#: The policy of every response that is not the Swagger UI page.
STRICT_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
NO_STORE = "no-store"

#: Paths whose responses carry tokens or credentials: never stored by any cache (RFC 6749
#: §5.1, RFC 7662 §4, OIDC Core §5.3.2); prefixes end with "/".
NO_STORE_PATHS = (
    "/oauth/token",
    "/oauth/introspect",
    "/oauth/revoke",
    "/oauth/userinfo",
    "/api/v1/auth/",
    "/api/v1/social/callback/",
    "/api/v1/social/login/",
    "/api/v1/users/me",
)

_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def carries_tokens(path: str) -> bool:
    """Whether responses at ``path`` may carry a token or credential."""
    for prefix in NO_STORE_PATHS:
        if prefix.endswith("/"):
            if path.startswith(prefix):
                return True
        elif path == prefix or path.startswith(prefix + "/"):
            return True
    return False


def swagger_ui_path(app: Flask) -> str | None:
    """Where flask-smorest serves Swagger UI, from the same config that places it."""
    page = app.config.get("OPENAPI_SWAGGER_UI_PATH")
    if not page:
        return None
    prefix = app.config.get("OPENAPI_URL_PREFIX") or "/"
    return "/" + "/".join(part.strip("/") for part in (prefix, page) if part.strip("/"))


def docs_csp(page: bytes, assets_url: str) -> str:
    """The Swagger UI page's policy: its assets' folder on the CDN, its inline script by hash.

    The source is the configured folder (``https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/``),
    not the whole CDN, which serves anyone's packages. ``style-src`` allows inline styles
    because Swagger UI writes style attributes into the page it builds; styles cannot run
    code. The OpenAPI document and "try it out" requests go to this server only.
    """
    parts = urlsplit(assets_url)
    cdn = assets_url if parts.scheme == "https" and parts.netloc else "'self'"
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    script_src = f"{cdn} {hashes}".strip()
    return (
        f"default-src 'none'; script-src {script_src}; style-src {cdn} 'unsafe-inline'; "
        f"img-src 'self' data: {cdn}; font-src {cdn} data:; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def _add_headers(response: Response) -> Response:
    app = current_app
    if (
        "Content-Security-Policy" not in response.headers
        and request.path == swagger_ui_path(app)
        and response.mimetype == "text/html"
    ):
        assets = app.config.get("OPENAPI_SWAGGER_UI_URL") or ""
        response.headers["Content-Security-Policy"] = docs_csp(response.get_data(), assets)
    add_security_headers(
        response.headers,
        path=request.path,
        is_secure=request.is_secure,
        settings=app.extensions["oidc"].settings,
    )
    return response


def add_security_headers(
    headers: Headers, *, path: str, is_secure: bool, settings: Settings
) -> None:
    """Set the module's headers for a response to ``path``; see the module docstring for each.

    ``is_secure``: the request came over TLS (as the app sees it, behind any trusted proxy).
    """
    headers["X-Content-Type-Options"] = NOSNIFF
    headers["Referrer-Policy"] = NO_REFERRER
    headers["X-Frame-Options"] = FRAME_DENY
    if "Content-Security-Policy" not in headers:
        headers["Content-Security-Policy"] = STRICT_CSP
    behind_tls = is_secure or settings.oidc_issuer.startswith("https://")
    if settings.hsts_max_age > 0 and behind_tls:
        headers["Strict-Transport-Security"] = f"max-age={settings.hsts_max_age}; includeSubDomains"
    if carries_tokens(path) or "Cache-Control" not in headers:
        headers["Cache-Control"] = NO_STORE
    if headers.get("Cache-Control") == NO_STORE:
        # For HTTP/1.0 caches, which know no Cache-Control (RFC 6749 §5.1).
        headers["Pragma"] = "no-cache"


def init_app(app: Flask) -> None:
    """Add the security headers to every response of ``app``."""
    app.after_request(_add_headers)
