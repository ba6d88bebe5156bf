"""Users: creation, credential checks, and the role names that go into their tokens."""

from __future__ import annotations

import uuid

from email_validator import EmailNotValidError, validate_email
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .models import Role, User, UserRole
from .security import PasswordHasher


class AccountError(ValueError):
    """A request about an account that cannot be honoured; ``code`` is machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def normalise_login(login: str) -> str:
    """Logins are emails: syntax checked, domain IDNA-normalised, the whole lowercased."""
    try:
        result = validate_email(login, check_deliverability=False)
    except EmailNotValidError as exc:
        raise AccountError("invalid_email", str(exc)) from None
    return result.normalized.lower()


def find_user_by_login(session: Session, login: str) -> User | None:
    try:
        normalised = normalise_login(login)
    except AccountError:
        return None
    return session.scalar(select(User).where(User.login == normalised))


def get_user(session: Session, user_id: str | uuid.UUID) -> User | None:
    try:
        key = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
    except ValueError:
        return None
    return session.get(User, key)


def create_user(session: Session, hasher: PasswordHasher, login: str, password: str | None) -> User:
    """Create a user; ``password`` None makes a social-only account.

    A taken login raises ``AccountError`` after rolling the whole session back: callers start
    a fresh transaction for a registration, and a savepoint would not be atomic on SQLite's
    driver (a released savepoint commits when no transaction was open).
    """
    user = User(
        login=normalise_login(login),
        password_hash=hasher.hash(password) if password is not None else None,
    )
    session.add(user)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        raise AccountError("login_taken", "this login is already registered") from None
    return user


def authenticate(
    session: Session, hasher: PasswordHasher, login: str, password: str
) -> User | None:
    """The active user with this login and password, else None.

    Unknown logins still cost one argon2id hash, so they take as long as a wrong password. A
    hash made with older argon2 parameters is replaced on a successful check.
    """
    user = find_user_by_login(session, login) if isinstance(login, str) else None
    stored = user.password_hash if user is not None else None
    if not hasher.verify(stored, password) or user is None or not user.is_active:
        return None
    if stored is not None and hasher.needs_rehash(stored):
        user.password_hash = hasher.hash(password)
    return user


def role_names(session: Session, user_id: uuid.UUID) -> list[str]:
    """The user's role names, sorted, in one query."""
    rows = session.scalars(
        select(Role.name)
        .join(UserRole, UserRole.role_id == Role.id)
        .where(UserRole.user_id == user_id)
        .order_by(Role.name)
    )
    return list(rows)
