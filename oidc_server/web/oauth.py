"""The OAuth endpoints: token, revocation, introspection, userinfo."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from .. import accounts
from ..context import db_session
from ..oauth.protector import current_claims, require_token
from ..oauth.server import authorization_server

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
@require_token("openid")
def userinfo() -> Response:
    """OIDC Core §5.3: claims about the signed-in user, for tokens with the openid scope."""
    claims = current_claims()
    if not claims.is_user_token:
        return _invalid_token("not a user's token")
    user = accounts.get_user(db_session(), claims["sub"])
    if user is None or not user.is_active:
        return _invalid_token("the user no longer exists")
    scopes = set(claims.get_scope().split())
    body: dict[str, object] = {"sub": str(user.id)}
    if "email" in scopes:
        body["email"] = user.login
        body["email_verified"] = False
    if "profile" in scopes:
        body["preferred_username"] = user.login
        body["roles"] = accounts.role_names(db_session(), user.id)
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


def _invalid_token(description: str) -> Response:
    response = jsonify(error="invalid_token", error_description=description)
    response.status_code = 401
    response.headers["WWW-Authenticate"] = (
        f'Bearer error="invalid_token", error_description="{description}"'
    )
    return response
