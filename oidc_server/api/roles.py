"""/api/v1 roles: the private roles API of machine clients (``client_credentials`` tokens).

``roles:read`` lists roles and answers ``HEAD`` checks; ``roles:write`` changes roles and
assignments. Each change is audited with the client id as the actor (``oidc_server.roles``).
"""

from __future__ import annotations

import uuid
from typing import Any, NoReturn

from flask import current_app
from flask.views import MethodView
from marshmallow import fields, validate

from .. import roles as domain
from ..context import db_session, services
from ..ratelimit import limiter
from .common import (
    BEARER,
    ApiSchema,
    ErrorSchema,
    abort,
    acquire_token,
    client_token_required,
    current_token,
)
from .schemas import Text, UtcDateTime, api_blueprint

blp = api_blueprint("roles", __name__, "Roles and their assignment to users, for machine clients.")

READ = "roles:read"
WRITE = "roles:write"


class RoleSchema(ApiSchema):
    """A role."""

    id = fields.UUID(dump_only=True)
    name = Text(
        required=True,
        validate=validate.Length(min=2, max=64),
        metadata={
            "description": f"{domain.NAME_RULE}; unique regardless of case",
            "pattern": "^[A-Za-z][A-Za-z0-9_-]{1,63}$",
            "example": "editor",
        },
    )
    description = Text(
        allow_none=True,
        load_default=None,
        validate=validate.Length(max=domain.MAX_DESCRIPTION),
        metadata={"example": "Edits the catalogue"},
    )
    created_at = UtcDateTime(dump_only=True)


class RoleUpdateSchema(ApiSchema):
    """The fields of a role to change; those left out stay as they are."""

    name = Text(
        validate=validate.Length(min=2, max=64),
        metadata={"description": domain.NAME_RULE, "example": "editor"},
    )
    description = Text(
        allow_none=True,
        validate=validate.Length(max=domain.MAX_DESCRIPTION),
        metadata={"description": "null clears it"},
    )


class AssignmentSchema(ApiSchema):
    """A user's holding of a role."""

    user_id = fields.UUID(required=True)
    role_id = fields.UUID(required=True)
    role = fields.String(required=True, metadata={"description": "the role's name"})
    assigned_at = UtcDateTime(required=True)


_STATUS = {
    domain.InvalidRole: 422,
    domain.RoleNotFound: 404,
    domain.UserNotFound: 404,
    domain.RoleNameTaken: 409,
}


def _fail(exc: domain.RoleError) -> NoReturn:
    status = _STATUS.get(type(exc), 400)
    if status == 422:
        # The same shape as a schema validation error: per-field messages in details.
        abort(
            422,
            "unprocessable_entity",
            "the request is not valid; see details",
            details={exc.field or "_schema": [exc.message]},
        )
    abort(status, exc.code, exc.message)


def _admin() -> domain.RoleAdmin:
    """Changes made by the calling machine client, audited under its client id."""
    return domain.RoleAdmin(db_session(), services().role_cache, actor=current_token()["client_id"])


def _errors(*statuses: int) -> Any:
    """Document the error responses of an operation, all in ``ErrorSchema``."""
    meaning = {
        400: "the request body is not JSON",
        401: "no bearer token, or an invalid, expired or revoked one",
        403: "a user's token, or a client token without the scope",
        404: "no such user or role",
        409: "a role with this name exists",
        413: "the request body is too large",
        422: "the request body is not valid",
        429: "too many requests from this address (RATELIMIT_DEFAULT); see Retry-After",
        503: "the token store (Redis) or the database is unreachable; see Retry-After",
    }

    def decorator(fn: Any) -> Any:
        for status in statuses:
            fn = blp.alt_response(status, schema=ErrorSchema, description=meaning[status])(fn)
        return fn

    return decorator


@blp.route("/roles/", strict_slashes=False)
class Roles(MethodView):
    @blp.doc(security=BEARER)
    @blp.response(200, RoleSchema(many=True))
    @_errors(401, 403, 429, 503)
    @client_token_required(READ)
    def get(self) -> Any:
        """List every role, by name (scope ``roles:read``)."""
        return domain.list_roles(db_session())

    @blp.doc(security=BEARER)
    @client_token_required(WRITE)
    @blp.arguments(RoleSchema)
    @blp.response(201, RoleSchema)
    @_errors(400, 401, 403, 409, 413, 422, 429, 503)
    def post(self, body: dict[str, Any]) -> Any:
        """Create a role (scope ``roles:write``); its name is stored lowercase."""
        try:
            return _admin().create(body["name"], body.get("description"))
        except domain.RoleError as exc:
            _fail(exc)


@blp.route("/roles/<uuid:role_id>")
class RoleById(MethodView):
    @blp.doc(security=BEARER)
    @client_token_required(WRITE)
    @blp.arguments(RoleUpdateSchema)
    @blp.response(200, RoleSchema)
    @_errors(400, 401, 403, 404, 409, 413, 422, 429, 503)
    def patch(self, body: dict[str, Any], role_id: uuid.UUID) -> Any:
        """Rename a role or change its description (scope ``roles:write``)."""
        try:
            return _admin().update(
                role_id,
                name=body.get("name", domain.UNSET),
                description=body.get("description", domain.UNSET),
            )
        except domain.RoleError as exc:
            _fail(exc)

    @blp.doc(security=BEARER)
    @client_token_required(WRITE)
    @blp.response(204)
    @_errors(401, 403, 404, 429, 503)
    def delete(self, role_id: uuid.UUID) -> None:
        """Delete a role; every user holding it loses it (scope ``roles:write``)."""
        try:
            _admin().delete(role_id)
        except domain.RoleError as exc:
            _fail(exc)


@blp.route("/users/<uuid:user_id>/roles/<uuid:role_id>")
class UserRoleAssignment(MethodView):
    @blp.doc(security=BEARER)
    @client_token_required(WRITE)
    @blp.response(201, AssignmentSchema, description="the role was assigned")
    @blp.alt_response(200, schema=AssignmentSchema, description="the user already had the role")
    @_errors(401, 403, 404, 429, 503)
    def post(self, user_id: uuid.UUID, role_id: uuid.UUID) -> Any:
        """Give a user a role (scope ``roles:write``); assigning it again changes nothing."""
        try:
            assignment, created = _admin().assign(user_id, role_id)
        except domain.RoleError as exc:
            _fail(exc)
        return assignment, 201 if created else 200

    @blp.doc(security=BEARER)
    @client_token_required(WRITE)
    @blp.response(204, description="the user does not have the role (any more)")
    @_errors(401, 403, 404, 429, 503)
    def delete(self, user_id: uuid.UUID, role_id: uuid.UUID) -> None:
        """Take a role from a user (scope ``roles:write``); 204 also if it was not assigned."""
        try:
            _admin().revoke(user_id, role_id)
        except domain.RoleError as exc:
            _fail(exc)


@blp.route(
    "/users/<uuid:user_id>/roles/<uuid:role_id>/",
    methods=["HEAD"],
    strict_slashes=False,
    endpoint="check_user_role",
)
@blp.doc(security=BEARER)
@limiter.exempt
@blp.response(200, description="the user has the role")
@_errors(401, 403, 503)
@blp.alt_response(
    404,
    schema=ErrorSchema,
    description="the user does not have the role, or no such user or role (no body: HEAD)",
)
def check_user_role(user_id: uuid.UUID, role_id: uuid.UUID) -> Any:
    """Does the user have the role? 200 or 404, no body (scope ``roles:read``).

    The trailing slash is optional. Answers from a cache shared by every worker and
    invalidated by every change, so a change shows in the next check. Not subject to the
    per-address rate limit: its callers are authenticated services, often many requests
    behind one address.
    """
    checker = services().role_checker
    # The token check and the cached role lookup go to Redis in one round trip: this is the
    # request other services make most. (So no client_token_required decorator here.)
    token = acquire_token(READ, kind="client", also=checker.cache.lookup_reads(user_id, role_id))
    held = checker.has_role(user_id, role_id, looked_up=token.also)
    # No body and Content-Length: 0 (there is no GET to mirror), so that clients which read a
    # response by its length, HEAD or not, never wait for bytes that are not coming.
    response = current_app.response_class(status=200 if held else 404)
    if held:
        del response.headers["Content-Type"]
    else:
        # The 404 is documented as the JSON error (as 401 and 403 are): a HEAD answer carries
        # the media type of what it omits (RFC 9110 §9.3.2).
        response.headers["Content-Type"] = "application/json"
    return response
