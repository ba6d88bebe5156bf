"""The OAuth endpoints: token, revocation, introspection, userinfo."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from ..context import db_session, services
from ..oauth.id_tokens import user_claims
from ..oauth.protector import BearerChallenge, authenticate_bearer
from ..oauth.server import authorization_server
from ..roles import read_card

bp = Blueprint("oauth", __name__, url_prefix="/oauth")


@bp.post("/token")
def token() -> Response:
    return authorization_server().create_token_response()


@bp.post("/revoke")
def revoke() -> Response:
    return authorization_server().create_endpoint_response("revocation")


@bp.post("/introspect")
def introspect() -> Response:
    return authorization_server().create_endpoint_response("introspection")


@bp.route("/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    """OIDC Core §5.3: claims about the signed-in user, for tokens with the openid scope."""
    try:
        claims = authenticate_bearer("openid")
    except BearerChallenge as challenge:
        return _challenge(challenge)
    if not claims.is_user_token:
        return _challenge(BearerChallenge(401, "invalid_token", "not a user's token"))
    card = read_card(db_session(), services().role_cache, claims["sub"], looked_up=claims.card)
    if card is None:
        return _challenge(BearerChallenge(401, "invalid_token", "the user no longer exists"))
    response = jsonify(
        user_claims(card.user_id, card.login, claims.get_scope().split(), card.roles)
    )
    response.headers["Cache-Control"] = "no-store"
    return response


def _challenge(challenge: BearerChallenge) -> Response:
    """RFC 6750 §3: the challenge header, and the error as JSON for humans."""
    body = {"error": challenge.error or "unauthorized", "error_description": challenge.description}
    response = jsonify(body)
    response.status_code = challenge.status
    response.headers["WWW-Authenticate"] = challenge.www_authenticate
    return response
