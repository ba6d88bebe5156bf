"""Issuing, refreshing, revoking and introspecting tokens, independent of HTTP.

Refresh tokens are ``<sid>.<256 random bits>.<user id>``: opaque to clients, stored only as a
SHA-256 digest, and carrying their session id so the store finds the session (and its Redis
hash slot) without a lookup, and their user so that a refresh can read the user's roles
before it spends the token without first reading the token (the store checks the claim).
Tokens issued before the user id was added (``<sid>.<random>``) are still accepted.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..security import hash_token
from .access_tokens import AccessTokenCodec
from .reads import Reads
from .store import (
    RefreshRecord,
    RotateOutcome,
    RotateResult,
    Rotation,
    SessionRecord,
    TokenStore,
)

R = TypeVar("R")


class RefreshTokenInvalid(Exception):
    """Unknown, expired, spent or of an ended session."""


class RefreshTokenScopeExceeded(Exception):
    """A refresh asked for scope the token was not granted (RFC 6749 §6); nothing was spent."""


class RefreshTokenReused(RefreshTokenInvalid):
    """A spent token came back: its session has been ended (RFC 9700 §4.14.2)."""

    def __init__(self, record: RefreshRecord) -> None:
        super().__init__("refresh token reused")
        self.record = record


@dataclass(frozen=True)
class SpentRefreshToken:
    """A refresh token just spent, and what its successor's token response is made of."""

    record: RefreshRecord
    session: SessionRecord | None
    successor: str
    #: What the new access token carries: the scope asked for, or the token's whole grant.
    scope: str


@dataclass(frozen=True)
class LoginContext:
    """Who is signing in, how, and from where."""

    user_id: str
    client_id: str
    scope: str
    roles: list[str]
    auth_method: str
    user_agent: str = ""
    ip: str = ""


def new_session_id() -> str:
    """A fresh session id (the ``sid`` of a login's tokens)."""
    return secrets.token_urlsafe(16)


def new_refresh_token(sid: str, user_id: str) -> str:
    """A fresh refresh token of session ``sid`` (see the module docstring for its shape)."""
    return f"{sid}.{secrets.token_urlsafe(32)}.{user_id}"


def split_refresh_token(token: str) -> tuple[str, str] | None:
    # Ours are ASCII; anything else (a lone surrogate cannot even be hashed) is not one.
    if not isinstance(token, str) or len(token) > 256 or not token.isascii():
        return None
    sid, dot, _secret = token.partition(".")
    if not dot or not sid or not _secret:
        return None
    return sid, hash_token(token)


def claimed_user_id(refresh_token: str) -> str | None:
    """The user id a refresh token names, unverified (the store checks it); None if none."""
    parts = refresh_token.split(".")
    return parts[2] if len(parts) == 3 and parts[2] else None


class TokenService:
    def __init__(
        self,
        store: TokenStore,
        codec: AccessTokenCodec,
        refresh_token_ttl: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.codec = codec
        self.refresh_token_ttl = refresh_token_ttl
        self._clock = clock

    # Issuing ------------------------------------------------------------------------------
    def start_session(
        self, login: LoginContext, sid: str | None = None
    ) -> tuple[dict[str, Any], SessionRecord]:
        """Start a login session; returns its token response (RFC 6749 §5.1) and the session.

        ``sid`` (from ``new_session_id``) lets a caller record the session before starting it.
        """
        now = int(self._clock())
        sid = sid or new_session_id()
        session = SessionRecord(
            sid=sid,
            user_id=login.user_id,
            client_id=login.client_id,
            created_at=now,
            last_used_at=now,
            auth_time=now,
            auth_method=login.auth_method,
            user_agent=login.user_agent[:512],
            ip=login.ip[:64],
        )
        refresh_token = new_refresh_token(sid, login.user_id)
        record = RefreshRecord(
            sid=sid,
            user_id=login.user_id,
            client_id=login.client_id,
            scope=login.scope,
            issued_at=now,
            expires_at=now + self.refresh_token_ttl,
        )
        self.store.start_session(session, hash_token(refresh_token), record, self.refresh_token_ttl)
        access_token, _ = self.codec.issue(
            subject=login.user_id,
            client_id=login.client_id,
            scope=login.scope,
            session_id=sid,
            roles=login.roles,
            auth_time=now,
        )
        return self._response(access_token, login.scope, refresh_token), session

    def issue_client_token(self, client_id: str, scope: str) -> dict[str, Any]:
        """A ``client_credentials`` token: no session, no refresh token (RFC 6749 §4.4.3)."""
        access_token, _ = self.codec.issue(subject=client_id, client_id=client_id, scope=scope)
        return self._response(access_token, scope)

    def peek_refresh_token(self, refresh_token: str) -> tuple[RefreshRecord, bool] | None:
        """The record of a refresh token of a live session and whether it is spent."""
        parts = split_refresh_token(refresh_token)
        return None if parts is None else self.store.peek_refresh_token(*parts)

    def refresh_token_user(self, refresh_token: str) -> str | None:
        """The user a refresh token claims to be for (not yet verified); None if unknown.

        Named in the token, or, for a token issued before that, read from the store.
        """
        if split_refresh_token(refresh_token) is None:
            return None
        claimed = claimed_user_id(refresh_token)
        if claimed is not None:
            return claimed
        found = self.peek_refresh_token(refresh_token)
        return None if found is None else found[0].user_id

    def spend_refresh_token(
        self, refresh_token: str, client_id: str, user_id: str, scope: str | None
    ) -> SpentRefreshToken:
        """Spend ``refresh_token`` and store its successor, in one step.

        The token must be ``client_id``'s, for ``user_id`` (``refresh_token_user``). ``scope``
        may narrow the next access token; the refresh token keeps the original grant.
        Raises ``RefreshTokenInvalid`` (unknown, another client's or user's, session ended),
        ``RefreshTokenScopeExceeded`` (scope beyond the grant; nothing spent) or
        ``RefreshTokenReused`` (already spent: the session has been ended).
        """
        successor, result = self._rotate(
            self.store.rotate_refresh_token, refresh_token, client_id, user_id, scope
        )
        return _spent(result, successor, scope)

    def refresh_spend(
        self, refresh_token: str, client_id: str, user_id: str, scope: str | None
    ) -> Reads[SpentRefreshToken]:
        """``spend_refresh_token`` as one step of a shared round trip (``tokens.reads``): its
        answer is the spent token, or it raises what ``spend_refresh_token`` raises."""
        successor, step = self._rotate(
            self.store.rotation, refresh_token, client_id, user_id, scope
        )
        return step.then(lambda result: _spent(result, successor, scope))

    def _rotate(
        self,
        rotate: Callable[[Rotation], R],
        refresh_token: str,
        client_id: str,
        user_id: str,
        scope: str | None,
    ) -> tuple[str, R]:
        """The successor of ``refresh_token``, and what ``rotate`` (the store's
        ``rotate_refresh_token`` or ``rotation``) answers to the call that stores it."""
        parts = split_refresh_token(refresh_token)
        if parts is None:
            raise RefreshTokenInvalid("malformed refresh token")
        sid, old_hash = parts
        successor = new_refresh_token(sid, user_id)
        answer = rotate(
            Rotation(
                sid,
                old_hash,
                hash_token(successor),
                int(self._clock()),
                self.refresh_token_ttl,
                client_id=client_id,
                user_id=user_id,
                scope=scope.split() if scope else None,
            )
        )
        return successor, answer

    def issue_after_refresh(self, spent: SpentRefreshToken, roles: list[str]) -> dict[str, Any]:
        """The token response for a spent refresh token: a new access token and the successor."""
        access_token, _ = self.codec.issue(
            subject=spent.record.user_id,
            client_id=spent.record.client_id,
            scope=spent.scope,
            session_id=spent.record.sid,
            roles=roles,
            auth_time=spent.session.auth_time if spent.session else None,
        )
        return self._response(access_token, spent.scope, spent.successor)

    def _response(
        self, access_token: str, scope: str, refresh_token: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": self.codec.ttl,
            "scope": scope,
        }
        if refresh_token is not None:
            body["refresh_token"] = refresh_token
        return body

    # Checking and revoking ----------------------------------------------------------------
    def decode_access_token(self, token: str) -> dict[str, Any] | None:
        """Claims of a well-signed, current access token for us; None otherwise.

        Not whether it was revoked: ``verify_access_token`` asks the store that too.
        """
        return self.codec.verify(token)

    def verify_access_token(self, token: str) -> dict[str, Any] | None:
        """Claims of a valid access token that has not been revoked; None otherwise."""
        claims = self.decode_access_token(token)
        if claims is None:
            return None
        if not self.store.is_access_token_active(claims["jti"], claims.get("sid")):
            return None
        return claims

    def revoke_access_token(self, claims: dict[str, Any]) -> None:
        # The codec accepts a token while now < exp, so the denial must last until exp: the
        # fewest whole seconds that cover it, and no longer (Redis TTLs are whole seconds).
        remaining = math.ceil(claims["exp"] - self._clock())
        self.store.deny_access_token(claims["jti"], remaining)

    def end_session(self, sid: str) -> None:
        self.store.end_session(sid)


def _spent(result: RotateResult, successor: str, scope: str | None) -> SpentRefreshToken:
    """The spent token a rotation's result makes, or the refusal it raises."""
    if result.outcome is RotateOutcome.REUSED:
        assert result.record is not None
        raise RefreshTokenReused(result.record)
    if result.outcome is RotateOutcome.SCOPE_EXCEEDED:
        raise RefreshTokenScopeExceeded("scope beyond the refresh token's grant")
    if result.outcome is not RotateOutcome.ROTATED or result.record is None:
        raise RefreshTokenInvalid("refresh token is not valid")
    return SpentRefreshToken(
        record=result.record,
        session=result.session,
        successor=successor,
        scope=scope or result.record.scope,
    )
