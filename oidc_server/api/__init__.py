"""The /api/v1 surface: thin views over the core, documented with OpenAPI 3."""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_smorest import Api as _Api
from werkzeug.exceptions import HTTPException

from . import account_erase, auth, consents, roles, social, users
from .common import ApiError, ErrorSchema
from .schemas import register_error_responses


class Api(_Api):
    # Our one error shape, also for smorest's default responses; smorest's own "Error" schema
    # would clash by name with ErrorSchema (an apispec warning, an error under pytest).
    ERROR_SCHEMA = ErrorSchema

    def handle_http_exception(self, error: HTTPException) -> Any:
        """Every HTTP error, webargs' validation errors included, in ``ErrorSchema``'s shape."""
        if isinstance(error, ApiError) or error.response is not None:
            return error.response if error.response is not None else error
        data = getattr(error, "data", None) or {}
        code = (error.name or "error").lower().replace(" ", "_")
        body: dict[str, Any] = {"error": code, "message": error.description or error.name}
        messages = data.get("messages") or data.get("errors")
        if messages:
            # webargs nests by location ({"json": {"field": [...]}}); callers want the fields.
            if isinstance(messages, dict) and len(messages) == 1:
                (only,) = messages.values()
                messages = only if isinstance(only, dict) else messages
            body["details"] = messages
            body["message"] = "the request is not valid; see details"
        headers = data.get("headers") or {}
        for key, value in error.get_headers():
            if key.lower() != "content-type":
                headers.setdefault(key, value)
        return body, error.code, headers


def init_app(app: Flask) -> None:
    app.config.update(
        API_TITLE="Cinema identity API",
        API_VERSION="v1",
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        OPENAPI_SWAGGER_UI_URL="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/",
    )
    api = Api(app)
    api.spec.components.security_scheme(
        "bearerAuth", {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
    )
    register_error_responses(api.spec)
    for module in (auth, users, consents, account_erase, roles, social):
        api.register_blueprint(module.blp)
    app.extensions["api"] = api
