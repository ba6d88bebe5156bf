"""ID tokens (OIDC Core §2, §3.1.3.6): RS256 with the access tokens' key ring and JWKS.

The claims about the person depend on the granted scopes exactly as /oauth/userinfo's do
(OIDC Core §5.4): ``email`` gives ``email`` and ``email_verified``, ``profile`` gives
``preferred_username`` and ``roles``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from authlib.oidc.core.util import create_half_hash
from joserfc import jwt
from joserfc.errors import JoseError

from ..keys import KeyRing
from ..models import User
from ..tokens.access_tokens import unverified_header

#: How each sign-in method is named in ``amr`` (RFC 8176 §2; "fed" for a federated login).
AMR = {"password": ["pwd"], "google": ["fed"], "yandex": ["fed"]}


def user_claims(
    user_id: uuid.UUID, login: str, scopes: Iterable[str], roles: Iterable[str]
) -> dict[str, Any]:
    """Claims about a user that ``scopes`` allow: in ID tokens, and what /oauth/userinfo answers."""
    granted = set(scopes)
    claims: dict[str, Any] = {"sub": str(user_id)}
    if "email" in granted:
        claims["email"] = login
        # Registration does not prove ownership of the address, so we never claim it.
        claims["email_verified"] = False
    if "profile" in granted:
        claims["preferred_username"] = login
        claims["roles"] = list(roles)
    return claims


class IdTokenIssuer:
    """Signs ID tokens and reads back the ones we signed (``id_token_hint``)."""

    def __init__(
        self, keyring: KeyRing, issuer: str, ttl: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.keyring = keyring
        self.issuer = issuer
        # Never longer than access tokens: the key ring keeps a retired key published for
        # exactly that long, so every ID token stays verifiable through the JWKS.
        self.ttl = ttl
        self.clock = clock

    def issue(
        self,
        *,
        user: User,
        client_id: str,
        scope: str,
        roles: list[str],
        sid: str,
        auth_time: int,
        auth_method: str,
        nonce: str | None = None,
        access_token: str | None = None,
    ) -> str:
        """A signed ID token for ``client_id`` (its ``aud``) in login session ``sid``."""
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": client_id,
            "azp": client_id,
            "iat": now,
            "exp": now + self.ttl,
            "auth_time": auth_time,
            "sid": sid,
            "amr": AMR.get(auth_method, [auth_method]),
        }
        if nonce:
            claims["nonce"] = nonce
        if access_token:
            at_hash = create_half_hash(access_token, "RS256")
            claims["at_hash"] = at_hash.decode("ascii") if at_hash else None
        claims.update(user_claims(user.id, user.login, scope.split(), roles))
        key = self.keyring.current
        header = {"alg": "RS256", "typ": "JWT", "kid": key.kid}
        return jwt.encode(header, claims, key.key, algorithms=["RS256"])

    def read_hint(self, token: str) -> dict[str, Any] | None:
        """Claims of an ID token we signed, expired or not (RP-Initiated Logout §2); else None."""
        if not isinstance(token, str) or token.count(".") != 2 or len(token) > 8192:
            return None
        header = unverified_header(token)
        if header is None or header.get("alg") != "RS256" or not isinstance(header.get("kid"), str):
            return None
        key = self.keyring.find(header["kid"])
        if key is None:
            return None
        try:
            claims = jwt.decode(token, key.key, algorithms=["RS256"]).claims
        except (JoseError, ValueError, TypeError):
            return None
        if claims.get("iss") != self.issuer or not isinstance(claims.get("sub"), str):
            return None
        # Access tokens are signed by the same keys; only ID tokens name a client audience.
        if header.get("typ") == "at+jwt" or not isinstance(claims.get("aud"), str):
            return None
        return claims
