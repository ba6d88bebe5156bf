"""Request and response shapes of /api/v1/auth and /api/v1/users/me, for validation and docs.

Request schemas reject unknown fields (marshmallow's default), wrong types and text that no
database or hash function should see (NUL, lone surrogates), each with a message naming the
field. Lengths are bounded here, before any password is hashed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import flask
from apispec import APISpec
from flask_smorest import Blueprint
from marshmallow import ValidationError, fields, validate, validates_schema
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import RequestEntityTooLarge

from ..history_pages import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from ..passwords_policy import MAX_LENGTH as PASSWORD_MAX_LENGTH
from .common import ApiSchema, ErrorSchema

F = TypeVar("F", bound=Callable[..., Any])

#: RFC 5321 §4.5.3.1: a path (an address) is at most 256 octets; 320 is the usual column bound.
LOGIN_MAX_LENGTH = 320


class UtcDateTime(fields.DateTime):
    """ISO 8601 with its offset; SQLite hands back naive datetimes, which are UTC here."""

    def _serialize(self, value: datetime | None, attr: Any, obj: Any, **kwargs: Any) -> Any:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return super()._serialize(value, attr, obj, **kwargs)


class Text(fields.String):
    """A string without NUL characters or unpaired surrogates (they cannot be stored or hashed)."""

    default_error_messages = {
        **fields.String.default_error_messages,
        "nul": "Must not contain NUL characters.",
        "surrogate": "Must be valid Unicode (no unpaired surrogates).",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if "\x00" in text:
            raise self.make_error("nul")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise self.make_error("surrogate") from None
        return text


def _password(description: str | None = None) -> Text:
    metadata = {"format": "password"}
    if description:
        metadata["description"] = description
    return Text(
        required=True, validate=validate.Length(min=1, max=PASSWORD_MAX_LENGTH), metadata=metadata
    )


class JsonParser(FlaskParser):
    """webargs' parser, with JSON nested too deeply for Python's decoder a 400 like any bad JSON."""

    def _raw_load_json(self, req: flask.Request) -> Any:
        try:
            return super()._raw_load_json(req)
        except RecursionError:
            raise json.JSONDecodeError("nested too deeply", "<body>", 0) from None


def _refuse_large_bodies() -> None:
    """413 for any oversized body, even on operations that would never read it."""
    limit = flask.current_app.config.get("MAX_CONTENT_LENGTH")
    if limit is not None and (flask.request.content_length or 0) > limit:
        raise RequestEntityTooLarge()


def api_blueprint(name: str, import_name: str, description: str) -> Blueprint:
    """A /api/v1 blueprint with ``JsonParser`` for bodies and a 413 for oversized ones."""
    blp = Blueprint(name, import_name, url_prefix="/api/v1", description=description)
    blp.ARGUMENTS_PARSER = JsonParser()
    blp.before_request(_refuse_large_bodies)
    return blp


# Requests --------------------------------------------------------------------------------


class RegisterSchema(ApiSchema):
    login = Text(
        required=True,
        validate=validate.Length(min=1, max=LOGIN_MAX_LENGTH),
        metadata={"format": "email", "example": "viewer@example.com"},
    )
    password = _password("8 to 1024 characters, not a common password, not the login")


class LoginSchema(ApiSchema):
    login = Text(
        required=True,
        validate=validate.Length(min=1, max=LOGIN_MAX_LENGTH),
        metadata={"format": "email", "example": "viewer@example.com"},
    )
    password = _password()


class RefreshSchema(ApiSchema):
    refresh_token = Text(required=True, validate=validate.Length(min=1, max=256))
    grant_type = fields.String(
        load_default="refresh_token",
        validate=validate.OneOf(["refresh_token"]),
        metadata={"description": "optional; when sent, must be refresh_token"},
    )


class ChangePasswordSchema(ApiSchema):
    old_password = _password()
    new_password1 = _password("8 to 1024 characters, not a common password, not the login")
    new_password2 = _password("new_password1 again")

    @validates_schema
    def _passwords_match(self, data: dict[str, Any], **_kwargs: Any) -> None:
        if data.get("new_password1") != data.get("new_password2"):
            raise ValidationError("The new passwords do not match.", "new_password2")


class HistoryQuerySchema(ApiSchema):
    limit = fields.Integer(
        load_default=DEFAULT_PAGE_SIZE,
        validate=validate.Range(min=1, max=MAX_PAGE_SIZE),
        metadata={"description": f"entries per page, 1 to {MAX_PAGE_SIZE}"},
    )
    cursor = Text(
        validate=validate.Length(min=1, max=200),
        metadata={"description": "next_cursor of the previous page; omit for the first page"},
    )


# Responses -------------------------------------------------------------------------------


class TokenSchema(ApiSchema):
    """RFC 6749 §5.1 successful token response."""

    access_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = fields.Integer(required=True, metadata={"description": "seconds"})
    refresh_token = fields.String(required=True)
    scope = fields.String()


class RegisteredSchema(ApiSchema):
    id = fields.UUID(required=True)
    login = fields.String(required=True, metadata={"description": "the normalised email"})


class MeSchema(ApiSchema):
    id = fields.UUID(required=True)
    login = fields.String(required=True)
    roles = fields.List(fields.String(), required=True)
    has_password = fields.Boolean(required=True)
    created_at = fields.DateTime(required=True)


class HistoryEntrySchema(ApiSchema):
    id = fields.UUID(required=True)
    user_id = fields.UUID(required=True)
    logged_in_at = fields.DateTime(required=True)
    method = fields.String(required=True, metadata={"example": "password"})
    success = fields.Boolean(required=True, metadata={"description": "false: a failed attempt"})
    user_agent = fields.String(allow_none=True)
    ip = fields.String(allow_none=True)
    device = fields.String(allow_none=True, metadata={"example": "Chrome 120.0 on Windows 10 (PC)"})


class HistoryPageSchema(ApiSchema):
    items = fields.List(fields.Nested(HistoryEntrySchema), required=True)
    next_cursor = fields.String(
        allow_none=True,
        required=True,
        metadata={"description": "pass as ?cursor= for the next page; null on the last page"},
    )


class SessionSchema(ApiSchema):
    id = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    last_used_at = fields.DateTime(required=True)
    auth_method = fields.String(required=True)
    user_agent = fields.String(required=True)
    ip = fields.String(required=True)
    device = fields.String(required=True)
    current = fields.Boolean(required=True, metadata={"description": "the caller's session"})


# Documentation of errors ----------------------------------------------------------------

ERROR_DESCRIPTIONS = {
    400: "Malformed request (for example a body that is not valid JSON)",
    401: "Missing, invalid, expired or revoked credentials",
    403: "Authenticated, but not allowed",
    404: "Not found",
    409: "Conflicts with the current state",
    413: "Request body larger than the configured limit",
    422: "Validation failed; details name each offending field",
    429: "Too many requests; see Retry-After",
    502: "The identity provider failed or answered garbage",
    503: "A backing store is unavailable; try again shortly",
}


RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "schema": {"type": "integer", "minimum": 1},
    }
}


def error_response_name(status: int) -> str:
    """The response component that documents ``status`` (``register_error_responses``)."""
    return f"Error{status}"


def register_error_responses(spec: APISpec) -> None:
    """One response component per error status, with the one error body of /api/v1.

    Operations refer to them by name: flask-smorest deep-copies an operation's accumulated doc
    at each of its decorators, and when every status carried its own ``ErrorSchema`` that
    copying cost every process about 0.2 s and 3 MB at import.
    """
    for status, description in ERROR_DESCRIPTIONS.items():
        component: dict[str, Any] = {
            "description": description,
            "content": {"application/json": {"schema": ErrorSchema}},
        }
        if status == 429:
            component["headers"] = RETRY_AFTER
        spec.components.response(error_response_name(status), component)


def error_responses(blp: Blueprint, *statuses: int) -> Callable[[F], F]:
    """Document each error status of an operation with the one error body of /api/v1."""
    unknown = set(statuses) - set(ERROR_DESCRIPTIONS)
    if unknown:
        raise ValueError(f"no error response documented for {sorted(unknown)}")

    def decorator(fn: F) -> F:
        for status in statuses:
            fn = blp.alt_response(status, response=error_response_name(status))(fn)
        return fn

    return decorator
