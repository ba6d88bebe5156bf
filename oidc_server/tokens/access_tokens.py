"""RFC 9068 JWT access tokens: signing with the current key, verifying against the key ring."""

from __future__ import annotations

import base64
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError

from ..keys import KeyRing

#: RFC 9068 §2.1: the media type of JWT access tokens.
ACCESS_TOKEN_TYP = "at+jwt"
#: Clock skew tolerated on ``exp`` and ``iat``.
LEEWAY = 30


def _unverified_header(token: str) -> dict[str, Any] | None:
    try:
        segment = token.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, UnicodeDecodeError, RecursionError):  # deep nesting: anyone can send it
        return None
    return header if isinstance(header, dict) else None


class AccessTokenCodec:
    """Issues and verifies access tokens. Verification never raises: it answers None."""

    def __init__(
        self,
        keyring: KeyRing,
        issuer: str,
        audience: str,
        ttl: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyring = keyring
        self.issuer = issuer
        self.audience = audience
        self.ttl = ttl
        self._clock = clock

    def issue(
        self,
        *,
        subject: str,
        client_id: str,
        scope: str,
        session_id: str | None = None,
        roles: list[str] | None = None,
        auth_time: int | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """Sign a new access token; returns the token and its claims."""
        now = int(self._clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.audience,
            "client_id": client_id,
            "iat": now,
            "exp": now + self.ttl,
            "jti": secrets.token_urlsafe(16),
            "scope": scope,
        }
        if session_id is not None:
            claims["sid"] = session_id
            claims["roles"] = roles or []
        if auth_time is not None:
            claims["auth_time"] = auth_time
        key = self.keyring.current
        header = {"alg": "RS256", "typ": ACCESS_TOKEN_TYP, "kid": key.kid}
        return jwt.encode(header, claims, key.key, algorithms=["RS256"]), claims

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a token we signed that has not expired; None for anything else."""
        if not isinstance(token, str) or token.count(".") != 2 or len(token) > 8192:
            return None
        header = _unverified_header(token)
        if (
            header is None
            or header.get("alg") != "RS256"
            or header.get("typ") != ACCESS_TOKEN_TYP
            or not isinstance(header.get("kid"), str)
        ):
            return None
        key = self.keyring.find(header["kid"])
        if key is None:
            return None
        try:
            claims = jwt.decode(token, key.key, algorithms=["RS256"]).claims
        except (JoseError, ValueError, TypeError, RecursionError):
            return None
        return claims if self._claims_valid(claims) else None

    def _claims_valid(self, claims: dict[str, Any]) -> bool:
        now = self._clock()
        exp, iat = claims.get("exp"), claims.get("iat")
        return (
            claims.get("iss") == self.issuer
            and claims.get("aud") == self.audience
            # RFC 7519 NumericDate: JSON true/false are not numbers, though Python's bool is int.
            and isinstance(exp, int)
            and not isinstance(exp, bool)
            and isinstance(iat, int)
            and not isinstance(iat, bool)
            and exp > now
            and iat - LEEWAY <= now
            and isinstance(claims.get("jti"), str)
            and isinstance(claims.get("sub"), str)
            and isinstance(claims.get("client_id"), str)
            and isinstance(claims.get("scope"), str)  # RFC 9068 §2.2.3; callers split it
            and isinstance(claims.get("sid", ""), str)
        )
