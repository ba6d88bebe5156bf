"""Data lifecycle: login history retention, and erasing a user (GDPR art. 17) everywhere at once.

Erasure deletes the user's row; the database's ``ON DELETE CASCADE`` takes their role
assignments, linked Google/Yandex accounts, login history and consents with it in the same
transaction. What lives outside the database is handled around that transaction:

1. every session of the user is ended in the token store first, and the role cache entry is
   invalidated: if the store is down this raises ``StoreUnavailable`` before any row changed,
   so the request can simply be retried;
2. one transaction deletes the user and writes an audit entry ``user.erased`` naming the user
   only by a keyed pseudonym (``pseudonym``), never by email or id; earlier audit entries
   about the user (role grants and revocations) are re-targeted to the same pseudonym;
3. after the commit, sessions are swept and the cache invalidated once more, catching a
   sign-in that slipped in between 1 and 2 (from then on the user cannot sign in: the row is
   gone, and every refresh and bearer check of ours looks the user up).

If the commit fails after step 1, the user still exists and has merely been signed out
everywhere: harmless, and the erasure can be repeated. The reverse order could leave a deleted
user with live tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from . import audit
from .accounts import AccountError
from .credentials import confirm_password
from .history_partitions import drop_partitions_before
from .login_backoff import LoginBackoff
from .models import AuditLog, LoginHistory, User
from .roles import RoleCache
from .security import PasswordHasher
from .tokens.store import StoreUnavailable, TokenStore

log = logging.getLogger(__name__)

#: The audit action of an erasure.
USER_ERASED: Final = "user.erased"
#: Rows deleted per transaction by the history purge: short locks on a live database.
DEFAULT_PURGE_BATCH: Final = 1000
#: Seconds since sign-in within which an account without a password may erase itself.
REAUTH_MAX_AGE: Final = 600


class UserNotFound(AccountError):
    """No such user (anymore)."""

    def __init__(self) -> None:
        super().__init__("user_not_found", "no such user")


class ReauthenticationRequired(AccountError):
    """The caller signed in too long ago for an irreversible change to be made on their word."""


@dataclass(frozen=True)
class Erasure:
    """What an erasure did."""

    pseudonym: str
    sessions_ended: int


@dataclass(frozen=True)
class Purge:
    """What a history purge did."""

    cutoff: datetime
    #: Rows deleted one batch at a time (not counting those of dropped partitions).
    deleted: int
    #: Partitions of a partitioned history dropped whole, all of their rows past the cutoff.
    dropped_partitions: list[str] = field(default_factory=list)


def pseudonym(secret_key: str, user_id: uuid.UUID) -> str:
    """A keyed digest of the user id: the audit trail's only trace of an erased user.

    Without ``SECRET_KEY`` it reveals nothing; with it, someone who already knows a user id
    (a support ticket, another service's records) can confirm that this user was erased.
    """
    digest = hmac.new(secret_key.encode(), f"erased-user:{user_id}".encode(), hashlib.sha256)
    return "erased:" + digest.hexdigest()[:32]


def authorise_erasure(
    hasher: PasswordHasher,
    user: User,
    password: str | None,
    *,
    auth_time: int | None,
    now: int,
    backoff: LoginBackoff | None = None,
) -> None:
    """Raise unless the caller has just proved to be the account's owner.

    Accounts with a password need it (failures count into the login backoff); accounts that
    sign in only through Google or Yandex need a sign-in less than ``REAUTH_MAX_AGE`` old, so
    that a stolen access or refresh token alone cannot erase anyone.
    """
    if user.has_password:
        if password is None:
            raise AccountError("password_required", "the account's password is required")
        confirm_password(hasher, user, password, backoff)
        return
    if auth_time is None or now - auth_time > REAUTH_MAX_AGE:
        raise ReauthenticationRequired(
            "reauthentication_required",
            f"sign in again, then erase the account within {REAUTH_MAX_AGE // 60} minutes",
        )


def erase_user(
    session: Session,
    store: TokenStore,
    role_cache: RoleCache,
    user_id: uuid.UUID,
    *,
    actor: str,
    initiated_by: str,
    secret_key: str,
) -> Erasure:
    """Delete the user and everything tied to them; their tokens stop working at once.

    Ends ``session``'s transaction (commit, or rollback on error). Raises ``UserNotFound``,
    or ``StoreUnavailable`` with nothing changed. See the module docstring for the order.
    """
    # The row lock makes a concurrent erasure of the same user wait, then find nothing.
    user = session.get(User, user_id, with_for_update=True)
    if user is None:
        session.rollback()
        raise UserNotFound()
    key, name = user.id, pseudonym(secret_key, user.id)
    try:
        ended = store.end_user_sessions(str(key))
        role_cache.invalidate([key])
    except StoreUnavailable:
        session.rollback()
        raise
    session.execute(delete(User).where(User.id == key))
    # Earlier entries about the user (role grants) name them by id: they now use the pseudonym,
    # so the trail still reads as one person's without pointing at anyone.
    session.execute(update(AuditLog).where(AuditLog.target == str(key)).values(target=name))
    audit.record(
        session,
        actor,
        USER_ERASED,
        name,
        {"initiated_by": initiated_by, "sessions_ended": ended},
    )
    session.commit()
    try:
        ended += store.end_user_sessions(str(key))
        role_cache.invalidate([key])
    except StoreUnavailable:
        # The user row is gone, so no refresh or bearer check of ours accepts them any more;
        # only a session started in the last moment keeps its access token until it expires.
        log.warning("could not re-check sessions and roles after an erasure")
    return Erasure(pseudonym=name, sessions_ended=ended)


def purge_login_history(
    sessions: Callable[[], Session],
    older_than_days: int,
    *,
    batch_size: int = DEFAULT_PURGE_BATCH,
    now: datetime | None = None,
) -> Purge:
    """Delete login history older than ``older_than_days``, ``batch_size`` rows a transaction.

    Each batch is its own short transaction, so a purge of millions of rows never holds locks
    for long or bloats one transaction on a live database; run it again after an interruption.
    A partitioned history (``history_partitions``) first loses every month wholly past the
    cutoff at once; batches delete only the rest.
    """
    if older_than_days < 1:
        raise ValueError("the retention must be at least one day")
    if batch_size < 1:
        raise ValueError("the batch size must be at least one")
    # UTC: SQLite keeps no offset, so the bound must be UTC like the stored values.
    cutoff = (now or datetime.now(UTC)).astimezone(UTC) - timedelta(days=older_than_days)
    with sessions() as session, session.begin():
        dropped = drop_partitions_before(session.connection(), cutoff)
    oldest = select(LoginHistory.id).where(LoginHistory.logged_in_at < cutoff).limit(batch_size)
    deleted = 0
    while True:
        with sessions() as session, session.begin():
            batch = session.execute(delete(LoginHistory).where(LoginHistory.id.in_(oldest)))
            count = batch.rowcount  # type: ignore[attr-defined]
        deleted += count
        if count < batch_size:
            return Purge(cutoff=cutoff, deleted=deleted, dropped_partitions=dropped)
