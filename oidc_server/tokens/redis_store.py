"""Redis token store, shared by every worker and node.

Keys of one session share the hash tag ``{sid}`` so that the rotation script, which touches
the session and two of its refresh tokens, stays on one Redis Cluster slot.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import redis
from redis.cluster import RedisCluster
from redis.exceptions import NoScriptError

from . import redis_connect
from .reads import Reads, read_together
from .redis_connect import UNAVAILABLE
from .store import (
    RefreshRecord,
    RotateOutcome,
    RotateResult,
    Rotation,
    SessionRecord,
    StoreUnavailable,
    TokenStore,
)

#: Generation tags live a week; an expired tag reads as "" and simply invalidates caches.
GENERATION_TTL = 7 * 24 * 3600

P = ParamSpec("P")
R = TypeVar("R")

# KEYS: session, old refresh token, new refresh token.
# ARGV: now, ttl, the session index's TTL, the presenting client's id and the token's claimed
# user ('' for any), then the scopes asked for (if any). The token endpoint's checks run here,
# before the token is spent, so that a refresh needs no separate read of the token (RFC 6749
# §6: another client's token, or a scope beyond the grant, is refused and spends nothing).
# Spent tokens keep their own TTL so reuse is recognised for as long as they could have lived.
# The session's ``index_until`` says how long the user's session index is known to live. When
# less than 1.5 TTLs are left, the caller lengthens the index (another slot, so not here) to
# its TTL (``_index_ttl``, two TTLs): that round trip is then spared on all refreshes but about
# one per half TTL, and the half TTL of slack covers clock skew between the app nodes that
# wrote and read the mark.
_ROTATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {'invalid'} end
local rec = redis.call('HGETALL', KEYS[2])
if #rec == 0 then return {'invalid'} end
local field = {}
for i = 1, #rec, 2 do field[rec[i]] = rec[i + 1] end
if ARGV[4] ~= '' and field['client_id'] ~= ARGV[4] then return {'invalid'} end
if ARGV[5] ~= '' and field['user_id'] ~= ARGV[5] then return {'invalid'} end
if #ARGV > 5 then
  local granted = {}
  for s in string.gmatch(field['scope'] or '', '%S+') do granted[s] = true end
  for i = 6, #ARGV do
    if not granted[ARGV[i]] then return {'scope_exceeded'} end
  end
end
if field['spent'] == '1' then
  redis.call('DEL', KEYS[1])
  return {'reused', unpack(rec)}
end
redis.call('HSET', KEYS[2], 'spent', '1')
local now = tonumber(ARGV[1])
local ttl = tonumber(ARGV[2])
redis.call('HSET', KEYS[3], unpack(rec))
redis.call('HSET', KEYS[3], 'issued_at', now, 'expires_at', now + ttl, 'spent', '0')
redis.call('EXPIRE', KEYS[3], ttl)
redis.call('HSET', KEYS[1], 'last_used_at', now)
redis.call('EXPIRE', KEYS[1], ttl)
local extend_index = '0'
local index_until = tonumber(redis.call('HGET', KEYS[1], 'index_until') or '0')
if index_until < now + ttl + math.floor(ttl / 2) then
  redis.call('HSET', KEYS[1], 'index_until', now + tonumber(ARGV[3]))
  extend_index = '1'
end
-- The record, then the touched session: callers need no second round trip for it.
local out = {'rotated', extend_index, tostring(#rec)}
for i = 1, #rec do out[#out + 1] = rec[i] end
local session = redis.call('HGETALL', KEYS[1])
for i = 1, #session do out[#out + 1] = session[i] end
return out
"""


# KEYS: session, new refresh token. ARGV: ttl, then the record's field/value pairs.
_ADD_REFRESH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[2], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[2], tonumber(ARGV[1]))
return 1
"""

# KEYS: the failure record. ARGV: until, hold, window. The later "not before" wins so that
# concurrent failures never shorten a wait.
_HOLD = """
local current = redis.call('HGET', KEYS[1], 'until')
if (not current) or tonumber(current) < tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'until', ARGV[1])
end
redis.call('HSET', KEYS[1], 'hold', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS: the failure record. ARGV: now. Answers the seconds to wait, or 0 after claiming.
_CLAIM = """
local until_ = tonumber(redis.call('HGET', KEYS[1], 'until') or '0')
local now = tonumber(ARGV[1])
if until_ > now then return until_ - now end
local hold = tonumber(redis.call('HGET', KEYS[1], 'hold') or '0')
if hold > 0 then redis.call('HSET', KEYS[1], 'until', now + hold) end
return 0
"""


def _fail_closed(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except UNAVAILABLE as exc:
            raise StoreUnavailable("token store unavailable") from exc

    return wrapper


def _index_ttl(refresh_ttl: int) -> int:
    """How long a user's session index is made to live: two refresh-token TTLs (see _ROTATE)."""
    return 2 * refresh_ttl


def _pairs(flat: list[Any]) -> dict[str, str]:
    items = [x.decode() if isinstance(x, bytes) else x for x in flat]
    return dict(zip(items[::2], items[1::2], strict=True))


class RedisTokenStore(TokenStore):
    def __init__(self, client: redis.Redis, prefix: str = "oidc") -> None:
        self.redis = client
        self.prefix = prefix
        self._rotate = client.register_script(_ROTATE)
        self._add_refresh = client.register_script(_ADD_REFRESH)
        self._hold = client.register_script(_HOLD)
        self._claim = client.register_script(_CLAIM)

    @classmethod
    def from_url(cls, url: str) -> RedisTokenStore:
        client = redis_connect.connect(
            url, socket_timeout=2, socket_connect_timeout=2, health_check_interval=30
        )
        return cls(client)

    # Key layout ---------------------------------------------------------------------------
    def _session_key(self, sid: str) -> str:
        return f"{self.prefix}:{{{sid}}}:session"

    def _refresh_key(self, sid: str, refresh_hash: str) -> str:
        return f"{self.prefix}:{{{sid}}}:rt:{refresh_hash}"

    def _user_sessions_key(self, user_id: str) -> str:
        return f"{self.prefix}:user:{{{user_id}}}:sessions"

    def _deny_key(self, jti: str) -> str:
        return f"{self.prefix}:deny:{jti}"

    def _once_key(self, namespace: str, key: str) -> str:
        return f"{self.prefix}:once:{namespace}:{key}"

    def _login_failures_key(self, key: str) -> str:
        return f"{self.prefix}:loginfail:{key}"

    # Sessions and refresh tokens ----------------------------------------------------------
    @_fail_closed
    def start_session(
        self, session: SessionRecord, refresh_hash: str, refresh: RefreshRecord, ttl: int
    ) -> None:
        session_key = self._session_key(session.sid)
        refresh_key = self._refresh_key(session.sid, refresh_hash)
        index_key = self._user_sessions_key(session.user_id)
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(refresh_key, mapping={**refresh.to_fields(), "spent": "0"})
        pipe.expire(refresh_key, ttl)
        # The index is made to live two TTLs, and the session remembers it (index_until), so
        # that its refreshes need not lengthen the index for half a TTL (see _ROTATE).
        index_ttl = _index_ttl(ttl)
        index_until = str(session.created_at + index_ttl)
        pipe.hset(session_key, mapping={**session.to_fields(), "index_until": index_until})
        pipe.expire(session_key, ttl)
        pipe.zadd(index_key, {session.sid: session.created_at})
        # Only ever lengthen the index's life: a login with a shorter TTL (REFRESH_TOKEN_TTL
        # lowered) must not let it lapse before the user's older sessions, or "log out
        # everywhere" would miss them. NX sets it on a new index; GT only raises it.
        pipe.expire(index_key, index_ttl, nx=True)
        pipe.expire(index_key, index_ttl, gt=True)
        pipe.execute()

    @_fail_closed
    def peek_refresh_token(self, sid: str, refresh_hash: str) -> tuple[RefreshRecord, bool] | None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.exists(self._session_key(sid))
        pipe.hgetall(self._refresh_key(sid, refresh_hash))
        alive, fields = pipe.execute()
        if not alive or not fields:
            return None
        decoded = {k.decode(): v.decode() for k, v in fields.items()}
        return RefreshRecord.from_fields(decoded), decoded.get("spent") == "1"

    @_fail_closed
    def rotate_refresh_token(self, rotation: Rotation) -> RotateResult:
        keys, args = self._rotate_inputs(rotation)
        return self._rotated(rotation, self._rotate(keys=keys, args=args))

    def rotation(self, rotation: Rotation) -> Reads[RotateResult]:
        keys, args = self._rotate_inputs(rotation)

        def reloaded(refused: redis.ResponseError) -> RotateResult:
            # NOSCRIPT (a restarted or failed-over Redis, SCRIPT FLUSH): nothing ran, so the
            # call that loads the script may run it now.
            if not isinstance(refused, NoScriptError):
                raise refused
            return self.rotate_refresh_token(rotation)

        return Reads(
            (("EVALSHA", self._rotate.sha, len(keys), *keys, *args),),
            lambda replies: self._rotated(rotation, replies[0]),
            reloaded,
        )

    def _rotate_inputs(self, rotation: Rotation) -> tuple[list[str], list[Any]]:
        sid, ttl = rotation.sid, rotation.ttl
        keys = [
            self._session_key(sid),
            self._refresh_key(sid, rotation.old_hash),
            self._refresh_key(sid, rotation.new_hash),
        ]
        checks = [rotation.client_id or "", rotation.user_id or "", *(rotation.scope or ())]
        return keys, [rotation.now, ttl, _index_ttl(ttl), *checks]

    @_fail_closed
    def _rotated(self, rotation: Rotation, reply: list[bytes]) -> RotateResult:
        """The result of ``_ROTATE``'s reply, after the user's session index is kept in step
        with it (another slot than the session's, so not in the script)."""
        sid, ttl = rotation.sid, rotation.ttl
        outcome = RotateOutcome(reply[0].decode())
        if outcome in (RotateOutcome.INVALID, RotateOutcome.SCOPE_EXCEEDED):
            return RotateResult(outcome)
        if outcome is RotateOutcome.REUSED:
            record = RefreshRecord.from_fields(_pairs(reply[1:]))
            self.redis.zrem(self._user_sessions_key(record.user_id), sid)
            return RotateResult(outcome, record)
        extend_index, size = reply[1] == b"1", int(reply[2])
        record = RefreshRecord.from_fields(_pairs(reply[3 : 3 + size]))
        session = SessionRecord.from_fields(_pairs(reply[3 + size :]))
        if extend_index:
            self.redis.expire(self._user_sessions_key(record.user_id), _index_ttl(ttl), gt=True)
        return RotateResult(outcome, record, session)

    @_fail_closed
    def add_refresh_token(
        self, sid: str, refresh_hash: str, refresh: RefreshRecord, ttl: int
    ) -> bool:
        fields = {**refresh.to_fields(), "spent": "0"}
        pairs = [item for field_value in fields.items() for item in field_value]
        keys = [self._session_key(sid), self._refresh_key(sid, refresh_hash)]
        return bool(self._add_refresh(keys=keys, args=[ttl, *pairs]))

    @_fail_closed
    def get_session(self, sid: str) -> SessionRecord | None:
        fields = self.redis.hgetall(self._session_key(sid))
        if not fields:
            return None
        return SessionRecord.from_fields({k.decode(): v.decode() for k, v in fields.items()})

    @_fail_closed
    def list_sessions(self, user_id: str) -> list[SessionRecord]:
        index_key = self._user_sessions_key(user_id)
        sids = [s.decode() for s in self.redis.zrevrange(index_key, 0, -1)]
        if not sids:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for sid in sids:
            pipe.hgetall(self._session_key(sid))
        found, gone = [], []
        for sid, fields in zip(sids, pipe.execute(), strict=True):
            if fields:
                found.append(
                    SessionRecord.from_fields({k.decode(): v.decode() for k, v in fields.items()})
                )
            else:
                gone.append(sid)
        if gone:  # expired sessions leave their index entry behind; drop it here
            self.redis.zrem(index_key, *gone)
        return found

    @_fail_closed
    def end_session(self, sid: str) -> None:
        session = self.get_session(sid)
        self.redis.delete(self._session_key(sid))
        if session is not None:
            self.redis.zrem(self._user_sessions_key(session.user_id), sid)

    # Access tokens ------------------------------------------------------------------------
    @_fail_closed
    def deny_access_token(self, jti: str, ttl: int) -> None:
        if ttl > 0:
            self.redis.set(self._deny_key(jti), b"1", ex=ttl)

    def is_access_token_active(self, jti: str, sid: str | None) -> bool:
        return read_together(self.redis, self.access_token_reads(jti, sid))[0]

    def access_token_reads(self, jti: str, sid: str | None) -> Reads[bool]:
        denied = ("EXISTS", self._deny_key(jti))
        if sid is None:
            return Reads((denied,), lambda replies: not replies[0])
        alive = ("EXISTS", self._session_key(sid))
        return Reads((denied, alive), lambda replies: not replies[0] and bool(replies[1]))

    # Single-use values --------------------------------------------------------------------
    @_fail_closed
    def put_once(self, namespace: str, key: str, value: dict[str, Any], ttl: int) -> None:
        self.redis.set(self._once_key(namespace, key), json.dumps(value), ex=ttl)

    @_fail_closed
    def peek_once(self, namespace: str, key: str) -> dict[str, Any] | None:
        raw = self.redis.get(self._once_key(namespace, key))
        return None if raw is None else json.loads(raw)

    @_fail_closed
    def take_once(self, namespace: str, key: str) -> dict[str, Any] | None:
        raw = self.redis.getdel(self._once_key(namespace, key))
        return None if raw is None else json.loads(raw)

    # Failed-login backoff -----------------------------------------------------------------
    @_fail_closed
    def record_login_failure(self, key: str, window: int) -> int:
        record = self._login_failures_key(key)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hincrby(record, "count", 1)
        pipe.expire(record, window)
        count, _ = pipe.execute()
        return int(count)

    @_fail_closed
    def hold_login_attempts(self, key: str, until: int, hold: int, window: int) -> None:
        self._hold(keys=[self._login_failures_key(key)], args=[until, hold, window])

    @_fail_closed
    def claim_login_attempt(self, key: str, now: int) -> int:
        return int(self._claim(keys=[self._login_failures_key(key)], args=[now]))

    @_fail_closed
    def clear_login_failures(self, key: str) -> None:
        self.redis.delete(self._login_failures_key(key))

    def get_generation(self, name: str) -> str:
        return read_together(self.redis, self.generation_reads(name))[0]

    def generation_reads(self, name: str) -> Reads[str]:
        return Reads(
            (("GET", self._generation_key(name)),),
            lambda replies: replies[0].decode() if replies[0] else "",
        )

    @_fail_closed
    def bump_generation(self, name: str) -> None:
        # A random tag, not a counter: if the key expires, a later bump can never bring
        # back a value some worker cached under before.
        self.redis.set(self._generation_key(name), uuid.uuid4().hex, ex=GENERATION_TTL)

    def _generation_key(self, name: str) -> str:
        return f"{self.prefix}:generation:{name}"

    def ping(self) -> bool:
        try:
            if isinstance(self.redis, RedisCluster):
                # Its nodes answer PING while the cluster is down and refuses every key.
                return bool(self.redis.cluster_info().get("cluster_state") == "ok")
            return bool(self.redis.ping())
        except UNAVAILABLE:
            return False
