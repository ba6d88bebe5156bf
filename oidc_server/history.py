"""Login history: every sign-in attempt of a known user, with where it came from."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.orm import Session
from user_agents import parse as parse_user_agent

from .models import LoginHistory
from .tokens.service import new_session_id

log = logging.getLogger(__name__)

T = TypeVar("T")


def describe_device(user_agent: str) -> str:
    """A short human summary such as ``"Chrome 120 on Windows 10 (PC)"``."""
    if not user_agent:
        return "unknown device"
    ua = parse_user_agent(user_agent[:512])
    kind = (
        "bot"
        if ua.is_bot
        else "tablet"
        if ua.is_tablet
        else "mobile"
        if ua.is_mobile
        else "PC"
        if ua.is_pc
        else "other"
    )
    browser = f"{ua.browser.family} {ua.browser.version_string}".strip()
    system = f"{ua.os.family} {ua.os.version_string}".strip()
    return f"{browser} on {system} ({kind})"[:200]


def record_login(
    session: Session,
    *,
    user_id: uuid.UUID,
    method: str,
    success: bool,
    user_agent: str,
    ip: str,
    session_id: str | None = None,
) -> LoginHistory:
    entry = LoginHistory(
        user_id=user_id,
        method=method,
        success=success,
        user_agent=user_agent[:512] or None,
        ip=ip[:64] or None,
        device=describe_device(user_agent),
        session_id=session_id,
    )
    session.add(entry)
    return entry


def record_then_start(
    session: Session,
    start: Callable[[str], T],
    *,
    user_id: uuid.UUID,
    method: str,
    user_agent: str,
    ip: str,
) -> T:
    """Commit the history row of a successful sign-in, then start its session with ``start``.

    ``start`` gets the session id the row already names. The row commits first (with whatever
    else the caller has pending): a worker killed in between leaves a row for a sign-in whose
    credentials were never handed out, never a live session the history does not show
    (tests/faults/test_crash_safety.py). If ``start`` fails, the row is withdrawn.
    """
    sid = new_session_id()
    entry = record_login(
        session,
        user_id=user_id,
        method=method,
        success=True,
        user_agent=user_agent,
        ip=ip,
        session_id=sid,
    )
    try:
        session.commit()
    except BaseException:
        session.rollback()
        raise
    try:
        return start(sid)
    except BaseException:
        withdraw(session, entry)  # e.g. the store is down: this sign-in did not happen
        raise


def withdraw(session: Session, entry: LoginHistory) -> None:
    """Delete a committed history row whose session could not start; a failure only logs."""
    try:
        session.delete(entry)
        session.commit()
    except Exception:
        session.rollback()
        log.warning("could not withdraw the history row of a sign-in that failed")
