"""Data every deployment needs, created idempotently after migrations."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from .clients import create_client
from .config import Settings
from .models import OAuthClient, Role

FIRST_PARTY_SCOPES = ["openid", "profile", "email"]

#: The roles migration 0002 creates; kept here for tests and fresh databases alike.
DEFAULT_ROLES = {
    "admin": "Full administrative access",
    "subscriber": "A paying subscriber: the full catalogue",
    "moderator": "Moderates reviews and comments",
}


def ensure_default_roles(session: Session) -> None:
    """Create any default role that is missing."""
    existing = set(session.scalars(select(Role.name)))
    for name, description in DEFAULT_ROLES.items():
        if name not in existing:
            session.add(Role(name=name, description=description))
    session.flush()


def ensure_first_party_client(session: Session, settings: Settings) -> bool:
    """Create the cinema apps' public client if missing; True when it was created."""
    exists = session.scalar(
        select(OAuthClient.id).where(OAuthClient.client_id == settings.first_party_client_id)
    )
    if exists:
        return False
    create_client(
        session,
        settings.secret_key,
        name="Cinema apps",
        grant_types=["password", "refresh_token"],
        scopes=FIRST_PARTY_SCOPES,
        confidential=False,
        first_party=True,
        client_id=settings.first_party_client_id,
    )
    return True
