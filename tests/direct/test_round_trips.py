"""The direct answers' Redis reads, gathered per turn of the event loop (direct/round_trips.py):
one round trip for every request ready together, each request its own answers."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from typing import Any

import pytest
import redis

from oidc_server.clients import CLIENTS_GENERATION
from oidc_server.direct.round_trips import RoundTrips
from oidc_server.tokens.reads import Reads
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.store import StoreUnavailable
from tests.faults.processes import RedisInstance
from tests.support.direct import cut_off_from_redis
from tests.support.redis_trips import round_trips


@pytest.fixture(autouse=True)
def _needs_redis(services: Any) -> None:
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")


def revoked(services: Any, jti: str) -> str:
    services.store.deny_access_token(jti, 60)
    return jti


def active(services: Any, jti: str) -> Reads[bool]:
    return services.store.access_token_reads(jti, None)


def test_reads_of_requests_ready_together_share_one_round_trip(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = RoundTrips(services)
    gone = revoked(services, "revoked-jti")

    async def three_requests() -> list[Any]:
        return await asyncio.gather(
            trips.read(active(services, "live-jti")),
            trips.read(active(services, gone)),
            trips.read(active(services, "other-jti"), active(services, gone)),
        )

    with round_trips(monkeypatch) as sent:
        answers = asyncio.run(three_requests())

    assert sent == [1]
    assert answers == [[True], [False], [True, False]]


def test_a_request_alone_is_sent_at_once_and_each_turn_has_its_own_trip(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = RoundTrips(services)
    gone = revoked(services, "b")

    async def one_after_another() -> list[Any]:
        first = await trips.read(active(services, "a"))
        second = await trips.read(active(services, gone))
        return [first, second]

    with round_trips(monkeypatch) as sent:
        assert asyncio.run(one_after_another()) == [[True], [False]]
    assert sent == [1, 1]


def test_reads_answered_in_this_process_make_no_round_trip(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = RoundTrips(services)
    with round_trips(monkeypatch) as sent:
        assert asyncio.run(trips.read(Reads.local(lambda: "here"))) == ["here"]
    assert sent == []


def test_redis_unreachable_reaches_every_request_of_the_trip(services: Any) -> None:
    trips = RoundTrips(cut_off_from_redis(services))

    async def two_requests() -> list[Any]:
        return await asyncio.gather(
            trips.read(active(services, "a")),
            trips.read(active(services, "b")),
            return_exceptions=True,
        )

    answers = asyncio.run(two_requests())
    assert [type(answer) for answer in answers] == [StoreUnavailable, StoreUnavailable]


def test_a_request_cancelled_while_waiting_leaves_the_others_their_answers(
    services: Any,
) -> None:
    trips = RoundTrips(services)

    async def one_cancelled() -> Any:
        leaving = asyncio.ensure_future(trips.read(active(services, "a")))
        staying = asyncio.ensure_future(trips.read(active(services, "b")))
        await asyncio.sleep(0)  # both registered
        leaving.cancel()
        return await staying

    assert asyncio.run(one_cancelled()) == [True]


def test_the_clients_generation_is_read_once_for_a_turn_and_then_shared(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = RoundTrips(services)
    services.store.bump_generation(CLIENTS_GENERATION)
    current = services.store.get_generation(CLIENTS_GENERATION)
    arrived = time.monotonic()

    async def two_requests() -> list[Any]:
        return await asyncio.gather(
            trips.generation_and(arrived, (active(services, "a"),)),
            trips.generation_and(arrived),
        )

    with round_trips(monkeypatch) as sent:
        first, second = asyncio.run(two_requests())
    assert sent == [1]
    assert first == (current, [True]) and second == (current, [])

    # A request that arrived before that read was sent needs no read of its own.
    with round_trips(monkeypatch) as sent:
        assert asyncio.run(trips.generation_and(arrived)) == (current, [])
    assert sent == []
    # One that arrived after it does.
    with round_trips(monkeypatch) as sent:
        assert asyncio.run(trips.generation_and(time.monotonic() + 1)) == (current, [])
    assert sent == [1]


def test_a_read_redis_refuses_fails_its_own_request_alone(
    services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    trips = RoundTrips(services)
    services.redis.set("round-trips:a-string", "not a hash")
    refused = Reads((("HGET", "round-trips:a-string", "field"),), lambda replies: replies[0])

    async def two_requests() -> list[Any]:
        return await asyncio.gather(
            trips.read(refused), trips.read(active(services, "a")), return_exceptions=True
        )

    with round_trips(monkeypatch) as sent:
        failed, answered = asyncio.run(two_requests())
    assert sent == [1]
    assert isinstance(failed, redis.ResponseError) and "WRONGTYPE" in str(failed)
    assert answered == [True]


def test_an_answer_that_raises_reaches_its_own_request_alone(services: Any) -> None:
    trips = RoundTrips(services)

    def refusal(_replies: Any) -> Any:
        raise LookupError("this request's own refusal")

    raising = Reads((("GET", "round-trips:nothing"),), refusal)

    async def two_requests() -> list[Any]:
        return await asyncio.gather(
            trips.read(raising), trips.read(active(services, "a")), return_exceptions=True
        )

    failed, answered = asyncio.run(two_requests())
    assert isinstance(failed, LookupError)
    assert answered == [True]


def test_the_answer_of_a_cancelled_request_is_still_worked_out(services: Any) -> None:
    """A spend's answer finishes what its script began (the user's session index), so it runs
    even when nobody waits for it any more."""
    trips = RoundTrips(services)
    worked_out: list[Any] = []
    step = Reads((("GET", "round-trips:nothing"),), lambda replies: worked_out.append(replies))

    async def cancelled() -> Any:
        leaving = asyncio.ensure_future(trips.read(step))
        staying = asyncio.ensure_future(trips.read(active(services, "b")))
        await asyncio.sleep(0)
        leaving.cancel()
        return await staying

    assert asyncio.run(cancelled()) == [True]
    assert worked_out == [[None]]


def test_reads_made_while_a_pipeline_is_in_flight_go_together_in_the_next_one(
    services: Any, monkeypatch: pytest.MonkeyPatch, own_redis: RedisInstance
) -> None:
    """One pipeline at a time: the loop answers other requests meanwhile, and the reads they
    make gather for the next (as many requests a round trip as while the loop waited)."""
    trips = RoundTrips(replace(services, redis=own_redis.client()))

    async def three_requests() -> list[Any]:
        await trips.read(COUNTER)  # connected
        own_redis.freeze()
        first = asyncio.ensure_future(trips.read(COUNTER))
        await asyncio.sleep(0.05)  # its pipeline is written, and waits for Redis
        later = []
        for _ in range(2):  # made in turns of their own
            later.append(asyncio.ensure_future(trips.read(COUNTER)))
            await asyncio.sleep(0.02)
        own_redis.thaw()
        return [await first, *(await asyncio.gather(*later))]

    with round_trips(monkeypatch) as sent:
        answers = asyncio.run(three_requests())
    assert sent == [1, 1, 1]  # the connecting read, the first, then the two later together
    assert answers == [[2], [3], [4]]


def test_a_request_answered_by_a_pipeline_sends_its_next_read_with_those_gathered_meanwhile(
    services: Any, monkeypatch: pytest.MonkeyPatch, own_redis: RedisInstance
) -> None:
    """A refresh reads its card, then spends: the spend goes in the next pipeline together
    with the reads that gathered while the card's was out, not in one after it."""
    trips = RoundTrips(replace(services, redis=own_redis.client()))

    async def two_steps() -> list[Any]:
        first = await trips.read(COUNTER)
        return [first, await trips.read(COUNTER)]

    async def requests() -> list[Any]:
        await trips.read(COUNTER)  # connected
        own_redis.freeze()
        stepping = asyncio.ensure_future(two_steps())
        await asyncio.sleep(0.05)  # its first read is out, and waits for Redis
        other = asyncio.ensure_future(trips.read(COUNTER))
        await asyncio.sleep(0.05)
        own_redis.thaw()
        return [await stepping, await other]

    with round_trips(monkeypatch) as sent:
        stepped, other = asyncio.run(requests())
    assert sent == [1, 1, 1]  # the connecting read, the first step, then the rest together
    assert stepped[0] == [2] and sorted([stepped[1], other]) == [[3], [4]]


#: A read whose answer counts the reads before it.
COUNTER = Reads((("INCR", "round-trips:n"),), lambda replies: replies[0])
