"""In-process token store: the embedded default. Correct for one process only."""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from .reads import Reads
from .store import (
    RefreshRecord,
    RotateOutcome,
    RotateResult,
    Rotation,
    SessionRecord,
    TokenStore,
)


class _Expiring:
    """A dict whose entries vanish after their TTL, measured by an injectable clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any) -> Any:
        item = self._items.get(key)
        if item is None:
            return None
        expires_at, value = item
        if expires_at <= self._clock():
            del self._items[key]
            return None
        return value

    def set(self, key: Any, value: Any, ttl: float) -> None:
        self._items[key] = (self._clock() + ttl, value)

    def set_keep_ttl(self, key: Any, value: Any) -> None:
        expires_at, _ = self._items[key]
        self._items[key] = (expires_at, value)

    def pop(self, key: Any) -> Any:
        value = self.get(key)
        self._items.pop(key, None)
        return value

    def purge(self) -> None:
        now = self._clock()
        for key in [k for k, (exp, _) in self._items.items() if exp <= now]:
            del self._items[key]

    def __len__(self) -> int:
        return len(self._items)


class MemoryTokenStore(TokenStore):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._lock = threading.Lock()
        self._sessions = _Expiring(clock)
        self._refresh = _Expiring(clock)  # (sid, hash) -> [RefreshRecord, spent]
        self._denied = _Expiring(clock)
        self._once = _Expiring(clock)
        self._login_failures = _Expiring(clock)  # key -> {"count", "until", "hold"}
        self._writes = 0
        self._generations: dict[str, str] = {}

    def _tick(self) -> None:
        # Expired entries are dropped lazily on read; sweep now and then so memory stays flat.
        self._writes += 1
        if self._writes % 1000 == 0:
            for table in (
                self._sessions,
                self._refresh,
                self._denied,
                self._once,
                self._login_failures,
            ):
                table.purge()

    def start_session(
        self, session: SessionRecord, refresh_hash: str, refresh: RefreshRecord, ttl: int
    ) -> None:
        with self._lock:
            self._tick()
            self._sessions.set(session.sid, session, ttl)
            self._refresh.set((session.sid, refresh_hash), [refresh, False], ttl)

    def peek_refresh_token(self, sid: str, refresh_hash: str) -> tuple[RefreshRecord, bool] | None:
        with self._lock:
            if self._sessions.get(sid) is None:
                return None
            entry = self._refresh.get((sid, refresh_hash))
            return None if entry is None else (entry[0], entry[1])

    def rotate_refresh_token(self, rotation: Rotation) -> RotateResult:
        sid, now, ttl = rotation.sid, rotation.now, rotation.ttl
        with self._lock:
            self._tick()
            session = self._sessions.get(sid)
            entry = self._refresh.get((sid, rotation.old_hash))
            if session is None or entry is None:
                return RotateResult(RotateOutcome.INVALID)
            record, spent = entry
            if rotation.client_id is not None and record.client_id != rotation.client_id:
                return RotateResult(RotateOutcome.INVALID)
            if rotation.user_id is not None and record.user_id != rotation.user_id:
                return RotateResult(RotateOutcome.INVALID)
            if rotation.scope and not set(rotation.scope) <= set(record.scope.split()):
                return RotateResult(RotateOutcome.SCOPE_EXCEEDED)
            if spent:
                self._sessions.pop(sid)
                return RotateResult(RotateOutcome.REUSED, record)
            self._refresh.set_keep_ttl((sid, rotation.old_hash), [record, True])
            successor = replace(record, issued_at=now, expires_at=now + ttl)
            self._refresh.set((sid, rotation.new_hash), [successor, False], ttl)
            touched = replace(session, last_used_at=now)
            self._sessions.set(sid, touched, ttl)
            return RotateResult(RotateOutcome.ROTATED, record, touched)

    def add_refresh_token(
        self, sid: str, refresh_hash: str, refresh: RefreshRecord, ttl: int
    ) -> bool:
        with self._lock:
            self._tick()
            if self._sessions.get(sid) is None:
                return False
            self._refresh.set((sid, refresh_hash), [refresh, False], ttl)
            return True

    def get_session(self, sid: str) -> SessionRecord | None:
        with self._lock:
            return self._sessions.get(sid)

    def list_sessions(self, user_id: str) -> list[SessionRecord]:
        with self._lock:
            self._sessions.purge()
            found = [s for _, s in self._sessions._items.values() if s.user_id == user_id]
        return sorted(found, key=lambda s: (s.created_at, s.sid), reverse=True)

    def end_session(self, sid: str) -> None:
        with self._lock:
            self._sessions.pop(sid)

    def deny_access_token(self, jti: str, ttl: int) -> None:
        if ttl <= 0:
            return
        with self._lock:
            self._tick()
            self._denied.set(jti, True, ttl)

    def is_access_token_active(self, jti: str, sid: str | None) -> bool:
        with self._lock:
            if self._denied.get(jti):
                return False
            return sid is None or self._sessions.get(sid) is not None

    def access_token_reads(self, jti: str, sid: str | None) -> Reads[bool]:
        return Reads.local(lambda: self.is_access_token_active(jti, sid))

    def put_once(self, namespace: str, key: str, value: dict[str, Any], ttl: int) -> None:
        with self._lock:
            self._tick()
            self._once.set((namespace, key), copy.deepcopy(value), ttl)

    def peek_once(self, namespace: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            return copy.deepcopy(self._once.get((namespace, key)))

    def take_once(self, namespace: str, key: str) -> dict[str, Any] | None:
        with self._lock:
            return self._once.pop((namespace, key))

    def ping(self) -> bool:
        return True

    def get_generation(self, name: str) -> str:
        with self._lock:
            return self._generations.get(name, "")

    def generation_reads(self, name: str) -> Reads[str]:
        return Reads.local(lambda: self.get_generation(name))

    def bump_generation(self, name: str) -> None:
        with self._lock:
            self._generations[name] = uuid.uuid4().hex

    def record_login_failure(self, key: str, window: int) -> int:
        with self._lock:
            self._tick()
            entry = self._login_failures.get(key) or {"count": 0, "until": 0, "hold": 0}
            entry = {**entry, "count": entry["count"] + 1}
            self._login_failures.set(key, entry, window)
            return int(entry["count"])

    def hold_login_attempts(self, key: str, until: int, hold: int, window: int) -> None:
        with self._lock:
            self._tick()
            entry = self._login_failures.get(key) or {"count": 0, "until": 0, "hold": 0}
            entry = {**entry, "until": max(entry["until"], until), "hold": hold}
            self._login_failures.set(key, entry, window)

    def claim_login_attempt(self, key: str, now: int) -> int:
        with self._lock:
            entry = self._login_failures.get(key)
            if entry is None:
                return 0
            if entry["until"] > now:
                return int(entry["until"] - now)
            if entry["hold"] > 0:
                self._login_failures.set_keep_ttl(key, {**entry, "until": now + entry["hold"]})
            return 0

    def clear_login_failures(self, key: str) -> None:
        with self._lock:
            self._login_failures.pop(key)
