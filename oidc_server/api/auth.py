"""/api/v1/auth: register, and thin wrappers over the token endpoint's grants.

Login is the ``password`` grant and refresh the ``refresh_token`` grant of
``/oauth/token``, run in-process on behalf of the first-party public client: checks, login
history, the failed-login backoff and session handling are the grants' own.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import credentials
from .. import sessions as session_control
from ..accounts import AccountError
from ..context import db_session, services
from ..oauth.internal import run_token_request
from ..passwords_policy import PasswordRejected
from ..ratelimit import (
    login_per_account,
    login_per_ip,
    refresh_per_ip,
    register_conflicts_per_ip,
    register_per_ip,
)
from .common import BEARER, abort, current_token, user_token_required
from .schemas import (
    LoginSchema,
    RefreshSchema,
    RegisteredSchema,
    RegisterSchema,
    TokenSchema,
    api_blueprint,
    error_responses,
)

log = logging.getLogger(__name__)

blp = api_blueprint(
    "auth",
    __name__,
    "Registration, sign-in, token refresh and sign-out of the cinema's own apps.",
)

#: RFC 6749 §5.1: token responses must not be cached.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _grant(form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """Run a token request as the first-party client."""
    return run_token_request({**form, "client_id": services().settings.first_party_client_id})


def _token_response(status: int, body: dict[str, Any], failure: tuple[str, str]) -> Any:
    """Pass a token response on, or turn the grant's RFC 6749 error into our error shape."""
    if status == 200:
        return body, 200, NO_STORE
    if body.get("error") == "invalid_grant":
        abort(
            401,
            *failure,
            headers={"WWW-Authenticate": 'Bearer realm="oidc-server"', **NO_STORE},
        )
    # Anything else means the first-party client is missing or misconfigured: our fault.
    log.error("first-party token request failed", extra={"error": body.get("error")})
    abort(503, "temporarily_unavailable", "sign-in is not available right now")


@blp.route("/auth/register", methods=["POST"])
@register_per_ip
@register_conflicts_per_ip
@blp.arguments(RegisterSchema, description="An email address as login, and a password")
@blp.response(201, RegisteredSchema, description="The account was created")
@error_responses(blp, 400, 409, 413, 422, 429, 503)
def register(args: dict[str, str]) -> Any:
    """Create an account with a password."""
    session = db_session()
    try:
        user = credentials.register(session, services().hasher, args["login"], args["password"])
    except PasswordRejected as exc:
        abort(422, exc.code, exc.message, details={"password": [exc.message]})
    except AccountError as exc:
        if exc.code == "login_taken":
            abort(409, exc.code, exc.message)
        abort(422, exc.code, exc.message, details={"login": [exc.message]})
    session.commit()
    return {"id": user.id, "login": user.login}


@blp.route("/auth/login", methods=["POST"])
@login_per_ip
@login_per_account
@blp.arguments(LoginSchema, description="The login (email) and password")
@blp.response(200, TokenSchema, description="RFC 6749 §5.1 token response")
@error_responses(blp, 400, 401, 413, 422, 429, 503)
def login(args: dict[str, str]) -> Any:
    """Sign in: the ``password`` grant; the same 401 for an unknown login and a wrong password."""
    status, body = _grant(
        {"grant_type": "password", "username": args["login"], "password": args["password"]}
    )
    return _token_response(status, body, ("invalid_credentials", "invalid login or password"))


@blp.route("/auth/refresh", methods=["POST"])
@refresh_per_ip
@blp.arguments(RefreshSchema, description="A refresh token; each one works once")
@blp.response(200, TokenSchema, description="New tokens; the presented refresh token is spent")
@error_responses(blp, 400, 401, 413, 422, 429, 503)
def refresh(args: dict[str, str]) -> Any:
    """Exchange a refresh token for new tokens (401 when spent, revoked or expired)."""
    status, body = _grant({"grant_type": "refresh_token", "refresh_token": args["refresh_token"]})
    return _token_response(
        status, body, ("invalid_grant", "the refresh token is invalid, expired or revoked")
    )


@blp.route("/auth/logout", methods=["POST"])
@user_token_required
@blp.doc(security=BEARER)
@blp.response(204, description="Signed out: this session's tokens no longer work")
@error_responses(blp, 401, 403, 413, 429, 503)
def logout() -> None:
    """End the caller's session: its access and refresh tokens stop working at once."""
    token = current_token()
    session_control.end_session(services().store, token["sub"], token["sid"])
    # The session check already rejects this token everywhere; denying its jti as well keeps
    # it dead for verifiers that only consult the denylist.
    services().tokens.revoke_access_token(token)


@blp.route("/auth/logout-all", methods=["POST"])
@user_token_required
@blp.doc(security=BEARER)
@blp.response(204, description="Every session of the caller has ended")
@error_responses(blp, 401, 403, 413, 429, 503)
def logout_all() -> None:
    """Sign out of all devices: every session of the caller ends, this one included."""
    token = current_token()
    session_control.end_all_sessions(services().store, token["sub"])
    services().tokens.revoke_access_token(token)
