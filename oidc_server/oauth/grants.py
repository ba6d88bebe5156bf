"""The token endpoint's grants (RFC 6749 §4.3, §4.4, §6), filling Authlib's hooks.

Each grant lets Authlib parse and authenticate the request, then hands issuing to
``TokenService`` so that sessions, refresh rotation and reuse detection live in one place.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from authlib.oauth2.rfc6749 import grants
from authlib.oauth2.rfc6749.errors import (
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    UnauthorizedClientError,
)
from flask import request
from werkzeug.exceptions import TooManyRequests

from .. import accounts, observability
from ..context import client_ip, db_session, services, user_agent
from ..credentials import TooManyAttempts, sign_in_with_password
from ..history import record_then_start
from ..models import User
from ..passwords_policy import MAX_LENGTH as PASSWORD_MAX_LENGTH
from ..ratelimit import login_backoff
from ..roles import read_card
from ..tokens.service import (
    LoginContext,
    RefreshTokenInvalid,
    RefreshTokenReused,
    RefreshTokenScopeExceeded,
    SpentRefreshToken,
    TokenService,
)
from .clients_generation import read_with_clients_generation

log = logging.getLogger(__name__)

#: Where the production server's direct refresh (``oidc_server/direct/refresh.py``) leaves, in
#: the request's environ, the outcome of a spend it attempted and then left to the grant to
#: answer: the spent token, or the exception the spend raised. A refresh token is spent at
#: most once per request, so the grant answers that outcome rather than spend again.
SPEND_ATTEMPT = "oidc_server.refresh_spend_attempt"


def _check_scope(client: Any, scope: str | None) -> str:
    """The scope to grant: what was asked, if the client may have all of it (RFC 6749 §3.3)."""
    if not client.allows_scope(scope):
        raise InvalidScopeError("The requested scope is not allowed for this client.")
    return client.get_allowed_scope(scope)


def single_valued(request: Any, *names: str) -> None:
    """RFC 6749 §3.1: request parameters must not be included more than once. Authlib reads
    a parameter from the query as well as the body, so one in both is repeated too."""
    given = request.payload.datalist
    for name in names:
        if len(given.get(name, ())) > 1:
            raise InvalidRequestError(f"Parameter '{name}' is repeated.")


class LoginThrottled(TooManyRequests):
    """Too many failed logins for this account lately: the password was not even checked.

    Not an ``OAuth2Error`` on purpose: it leaves Authlib untouched, so /oauth/token and
    /api/v1/auth/login both answer it with the server's 429 body and ``Retry-After``.
    """

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            "too many failed sign-in attempts for this account; retry later",
            retry_after=retry_after,
        )


class PasswordGrant(grants.ResourceOwnerPasswordCredentialsGrant):
    """Resource owner password credentials, for first-party apps only (RFC 9700 §2.4)."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    LOGIN_METHOD = "password"

    def validate_token_request(self) -> None:
        single_valued(self.request, "username", "password", "scope")
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE) or not client.is_first_party:
            raise UnauthorizedClientError(
                f"The client is not authorized to use 'grant_type={self.GRANT_TYPE}'"
            )
        form = self.request.form
        username, password = form.get("username"), form.get("password")
        if not username or password is None:
            raise InvalidRequestError("Missing 'username' or 'password' in request.")
        if len(password) > PASSWORD_MAX_LENGTH:
            # Bounded before any hashing, as /api/v1/auth/login's schema bounds it.
            raise InvalidRequestError("'password' is too long.")
        self.request.client = client
        self.request.granted_scope = _check_scope(client, self.request.payload.scope)
        self.request.user = self.authenticate_user(username, password)

    def authenticate_user(self, username: str, password: str) -> User:
        try:
            user = sign_in_with_password(
                db_session(),
                services().hasher,
                login_backoff(),
                username,
                password,
                user_agent=user_agent(),
                ip=client_ip(),
            )
        except TooManyAttempts as throttled:
            observability.rate_limited()
            raise LoginThrottled(throttled.retry_after) from None
        if user is None:
            # One answer for an unknown login, a wrong password and a disabled account.
            observability.login_failed()
            raise InvalidGrantError("Invalid username or password.")
        return user

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        session = db_session()
        user: User = self.request.user
        login = LoginContext(
            user_id=str(user.id),
            client_id=self.request.client.client_id,
            scope=self.request.granted_scope,
            roles=accounts.role_names(session, user.id),
            auth_method=self.LOGIN_METHOD,
            user_agent=user_agent(),
            ip=client_ip(),
        )
        # History first, then the session (see record_then_start); the commit also keeps a
        # password rehash done while authenticating.
        token, _ = record_then_start(
            session,
            lambda sid: services().tokens.start_session(login, sid=sid),
            user_id=user.id,
            method=self.LOGIN_METHOD,
            user_agent=login.user_agent,
            ip=login.ip,
        )
        observability.tokens_issued(self.GRANT_TYPE)
        return 200, token, self.TOKEN_RESPONSE_HEADER


class RefreshTokenGrant(grants.RefreshTokenGrant):
    """Refresh with rotation: every use spends the token and returns a new one (RFC 9700 §4.14)."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def validate_token_request(self) -> None:
        single_valued(self.request, "refresh_token", "scope")
        self._read_named_user()
        self.request.client = self._validate_request_client()
        if self.request.form.get("refresh_token") is None:
            raise InvalidRequestError("Missing 'refresh_token' in request.")

    def _read_named_user(self) -> None:
        """The user the token names and their cached card, the card read with the generation
        the client check needs: one round trip (used only once the client checks out)."""
        presented = self.request.form.get("refresh_token")
        user_id = (
            services().tokens.refresh_token_user(presented) if isinstance(presented, str) else None
        )
        try:
            key = uuid.UUID(user_id) if user_id else None
        except ValueError:
            key = None
        reads = [] if key is None else [services().role_cache.card_reads(key)]
        answers = read_with_clients_generation(*reads)
        self.request.named_user = (user_id, answers[0] if answers else None)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        tokens = services().tokens
        presented = self.request.form["refresh_token"]
        user_id, looked_up = self.request.named_user
        # The user's roles (and that the account is still enabled) are read before the token
        # is spent: a database that is down or slow must not cost the client its token.
        card = (
            None
            if user_id is None
            else read_card(db_session(), services().role_cache, user_id, looked_up=looked_up)
        )
        if card is None:
            raise InvalidGrantError("The refresh token is not valid.")
        # Authlib would read the token and check its client and scope before having it spent:
        # the store does all of that in one atomic step (TokenStore.rotate_refresh_token).
        try:
            spent = self._spend(tokens, presented, user_id)
        except RefreshTokenScopeExceeded:
            raise InvalidScopeError() from None
        except RefreshTokenReused as reused:
            observability.refresh_reuse_detected()
            log.warning(
                "refresh token reuse detected; session ended",
                extra={"sid": reused.record.sid, "user_id": reused.record.user_id},
            )
            raise InvalidGrantError("The refresh token is not valid.") from None
        except RefreshTokenInvalid:
            raise InvalidGrantError("The refresh token is not valid.") from None
        token = tokens.issue_after_refresh(spent, list(card.roles))
        observability.tokens_issued(self.GRANT_TYPE)
        return 200, token, self.TOKEN_RESPONSE_HEADER

    def _spend(self, tokens: TokenService, presented: str, user_id: str) -> SpentRefreshToken:
        """Spend the presented token, or take the outcome of the spend already attempted for
        this request (``SPEND_ATTEMPT``)."""
        attempted = request.environ.pop(SPEND_ATTEMPT, None)
        if isinstance(attempted, SpentRefreshToken):
            return attempted
        if isinstance(attempted, Exception):
            raise attempted
        return tokens.spend_refresh_token(
            presented, self.request.client.get_client_id(), user_id, self.request.payload.scope
        )


class ClientCredentialsGrant(grants.ClientCredentialsGrant):
    """Machine clients: a token for the client itself, no refresh token (RFC 6749 §4.4)."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def validate_token_request(self) -> None:
        single_valued(self.request, "scope")
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError(
                f"The client is not authorized to use 'grant_type={self.GRANT_TYPE}'"
            )
        self.request.client = client
        self.request.granted_scope = _check_scope(client, self.request.payload.scope)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        client = self.request.client
        token = services().tokens.issue_client_token(client.client_id, self.request.granted_scope)
        observability.tokens_issued(self.GRANT_TYPE)
        return 200, token, self.TOKEN_RESPONSE_HEADER
