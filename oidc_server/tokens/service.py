"""Issuing, refreshing, revoking and introspecting tokens, independent of HTTP.

Refresh tokens are ``<sid>.<256 random bits>``: opaque to clients, stored only as a SHA-256
digest, and carrying their session id so the store finds the session (and its Redis hash
slot) without a lookup.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..security import hash_token
from .access_tokens import AccessTokenCodec
from .store import RefreshRecord, RotateOutcome, SessionRecord, TokenStore


class RefreshTokenInvalid(Exception):
    """Unknown, expired, spent or of an ended session."""


class RefreshTokenReused(RefreshTokenInvalid):
    """A spent token came back: its session has been ended (RFC 9700 §4.14.2)."""

    def __init__(self, record: RefreshRecord) -> None:
        super().__init__("refresh token reused")
        self.record = record


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


def split_refresh_token(token: str) -> tuple[str, str] | None:
    # Ours are ASCII; anything else (a lone surrogate cannot even be hashed) is not one.
    if not isinstance(token, str) or len(token) > 256 or not token.isascii():
        return None
    sid, dot, _secret = token.partition(".")
    if not dot or not sid or not _secret:
        return None
    return sid, hash_token(token)


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
        refresh_token = f"{sid}.{secrets.token_urlsafe(32)}"
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

    def refresh(
        self, refresh_token: str, scope: str | None, roles: list[str]
    ) -> tuple[dict[str, Any], RefreshRecord]:
        """Spend ``refresh_token`` and issue its successor with a new access token.

        ``scope`` may narrow the access token; the refresh token keeps the original grant.
        """
        parts = split_refresh_token(refresh_token)
        if parts is None:
            raise RefreshTokenInvalid("malformed refresh token")
        sid, old_hash = parts
        successor = f"{sid}.{secrets.token_urlsafe(32)}"
        now = int(self._clock())
        result = self.store.rotate_refresh_token(
            sid, old_hash, hash_token(successor), now, self.refresh_token_ttl
        )
        if result.outcome is RotateOutcome.REUSED:
            assert result.record is not None
            raise RefreshTokenReused(result.record)
        if result.outcome is RotateOutcome.INVALID or result.record is None:
            raise RefreshTokenInvalid("refresh token is not valid")
        record = result.record
        session = result.session
        access_token, _ = self.codec.issue(
            subject=record.user_id,
            client_id=record.client_id,
            scope=scope or record.scope,
            session_id=sid,
            roles=roles,
            auth_time=session.auth_time if session else None,
        )
        return self._response(access_token, scope or record.scope, successor), record

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
    def verify_access_token(self, token: str) -> dict[str, Any] | None:
        """Claims of a valid access token that has not been revoked; None otherwise."""
        claims = self.codec.verify(token)
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
