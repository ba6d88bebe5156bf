"""Reading a user's login history newest first, a page at a time, by keyset (seek) pagination.

A page is ``WHERE user_id = :u AND (logged_in_at, id) < (:t, :id) ORDER BY logged_in_at
DESC, id DESC LIMIT :n``: the index ``ix_login_history_user_id_logged_in_at`` (user_id,
logged_in_at, id) answers it by a short backward range scan, so page 1,000 costs what page 1
costs. OFFSET would read and throw away every earlier row. ``id`` breaks ties between
entries recorded in the same microsecond. The cursor is opaque to clients.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Select, select, tuple_
from sqlalchemy.orm import Session

from .models import LoginHistory

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


class InvalidCursor(ValueError):
    """The cursor was not made by us (or is damaged)."""


@dataclass(frozen=True)
class HistoryEntry:
    id: uuid.UUID
    user_id: uuid.UUID
    logged_in_at: datetime
    method: str
    success: bool
    user_agent: str | None
    ip: str | None
    device: str | None


@dataclass(frozen=True)
class HistoryPage:
    items: list[HistoryEntry]
    next_cursor: str | None


def as_utc(moment: datetime) -> datetime:
    """Stored times are UTC; SQLite hands them back naive, PostgreSQL aware."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def encode_cursor(logged_in_at: datetime, entry_id: uuid.UUID) -> str:
    raw = f"{as_utc(logged_in_at).isoformat()}|{entry_id.hex}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """The position a cursor points after; raises ``InvalidCursor``."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        moment, _, entry_id = raw.partition("|")
        position = datetime.fromisoformat(moment), uuid.UUID(hex=entry_id)
    except (binascii.Error, UnicodeError, ValueError):
        raise InvalidCursor("the cursor is not valid") from None
    if position[0].tzinfo is None:
        raise InvalidCursor("the cursor is not valid")
    return as_utc(position[0]), position[1]


def page_query(
    user_id: uuid.UUID, limit: int, after: tuple[datetime, uuid.UUID] | None = None
) -> Select[tuple[LoginHistory]]:
    """The statement of one page (one row more than asked, to know whether more follow)."""
    query = select(LoginHistory).where(LoginHistory.user_id == user_id)
    if after is not None:
        position = tuple_(*after, types=(LoginHistory.logged_in_at.type, LoginHistory.id.type))
        query = query.where(
            tuple_(LoginHistory.logged_in_at, LoginHistory.id) < position,
            # Implied by the row comparison, which PostgreSQL does not prune partitions by:
            # on a partitioned history, later pages skip the months newer than their cursor.
            LoginHistory.logged_in_at <= after[0],
        )
    return query.order_by(LoginHistory.logged_in_at.desc(), LoginHistory.id.desc()).limit(limit + 1)


def history_page(
    session: Session, user_id: uuid.UUID, limit: int = DEFAULT_PAGE_SIZE, cursor: str | None = None
) -> HistoryPage:
    """One page of the user's history, newest first, and the cursor of the next if any."""
    limit = max(1, min(limit, MAX_PAGE_SIZE))
    after = decode_cursor(cursor) if cursor else None
    rows = list(session.scalars(page_query(user_id, limit, after)))
    more = len(rows) > limit
    rows = rows[:limit]
    items = [
        HistoryEntry(
            id=row.id,
            user_id=row.user_id,
            logged_in_at=as_utc(row.logged_in_at),
            method=row.method,
            success=row.success,
            user_agent=row.user_agent,
            ip=row.ip,
            device=row.device,
        )
        for row in rows
    ]
    next_cursor = encode_cursor(rows[-1].logged_in_at, rows[-1].id) if more else None
    return HistoryPage(items=items, next_cursor=next_cursor)
