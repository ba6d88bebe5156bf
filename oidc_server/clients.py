"""OAuth clients: registration, lookup, and the view of a client that Authlib works with."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from authlib.oauth2.rfc6749 import ClientMixin
from authlib.oauth2.rfc6749.util import list_to_scope, scope_to_list
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE
from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import OAuthClient
from .security import check_client_secret, generate_client_secret, hash_client_secret

if TYPE_CHECKING:
    from .tokens.store import TokenStore

GRANT_TYPES = (
    "authorization_code",
    "client_credentials",
    "password",
    "refresh_token",
    DEVICE_CODE_GRANT_TYPE,
)
#: Grants a person approves in a browser (at /oauth/authorize or /activate).
BROWSER_GRANT_TYPES = ("authorization_code", DEVICE_CODE_GRANT_TYPE)
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
    post_logout_redirect_uris: tuple[str, ...] = ()

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
            post_logout_redirect_uris=tuple(row.post_logout_redirect_uris or ()),
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
        # Exact string comparison (RFC 9700 §4.1.3): no prefix, pattern or case folding.
        return redirect_uri in self.redirect_uris

    def check_post_logout_redirect_uri(self, uri: str) -> bool:
        return uri in self.post_logout_redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return check_client_secret(self.secret_key, client_secret, self.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.is_confidential:
            return method in ("client_secret_basic", "client_secret_post")
        return method == "none"

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


def redirect_uri_problem(uri: str) -> str | None:
    """Why ``uri`` cannot be registered as a redirect URI, or None if it can.

    https anywhere; http only on loopback (RFC 8252 §7.3); a native app's private-use scheme
    in reverse-domain form (RFC 8252 §7.1). Absolute, no fragment (RFC 6749 §3.1.2).
    """
    parts = urlsplit(uri)
    if len(uri) > 2000 or not parts.scheme:
        return "must be an absolute URI"
    if parts.fragment or "#" in uri:
        return "must not contain a fragment"
    if parts.scheme == "https":
        return None if parts.netloc else "must name a host"
    if parts.scheme == "http":
        host = parts.netloc.rsplit("@", 1)[-1]
        host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return None if host in _LOOPBACK_HOSTS else "http is allowed on loopback hosts only"
    if "." in parts.scheme and parts.scheme not in ("javascript", "data"):
        return None
    return "must be https, http on loopback, or a reverse-domain private-use scheme"


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
    redirect_uris: list[str] | None = None,
    post_logout_redirect_uris: list[str] | None = None,
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
    redirect_uris = list(dict.fromkeys(redirect_uris or []))
    post_logout_redirect_uris = list(dict.fromkeys(post_logout_redirect_uris or []))
    for uri in [*redirect_uris, *post_logout_redirect_uris]:
        problem = redirect_uri_problem(uri)
        if problem:
            raise ClientError(f"{uri!r}: {problem}")
    if "authorization_code" in grant_types and not redirect_uris:
        raise ClientError("authorization_code needs at least one --redirect-uri")
    if redirect_uris and "authorization_code" not in grant_types:
        raise ClientError("redirect URIs are only for the authorization_code grant")
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
            redirect_uris=redirect_uris,
            post_logout_redirect_uris=post_logout_redirect_uris,
        )
    )
    session.flush()
    return NewClient(client_id=client_id, client_secret=secret)


#: Generation name that every change to a client bumps (see ``TokenStore.bump_generation``).
CLIENTS_GENERATION = "clients"
#: Seconds after a generation read was sent during which a worker still answers new requests
#: from it (``ClientCache.generation_read_since``), in place of a read per request: under load
#: that read was a Redis round trip per token, about a tenth of a token's cost (docs/scaling.md,
#: session 15). Whoever changes a client waits this long after bumping the generation
#: (``clients_changed``), so every request received after the change returns still sees it.
GENERATION_LEASE = 0.1
#: Added to the changer's wait: two processes' monotonic clocks run at rates within a few
#: hundred parts per million of each other, far less than this over one lease.
LEASE_MARGIN = 0.01


def clients_changed(store: TokenStore) -> None:
    """Tell every worker that clients changed, and return only once all of them act on it.

    Bumps the generation (each worker drops its copies at its next read), then waits out the
    lease of every read sent before the bump: a request received after this returns is
    answered from a read sent after the bump.
    """
    store.bump_generation(CLIENTS_GENERATION)
    time.sleep(GENERATION_LEASE + LEASE_MARGIN)


class ClientCache:
    """Clients by id, kept in this worker while the store's "clients" generation is unchanged.

    Authenticating a machine client is on every token and introspection request; this saves
    a database round trip each time. Any change to a client bumps the generation in the
    shared store (``clients_changed``), so every worker drops its copies at its next read of
    it; ``max_age`` bounds staleness in the embedded mode, where the CLI cannot reach the
    server's in-process store.

    It also keeps this worker's newest read of the generation, so that requests received
    before that read was sent, or within ``lease`` seconds after, use its answer instead of
    reading again (``generation_read_since``).
    """

    def __init__(
        self, max_age: float = 60.0, max_entries: int = 10_000, lease: float = GENERATION_LEASE
    ) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self.lease = lease
        self._entries: dict[str, tuple[str, float, RegisteredClient | None]] = {}
        #: When this worker's newest generation read was sent (``time.monotonic``), its answer.
        self._generation_read: tuple[float, str] | None = None

    def generation_read_since(self, received_at: float | None) -> str | None:
        """The generation, as read by a read sent after ``received_at - lease``; None if there
        is none.

        A request received at ``received_at`` must see every client change that returned
        before it arrived. Redis answers a read with its state at some moment after the read
        was sent, so a read sent later than the request arrived answers it, whoever sent it.
        So does one sent up to ``lease`` earlier: a change that read missed was bumped after
        it was sent, and its changer waited ``lease`` more before returning
        (``clients_changed``), so it returned after the request arrived.
        """
        read = self._generation_read
        if read is None or received_at is None or read[0] + self.lease <= received_at:
            return None
        return read[1]

    def note_generation_read(self, sent_at: float, generation: str) -> None:
        """Keep a generation read, sent at ``sent_at``, for the requests it can answer."""
        read = self._generation_read
        if read is None or sent_at > read[0]:
            # Threads may race here: at worst an older read is kept, answering fewer requests.
            self._generation_read = (sent_at, generation)

    def get(
        self, generation: str, client_id: str, load: Callable[[], RegisteredClient | None]
    ) -> RegisteredClient | None:
        now = time.monotonic()
        entry = self._entries.get(client_id)
        if entry is not None and self._current(entry, generation, now):
            return entry[2]
        client = load()
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[client_id] = (generation, now, client)
        return client

    def cached(self, generation: str, client_id: str) -> RegisteredClient | None:
        """The client, if this worker holds a current copy of it; else None, loading nothing
        (also when what it holds is that no such client exists)."""
        entry = self._entries.get(client_id)
        if entry is not None and self._current(entry, generation, time.monotonic()):
            return entry[2]
        return None

    def _current(
        self, entry: tuple[str, float, RegisteredClient | None], generation: str, now: float
    ) -> bool:
        return entry[0] == generation and now - entry[1] < self.max_age


def find_client(session: Session, secret_key: str, client_id: str) -> RegisteredClient | None:
    if not isinstance(client_id, str) or not client_id or len(client_id) > 64:
        return None
    row = session.scalar(
        select(OAuthClient).where(OAuthClient.client_id == client_id, OAuthClient.is_active)
    )
    return None if row is None else RegisteredClient.from_row(row, secret_key)
