"""Discovery documents (OIDC Discovery 1.0, RFC 8414) and the JWKS (RFC 7517)."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ..clients import GRANT_TYPES, SCOPES_SUPPORTED
from ..config import Settings
from ..context import services

bp = Blueprint("wellknown", __name__)

#: Clients and microservices may cache these; keys rotate far less often than this.
JWKS_MAX_AGE = 300
DISCOVERY_MAX_AGE = 3600


@functools.cache
def render_discovery(templates_dir: str, name: str, issuer: str) -> dict[str, Any]:
    """Render ``<name>.json.j2`` from the templates folder with values from config."""
    env = Environment(
        loader=FileSystemLoader(Path(templates_dir)),
        undefined=StrictUndefined,
        autoescape=False,  # noqa: S701 - JSON, every value goes through tojson
    )
    text = env.get_template(f"{name}.json.j2").render(
        issuer=issuer,
        scopes_supported=list(SCOPES_SUPPORTED),
        grant_types_supported=list(GRANT_TYPES),
    )
    return json.loads(text)


def discovery_document(settings: Settings, name: str) -> dict[str, Any]:
    return render_discovery(settings.well_known_templates_dir, name, settings.oidc_issuer)


def _cached_json(body: dict[str, Any], max_age: int) -> Response:
    response = jsonify(body)
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    return response


@bp.get("/.well-known/openid-configuration")
def openid_configuration() -> Response:
    return _cached_json(
        discovery_document(services().settings, "openid-configuration"), DISCOVERY_MAX_AGE
    )


@bp.get("/.well-known/oauth-authorization-server")
def oauth_authorization_server() -> Response:
    return _cached_json(
        discovery_document(services().settings, "oauth-authorization-server"), DISCOVERY_MAX_AGE
    )


@bp.get("/.well-known/jwks.json")
def jwks() -> Response:
    return _cached_json(services().keyring.jwks(), JWKS_MAX_AGE)
