"""Sign-in with Google and Yandex: provider registry, claims mappers, flows and accounts.

``init_app`` registers the enabled providers with Authlib's Flask OAuth client and keeps the
flows in ``app.extensions["social"]``; everything else here knows nothing of HTTP requests.
"""

from __future__ import annotations

import logging

from flask import Flask, current_app

from .client import register_clients
from .errors import SocialError
from .flow import SocialFlows
from .providers import enabled_providers

__all__ = ["SocialError", "SocialFlows", "flows", "init_app"]


def init_app(app: Flask) -> None:
    """Build the social sign-in flows from the app's settings and token store."""
    # Authlib logs the PKCE verifier at DEBUG; keep it out of the logs even when LOG_LEVEL=DEBUG.
    logging.getLogger("authlib").setLevel(logging.INFO)
    svc = app.extensions["oidc"]
    settings = svc.settings
    clients = register_clients(app, enabled_providers(settings), settings.social_http_timeout)
    app.extensions["social"] = SocialFlows(
        clients,
        svc.store,
        issuer=settings.oidc_issuer,
        redirect_uris=settings.social_redirect_uris,
        state_ttl=settings.social_state_ttl,
    )


def flows() -> SocialFlows:
    """The current app's social sign-in flows."""
    return current_app.extensions["social"]
