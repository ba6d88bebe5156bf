"""The application factory."""

from __future__ import annotations

from typing import Any

from flask import Flask, Request
from flask.sessions import SecureCookieSession, SecureCookieSessionInterface
from werkzeug.middleware.proxy_fix import ProxyFix

from . import api, context, cors, observability, security_headers, social
from .config import Settings
from .logs import configure_logging
from .oauth import server as oauth_server
from .ratelimit import init_app as init_rate_limits
from .services import Services
from .tokens.store import TokenStore
from .web import errors, health, oauth, pages, wellknown


class LazyCookieSessions(SecureCookieSessionInterface):
    """Flask's cookie sessions, minus the signer Flask builds on every request to read one.

    Nothing of ours keeps state in Flask's session (single-use state lives in the token
    store), so almost no request carries the cookie; building the signer anyway cost about
    5% of an API request's CPU.
    """

    def open_session(self, app: Flask, request: Request) -> SecureCookieSession | None:
        if not request.cookies.get(self.get_cookie_name(app)):
            return self.session_class()
        return super().open_session(app, request)


def behind_trusted_proxy(wsgi_app: Any) -> ProxyFix:
    """``wsgi_app`` seeing the client, scheme and host that one proxy hop forwarded
    (``TRUST_PROXY_HEADERS``): the last value of each ``X-Forwarded-*`` header."""
    return ProxyFix(wsgi_app, x_for=1, x_proto=1, x_host=1)


def create_app(settings: Settings | None = None, store: TokenStore | None = None) -> Flask:
    """Build an app from ``settings`` (default: the environment). Creates the first key if none."""
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level)
    app = Flask(__name__, instance_path=settings.instance_dir)
    app.session_interface = LazyCookieSessions()
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        JSON_SORT_KEYS=False,
    )
    if settings.trust_proxy_headers:
        app.wsgi_app = behind_trusted_proxy(app.wsgi_app)  # type: ignore[method-assign]
    observability.init_app(app)  # first, so its after_request hook sees the final response

    svc = Services.build(settings, store=store)
    svc.keyring.ensure_key()
    app.extensions["oidc"] = svc

    context.init_app(app)
    errors.init_app(app)
    security_headers.init_app(app)  # issue 7: on every response, errors and 429s too
    cors.init_app(app)
    oauth_server.init_app(app)
    app.register_blueprint(wellknown.bp)
    app.register_blueprint(oauth.bp)
    app.register_blueprint(health.bp)
    api.init_app(app)
    social.init_app(app)
    pages.init_app(app)  # the browser-facing OP (issue 9); after social, whose flows it uses
    init_rate_limits(app)  # last: it wraps views and exempts blueprints already registered
    return app
