"""OAuth clients: registration, lookup, and the view of a client that Authlib works with."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749.util import list_to_scope, scope_to_list
from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import OAuthClient
from .security import check_client_secret, generate_client_secret, hash_client_secret

GRANT_TYPES = ("client_credentials", "password", "refresh_token")
SCOPES_SUPPORTED = ("openid", "profile", "email", "roles:read", "roles:write")


class ClientError(ValueError):
    """A client registration that cannot be accepted."""


@dataclass(frozen=True)
class RegisteredClient(ClientMixin):
    """A snapshot of a client row, with the checks Authlib asks of a client."""

    client_id: str
    name: str
    secret_hash: str | None
    is_confidential: bool
    is_first_party: bool
    grant_types: tuple[str, ...]
    scopes: tuple[str, ...]
    redirect_uris: tuple[str, ...] = ()
    secret_key: str = field(default="", repr=False)

    @classmethod
    def from_row(cls, row: OAuthClient, secret_key: str) -> RegisteredClient:
        return cls(
            client_id=row.client_id,
            name=row.name,
            secret_hash=row.client_secret_hash,
            is_confidential=row.is_confidential,
            is_first_party=row.is_first_party,
            grant_types=tuple(row.grant_types),
            scopes=tuple(row.scopes),
            redirect_uris=tuple(row.redirect_uris),
            secret_key=secret_key,
        )

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        """The requested scopes this client may have; all of its scopes when none asked."""
        if not scope:
            return list_to_scope(list(self.scopes))
        allowed = set(self.scopes)
        return list_to_scope([s for s in scope_to_list(scope) if s in allowed])

    def allows_scope(self, scope: str | None) -> bool:
        return not scope or set(scope_to_list(scope)) <= set(self.scopes)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return check_client_secret(self.secret_key, client_secret, self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.is_confidential:
            return method in ("client_secret_basic", "client_secret_post")
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return False

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


@dataclass(frozen=True)
class NewClient:
    client_id: str
    client_secret: str | None


def create_client(
    session: Session,
    secret_key: str,
    *,
    name: str,
    grant_types: list[str],
    scopes: list[str],
    confidential: bool = True,
    first_party: bool = False,
    client_id: str | None = None,
) -> NewClient:
    """Register a client. The secret is returned once here and stored only as a keyed hash."""
    unknown = set(grant_types) - set(GRANT_TYPES)
    if unknown or not grant_types:
        raise ClientError(f"grant types must be among {', '.join(GRANT_TYPES)}")
    bad_scopes = set(scopes) - set(SCOPES_SUPPORTED)
    if bad_scopes:
        raise ClientError(f"unknown scopes: {' '.join(sorted(bad_scopes))}")
    if "client_credentials" in grant_types and not confidential:
        raise ClientError("client_credentials needs a confidential client")
    if "password" in grant_types and not first_party:
        # RFC 9700 §2.4: the password grant only for the first-party apps that need it.
        raise ClientError("the password grant is only for first-party clients")
    client_id = client_id or secrets.token_urlsafe(16)
    secret = generate_client_secret() if confidential else None
    session.add(
        OAuthClient(
            client_id=client_id,
            name=name,
            client_secret_hash=hash_client_secret(secret_key, secret) if secret else None,
            is_confidential=confidential,
            is_first_party=first_party,
            grant_types=list(dict.fromkeys(grant_types)),
            scopes=list(dict.fromkeys(scopes)),
            redirect_uris=[],
        )
    )
    session.flush()
    return NewClient(client_id=client_id, client_secret=secret)


def find_client(session: Session, secret_key: str, client_id: str) -> RegisteredClient | None:
    if not isinstance(client_id, str) or not client_id or len(client_id) > 64:
        return None
    row = session.scalar(
        select(OAuthClient).where(OAuthClient.client_id == client_id, OAuthClient.is_active)
    )
    return None if row is None else RegisteredClient.from_row(row, secret_key)
