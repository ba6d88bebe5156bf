"""/api/v1/users/me/consents: the third-party apps a user has allowed, and taking that back."""

from __future__ import annotations

import uuid
from typing import Any

from marshmallow import fields

from .. import consent
from ..context import db_session
from .common import BEARER, ApiSchema, abort, current_token, user_token_required
from .schemas import UtcDateTime, api_blueprint, error_responses

blp = api_blueprint(
    "consents",
    __name__,
    "Third-party apps the signed-in user allowed; revoking one shows its consent page again.",
)


class ConsentSchema(ApiSchema):
    client_id = fields.String(required=True)
    scopes = fields.List(fields.String(), required=True)
    granted_at = UtcDateTime(required=True)


@blp.route("/users/me/consents/", methods=["GET"])
@user_token_required
@blp.doc(security=BEARER)
@blp.response(200, ConsentSchema(many=True), description="Allowed clients, by client id")
@error_responses(blp, 401, 403, 413, 429, 503)
def list_consents() -> list[dict[str, Any]]:
    """The clients the caller has allowed, with the scopes each was given."""
    rows = consent.list_consents(db_session(), _user_id())
    return [
        {"client_id": r.client_id, "scopes": r.scopes, "granted_at": r.granted_at} for r in rows
    ]


@blp.route("/users/me/consents/<string:client_id>", methods=["DELETE"])
@user_token_required
@blp.doc(security=BEARER)
@blp.response(204, description="Revoked: the client must ask for consent again")
@error_responses(blp, 401, 403, 404, 413, 429, 503)
def revoke_consent(client_id: str) -> None:
    """Take back the caller's consent to one client (404 when there was none)."""
    session = db_session()
    if not consent.revoke_consent(session, _user_id(), client_id[:64]):
        abort(404, "not_found", "no consent to this client")
    session.commit()


def _user_id() -> uuid.UUID:
    return uuid.UUID(current_token()["sub"])
