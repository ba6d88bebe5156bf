"""Both token stores keep their promises under any sequence of logins, rotations, logouts and time.

A hypothesis state machine drives a store and a plain model of what the store promises side by
side: a refresh token rotates at most once, a spent one coming back ends its session, an ended
session takes every token with it, and nothing lengthens a token's life. The in-process store
runs on a fake clock, so expiry is observed by moving time. Redis runs on real time, so there
lifetimes are read back as absolute expiry times (PEXPIRETIME, bracketed by Redis' own TIME
before and after the call), which do not drift while the test runs.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from oidc_server.keys import KeyRing
from oidc_server.tokens.access_tokens import AccessTokenCodec
from oidc_server.tokens.memory_store import MemoryTokenStore
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.service import TokenService
from oidc_server.tokens.store import (
    RefreshRecord,
    RotateOutcome,
    RotateResult,
    Rotation,
    SessionRecord,
    TokenStore,
)

from ..conftest import TEST_REDIS_URL

#: The stores to check: the in-process one always, Redis whenever TEST_REDIS_URL is set (CI).
STORES = ["memory", *(["redis"] if TEST_REDIS_URL else [])]
USERS = ("u1", "u2")
#: A small pool, so that the same jti is denied twice and checked against several sessions.
JTIS = ("jti-1", "jti-2", "jti-3")
#: Redis keys expire in real time; lifetimes there get this margin so none lapses mid-test.
REAL_TIME_MARGIN = 3600
START = 1_800_000_000
#: Bounded so that both stores together take a few seconds; a step on Redis costs a few dozen
#: round trips, one in-process costs microseconds, so the in-process store gets more examples.
MACHINE_SETTINGS = settings(
    stateful_step_count=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
MACHINE_EXAMPLES = {"memory": 100, "redis": 25}


class Clock:
    def __init__(self) -> None:
        self.now = float(START)

    def __call__(self) -> float:
        return self.now


@dataclass
class Backend:
    """A fresh, empty store with the clock it runs on; ``redis`` is set for the Redis store."""

    store: TokenStore
    clock: Clock
    redis: redis.Redis | None

    def redis_ms(self) -> int:
        assert self.redis is not None
        seconds, micros = self.redis.time()
        return seconds * 1000 + micros // 1000

    def expiry_ms(self, key: str) -> int:
        """Absolute expiry of a Redis key in ms (-2: no such key, -1: never expires)."""
        assert self.redis is not None
        return int(self.redis.pexpiretime(key))


@pytest.fixture(scope="module", params=STORES)
def new_backend(
    request: pytest.FixtureRequest, redis_client: redis.Redis | None
) -> Iterator[Callable[[], Backend]]:
    """Makes a fresh store per hypothesis example (module scope: examples share no fixture)."""

    def make() -> Backend:
        clock = Clock()
        if request.param == "memory":
            return Backend(MemoryTokenStore(clock=clock), clock, None)
        assert redis_client is not None
        redis_client.flushdb()
        return Backend(RedisTokenStore(redis_client), clock, redis_client)

    yield make
    if redis_client is not None:
        redis_client.flushdb()


@dataclass
class SessionModel:
    record: SessionRecord
    expires_at: float
    ended: bool = False


@dataclass
class TokenModel:
    sid: str
    record: RefreshRecord
    expires_at: float
    spent: bool = False


class TokenStoreMachine(RuleBasedStateMachine):
    """Logins, rotations (of fresh, spent and dead tokens), logouts, denials and passing time."""

    tokens = Bundle("tokens")

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.backend = backend
        self.store = backend.store
        self.sessions: dict[str, SessionModel] = {}
        self.refresh_tokens: dict[str, TokenModel] = {}
        #: (sid, hash) of successors offered to failed rotations: none may have been stored.
        self.never_stored: list[tuple[str, str]] = []
        self.denied_until: dict[str, float] = {}
        self.counter = 0

    # The model --------------------------------------------------------------------------
    @property
    def now(self) -> float:
        return self.backend.clock.now

    def lifetime(self, seconds: int) -> int:
        return seconds if self.backend.redis is None else seconds + REAL_TIME_MARGIN

    def fresh_name(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def session_alive(self, sid: str) -> bool:
        model = self.sessions[sid]
        return not model.ended and self.now < model.expires_at

    def token_alive(self, token: TokenModel) -> bool:
        return self.session_alive(token.sid) and self.now < token.expires_at

    def denied(self, jti: str) -> bool:
        return self.now < self.denied_until.get(jti, -math.inf)

    def expected_rotation(self, token: TokenModel) -> RotateOutcome:
        if not self.token_alive(token):
            return RotateOutcome.INVALID
        return RotateOutcome.REUSED if token.spent else RotateOutcome.ROTATED

    # Redis lifetimes --------------------------------------------------------------------
    def redis_call(self, call: Callable[[], object]) -> tuple[object, int, int]:
        """Run ``call``, with Redis' clock (ms) read just before and just after it."""
        before = self.backend.redis_ms() if self.backend.redis is not None else 0
        result = call()
        after = self.backend.redis_ms() if self.backend.redis is not None else 0
        return result, before, after

    def assert_expires_in(self, key: str, ttl: int, before: int, after: int) -> None:
        """The key lives exactly ``ttl`` seconds from the moment Redis ran the call."""
        expiry = self.backend.expiry_ms(key)
        assert before + ttl * 1000 <= expiry <= after + ttl * 1000, (key, ttl, expiry, before)

    def keys(self) -> RedisTokenStore:
        assert isinstance(self.store, RedisTokenStore)
        return self.store

    # Rules ------------------------------------------------------------------------------
    @rule(target=tokens, user_id=st.sampled_from(USERS), seconds=st.integers(1, 120))
    def log_in(self, user_id: str, seconds: int) -> str:
        """A login: a new session and its first refresh token."""
        ttl = self.lifetime(seconds)
        sid, refresh_hash, now = self.fresh_name("s"), self.fresh_name("h"), int(self.now)
        session = SessionRecord(sid, user_id, "app", now, now, now, "password", "ua", "ip")
        record = RefreshRecord(sid, user_id, "app", "openid", now, now + ttl)
        _, before, after = self.redis_call(
            lambda: self.store.start_session(session, refresh_hash, record, ttl)
        )
        self.sessions[sid] = SessionModel(session, self.now + ttl)
        self.refresh_tokens[refresh_hash] = TokenModel(sid, record, self.now + ttl)
        if self.backend.redis is not None:
            self.assert_expires_in(self.keys()._session_key(sid), ttl, before, after)
            self.assert_expires_in(self.keys()._refresh_key(sid, refresh_hash), ttl, before, after)
        return refresh_hash

    @rule(target=tokens, old=tokens, seconds=st.integers(1, 120))
    def rotate(self, old: str, seconds: int) -> object:
        """Present a refresh token (fresh, spent, expired or of an ended session)."""
        token = self.refresh_tokens[old]
        expected = self.expected_rotation(token)
        ttl, new, now = self.lifetime(seconds), self.fresh_name("h"), int(self.now)
        old_key = self.keys()._refresh_key(token.sid, old) if self.backend.redis else ""
        old_expiry = self.backend.expiry_ms(old_key) if self.backend.redis else 0
        result, before, after = self.redis_call(
            lambda: self.store.rotate_refresh_token(Rotation(token.sid, old, new, now, ttl))
        )
        assert isinstance(result, RotateResult)
        assert result.outcome is expected, (old, token)
        if expected is RotateOutcome.INVALID:
            assert result.record is None
            self.never_stored.append((token.sid, new))
            return multiple()
        assert result.record == token.record
        if self.backend.redis is not None:
            # A spent token keeps the expiry it had: rotation never lengthens its life.
            assert self.backend.expiry_ms(old_key) == old_expiry
        if expected is RotateOutcome.REUSED:
            self.sessions[token.sid].ended = True
            self.never_stored.append((token.sid, new))
            return multiple()
        token.spent = True
        successor = replace(token.record, issued_at=now, expires_at=now + ttl)
        self.refresh_tokens[new] = TokenModel(token.sid, successor, self.now + ttl)
        session = self.sessions[token.sid]
        session.record = replace(session.record, last_used_at=now)
        session.expires_at = self.now + ttl
        if self.backend.redis is not None:
            # The successor, and the session with it, live exactly the configured lifetime.
            self.assert_expires_in(self.keys()._refresh_key(token.sid, new), ttl, before, after)
            self.assert_expires_in(self.keys()._session_key(token.sid), ttl, before, after)
        return multiple(new)

    @rule(token=tokens)
    def rotate_unknown(self, token: str) -> None:
        """A guessed refresh token for a real session changes nothing, and ends nothing."""
        sid = self.refresh_tokens[token].sid
        new = self.fresh_name("h")
        result = self.store.rotate_refresh_token(
            Rotation(sid, "never-issued", new, int(self.now), 60)
        )
        assert result == RotateResult(RotateOutcome.INVALID)
        self.never_stored.append((sid, new))

    @rule(token=tokens)
    def log_out(self, token: str) -> None:
        sid = self.refresh_tokens[token].sid
        self.store.end_session(sid)
        self.sessions[sid].ended = True

    @rule(user_id=st.sampled_from(USERS), keep=st.one_of(st.none(), tokens))
    def log_out_everywhere(self, user_id: str, keep: str | None) -> None:
        """End every session of a user, optionally but one (a password change)."""
        keep_sid = None if keep is None else self.refresh_tokens[keep].sid
        ending = [
            sid
            for sid, model in self.sessions.items()
            if model.record.user_id == user_id and self.session_alive(sid) and sid != keep_sid
        ]
        assert self.store.end_user_sessions(user_id, keep_sid=keep_sid) == len(ending)
        for sid in ending:
            self.sessions[sid].ended = True

    @rule(jti=st.sampled_from(JTIS), seconds=st.integers(-2, 120))
    def deny(self, jti: str, seconds: int) -> None:
        """Deny an access token for its remaining life (nothing, if it has none left)."""
        ttl = self.lifetime(seconds) if seconds > 0 else seconds
        _, before, after = self.redis_call(lambda: self.store.deny_access_token(jti, ttl))
        if ttl > 0:
            self.denied_until[jti] = self.now + ttl
            if self.backend.redis is not None:
                self.assert_expires_in(self.keys()._deny_key(jti), ttl, before, after)

    @precondition(lambda self: self.backend.redis is None)
    @rule(seconds=st.integers(1, 130))
    def time_passes(self, seconds: int) -> None:
        self.backend.clock.now += seconds

    # What must always hold --------------------------------------------------------------
    @invariant()
    def refresh_tokens_are_found_while_alive_and_only_then(self) -> None:
        for refresh_hash, token in self.refresh_tokens.items():
            expected = (token.record, token.spent) if self.token_alive(token) else None
            assert self.store.peek_refresh_token(token.sid, refresh_hash) == expected, token
        for sid, refresh_hash in self.never_stored:
            assert self.store.peek_refresh_token(sid, refresh_hash) is None

    @invariant()
    def access_tokens_live_and_die_with_their_session(self) -> None:
        for sid, model in self.sessions.items():
            alive = self.session_alive(sid)
            assert self.store.get_session(sid) == (model.record if alive else None)
            for jti in JTIS:
                expected = alive and not self.denied(jti)
                assert self.store.is_access_token_active(jti, sid) is expected, (jti, sid)
        for jti in JTIS:
            assert self.store.is_access_token_active(jti, None) is not self.denied(jti)

    @invariant()
    def each_user_sees_exactly_their_live_sessions_newest_first(self) -> None:
        for user_id in USERS:
            live = [
                model.record
                for sid, model in self.sessions.items()
                if model.record.user_id == user_id and self.session_alive(sid)
            ]
            live.sort(key=lambda s: (s.created_at, s.sid), reverse=True)
            assert self.store.list_sessions(user_id) == live

    @invariant()
    def redis_keeps_a_users_session_index_as_long_as_any_of_their_sessions(self) -> None:
        # The index is how "log out everywhere" finds sessions: if it lapsed first, a live
        # session would survive a password change.
        if self.backend.redis is None:
            return
        for sid, model in self.sessions.items():
            if self.session_alive(sid):
                index = self.backend.expiry_ms(self.keys()._user_sessions_key(model.record.user_id))
                session = self.backend.expiry_ms(self.keys()._session_key(sid))
                assert index >= session > 0, (sid, index, session)


def test_the_store_keeps_its_promises_under_any_sequence_of_operations(
    new_backend: Callable[[], Backend], request: pytest.FixtureRequest
) -> None:
    examples = MACHINE_EXAMPLES[request.node.callspec.params["new_backend"]]
    run_state_machine_as_test(
        lambda: TokenStoreMachine(new_backend()),
        settings=settings(MACHINE_SETTINGS, max_examples=examples),
    )


@settings(max_examples=15, deadline=None, database=None)
@given(workers=st.integers(2, 8), rotations_before=st.integers(0, 3), data=st.data())
def test_of_concurrent_uses_of_one_refresh_token_at_most_one_rotates_it(
    new_backend: Callable[[], Backend], workers: int, rotations_before: int, data: st.DataObject
) -> None:
    backend = new_backend()
    store = backend.store
    session = SessionRecord("s1", "u1", "app", START, START, START, "password")
    record = RefreshRecord("s1", "u1", "app", "openid", START, START + 3600)
    store.start_session(session, "h0", record, ttl=3600)
    chain = ["h0"]
    for i in range(1, rotations_before + 1):
        rotated = store.rotate_refresh_token(Rotation("s1", chain[-1], f"h{i}", START, 3600))
        assert rotated.outcome is RotateOutcome.ROTATED
        chain.append(f"h{i}")
    contended = data.draw(st.sampled_from(chain), label="contended token")

    barrier = threading.Barrier(workers)
    outcomes: list[RotateOutcome] = []
    lock = threading.Lock()

    def present(i: int) -> None:
        barrier.wait()
        outcome = store.rotate_refresh_token(
            Rotation("s1", contended, f"new-{i}", START, 3600)
        ).outcome
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=present, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    fresh = contended == chain[-1]
    # The first use of a fresh token rotates it; the next sees it spent and ends the session;
    # every later one finds the session gone.
    rotated = 1 if fresh else 0
    assert outcomes.count(RotateOutcome.ROTATED) == rotated
    assert outcomes.count(RotateOutcome.REUSED) == 1
    assert outcomes.count(RotateOutcome.INVALID) == workers - rotated - 1
    assert store.get_session("s1") is None
    successors = [f"new-{i}" for i in range(workers)]
    for refresh_hash in chain + successors:
        assert store.peek_refresh_token("s1", refresh_hash) is None
        assert store.rotate_refresh_token(Rotation("s1", refresh_hash, "x", START, 60)).outcome is (
            RotateOutcome.INVALID
        )
    assert not store.is_access_token_active("any-jti", "s1")


@pytest.fixture(scope="module")
def keyring(signing_key_file: Path, tmp_path_factory: pytest.TempPathFactory) -> KeyRing:
    folder = tmp_path_factory.mktemp("property-keys")
    (folder / signing_key_file.name).write_bytes(signing_key_file.read_bytes())
    return KeyRing(folder, max_token_lifetime=900)


@settings(max_examples=40, deadline=None, database=None)
@given(life=st.integers(1, 900), elapsed_quarters=st.integers(0, 4 * 900))
def test_a_revoked_access_token_is_denied_for_its_remaining_life_and_not_a_second_more(
    new_backend: Callable[[], Backend], keyring: KeyRing, life: int, elapsed_quarters: int
) -> None:
    # Revocation happens at any quarter second of the token's life: whole seconds included.
    elapsed = elapsed_quarters / 4
    assume(elapsed < life)
    backend = new_backend()
    codec = AccessTokenCodec(keyring, "https://id.example", "cinema", life, clock=backend.clock)
    service = TokenService(backend.store, codec, refresh_token_ttl=3600, clock=backend.clock)
    _, claims = codec.issue(subject="u1", client_id="app", scope="openid")
    backend.clock.now += elapsed
    remaining = claims["exp"] - backend.clock.now

    if backend.redis is None:
        service.revoke_access_token(claims)
        assert not backend.store.is_access_token_active(claims["jti"], None)
        backend.clock.now = claims["exp"] - 0.25
        assert not backend.store.is_access_token_active(claims["jti"], None)
        # Whole-second lifetimes: gone within the second after the token itself expires.
        backend.clock.now = claims["exp"] + 0.75
        assert backend.store.is_access_token_active(claims["jti"], None)
        return

    key = RedisTokenStore(backend.redis)._deny_key(claims["jti"])  # type: ignore[arg-type]
    before = backend.redis_ms()
    service.revoke_access_token(claims)
    after = backend.redis_ms()
    expiry = backend.expiry_ms(key)
    # Redis counts whole seconds from the moment it ran SET: the TTL it was given is the one
    # whole number of seconds between these bounds (unless the call itself took a second).
    candidates = [
        ttl for ttl in range(life + 2) if before + ttl * 1000 <= expiry <= after + ttl * 1000
    ]
    assume(len(candidates) == 1)
    (ttl,) = candidates
    assert remaining <= ttl < remaining + 1
