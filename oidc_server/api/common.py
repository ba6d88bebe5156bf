"""What every /api/v1 endpoint shares: the error shape, bearer authentication, docs helpers.

Every /api/v1 error is ``{"error": <code>, "message": <text>, "details": {...}?}``
(``ErrorSchema``). Bearer checks go through Authlib's ``ResourceProtector``; a missing,
revoked, expired, forged or malformed token is 401 with ``WWW-Authenticate: Bearer
error="invalid_token"`` and a token without the needed scope (or of the wrong kind) is 403.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar

from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import MissingAuthorizationError
from flask import g, jsonify
from marshmallow import Schema, fields
from werkzeug.exceptions import HTTPException

from ..oauth.protector import AccessToken, require_token

P = ParamSpec("P")
R = TypeVar("R")


class ErrorSchema(Schema):
    """The one error body of /api/v1."""

    error = fields.String(required=True, metadata={"example": "invalid_token"})
    message = fields.String(required=True)
    details = fields.Dict(metadata={"description": "per-field messages, when there are any"})


class ApiError(HTTPException):
    """Raise to answer with ``ErrorSchema``; carries its own response."""

    def __init__(
        self,
        status: int,
        error: str,
        message: str,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        body: dict[str, Any] = {"error": error, "message": message}
        if details:
            body["details"] = details
        response = jsonify(body)
        response.status_code = status
        for key, value in (headers or {}).items():
            response.headers[key] = value
        super().__init__(description=message, response=response)
        self.code = status


def abort(status: int, error: str, message: str, **kwargs: Any) -> NoReturn:
    raise ApiError(status, error, message, **kwargs)


def _bearer_challenge(error: str | None = None, scope: str | None = None) -> dict[str, str]:
    parts = ['Bearer realm="api"']
    if error:
        parts.append(f'error="{error}"')
    if scope:
        parts.append(f'scope="{scope}"')
    return {"WWW-Authenticate": ", ".join(parts)}


def _acquire(scopes: list[str] | None) -> AccessToken:
    try:
        return require_token.acquire_token(scopes)
    except MissingAuthorizationError:
        abort(401, "unauthorized", "a bearer token is required", headers=_bearer_challenge())
    except OAuth2Error as exc:
        if exc.error == "insufficient_scope":
            scope = " ".join(scopes or [])
            abort(
                403,
                "insufficient_scope",
                f"the token lacks the scope: {scope}",
                headers=_bearer_challenge("insufficient_scope", scope),
            )
        abort(
            401,
            "invalid_token",
            "the access token is invalid, expired or revoked",
            headers=_bearer_challenge("invalid_token"),
        )


def user_token_required(fn: Callable[P, R]) -> Callable[P, R]:
    """Require a user's access token (one with a session); sets ``g.token``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        token = _acquire(None)
        if not token.is_user_token:
            abort(403, "forbidden", "this endpoint needs a user's token")
        g.token = token
        return fn(*args, **kwargs)

    return wrapper


def client_token_required(scope: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Require a ``client_credentials`` token with ``scope``; sets ``g.token``."""

    def decorator(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            token = _acquire(None)
            if token.is_user_token:
                abort(403, "forbidden", "this endpoint is for machine clients")
            if scope not in token.get_scope().split():
                abort(
                    403,
                    "insufficient_scope",
                    f"the token lacks the scope: {scope}",
                    headers=_bearer_challenge("insufficient_scope", scope),
                )
            g.token = token
            return fn(*args, **kwargs)

        return wrapper

    return decorator


def current_token() -> AccessToken:
    return g.token


#: OpenAPI security requirement for bearer-protected operations.
BEARER = [{"bearerAuth": []}]
