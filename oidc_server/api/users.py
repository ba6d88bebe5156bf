"""/api/v1/users/me: the signed-in user's account, password, login history and sessions."""

from __future__ import annotations

import uuid
from typing import Any

from .. import accounts, credentials, history_pages
from .. import sessions as session_control
from ..context import db_session, read_from_replica, services
from ..history_pages import as_utc
from ..models import User
from ..passwords_policy import PasswordRejected
from ..ratelimit import change_password_per_ip, login_backoff
from ..roles import AccountCard, read_card
from .common import BEARER, abort, current_token, user_token_required
from .schemas import (
    ChangePasswordSchema,
    HistoryPageSchema,
    HistoryQuerySchema,
    MeSchema,
    SessionSchema,
    api_blueprint,
    error_responses,
)

blp = api_blueprint(
    "users",
    __name__,
    "The signed-in user's own account: profile, password, history and devices.",
)


def _caller_card() -> AccountCard:
    """The active user the bearer token was issued to, with their current role names."""
    token = current_token()
    card = read_card(db_session(), services().role_cache, token["sub"], looked_up=token.card)
    if card is None:
        abort(
            401,
            "invalid_token",
            "the access token's user no longer exists",
            headers={"WWW-Authenticate": 'Bearer realm="oidc-server", error="invalid_token"'},
        )
    return card


def _caller() -> User:
    """The active user the bearer token was issued to."""
    user = accounts.get_user(db_session(), current_token()["sub"])
    if user is None or not user.is_active:
        abort(
            401,
            "invalid_token",
            "the access token's user no longer exists",
            headers={"WWW-Authenticate": 'Bearer realm="oidc-server", error="invalid_token"'},
        )
    return user


@blp.route("/users/me", methods=["GET"])
@user_token_required
@blp.doc(security=BEARER)
@blp.response(200, MeSchema, description="The caller's account; roles as they are now")
@error_responses(blp, 401, 403, 413, 429, 503)
def me() -> dict[str, Any]:
    """The signed-in user's account."""
    card = _caller_card()
    return {
        "id": card.user_id,
        "login": card.login,
        "roles": list(card.roles),
        "has_password": card.has_password,
        "created_at": as_utc(card.created_at),
    }


@blp.route("/users/me/change-password", methods=["POST"])
@change_password_per_ip
@user_token_required
@blp.doc(security=BEARER)
@blp.arguments(ChangePasswordSchema, description="The current password and the new one twice")
@blp.response(204, description="Changed; every other session of the user has ended")
@error_responses(blp, 400, 401, 403, 413, 422, 429, 503)
def change_password(args: dict[str, str]) -> None:
    """Change the password (403 ``wrong_password`` if the current one is wrong)."""
    user = _caller()
    svc = services()
    try:
        credentials.change_password(
            db_session(),
            svc.hasher,
            svc.store,
            user,
            args["old_password"],
            args["new_password1"],
            keep_sid=current_token()["sid"],
            backoff=login_backoff(),
        )
    except credentials.TooManyAttempts as exc:
        abort(429, "too_many_requests", exc.message, headers={"Retry-After": str(exc.retry_after)})
    except PasswordRejected as exc:
        abort(422, exc.code, exc.message, details={"new_password1": [exc.message]})
    except accounts.AccountError as exc:  # wrong_password, no_password
        abort(403, exc.code, exc.message)


@blp.route("/users/me/login-history", methods=["GET"])
@user_token_required
@blp.doc(security=BEARER)
@blp.arguments(HistoryQuerySchema, location="query", as_kwargs=True)
@blp.response(200, HistoryPageSchema, description="Sign-in attempts, newest first")
@error_responses(blp, 401, 403, 413, 422, 429, 503)
def login_history(limit: int, cursor: str | None = None) -> history_pages.HistoryPage:
    """The caller's sign-in attempts, newest first, a page at a time (keyset pagination)."""
    user_id = uuid.UUID(current_token()["sub"])
    try:
        # Append-only rows, read by no cache: a replica a second behind serves them well.
        return read_from_replica(
            lambda session: history_pages.history_page(session, user_id, limit, cursor)
        )
    except history_pages.InvalidCursor as exc:
        abort(422, "invalid_cursor", str(exc), details={"cursor": [str(exc)]})


@blp.route("/users/me/sessions", methods=["GET"])
@user_token_required
@blp.doc(security=BEARER)
@blp.response(200, SessionSchema(many=True), description="Live sessions, newest first")
@error_responses(blp, 401, 403, 413, 429, 503)
def list_sessions() -> list[session_control.SessionView]:
    """The devices the caller is signed in on; ``current`` marks this one."""
    token = current_token()
    return session_control.list_sessions(services().store, token["sub"], token["sid"])


@blp.route("/users/me/sessions/<string(maxlength=64):session_id>", methods=["DELETE"])
@user_token_required
@blp.doc(security=BEARER)
@blp.response(204, description="The session has ended; its tokens no longer work")
@error_responses(blp, 401, 403, 404, 413, 429, 503)
def end_session(session_id: str) -> None:
    """Sign one device out (404 unless it is a live session of the caller)."""
    if not session_control.end_session(services().store, current_token()["sub"], session_id):
        abort(404, "not_found", "no such session")
