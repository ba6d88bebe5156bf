"""Bearer protection of our own routes (RFC 6750) with our JWT access tokens."""

from __future__ import annotations

import time
from typing import Any

from authlib.integrations.flask_oauth2 import ResourceProtector, current_token
from authlib.oauth2.rfc6750 import BearerTokenValidator

from ..context import services


class AccessToken(dict):
    """Verified claims, with the few methods Authlib's validator calls."""

    def get_scope(self) -> str:
        return self.get("scope", "")

    def is_expired(self) -> bool:
        return self["exp"] <= time.time()

    def is_revoked(self) -> bool:
        return False  # checked against the store before this object is made

    @property
    def is_user_token(self) -> bool:
        return "sid" in self


class JWTAccessTokenValidator(BearerTokenValidator):
    def authenticate_token(self, token_string: str) -> AccessToken | None:
        claims = services().tokens.verify_access_token(token_string)
        return None if claims is None else AccessToken(claims)


require_token = ResourceProtector()
require_token.register_token_validator(JWTAccessTokenValidator())


def current_claims() -> AccessToken:
    token: Any = current_token
    return token._get_current_object()
