"""RFC 9068 JWT access tokens: signing with the current key, verifying against the key ring.

Both are written here against ``cryptography`` rather than through joserfc's general JWS code:
these tokens have one shape (RS256, the three header parameters below), and the general path
cost 70 us of Python per token signed and 30 us per token verified, beside a 270 us signature
(docs/scaling.md, session 10). Verification is strict about that shape: anything else, a
``crit`` header or a non-canonical base64 segment included, is not a token of ours.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import functools
import json
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding

from ..keys import KeyRing, SigningKey

#: RFC 9068 §2.1: the media type of JWT access tokens.
ACCESS_TOKEN_TYP = "at+jwt"
#: Clock skew tolerated on ``exp`` and ``iat``.
LEEWAY = 30
#: The header parameters of every access token we sign, and so of every one we accept.
HEADER_PARAMETERS = frozenset({"alg", "typ", "kid"})
#: How many verified tokens a codec remembers (``AccessTokenCodec.verify``): about 1.5 KB each.
VERIFIED_TOKENS = 512

_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")


def _encode_segment(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _decode_segment(segment: str) -> bytes | None:
    """Unpadded base64url (RFC 7515 §2), in its one canonical spelling; else None."""
    if not _BASE64URL.fullmatch(segment):
        return None
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None
    # Unused low bits set would spell the same bytes another way: one token, many strings.
    return data if _encode_segment(data).decode("ascii") == segment else None


def _json_segment(obj: dict[str, Any]) -> bytes:
    return _encode_segment(json.dumps(obj, separators=(",", ":")).encode())


@functools.lru_cache(maxsize=16)
def _header_segment(kid: str) -> bytes:
    """The encoded header of every access token signed with key ``kid``."""
    return _json_segment({"alg": "RS256", "typ": ACCESS_TOKEN_TYP, "kid": kid})


def _decode_json_object(segment: str) -> dict[str, Any] | None:
    data = _decode_segment(segment)
    if data is None:
        return None
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):  # deep nesting: anyone can send it
        return None
    return value if isinstance(value, dict) else None


def unverified_header(token: str) -> dict[str, Any] | None:
    """The JOSE header of a compact JWS, not yet verified; None if it is not a JSON object."""
    return _decode_json_object(token.split(".", 1)[0])


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
        #: Tokens whose signature was verified: token -> (claims, the key that verified it).
        self._verified: dict[str, tuple[dict[str, Any], SigningKey]] = {}

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
        signing_input = _header_segment(key.kid) + b"." + _json_segment(claims)
        signature = key.private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        return (signing_input + b"." + _encode_segment(signature)).decode("ascii"), claims

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a token we signed that has not expired; None for anything else.

        A resource server presents the same token for as long as it lives, and the signature
        check was 40 us of a role check's Python (docs/scaling.md, session 12). So the last
        ``VERIFIED_TOKENS`` verified tokens are remembered, each with the key that verified it:
        that exact string is taken as verified again while that key is still in the ring; its
        claims (expiry included) are checked every time, and each caller gets its own copy of
        the mapping.
        """
        remembered = self._verified.get(token) if isinstance(token, str) else None
        if remembered is not None:
            claims, key = remembered
            if self.keyring.find(key.kid) is key:
                return dict(claims) if self._claims_valid(claims) else None
            self._verified.pop(token, None)  # its key is gone or was reloaded: check again
        if not isinstance(token, str) or token.count(".") != 2 or len(token) > 8192:
            return None
        head, payload, signature_segment = token.split(".")
        header = _decode_json_object(head)
        if (
            header is None
            or header.keys() != HEADER_PARAMETERS
            or header["alg"] != "RS256"
            or header["typ"] != ACCESS_TOKEN_TYP
            or not isinstance(header["kid"], str)
        ):
            return None
        key = self.keyring.find(header["kid"])
        # Both decoded before the signature is checked: that also proves the segments ASCII.
        claims = _decode_json_object(payload)
        signature = _decode_segment(signature_segment)
        if key is None or claims is None or signature is None:
            return None
        try:
            key.public.verify(
                signature, f"{head}.{payload}".encode("ascii"), padding.PKCS1v15(), hashes.SHA256()
            )
        except InvalidSignature:
            return None
        if not self._claims_valid(claims):
            return None
        self._remember(token, claims, key)
        return dict(claims)

    def _remember(self, token: str, claims: dict[str, Any], key: SigningKey) -> None:
        verified = self._verified
        if len(verified) >= VERIFIED_TOKENS:
            # The oldest goes; another thread may have taken it already.
            with contextlib.suppress(KeyError, RuntimeError, StopIteration):
                del verified[next(iter(verified))]
        verified[token] = (claims, key)

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
