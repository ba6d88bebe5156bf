"""DELETE /api/v1/users/me: the signed-in user erases their account (GDPR art. 17).

The erasure itself, and why it is ordered as it is, is ``oidc_server.lifecycle``'s.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, NoReturn

from marshmallow import validate

from .. import accounts, lifecycle
from ..context import db_session, services
from ..credentials import TooManyAttempts
from ..passwords_policy import MAX_LENGTH as PASSWORD_MAX_LENGTH
from ..ratelimit import change_password_per_ip, login_backoff
from ..tokens.store import StoreUnavailable
from .common import BEARER, ApiSchema, abort, current_token, user_token_required
from .schemas import Text, api_blueprint, error_responses

blp = api_blueprint("account_erase", __name__, "Erasing one's own account and all its data.")

_INVALID_TOKEN = {"WWW-Authenticate": 'Bearer realm="oidc-server", error="invalid_token"'}


class EraseAccountSchema(ApiSchema):
    """The proof that the caller is the account's owner."""

    password = Text(
        validate=validate.Length(min=1, max=PASSWORD_MAX_LENGTH),
        metadata={
            "format": "password",
            "description": "required if the account has a password (has_password in /users/me)",
        },
    )


def _user_gone() -> NoReturn:
    abort(401, "invalid_token", "the access token's user no longer exists", headers=_INVALID_TOKEN)


# Bounded like password changes (RATELIMIT_CHANGE_PASSWORD per IP, its own bucket): both take
# the password, and wrong ones count into the account's login backoff too.
@blp.route("/users/me", methods=["DELETE"])
@change_password_per_ip
@user_token_required
@blp.doc(security=BEARER)
@blp.arguments(
    EraseAccountSchema,
    required=False,
    description="The password, for accounts that have one; accounts that sign in only "
    "through Google or Yandex send none but must have signed in within the last 10 minutes",
)
@blp.response(
    204,
    description="Erased: every session has ended, and the account, its roles, linked "
    "accounts and login history are gone",
)
@error_responses(blp, 400, 401, 403, 413, 422, 429, 503)
def erase_me(args: dict[str, Any]) -> None:
    """Erase the caller's account (403 ``wrong_password`` or ``reauthentication_required``)."""
    token = current_token()
    svc = services()
    session = db_session()
    user = accounts.get_user(session, token["sub"])
    if user is None or not user.is_active:
        _user_gone()
    try:
        lifecycle.authorise_erasure(
            svc.hasher,
            user,
            args.get("password"),
            auth_time=token.get("auth_time"),
            now=int(time.time()),
            backoff=login_backoff(),
        )
    except TooManyAttempts as exc:
        abort(429, "too_many_requests", exc.message, headers={"Retry-After": str(exc.retry_after)})
    except accounts.AccountError as exc:
        if exc.code == "password_required":
            abort(422, exc.code, exc.message, details={"password": [exc.message]})
        abort(403, exc.code, exc.message)  # wrong_password, reauthentication_required
    try:
        lifecycle.erase_user(
            session,
            svc.store,
            svc.role_cache,
            user.id,
            actor=token["client_id"],
            initiated_by="user",
            secret_key=svc.settings.secret_key,
        )
    except lifecycle.UserNotFound:
        _user_gone()
    # Its session has ended, which already kills this token everywhere we check; denying the
    # jti too keeps it dead for verifiers that consult only the denylist.
    with contextlib.suppress(StoreUnavailable):
        svc.tokens.revoke_access_token(token)
