"""Revocation (RFC 7009) and introspection (RFC 7662) for both kinds of our tokens."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749.errors import InvalidRequestError
from authlib.oauth2.rfc7009 import RevocationEndpoint as _RevocationEndpoint
from authlib.oauth2.rfc7662 import IntrospectionEndpoint as _IntrospectionEndpoint

from ..context import db_session, services
from ..roles import AccountCard, Miss, read_card
from ..tokens.service import split_refresh_token
from .clients_generation import read_with_clients_generation
from .grants import single_valued
from .protector import AccessToken, BearerCheck, verify_bearer_token


@dataclass
class FoundToken:
    """An access token (verified claims) or a refresh token (its record) found by string."""

    kind: str  # "access_token" | "refresh_token"
    client_id: str
    claims: dict[str, Any]
    revoked: bool = False
    #: A user's access token: the role cache's answer for its user (see ``AccessToken``).
    card: AccountCard | Miss | None = None

    def check_client(self, client: Any) -> bool:
        return client.get_client_id() == self.client_id

    def is_expired(self) -> bool:
        return self.claims["exp"] <= time.time()

    def is_revoked(self) -> bool:
        return self.revoked


#: ``find_token``'s ``checked`` when no access-token check was made beforehand.
_NOT_CHECKED: Any = object()


def find_token(
    token_string: str, hint: str | None, checked: AccessToken | None = _NOT_CHECKED
) -> FoundToken | None:
    """Look the token up as the hinted kind first, then as the other (RFC 7009 §2.1).

    ``checked``: the outcome of ``token_string``'s check as an access token, when the caller
    made it already (``IntrospectionEndpoint``); None if it did not pass.
    """
    kinds = (
        ["refresh_token", "access_token"]
        if hint == "refresh_token"
        else [
            "access_token",
            "refresh_token",
        ]
    )
    for kind in kinds:
        found = (
            _find_access(token_string, checked)
            if kind == "access_token"
            else _find_refresh(token_string)
        )
        if found is not None:
            return found
    return None


def _find_access(token_string: str, checked: AccessToken | None) -> FoundToken | None:
    token = verify_bearer_token(token_string) if checked is _NOT_CHECKED else checked
    if token is None:
        return None
    return FoundToken("access_token", token["client_id"], dict(token), card=token.card)


def _find_refresh(token_string: str) -> FoundToken | None:
    if split_refresh_token(token_string) is None:
        return None
    found = services().tokens.peek_refresh_token(token_string)
    if found is None:
        return None
    record, spent = found
    claims = {
        "sub": record.user_id,
        "client_id": record.client_id,
        "scope": record.scope,
        "iat": record.issued_at,
        "exp": record.expires_at,
        "sid": record.sid,
    }
    return FoundToken("refresh_token", record.client_id, claims, revoked=spent)


def check_token_param(request: Any) -> None:
    """A token is required, once; the hint is only a hint, so an unknown one widens the
    search."""
    single_valued(request, "token", "token_type_hint")
    if not request.form.get("token"):
        raise InvalidRequestError("Missing 'token' in request.")


class RevocationEndpoint(_RevocationEndpoint):
    """RFC 7009. Public clients may revoke their own tokens, so ``none`` is accepted."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def check_params(self, request: Any, client: Any) -> None:
        check_token_param(request)

    def query_token(self, token_string: str, token_type_hint: str | None) -> FoundToken | None:
        return find_token(token_string, token_type_hint)

    def revoke_token(self, token: FoundToken, request: Any) -> None:
        tokens = services().tokens
        if token.kind == "access_token":
            tokens.revoke_access_token(token.claims)
        else:
            # §2.1: revoking a refresh token ends its grant, access tokens included.
            tokens.end_session(token.claims["sid"])


class IntrospectionEndpoint(_IntrospectionEndpoint):
    """RFC 7662, for confidential clients (resource servers) only."""

    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]

    def authenticate_endpoint_client(self, request: Any) -> Any:
        # The presented token's Redis reads (revoked? its user's card) go out with the clients'
        # generation that authenticating the client needs: one round trip for both. Nothing
        # read is used unless the client authenticates.
        token_string = request.form.get("token")
        check = None
        if token_string and request.form.get("token_type_hint") != "refresh_token":
            claims = services().tokens.decode_access_token(token_string)
            check = None if claims is None else BearerCheck(claims)
            request.checked_access_token = None  # not a current access token of ours
        answers = read_with_clients_generation(*(check.reads if check else ()))
        if check is not None:
            request.checked_access_token = check.token(answers)
        return super().authenticate_endpoint_client(request)

    def authenticate_token(self, request: Any, client: Any) -> FoundToken | None:
        """Authlib's, with the access-token check made before the client's reused."""
        self.check_params(request, client)
        token = find_token(
            request.form["token"],
            request.form.get("token_type_hint"),
            getattr(request, "checked_access_token", _NOT_CHECKED),
        )
        if token and self.check_permission(token, client, request):
            return token
        return None

    def check_params(self, request: Any, client: Any) -> None:
        check_token_param(request)

    def check_permission(self, token: FoundToken, client: Any, request: Any) -> bool:
        return bool(client.is_confidential)

    def introspect_token(self, token: FoundToken) -> dict[str, Any]:
        card = None
        if "sid" in token.claims:
            card = read_card(
                db_session(), services().role_cache, token.claims["sub"], looked_up=token.card
            )
        return introspection_payload(
            services().settings.oidc_issuer, token.kind, token.claims, card
        )


def introspection_payload(
    issuer: str, kind: str, claims: dict[str, Any], card: AccountCard | None
) -> dict[str, Any]:
    """RFC 7662 §2.2: what an active token of ``kind`` says of itself. A user's token carries
    its user's roles as they are now (``card``), not as they were when it was issued; without
    a card (the user is gone or disabled) it is not active."""
    body: dict[str, Any] = {
        "active": True,
        "token_type": "Bearer" if kind == "access_token" else "refresh_token",
        "iss": issuer,
        **{k: v for k, v in claims.items() if k != "roles"},
    }
    if "sid" in claims:
        if card is None:
            return {"active": False}
        body["roles"] = list(card.roles)
        body["username"] = card.login
    return body
