"""Remembered consent: which scopes a person allowed a third-party client.

Kept in the database, not the token store: consent is a long-lived decision a person may
review and revoke, it must survive a Redis flush, and revoking it is a row delete. One row
per (user, client) holds the union of scopes granted so far; a request within it skips the
consent page, a request for anything more shows it again.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from .models import Consent


def has_consent(
    session: Session, user_id: uuid.UUID, client_id: str, scopes: Iterable[str]
) -> bool:
    """True if the user already allowed ``client_id`` every one of ``scopes``."""
    row = session.scalar(
        select(Consent).where(Consent.user_id == user_id, Consent.client_id == client_id)
    )
    return row is not None and set(scopes) <= set(row.scopes)


def remember_consent(
    session: Session, user_id: uuid.UUID, client_id: str, scopes: Iterable[str]
) -> None:
    """Add ``scopes`` to what the user allowed ``client_id`` (caller commits)."""
    row = session.scalar(
        select(Consent).where(Consent.user_id == user_id, Consent.client_id == client_id)
    )
    if row is None:
        session.add(Consent(user_id=user_id, client_id=client_id, scopes=sorted(set(scopes))))
    else:
        row.scopes = sorted(set(row.scopes) | set(scopes))
    session.flush()


def list_consents(session: Session, user_id: uuid.UUID) -> list[Consent]:
    """The clients the user has allowed, by client id."""
    return list(
        session.scalars(
            select(Consent).where(Consent.user_id == user_id).order_by(Consent.client_id)
        )
    )


def revoke_consent(session: Session, user_id: uuid.UUID, client_id: str) -> bool:
    """Forget the user's consent to ``client_id``; False if there was none (caller commits)."""
    result = session.execute(
        delete(Consent).where(Consent.user_id == user_id, Consent.client_id == client_id)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]
