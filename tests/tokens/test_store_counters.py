"""Both token stores keep the failed-login counter's promises, Redis also under concurrency."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from oidc_server.tokens.memory_store import MemoryTokenStore
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.store import TokenStore

from ..conftest import TEST_REDIS_URL

# Redis runs whenever TEST_REDIS_URL is set (always in CI); nothing is skipped without it.
STORES = ["memory", "redis"] if TEST_REDIS_URL else ["memory"]


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, redis_client: redis.Redis | None) -> Iterator[TokenStore]:
    if request.param == "memory":
        yield MemoryTokenStore()
        return
    assert redis_client is not None
    redis_client.flushdb()
    yield RedisTokenStore(redis_client)
    redis_client.flushdb()


def test_failures_are_counted_per_key(store: TokenStore) -> None:
    assert store.record_login_failure("a", window=60) == 1
    assert store.record_login_failure("a", window=60) == 2
    assert store.record_login_failure("b", window=60) == 1


def test_an_unknown_key_may_always_be_tried(store: TokenStore) -> None:
    assert store.claim_login_attempt("nobody", now=100) == 0
    assert store.claim_login_attempt("nobody", now=100) == 0


def test_failures_without_a_hold_never_make_anyone_wait(store: TokenStore) -> None:
    store.record_login_failure("a", window=60)
    assert store.claim_login_attempt("a", now=100) == 0
    assert store.claim_login_attempt("a", now=100) == 0


def test_a_hold_makes_attempts_wait_until_it_ends(store: TokenStore) -> None:
    store.record_login_failure("a", window=60)
    store.hold_login_attempts("a", until=110, hold=10, window=60)
    assert store.claim_login_attempt("a", now=100) == 10
    assert store.claim_login_attempt("a", now=109) == 1
    assert store.claim_login_attempt("b", now=100) == 0


def test_the_first_claim_after_a_hold_pushes_the_next_attempt_out(store: TokenStore) -> None:
    store.hold_login_attempts("a", until=110, hold=10, window=60)
    assert store.claim_login_attempt("a", now=110) == 0
    assert store.claim_login_attempt("a", now=110) == 10
    assert store.claim_login_attempt("a", now=120) == 0


def test_a_shorter_hold_never_shortens_a_longer_wait(store: TokenStore) -> None:
    store.hold_login_attempts("a", until=200, hold=100, window=600)
    store.hold_login_attempts("a", until=150, hold=50, window=600)
    assert store.claim_login_attempt("a", now=100) == 100


def test_clearing_forgets_the_count_and_the_hold(store: TokenStore) -> None:
    store.record_login_failure("a", window=60)
    store.record_login_failure("a", window=60)
    store.hold_login_attempts("a", until=200, hold=100, window=60)
    store.clear_login_failures("a")
    assert store.claim_login_attempt("a", now=100) == 0
    assert store.record_login_failure("a", window=60) == 1


def test_memory_failures_lapse_after_the_window() -> None:
    clock = Clock()
    store = MemoryTokenStore(clock=clock)
    store.record_login_failure("a", window=60)
    store.hold_login_attempts("a", until=int(clock.now) + 500, hold=10, window=60)
    clock.now += 61
    assert store.claim_login_attempt("a", now=int(clock.now)) == 0
    assert store.record_login_failure("a", window=60) == 1


def remaining_life(store: TokenStore, key: str) -> float:
    """Seconds before a failure record expires, read from each store's own bookkeeping."""
    if isinstance(store, RedisTokenStore):
        return float(store.redis.ttl(f"oidc:loginfail:{key}"))
    expires_at, _ = store._login_failures._items[key]  # type: ignore[attr-defined]
    return float(expires_at - time.time())


def test_failure_records_live_as_long_as_the_latest_window(store: TokenStore) -> None:
    store.record_login_failure("a", window=60)
    assert 50 < remaining_life(store, "a") <= 60
    store.hold_login_attempts("a", until=10**10, hold=10, window=90)
    assert 80 < remaining_life(store, "a") <= 90


def test_concurrent_claims_after_a_hold_let_exactly_one_through(store: TokenStore) -> None:
    store.hold_login_attempts("a", until=100, hold=30, window=600)
    results: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(16)

    def claim() -> None:
        barrier.wait()
        waited = store.claim_login_attempt("a", now=100)
        with lock:
            results.append(waited)

    threads = [threading.Thread(target=claim) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [0] + [30] * 15


def test_concurrent_failures_are_all_counted(store: TokenStore) -> None:
    barrier = threading.Barrier(20)

    def fail() -> None:
        barrier.wait()
        store.record_login_failure("a", window=600)

    threads = [threading.Thread(target=fail) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert store.record_login_failure("a", window=600) == 21
