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

from flask import g, jsonify
from marshmallow import Schema, fields
from werkzeug.exceptions import HTTPException

from ..oauth.protector import AccessToken, BearerChallenge, authenticate_bearer
from ..tokens.reads import Reads

P = ParamSpec("P")
R = TypeVar("R")


class ApiSchema(Schema):
    """The base of every /api/v1 schema: an instance is shared, never deep-copied.

    flask-smorest deep-copies an operation's accumulated doc, schema instances included, at
    each of its decorators; those copies were kept for good by every process (about 1 MB).
    Nothing changes a schema instance once built (marshmallow copies fields per instance, and
    copies a nested schema before binding it), so the copies can be the instance itself.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> ApiSchema:
        return self


class ErrorSchema(ApiSchema):
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


def acquire_token(
    scope: str | None = None, kind: str | None = None, also: Reads[Any] | None = None
) -> AccessToken:
    """The request's access token (``authenticate_bearer``), or the /api/v1 error for it."""
    try:
        return authenticate_bearer(scope, kind, also)
    except BearerChallenge as challenge:
        error = challenge.error or "unauthorized"
        if challenge.status == 403 and not challenge.scope:
            error = "forbidden"
        abort(
            challenge.status,
            error,
            challenge.description,
            headers={"WWW-Authenticate": challenge.www_authenticate},
        )


def user_token_required(fn: Callable[P, R]) -> Callable[P, R]:
    """Require a user's access token (one with a session); sets ``g.token``."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        g.token = acquire_token(kind="user")
        return fn(*args, **kwargs)

    return wrapper


def client_token_required(scope: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Require a ``client_credentials`` token with ``scope``; sets ``g.token``."""

    def decorator(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            g.token = acquire_token(scope, kind="client")
            return fn(*args, **kwargs)

        return wrapper

    return decorator


def current_token() -> AccessToken:
    return g.token


#: OpenAPI security requirement for bearer-protected operations.
BEARER = [{"bearerAuth": []}]
