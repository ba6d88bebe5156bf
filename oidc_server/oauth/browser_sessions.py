"""The browser's sign-in at the OpenID Provider: one login session, shared with its tokens.

A browser sign-in starts an ordinary session in the token store (so the sessions list shows
it and ending it anywhere signs the browser out). The browser holds a credential for it in a
cookie: ``<sid>.<secret>``, stored like a refresh token (a SHA-256 digest only) but bound to no
client, so it can never be redeemed at the token endpoint. The ``sid`` alone (visible in every
token) is useless without the secret. Codes redeemed later add their clients' refresh tokens
to the same session, so their ``sid`` is this one and RP-initiated logout ends all of it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..security import hash_token
from ..tokens.service import new_session_id, split_refresh_token
from ..tokens.store import RefreshRecord, SessionRecord, TokenStore

#: The client id of the browser's own credential: empty, so no registered client matches it.
BROWSER_CLIENT = ""


@dataclass(frozen=True)
class BrowserLogin:
    """A new browser session and the cookie value that proves it."""

    cookie: str
    session: SessionRecord


class BrowserSessions:
    """Starts, finds and ends browser sessions in the token store."""

    def __init__(self, store: TokenStore, ttl: int, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.ttl = ttl
        self.clock = clock

    def start(
        self,
        *,
        user_id: str,
        auth_method: str,
        client_id: str,
        user_agent: str,
        ip: str,
        sid: str | None = None,
    ) -> BrowserLogin:
        """Sign a browser in; ``client_id`` is the app it signed in for ("" if none).

        ``sid`` (from ``new_session_id``) lets a caller record the session before starting it.
        """
        now = int(self.clock())
        sid = sid or new_session_id()
        session = SessionRecord(
            sid=sid,
            user_id=user_id,
            client_id=client_id,
            created_at=now,
            last_used_at=now,
            auth_time=now,
            auth_method=auth_method,
            user_agent=user_agent[:512],
            ip=ip[:64],
        )
        cookie = f"{sid}.{secrets.token_urlsafe(32)}"
        record = RefreshRecord(
            sid=sid,
            user_id=user_id,
            client_id=BROWSER_CLIENT,
            scope="",
            issued_at=now,
            expires_at=now + self.ttl,
        )
        self.store.start_session(session, hash_token(cookie), record, self.ttl)
        return BrowserLogin(cookie=cookie, session=session)

    def find(self, cookie: str | None) -> SessionRecord | None:
        """The live session a cookie value proves, or None (unknown, forged or ended)."""
        if not cookie:
            return None
        parts = split_refresh_token(cookie)
        if parts is None:
            return None
        found = self.store.peek_refresh_token(*parts)
        if found is None:
            return None
        record, spent = found
        if spent or record.client_id != BROWSER_CLIENT:
            return None
        return self.store.get_session(parts[0])

    def end(self, sid: str) -> None:
        """End the session: the browser, and every token issued in it, are signed out."""
        self.store.end_session(sid)
