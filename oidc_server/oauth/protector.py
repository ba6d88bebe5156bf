"""Bearer protection of our own routes (RFC 6750) with our JWT access tokens.

``authenticate_bearer`` is the one place a request's bearer token is checked; it raises
``BearerChallenge`` with the status and ``WWW-Authenticate`` value RFC 6750 §3 asks for,
and each surface (/oauth/userinfo, /api/v1) renders that in its own error body.
"""

from __future__ import annotations

import time
import uuid
from contextvars import ContextVar
from typing import Any

from authlib.integrations.flask_oauth2 import ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import MissingAuthorizationError
from authlib.oauth2.rfc6749.errors import UnsupportedTokenTypeError
from authlib.oauth2.rfc6750 import BearerTokenValidator, InvalidTokenError

from ..context import services
from ..roles import AccountCard, Miss
from ..services import Services
from ..tokens.reads import Reads, read_together


class AccessToken(dict):
    """Verified claims, with the few methods Authlib's validator calls.

    ``card`` is the role cache's answer for a user's token (its user's ``AccountCard``, or a
    ``Miss``), read in the same round trip as the revocation check; pass it to ``read_card``.
    ``also`` is the answer of the read the caller of ``authenticate_bearer`` sent with it.
    """

    def __init__(
        self, claims: dict[str, Any], card: AccountCard | Miss | None = None, also: Any = None
    ) -> None:
        super().__init__(claims)
        self.card = card
        self.also = also

    def get_scope(self) -> str:
        return self.get("scope", "")

    def is_expired(self) -> bool:
        return self["exp"] <= time.time()

    def is_revoked(self) -> bool:
        return False  # checked against the store before this object is made

    @property
    def is_user_token(self) -> bool:
        return "sid" in self


#: The read ``authenticate_bearer`` was asked to send with the token check (Authlib's
#: validator calls ``authenticate_token`` with the token string alone).
_also: ContextVar[Reads[Any] | None] = ContextVar("bearer_also", default=None)


def verify_bearer_token(token_string: str, also: Reads[Any] | None = None) -> AccessToken | None:
    """The access token if it is valid and not revoked; else None.

    A user's token also brings its user's card from the role cache: most requests made with
    one need it (``/users/me``, userinfo, introspection), and asked together with the
    revocation check it costs no round trip of its own. ``also`` goes in the same round trip;
    its answer is the token's ``also``.
    """
    svc = services()
    claims = svc.tokens.decode_access_token(token_string)
    if claims is None:
        return None
    check = BearerCheck(claims, also)
    return check.token(read_together(svc.redis, *check.reads))


class BearerCheck:
    """What checking a well-signed token asks of Redis, and the token made of the answers.

    Separate from ``verify_bearer_token`` for callers that send these reads with their own
    (introspection sends them with the clients' generation). ``svc``: the app's services, for
    a caller outside a request (``oidc_server/direct``).
    """

    def __init__(
        self, claims: dict[str, Any], also: Reads[Any] | None = None, svc: Services | None = None
    ) -> None:
        svc = svc or services()
        self.claims = claims
        self.user_id = _user_id(claims) if "sid" in claims else None
        self.has_also = also is not None
        self.reads: list[Reads[Any]] = [
            svc.store.access_token_reads(claims["jti"], claims.get("sid"))
        ]
        if self.user_id is not None:
            self.reads.append(svc.role_cache.card_reads(self.user_id))
        if also is not None:
            self.reads.append(also)

    def token(self, answers: list[Any]) -> AccessToken | None:
        """The token, given the answers of ``reads`` in order; None if it was revoked."""
        if not answers[0]:
            return None
        card = answers[1] if self.user_id is not None else None
        return AccessToken(self.claims, card, answers[-1] if self.has_also else None)


def _user_id(claims: dict[str, Any]) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(claims["sub"]))
    except (KeyError, ValueError):
        return None


class JWTAccessTokenValidator(BearerTokenValidator):
    def authenticate_token(self, token_string: str) -> AccessToken | None:
        return verify_bearer_token(token_string, _also.get())


class BearerProtector(ResourceProtector):
    """RFC 6750 §3.1: a malformed Authorization header is an invalid token, not another type."""

    def parse_request_authorization(self, request: Any) -> tuple[Any, str]:
        try:
            return super().parse_request_authorization(request)
        except UnsupportedTokenTypeError:
            raise InvalidTokenError() from None


require_token = BearerProtector()
require_token.register_token_validator(JWTAccessTokenValidator())


class BearerChallenge(Exception):
    """A failed bearer check: 401 (no or bad token) or 403 (token lacks what is needed)."""

    def __init__(
        self, status: int, error: str | None, description: str, scope: str | None = None
    ) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description
        self.scope = scope

    @property
    def www_authenticate(self) -> str:
        # §3.1: a request without any token gets no error code in the challenge.
        parts = ['Bearer realm="oidc-server"']
        if self.error:
            parts.append(f'error="{self.error}"')
        if self.scope:
            parts.append(f'scope="{self.scope}"')
        return ", ".join(parts)


def authenticate_bearer(
    scope: str | None = None, kind: str | None = None, also: Reads[Any] | None = None
) -> AccessToken:
    """The request's valid access token, of ``kind`` ("user" or "client") and with ``scope``.

    ``also``: a read the request needs next (a role lookup), sent in the token check's round
    trip; its answer is the token's ``also``.
    """
    reset = _also.set(also)
    try:
        token: AccessToken = require_token.acquire_token(None)
    except MissingAuthorizationError:
        raise BearerChallenge(401, None, "a bearer token is required") from None
    except OAuth2Error:
        raise BearerChallenge(
            401, "invalid_token", "the access token is invalid, expired or revoked"
        ) from None
    finally:
        _also.reset(reset)
    if kind == "user" and not token.is_user_token:
        raise BearerChallenge(403, "insufficient_scope", "this needs a user's token")
    if kind == "client" and token.is_user_token:
        raise BearerChallenge(403, "insufficient_scope", "this is for machine clients")
    if scope and scope not in token.get_scope().split():
        raise BearerChallenge(
            403, "insufficient_scope", f"the token lacks the scope: {scope}", scope
        )
    return token
