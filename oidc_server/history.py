"""Login history: every sign-in attempt of a known user, with where it came from."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session
from user_agents import parse as parse_user_agent

from .models import LoginHistory


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
