"""Relational data: users, roles, OAuth clients, social accounts, login history, audit log.

Tokens and sessions are not here: they live in the token store (Redis or in-process).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    return datetime.now(UTC)


NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

uuid_pk = Annotated[uuid.UUID, mapped_column(Uuid, primary_key=True, default=uuid.uuid4)]
timestamp = Annotated[datetime, mapped_column(DateTime(timezone=True), default=utcnow)]


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class User(Base):
    """A person. ``login`` is the normalised (lowercased) email, so uniqueness ignores case."""

    __tablename__ = "users"

    id: Mapped[uuid_pk]
    login: Mapped[str] = mapped_column(String(320), unique=True)
    # None for users who only ever signed in through Google or Yandex.
    password_hash: Mapped[str | None] = mapped_column(String(255))
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[timestamp]
    updated_at: Mapped[timestamp] = mapped_column(onupdate=utcnow)

    @property
    def has_password(self) -> bool:
        return self.password_hash is not None


class Role(Base):
    __tablename__ = "roles"

    id: Mapped[uuid_pk]
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[timestamp]


class UserRole(Base):
    __tablename__ = "user_roles"

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    role_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("roles.id", ondelete="CASCADE"), primary_key=True, index=True
    )
    created_at: Mapped[timestamp]


class OAuthClient(Base):
    """A registered OAuth client. Secrets are stored as a keyed hash, never in plaintext."""

    __tablename__ = "oauth_clients"

    id: Mapped[uuid_pk]
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    client_secret_hash: Mapped[str | None] = mapped_column(String(128))
    name: Mapped[str] = mapped_column(String(200))
    # "none" for public clients, else client_secret_basic / client_secret_post.
    is_confidential: Mapped[bool] = mapped_column(Boolean, default=True)
    is_first_party: Mapped[bool] = mapped_column(Boolean, default=False)
    grant_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    # OIDC RP-Initiated Logout 1.0: where end_session may send the browser back to.
    post_logout_redirect_uris: Mapped[list[str]] = mapped_column(JSON, default=list)
    is_active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[timestamp]


class Consent(Base):
    """Scopes a user allowed a third-party client, so the consent page is not shown again."""

    __tablename__ = "consents"
    __table_args__ = (UniqueConstraint("user_id", "client_id"),)

    id: Mapped[uuid_pk]
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    client_id: Mapped[str] = mapped_column(
        ForeignKey("oauth_clients.client_id", ondelete="CASCADE"), index=True
    )
    scopes: Mapped[list[str]] = mapped_column(JSON, default=list)
    granted_at: Mapped[timestamp] = mapped_column(onupdate=utcnow)


class SocialAccount(Base):
    """A Google or Yandex identity linked to a user, found by (provider, subject) only."""

    __tablename__ = "social_accounts"
    __table_args__ = (UniqueConstraint("provider", "subject"),)

    id: Mapped[uuid_pk]
    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    provider: Mapped[str] = mapped_column(String(32))
    subject: Mapped[str] = mapped_column(String(255))
    email: Mapped[str | None] = mapped_column(String(320))
    linked_at: Mapped[timestamp]


class LoginHistory(Base):
    """One sign-in attempt; failed attempts of known users are kept too, flagged."""

    __tablename__ = "login_history"
    __table_args__ = (
        # Serves "newest first" keyset pagination of one user's history.
        Index("ix_login_history_user_id_logged_in_at", "user_id", "logged_in_at", "id"),
    )

    id: Mapped[uuid_pk]
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    logged_in_at: Mapped[timestamp]
    method: Mapped[str] = mapped_column(String(32))
    success: Mapped[bool] = mapped_column(Boolean, default=True)
    user_agent: Mapped[str | None] = mapped_column(String(512))
    ip: Mapped[str | None] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(200))
    session_id: Mapped[str | None] = mapped_column(String(64))


class AuditLog(Base):
    """Who changed what and when, for operator queries. Never deleted with its subject."""

    __tablename__ = "audit_log"

    id: Mapped[uuid_pk]
    created_at: Mapped[timestamp] = mapped_column(index=True)
    actor: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(String(200))
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
