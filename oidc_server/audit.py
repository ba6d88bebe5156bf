"""The audit trail: who changed what and when, written in the same transaction as the change."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import AuditLog

#: The actor of changes made with the operator CLI; API changes name the OAuth client id.
CLI_ACTOR = "cli"

#: Upper bound of one listing, so that an operator's query cannot load the whole table.
MAX_LIST_LIMIT = 10_000


def record(
    session: Session,
    actor: str,
    action: str,
    target: str | None = None,
    details: dict[str, Any] | None = None,
) -> AuditLog:
    """Add an audit entry to ``session``; it commits (or rolls back) with the change it records."""
    entry = AuditLog(actor=actor[:200], action=action, target=target, details=details or {})
    session.add(entry)
    return entry


def list_entries(
    session: Session, since: datetime | None = None, limit: int = 100
) -> list[AuditLog]:
    """Entries at or after ``since``, newest first, at most ``limit`` of them."""
    query = select(AuditLog).order_by(AuditLog.created_at.desc(), AuditLog.id.desc())
    if since is not None:
        # Stored in UTC; SQLite keeps no offset, so the bound must be UTC too to compare.
        query = query.where(AuditLog.created_at >= _utc(since))
    return list(session.scalars(query.limit(max(1, min(limit, MAX_LIST_LIMIT)))))


_AGE = re.compile(r"(\d{1,9})([smhdw])")
_AGE_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_since(text: str, now: datetime | None = None) -> datetime:
    """An ISO 8601 date or time (UTC if it has no offset), or an age such as ``12h`` or ``7d``.

    Raises ``ValueError`` with a message fit for the operator.
    """
    text = text.strip()
    age = _AGE.fullmatch(text)
    if age:
        amount, unit = age.groups()
        return (now or datetime.now(UTC)) - timedelta(**{_AGE_UNITS[unit]: int(amount)})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use ISO 8601 such as 2026-01-31T12:00:00Z, or 30m, 12h, 7d)"
        ) from None
    return _utc(moment)


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive one (SQLite gives those back) is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def as_dict(entry: AuditLog) -> dict[str, Any]:
    """An entry as JSON-ready values."""
    return {
        "id": str(entry.id),
        "created_at": _utc(entry.created_at).isoformat(),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "details": entry.details,
    }
