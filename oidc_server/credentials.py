"""Passwords: registering with one, signing in with it (under the backoff), changing it."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from .accounts import AccountError, authenticate, create_user, find_user_by_login, normalise_login
from .history import record_login
from .login_backoff import LoginBackoff
from .models import User
from .passwords_policy import check_password
from .security import PasswordHasher
from .tokens.store import StoreUnavailable, TokenStore

log = logging.getLogger(__name__)


class WrongPassword(AccountError):
    """The current password given to authorise a change is not the account's."""


class TooManyAttempts(AccountError):
    """Too many wrong passwords for this account lately; ``retry_after`` seconds to wait."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("too_many_attempts", "too many wrong passwords; retry later")
        self.retry_after = retry_after


def register(session: Session, hasher: PasswordHasher, login: str, password: str) -> User:
    """Create a password account; raises ``AccountError`` or ``PasswordRejected``.

    Everything is validated before anything is hashed or written, and a taken login is
    reported only after the password passed: the policy never depends on who exists.
    """
    normalised = normalise_login(login)
    check_password(password, normalised)
    return create_user(session, hasher, normalised, password)


def sign_in_with_password(
    session: Session,
    hasher: PasswordHasher,
    backoff: LoginBackoff | None,
    login: str,
    password: str,
    *,
    user_agent: str,
    ip: str,
) -> User | None:
    """One password sign-in attempt: the account's backoff, the check, a failure's history.

    Raises ``TooManyAttempts`` while the backoff holds, before the password is checked and for
    unknown logins alike (no enumeration). None for an unknown login, a wrong password and a
    disabled account alike; a failure against an existing account is recorded and committed.
    On success the caller records the sign-in with the session it starts.
    """
    if backoff is not None:
        wait = backoff.wait_before_attempt(login)
        if wait:
            raise TooManyAttempts(wait)
    user = authenticate(session, hasher, login, password)
    if user is None:
        if backoff is not None:
            backoff.record_failure(login)
        known = find_user_by_login(session, login)
        if known is not None:
            record_login(
                session,
                user_id=known.id,
                method="password",
                success=False,
                user_agent=user_agent,
                ip=ip,
            )
            session.commit()
        return None
    if backoff is not None:
        backoff.record_success(login)
    return user


def confirm_password(
    hasher: PasswordHasher,
    user: User,
    password: str,
    backoff: LoginBackoff | None,
    wrong_message: str = "the password is not correct",
) -> None:
    """Check a signed-in user's password again, under the same backoff as sign-ins."""
    if backoff is not None:
        wait = backoff.wait_before_attempt(user.login)
        if wait:
            raise TooManyAttempts(wait)
    if not hasher.verify(user.password_hash, password):
        if backoff is not None:
            backoff.record_failure(user.login)
        raise WrongPassword("wrong_password", wrong_message)
    if backoff is not None:
        backoff.record_success(user.login)


def change_password(
    session: Session,
    hasher: PasswordHasher,
    store: TokenStore,
    user: User,
    old_password: str,
    new_password: str,
    keep_sid: str | None,
    backoff: LoginBackoff | None = None,
) -> int:
    """Replace the user's password and end every session but ``keep_sid``; returns how many.

    Sessions are ended before the commit, so a store outage leaves the old password in
    place rather than a changed password with the old sessions alive; they are swept once
    more after the commit to catch a login made with the old password in between.
    """
    if not user.has_password:
        raise AccountError("no_password", "this account signs in through Google or Yandex only")
    confirm_password(hasher, user, old_password, backoff, "the current password is not correct")
    check_password(new_password, user.login)
    user.password_hash = hasher.hash(new_password)
    session.flush()
    ended = store.end_user_sessions(str(user.id), keep_sid=keep_sid)
    session.commit()
    try:
        ended += store.end_user_sessions(str(user.id), keep_sid=keep_sid)
    except StoreUnavailable:
        # The first sweep worked a moment ago; only a login within that moment could survive.
        log.warning("could not re-check sessions after a password change")
    return ended
