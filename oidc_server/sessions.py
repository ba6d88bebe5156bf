"""A user's login sessions as people see them: the devices they are signed in on.

A session is one login (the ``sid`` of its tokens), kept in the token store. Ending one
kills its refresh tokens and, through the store's session check, its access tokens at once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from .history import describe_device
from .tokens.store import SessionRecord, TokenStore


@dataclass(frozen=True)
class SessionView:
    id: str
    created_at: datetime
    last_used_at: datetime
    auth_method: str
    user_agent: str
    ip: str
    device: str
    current: bool


def _view(record: SessionRecord, current_sid: str | None) -> SessionView:
    return SessionView(
        id=record.sid,
        created_at=datetime.fromtimestamp(record.created_at, UTC),
        last_used_at=datetime.fromtimestamp(record.last_used_at, UTC),
        auth_method=record.auth_method,
        user_agent=record.user_agent,
        ip=record.ip,
        device=describe_device(record.user_agent),
        current=record.sid == current_sid,
    )


def list_sessions(store: TokenStore, user_id: str, current_sid: str | None) -> list[SessionView]:
    """The user's live sessions, newest first, the caller's own one flagged ``current``."""
    return [_view(record, current_sid) for record in store.list_sessions(user_id)]


def end_session(store: TokenStore, user_id: str, sid: str) -> bool:
    """End the user's session ``sid``; False if there is no such live session of theirs."""
    record = store.get_session(sid)
    # Someone else's session answers exactly like a missing one: nothing to learn from it.
    if record is None or record.user_id != user_id:
        return False
    store.end_session(sid)
    return True


def end_all_sessions(store: TokenStore, user_id: str, keep_sid: str | None = None) -> int:
    """End every session of the user but ``keep_sid``; returns how many ended."""
    return store.end_user_sessions(user_id, keep_sid=keep_sid)
