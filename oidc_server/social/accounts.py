"""Social accounts: signing in with a provider identity, linking, listing and unlinking.

An identity is found by (provider, subject) only, never by email: an address at Google says
nothing about who owns the account with that login here. So a first sign-in whose verified
email is already a login is refused (``account_exists_link_required``) instead of merged, and
the owner links the identity from their signed-in account (pre-account-takeover defence).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .. import accounts, observability
from ..history import record_then_start
from ..models import SocialAccount, User
from ..tokens.service import LoginContext, TokenService
from .claims import SocialIdentity
from .errors import SocialError

log = logging.getLogger(__name__)

#: Scope of the first-party session a social sign-in starts.
SIGN_IN_SCOPE = "openid profile email"


@dataclass(frozen=True)
class SignInOrigin:
    """Which client the session is for and where the request came from."""

    client_id: str
    user_agent: str = ""
    ip: str = ""


@dataclass(frozen=True)
class SignInResult:
    token: dict[str, Any]
    user_id: uuid.UUID
    created: bool


def find_account(session: Session, provider: str, subject: str) -> SocialAccount | None:
    return session.scalar(
        select(SocialAccount).where(
            SocialAccount.provider == provider, SocialAccount.subject == subject
        )
    )


def _new_user_with_account(
    session: Session, provider: str, identity: SocialIdentity
) -> tuple[SocialAccount, bool]:
    """A password-less user and its social account, or the account a concurrent request made.

    Returns the account and whether this call created it.
    """
    if identity.email is None:
        raise SocialError(
            "verified_email_required",
            f"{provider.capitalize()} did not confirm a verified email address for this "
            "account, so no new account can be made from it",
        )
    if accounts.find_user_by_login(session, identity.email) is not None:
        raise SocialError(
            "account_exists_link_required",
            "an account with this email already exists; sign in to it and link "
            f"{provider.capitalize()} with POST /api/v1/users/me/social-accounts/{provider}",
        )
    user = User(login=identity.email, password_hash=None)  # the mapper normalised the email
    try:
        # Flushed without a savepoint (SQLite's driver commits a savepoint opened outside a
        # transaction): on a conflict the whole transaction, which holds only reads, rolls back.
        session.add(user)
        session.flush()
        account = SocialAccount(
            user_id=user.id, provider=provider, subject=identity.subject, email=identity.email
        )
        session.add(account)
        session.flush()
    except IntegrityError:
        session.rollback()
        # Another first sign-in of the same identity committed between our check and insert;
        # both unique indexes wait for it, so its rows are visible now.
        winner = find_account(session, provider, identity.subject)
        if winner is not None:
            return winner, False
        raise SocialError(
            "account_exists_link_required",
            "an account with this email already exists; sign in to it and link "
            f"{provider.capitalize()} from the account",
        ) from None
    return account, True


def sign_in(
    session: Session,
    tokens: TokenService,
    provider: str,
    identity: SocialIdentity,
    origin: SignInOrigin,
) -> SignInResult:
    """Sign ``identity`` in, creating its user on first use; commits and starts a session.

    Order: the user, social account and history row commit in one transaction, then the
    session is started in the token store with the id the history row names. A failed commit
    leaves nothing (and starts no session); a store failure withdraws the history row but
    keeps a newly created user and its social account. So there is never a user without its
    social account nor a session without its history row.
    """
    account = find_account(session, provider, identity.subject)
    created = False
    if account is None:
        account, created = _new_user_with_account(session, provider, identity)
    user = session.get(User, account.user_id)
    if user is None or not user.is_active:
        raise SocialError("account_disabled", "this account is disabled")
    if identity.email is not None and account.email != identity.email:
        account.email = identity.email  # keep the provider's current verified address

    login = LoginContext(
        user_id=str(user.id),
        client_id=origin.client_id,
        scope=SIGN_IN_SCOPE,
        roles=accounts.role_names(session, user.id),
        auth_method=provider,
        user_agent=origin.user_agent,
        ip=origin.ip,
    )
    # The user, social account and history row commit together, then the session starts
    # (see record_then_start). If it cannot start, only the history row is withdrawn: a new
    # user with its social account is valid without a session, and the next try finds it.
    token, _ = record_then_start(
        session,
        lambda sid: tokens.start_session(login, sid=sid),
        user_id=user.id,
        method=provider,
        user_agent=origin.user_agent,
        ip=origin.ip,
    )
    log.info(
        "social sign-in",
        extra={"provider": provider, "user_id": str(user.id), "new_user": created},
    )
    observability.tokens_issued(provider)
    return SignInResult(token=token, user_id=user.id, created=created)


def link(
    session: Session, user_id: uuid.UUID, provider: str, identity: SocialIdentity
) -> tuple[SocialAccount, bool]:
    """Link ``identity`` to the user; returns the account and whether it is new. Commits."""
    existing = find_account(session, provider, identity.subject)
    if existing is None:
        account = SocialAccount(
            user_id=user_id, provider=provider, subject=identity.subject, email=identity.email
        )
        try:
            session.add(account)
            session.flush()  # no savepoint, as in _new_user_with_account
        except IntegrityError:
            session.rollback()
            existing = find_account(session, provider, identity.subject)
            if existing is None:
                raise
        else:
            session.commit()
            log.info("social account linked", extra={"provider": provider, "user_id": str(user_id)})
            return account, True
    if existing.user_id != user_id:
        raise SocialError(
            "social_account_linked_elsewhere",
            f"this {provider.capitalize()} account is already linked to another user",
        )
    if identity.email is not None and existing.email != identity.email:
        existing.email = identity.email
    session.commit()
    return existing, False


def list_accounts(session: Session, user_id: uuid.UUID) -> list[SocialAccount]:
    """The user's social accounts, oldest link first."""
    return list(
        session.scalars(
            select(SocialAccount)
            .where(SocialAccount.user_id == user_id)
            .order_by(SocialAccount.linked_at, SocialAccount.id)
        )
    )


def unlink(session: Session, user_id: uuid.UUID, account_id: str) -> None:
    """Remove one of the user's social accounts, unless it is their last way to sign in. Commits."""
    not_found = SocialError("not_found", "no such social account")
    try:
        key = uuid.UUID(account_id)
    except ValueError:
        raise not_found from None
    # Locking the user row serialises concurrent unlinks, so two requests cannot each
    # remove one of the last two accounts of a user without a password.
    user = session.scalar(
        select(User)
        .where(User.id == user_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    account = session.get(SocialAccount, key)
    if user is None or account is None or account.user_id != user_id:
        raise not_found
    others = session.scalar(
        select(func.count())
        .select_from(SocialAccount)
        .where(SocialAccount.user_id == user_id, SocialAccount.id != key)
    )
    if not user.has_password and not others:
        raise SocialError(
            "last_sign_in_method",
            "this is the only way left to sign in to the account; set a password or link "
            "another provider first",
        )
    session.delete(account)
    session.commit()
    log.info(
        "social account unlinked", extra={"provider": account.provider, "user_id": str(user_id)}
    )
