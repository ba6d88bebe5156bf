"""Both token stores keep the same promises; Redis also under real concurrency."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from oidc_server.tokens.memory_store import MemoryTokenStore
from oidc_server.tokens.reads import read_together
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.store import (
    RefreshRecord,
    RotateOutcome,
    Rotation,
    SessionRecord,
    StoreUnavailable,
    TokenStore,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, redis_client: redis.Redis | None) -> Iterator[TokenStore]:
    if request.param == "memory":
        yield MemoryTokenStore()
        return
    if redis_client is None:
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")
    redis_client.flushdb()
    yield RedisTokenStore(redis_client)
    redis_client.flushdb()


def session(sid: str = "s1", user_id: str = "u1", created_at: int = 100) -> SessionRecord:
    return SessionRecord(
        sid=sid,
        user_id=user_id,
        client_id="app",
        created_at=created_at,
        last_used_at=created_at,
        auth_time=created_at,
        auth_method="password",
        user_agent="pytest",
        ip="127.0.0.1",
    )


def refresh(sid: str = "s1", user_id: str = "u1") -> RefreshRecord:
    return RefreshRecord(
        sid=sid, user_id=user_id, client_id="app", scope="openid", issued_at=100, expires_at=200
    )


def test_a_new_session_and_its_refresh_token_are_found(store: TokenStore) -> None:
    store.start_session(session(), "h1", refresh(), ttl=60)
    assert store.get_session("s1") == session()
    assert store.peek_refresh_token("s1", "h1") == (refresh(), False)
    assert store.peek_refresh_token("s1", "nope") is None


def test_rotation_spends_the_old_token_and_stores_the_new(store: TokenStore) -> None:
    store.start_session(session(), "h1", refresh(), ttl=60)
    result = store.rotate_refresh_token(Rotation("s1", "h1", "h2", now=150, ttl=60))
    assert result.outcome is RotateOutcome.ROTATED
    assert result.record == refresh()
    assert store.peek_refresh_token("s1", "h1") == (refresh(), True)
    new, spent = store.peek_refresh_token("s1", "h2")  # type: ignore[misc]
    assert not spent and new.issued_at == 150 and new.expires_at == 210
    assert store.get_session("s1").last_used_at == 150  # type: ignore[union-attr]
    assert result.session == store.get_session("s1")  # returned, so refresh needs no re-read


def test_reusing_a_spent_token_ends_the_session(store: TokenStore) -> None:
    store.start_session(session(), "h1", refresh(), ttl=60)
    store.rotate_refresh_token(Rotation("s1", "h1", "h2", now=150, ttl=60))
    reused = store.rotate_refresh_token(Rotation("s1", "h1", "h3", now=160, ttl=60))
    assert reused.outcome is RotateOutcome.REUSED
    assert store.get_session("s1") is None
    # The legitimate successor dies with its session.
    assert (
        store.rotate_refresh_token(Rotation("s1", "h2", "h4", 170, 60)).outcome
        is RotateOutcome.INVALID
    )
    assert store.list_sessions("u1") == []


@pytest.mark.parametrize(
    "claim", [{"client_id": "intruder"}, {"user_id": "u2"}], ids=["other client", "other user"]
)
def test_a_token_presented_for_another_client_or_user_is_invalid_and_stays_unspent(
    store: TokenStore, claim: dict[str, str]
) -> None:
    store.start_session(session(), "h1", refresh(), ttl=60)
    outcome = store.rotate_refresh_token(Rotation("s1", "h1", "h2", 150, 60, **claim)).outcome
    assert outcome is RotateOutcome.INVALID
    assert store.peek_refresh_token("s1", "h1") == (refresh(), False)
    assert store.get_session("s1") is not None
    rotated = store.rotate_refresh_token(
        Rotation("s1", "h1", "h2", 150, 60, client_id="app", user_id="u1")
    )
    assert rotated.outcome is RotateOutcome.ROTATED


def test_a_spent_token_of_another_client_does_not_end_the_session(store: TokenStore) -> None:
    store.start_session(session(), "h1", refresh(), ttl=60)
    store.rotate_refresh_token(Rotation("s1", "h1", "h2", 150, 60, client_id="app"))
    outcome = store.rotate_refresh_token(
        Rotation("s1", "h1", "h3", 160, 60, client_id="intruder")
    ).outcome
    assert outcome is RotateOutcome.INVALID
    assert store.get_session("s1") is not None


@pytest.mark.parametrize(
    ("asked", "outcome"),
    [
        (["openid"], RotateOutcome.ROTATED),
        (["openid", "roles:write"], RotateOutcome.SCOPE_EXCEEDED),
        (["profile"], RotateOutcome.SCOPE_EXCEEDED),
        (["open"], RotateOutcome.SCOPE_EXCEEDED),  # a prefix of a granted scope is not it
    ],
)
def test_a_refresh_may_narrow_the_scope_but_not_widen_it(
    store: TokenStore, asked: list[str], outcome: RotateOutcome
) -> None:
    store.start_session(session(), "h1", refresh(), ttl=60)  # granted: "openid"
    result = store.rotate_refresh_token(
        Rotation("s1", "h1", "h2", 150, 60, client_id="app", scope=asked)
    )
    assert result.outcome is outcome
    if outcome is RotateOutcome.SCOPE_EXCEEDED:
        # Refused before spending: the same token still rotates.
        assert store.peek_refresh_token("s1", "h1") == (refresh(), False)
        retry = store.rotate_refresh_token(Rotation("s1", "h1", "h2", 150, 60, client_id="app"))
        assert retry.outcome is RotateOutcome.ROTATED


def test_unknown_tokens_do_not_rotate(store: TokenStore) -> None:
    assert (
        store.rotate_refresh_token(Rotation("s1", "h1", "h2", 1, 60)).outcome
        is RotateOutcome.INVALID
    )
    store.start_session(session(), "h1", refresh(), ttl=60)
    assert (
        store.rotate_refresh_token(Rotation("s1", "zz", "h2", 1, 60)).outcome
        is RotateOutcome.INVALID
    )


def test_ending_a_session_kills_refresh_and_access_tokens(store: TokenStore) -> None:
    store.start_session(session(), "h1", refresh(), ttl=60)
    assert store.is_access_token_active("jti-1", "s1")
    store.end_session("s1")
    assert not store.is_access_token_active("jti-1", "s1")
    assert store.peek_refresh_token("s1", "h1") is None
    assert (
        store.rotate_refresh_token(Rotation("s1", "h1", "h2", 1, 60)).outcome
        is RotateOutcome.INVALID
    )


def test_denied_access_tokens_are_inactive(store: TokenStore) -> None:
    store.deny_access_token("jti-1", ttl=60)
    assert not store.is_access_token_active("jti-1", None)
    assert store.is_access_token_active("jti-2", None)


def test_the_access_token_check_as_a_read_answers_as_the_check_does(store: TokenStore) -> None:
    store.start_session(session("s1"), "h1", refresh("s1"), ttl=60)
    store.start_session(session("s2"), "h2", refresh("s2"), ttl=60)
    store.end_session("s2")
    store.deny_access_token("denied", ttl=60)
    client = getattr(store, "redis", None)
    cases = [("live", None), ("denied", None), ("live", "s1"), ("denied", "s1"), ("live", "s2")]
    answers = read_together(client, *(store.access_token_reads(jti, sid) for jti, sid in cases))
    assert answers == [store.is_access_token_active(jti, sid) for jti, sid in cases]
    assert answers == [True, False, True, False, False]


def test_the_rotation_as_a_step_answers_as_the_rotation_does(store: TokenStore) -> None:
    for sid in ("s1", "s2", "s3"):
        store.start_session(session(sid), "h1", refresh(sid), ttl=60)
    store.rotate_refresh_token(Rotation("s2", "h1", "h2", now=150, ttl=60))  # s2's h1 is now spent
    client = getattr(store, "redis", None)
    steps = [
        store.rotation(Rotation("s1", "h1", "h2", 150, 60, client_id="app", user_id="u1")),
        store.rotation(Rotation("s2", "h1", "h3", 160, 60)),
        store.rotation(Rotation("s3", "h1", "h2", 150, 60, scope=["roles:write"])),
        store.rotation(Rotation("s3", "h1", "h2", 150, 60, client_id="intruder")),
        store.rotation(Rotation("missing", "h1", "h2", 150, 60)),
    ]

    rotated, reused, beyond, other_client, unknown = read_together(client, *steps)

    assert rotated.outcome is RotateOutcome.ROTATED
    assert rotated.record == refresh("s1") and rotated.session == store.get_session("s1")
    assert store.peek_refresh_token("s1", "h1") == (refresh("s1"), True)
    assert reused.outcome is RotateOutcome.REUSED and reused.record == refresh("s2")
    assert store.get_session("s2") is None and "s2" not in {
        s.sid for s in store.list_sessions("u1")
    }
    assert beyond.outcome is RotateOutcome.SCOPE_EXCEEDED
    assert other_client.outcome is RotateOutcome.INVALID
    assert store.peek_refresh_token("s3", "h1") == (refresh("s3"), False)
    assert unknown.outcome is RotateOutcome.INVALID


def test_two_spends_of_one_token_in_one_round_trip_rotate_once(store: TokenStore) -> None:
    store.start_session(session(), "h1", refresh(), ttl=60)
    client = getattr(store, "redis", None)
    first, second = read_together(
        client,
        store.rotation(Rotation("s1", "h1", "h2", 150, 60)),
        store.rotation(Rotation("s1", "h1", "h3", 150, 60)),
    )
    assert (first.outcome, second.outcome) == (RotateOutcome.ROTATED, RotateOutcome.REUSED)
    assert store.get_session("s1") is None


def test_sessions_are_listed_newest_first_and_ended_per_user(store: TokenStore) -> None:
    store.start_session(session("a", created_at=1), "h1", refresh("a"), ttl=60)
    store.start_session(session("b", created_at=2), "h2", refresh("b"), ttl=60)
    store.start_session(session("c", user_id="u2"), "h3", refresh("c", "u2"), ttl=60)
    assert [s.sid for s in store.list_sessions("u1")] == ["b", "a"]
    assert store.end_user_sessions("u1", keep_sid="b") == 1
    assert [s.sid for s in store.list_sessions("u1")] == ["b"]
    assert [s.sid for s in store.list_sessions("u2")] == ["c"]


def test_single_use_values_are_taken_once(store: TokenStore) -> None:
    store.put_once("state", "k", {"nonce": "n"}, ttl=60)
    assert store.take_once("state", "k") == {"nonce": "n"}
    assert store.take_once("state", "k") is None


def test_memory_store_entries_expire_with_the_clock() -> None:
    clock = Clock()
    store = MemoryTokenStore(clock=clock)
    store.start_session(session(), "h1", refresh(), ttl=60)
    store.deny_access_token("j", ttl=10)
    store.put_once("state", "k", {}, ttl=5)
    clock.now += 61
    assert store.get_session("s1") is None
    assert store.peek_refresh_token("s1", "h1") is None
    assert store.is_access_token_active("j", None)
    assert store.take_once("state", "k") is None


def test_redis_entries_carry_ttls(redis_client: redis.Redis | None) -> None:
    if redis_client is None:
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")
    redis_client.flushdb()
    store = RedisTokenStore(redis_client)
    store.start_session(session(), "h1", refresh(), ttl=60)
    store.deny_access_token("j", ttl=10)
    ttls = {key.decode(): redis_client.ttl(key) for key in redis_client.keys("*")}
    index = store._user_sessions_key("u1")
    assert 60 < ttls.pop(index) <= 120, "the session index lives two TTLs"
    assert ttls and all(0 < ttl <= 60 for ttl in ttls.values()), ttls
    # Session keys share the {sid} hash tag so the rotation script stays on one cluster slot.
    assert {k for k in ttls if "{s1}" in k} == {"oidc:{s1}:session", "oidc:{s1}:rt:h1"}
    redis_client.flushdb()


def test_refreshes_lengthen_the_users_session_index_only_when_it_runs_short(
    redis_client: redis.Redis | None,
) -> None:
    # The index (another cluster slot than the session) is how "log out everywhere" finds
    # sessions, so it must outlive each; lengthening it on every refresh cost a round trip.
    if redis_client is None:
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")
    redis_client.flushdb()
    store = RedisTokenStore(redis_client)
    index = store._user_sessions_key("u1")
    now = int(time.time())
    store.start_session(session(created_at=now), "h0", refresh(), ttl=100)
    assert 195 <= redis_client.ttl(index) <= 200  # two TTLs
    redis_client.expire(index, 180)  # a needless EXPIRE ... GT 200 would show below
    store.rotate_refresh_token(
        Rotation("s1", "h0", "h1", now + 1, 100)
    )  # 199 s known left: untouched
    store.rotate_refresh_token(Rotation("s1", "h1", "h2", now + 40, 100))  # 160 s: still untouched
    assert 175 <= redis_client.ttl(index) <= 180
    store.rotate_refresh_token(Rotation("s1", "h2", "h3", now + 60, 100))  # 140 s < 150: lengthened
    assert 195 <= redis_client.ttl(index) <= 200
    redis_client.expire(index, 180)
    store.rotate_refresh_token(
        Rotation("s1", "h3", "h4", now + 70, 100)
    )  # 190 s known left: untouched
    assert 175 <= redis_client.ttl(index) <= 180
    assert redis_client.ttl(index) >= redis_client.ttl(store._session_key("s1"))
    redis_client.flushdb()


@pytest.mark.parametrize("workers", [16])
def test_of_concurrent_rotations_exactly_one_wins(store: TokenStore, workers: int) -> None:
    store.start_session(session(), "h0", refresh(), ttl=60)
    barrier = threading.Barrier(workers)
    outcomes: list[RotateOutcome] = []
    lock = threading.Lock()

    def attempt(i: int) -> None:
        barrier.wait()
        outcome = store.rotate_refresh_token(Rotation("s1", "h0", f"new-{i}", 150, 60)).outcome
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert outcomes.count(RotateOutcome.ROTATED) == 1
    # The first loser sees a spent token and ends the session; later ones find it gone.
    assert set(outcomes) - {RotateOutcome.ROTATED} <= {RotateOutcome.REUSED, RotateOutcome.INVALID}
    assert store.get_session("s1") is None


def test_an_unreachable_redis_fails_closed() -> None:
    no_retry = Retry(NoBackoff(), 0)
    dead = RedisTokenStore(
        redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=no_retry)
    )
    assert dead.ping() is False
    with pytest.raises(StoreUnavailable):
        dead.is_access_token_active("jti", "sid")


def test_generations_change_on_every_bump_and_never_repeat(store: TokenStore) -> None:
    assert store.get_generation("clients") == ""
    seen = {""}
    for _ in range(5):
        store.bump_generation("clients")
        tag = store.get_generation("clients")
        assert tag not in seen
        seen.add(tag)
    assert store.get_generation("other") == ""
