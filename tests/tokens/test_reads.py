"""Reads of several stores in one Redis round trip (``oidc_server.tokens.reads``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from oidc_server.roles import AccountCard, Miss, RedisRoleCache
from oidc_server.tokens.reads import Reads, read_together
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.store import StoreUnavailable

from ..support.redis_trips import round_trips
from .test_store import refresh, session


def test_reads_answered_in_memory_send_nothing_and_need_no_client(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with round_trips(monkeypatch) as trips:
        assert read_together(None, Reads.local(lambda: 1), Reads.local(lambda: "two")) == [1, "two"]
    assert trips == []


def test_reads_of_the_token_store_and_the_role_cache_share_one_round_trip(
    empty_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, cache = RedisTokenStore(empty_redis), RedisRoleCache(empty_redis, ttl=60)
    store.start_session(session("s1"), "h1", refresh("s1"), ttl=60)
    store.deny_access_token("denied-jti", ttl=60)
    cached, uncached = uuid.uuid4(), uuid.uuid4()
    miss = cache.lookup_card(cached)
    assert isinstance(miss, Miss)
    card = AccountCard(cached, "card@example.com", True, _now(), ("subscriber",))
    assert cache.fill_card(card, miss)

    with round_trips(monkeypatch) as trips:
        answers = read_together(
            empty_redis,
            store.access_token_reads("denied-jti", None),
            store.access_token_reads("live-jti", "s1"),
            store.access_token_reads("live-jti", "ended-session"),
            cache.card_reads(cached),
            cache.card_reads(uncached),
        )
    assert len(trips) == 1
    denied, live, session_ended, hit, cold = answers
    assert (denied, live, session_ended) == (False, True, False)
    assert hit == card
    assert isinstance(cold, Miss)


def test_a_miss_read_together_carries_the_generation_a_fill_checks(
    empty_redis: redis.Redis,
) -> None:
    """The generation a pipelined miss carries is the one a fill checks (see roles.py)."""
    cache = RedisRoleCache(empty_redis, ttl=60)
    user_id = uuid.uuid4()
    cache.invalidate([user_id])  # an earlier change: the generation is no longer empty
    card = AccountCard(user_id, "card@example.com", False, _now(), ())
    (miss,) = read_together(empty_redis, cache.card_reads(user_id))
    assert isinstance(miss, Miss)
    assert cache.fill_card(card, miss)  # nothing changed since the miss: stored
    assert cache.lookup_card(user_id) == card

    cache.invalidate([user_id])
    (miss,) = read_together(empty_redis, cache.card_reads(user_id))
    cache.invalidate([user_id])  # a change lands between the miss and the fill
    assert not cache.fill_card(card, miss)
    assert isinstance(cache.lookup_card(user_id), Miss)


def test_a_command_redis_refuses_fails_its_own_read_or_is_answered_by_on_error(
    empty_redis: redis.Redis,
) -> None:
    empty_redis.set("reads:a-string", "not a hash")
    refused = ("HGET", "reads:a-string", "field")
    plain = Reads((refused,), lambda replies: replies[0])
    recovered = Reads((refused,), lambda replies: "unreached", lambda error: f"on_error: {error}")
    doubled = recovered.then(lambda answer: answer.upper())

    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        read_together(empty_redis, plain, Reads((("GET", "reads:a-string"),), lambda r: r[0]))
    got, then_got, fine = read_together(
        empty_redis, recovered, doubled, Reads((("GET", "reads:a-string"),), lambda r: r[0])
    )
    assert got.startswith("on_error: WRONGTYPE")
    assert then_got == got.upper()  # ``then`` follows on_error's answer too
    assert fine == b"not a hash"  # the same round trip's other reads are answered


def test_a_node_error_in_a_replys_place_fails_closed() -> None:
    """A Cluster pipeline can leave a node's connection error where its reply would be."""
    read = Reads((("GET", "k"),), lambda replies: replies[0], lambda error: "not for these")
    with pytest.raises(StoreUnavailable):
        read.answered([redis.ConnectionError("node down")])
    with pytest.raises(StoreUnavailable):
        read.answered([redis.TimeoutError("node slow")])


def test_an_unreachable_redis_fails_closed_for_reads_together() -> None:
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0)
    )
    store, cache = RedisTokenStore(dead), RedisRoleCache(dead, ttl=60)
    with pytest.raises(StoreUnavailable):
        read_together(dead, store.access_token_reads("jti", "sid"), cache.card_reads(uuid.uuid4()))
    with pytest.raises(StoreUnavailable):
        read_together(dead, store.access_token_reads("jti", None))


def _now() -> datetime:
    return datetime.now(UTC)
