"""The token store interface: login sessions, refresh tokens, the access-token denylist.

A session is one login (the ``sid`` in its tokens). Refresh tokens belong to a session and
are single use: ``rotate_refresh_token`` atomically spends one and stores its successor, and
presenting a spent one ends the whole session. Access tokens are JWTs checked offline; the
store only answers whether one was revoked (its ``jti`` denied, or its session ended).

Two implementations pass the same tests: ``RedisTokenStore`` (shared by every worker) and
``MemoryTokenStore`` (the embedded default, one process only).
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .reads import Reads


@dataclass(frozen=True)
class SessionRecord:
    sid: str
    user_id: str
    client_id: str
    created_at: int
    last_used_at: int
    auth_time: int
    auth_method: str
    user_agent: str = ""
    ip: str = ""

    def to_fields(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> SessionRecord:
        return cls(
            sid=fields["sid"],
            user_id=fields["user_id"],
            client_id=fields["client_id"],
            created_at=int(fields["created_at"]),
            last_used_at=int(fields["last_used_at"]),
            auth_time=int(fields["auth_time"]),
            auth_method=fields["auth_method"],
            user_agent=fields.get("user_agent", ""),
            ip=fields.get("ip", ""),
        )


@dataclass(frozen=True)
class RefreshRecord:
    """What a refresh token stands for. The token itself is never stored, only its hash."""

    sid: str
    user_id: str
    client_id: str
    scope: str
    issued_at: int
    expires_at: int

    def to_fields(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> RefreshRecord:
        return cls(
            sid=fields["sid"],
            user_id=fields["user_id"],
            client_id=fields["client_id"],
            scope=fields["scope"],
            issued_at=int(fields["issued_at"]),
            expires_at=int(fields["expires_at"]),
        )


class RotateOutcome(enum.Enum):
    ROTATED = "rotated"
    #: The token was already spent: the session has been ended (reuse detection).
    REUSED = "reused"
    #: Unknown, expired, of another client, or its session has ended.
    INVALID = "invalid"
    #: More scope was asked for than the token was granted; the token is not spent.
    SCOPE_EXCEEDED = "scope_exceeded"


@dataclass(frozen=True)
class Rotation:
    """A refresh token's spend, asked of the store: in session ``sid``, spend the token
    hashed ``old_hash`` and store ``new_hash`` in its place for ``ttl`` seconds from ``now``,
    if the token is ``client_id``'s and ``user_id``'s and was granted every scope of
    ``scope`` (each check skipped when None)."""

    sid: str
    old_hash: str
    new_hash: str
    now: int
    ttl: int
    client_id: str | None = None
    user_id: str | None = None
    scope: list[str] | None = None


@dataclass(frozen=True)
class RotateResult:
    outcome: RotateOutcome
    record: RefreshRecord | None = None
    #: The session after a rotation (its ``last_used_at`` moved), so callers need no re-read.
    session: SessionRecord | None = None


class StoreUnavailable(RuntimeError):
    """The backing store cannot be reached; callers fail closed."""


class TokenStore(ABC):
    """Storage for everything that must be shared by workers but not kept in the database."""

    @abstractmethod
    def start_session(
        self, session: SessionRecord, refresh_hash: str, refresh: RefreshRecord, ttl: int
    ) -> None:
        """Store a new session and its first refresh token together."""

    @abstractmethod
    def peek_refresh_token(self, sid: str, refresh_hash: str) -> tuple[RefreshRecord, bool] | None:
        """The record and whether it is spent, if the token and its session are alive."""

    @abstractmethod
    def rotate_refresh_token(self, rotation: Rotation) -> RotateResult:
        """Atomically spend the token and store its successor for the same session.

        Of any number of concurrent calls spending the same token exactly one rotates; any
        later call finds it spent, ends the session and answers ``REUSED``. The token
        endpoint's checks happen in the same step, before anything is spent: a token of
        another client than ``client_id`` or another user than ``user_id`` is ``INVALID``,
        and asking for a ``scope`` the token was not granted is ``SCOPE_EXCEEDED`` (RFC 6749
        §6); neither ends the session.
        """

    def rotation(self, rotation: Rotation) -> Reads[RotateResult]:
        """``rotate_refresh_token`` as one step of a shared round trip (``tokens.reads``):
        the same single atomic step, sent with other requests' commands. A store that
        answers in this process (the default here) rotates when the step is answered."""
        from .reads import Reads  # here: reads imports this module

        return Reads.local(lambda: self.rotate_refresh_token(rotation))

    @abstractmethod
    def add_refresh_token(
        self, sid: str, refresh_hash: str, refresh: RefreshRecord, ttl: int
    ) -> bool:
        """Add a first refresh token to a live session (one more client of a browser login).

        Atomic with the session check: False, and nothing stored, if the session has ended.
        """

    @abstractmethod
    def get_session(self, sid: str) -> SessionRecord | None: ...

    @abstractmethod
    def list_sessions(self, user_id: str) -> list[SessionRecord]:
        """The user's live sessions, newest first."""

    @abstractmethod
    def end_session(self, sid: str) -> None:
        """End a session: its refresh tokens stop working and its access tokens are denied."""

    def end_user_sessions(self, user_id: str, keep_sid: str | None = None) -> int:
        """End every session of a user except ``keep_sid``; returns how many ended."""
        ended = 0
        for session in self.list_sessions(user_id):
            if session.sid != keep_sid:
                self.end_session(session.sid)
                ended += 1
        return ended

    @abstractmethod
    def deny_access_token(self, jti: str, ttl: int) -> None:
        """Deny one access token until it expires anyway (``ttl`` = its remaining life)."""

    @abstractmethod
    def is_access_token_active(self, jti: str, sid: str | None) -> bool:
        """False if the token was denied or its session has ended. One round trip."""

    @abstractmethod
    def access_token_reads(self, jti: str, sid: str | None) -> Reads[bool]:
        """``is_access_token_active`` as a read, to send with other stores' (``read_together``)."""

    @abstractmethod
    def put_once(self, namespace: str, key: str, value: dict[str, Any], ttl: int) -> None:
        """Keep a short-lived single-use value (social sign-in state, codes)."""

    @abstractmethod
    def peek_once(self, namespace: str, key: str) -> dict[str, Any] | None:
        """Read a ``put_once`` value without taking it; None if absent or expired."""

    @abstractmethod
    def take_once(self, namespace: str, key: str) -> dict[str, Any] | None:
        """Return and delete the value atomically; None if absent, expired or already taken."""

    @abstractmethod
    def ping(self) -> bool: ...

    # Cache generations ----------------------------------------------------------------
    # A worker may cache rows (OAuth clients) in memory if it checks, on each use, that the
    # named generation has not changed; any change to the rows sets a new one.

    @abstractmethod
    def get_generation(self, name: str) -> str:
        """The current generation tag of ``name`` ("" when none was set or it expired)."""

    @abstractmethod
    def generation_reads(self, name: str) -> Reads[str]:
        """``get_generation`` as a read, to send with other stores' (``read_together``)."""

    @abstractmethod
    def bump_generation(self, name: str) -> None:
        """Set a fresh, never-repeating generation tag for ``name``."""

    # Failed-login backoff ------------------------------------------------------------------
    # A per-account count of failed logins, and a "not before" time that slows guessing down
    # without locking the account: see ``oidc_server.login_backoff``. ``key`` is opaque (a
    # digest of the login), times are whole seconds since the epoch.

    @abstractmethod
    def record_login_failure(self, key: str, window: int) -> int:
        """Count one more failure for ``key``; the count lapses ``window`` s after the last one."""

    @abstractmethod
    def hold_login_attempts(self, key: str, until: int, hold: int, window: int) -> None:
        """Refuse attempts before ``until`` (the later wins), then hold each claimed one."""

    @abstractmethod
    def claim_login_attempt(self, key: str, now: int) -> int:
        """Seconds to wait before an attempt on ``key`` may be checked; 0 claims one now.

        While a hold is in force, a successful claim pushes the next attempt ``hold`` seconds
        out at once, so concurrent guesses cannot slip through together when a wait ends.
        """

    @abstractmethod
    def clear_login_failures(self, key: str) -> None:
        """Forget the failures of ``key`` (after a successful login)."""
