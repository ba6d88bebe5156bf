"""Redis pipelines written and read by the event loop (``oidc_server.tokens.loop_redis``):
the replies redis-py's pipeline gives, while the loop goes on with other work."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
from redis.exceptions import NoScriptError
from redis.sentinel import Sentinel

from oidc_server.tokens.loop_redis import LoopRedis
from oidc_server.tokens.store import StoreUnavailable

from ..faults.processes import RedisInstance
from ..support.redis_deployments import SERVICE, SentinelDeployment, TlsRedis
from ..support.waiting import wait_for


def pipelined(client: redis.Redis, commands: list[tuple[Any, ...]]) -> list[Any]:
    """What redis-py's own pipeline answers for ``commands``."""
    pipe = client.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return pipe.execute(raise_on_error=False)


# Which clients -------------------------------------------------------------------------------


def test_a_single_server_over_tcp_tls_or_a_unix_socket_is_read_on_the_loop() -> None:
    for url in ("redis://127.0.0.1:1/2", "rediss://127.0.0.1:1/0", "unix:///tmp/r.sock"):
        assert isinstance(LoopRedis.for_client(redis.Redis.from_url(url)), LoopRedis)


@pytest.mark.parametrize("tls", [False, True], ids=["TCP", "TLS"])
def test_the_master_behind_sentinel_is_read_on_the_loop(tls: bool) -> None:
    sentinel = Sentinel([("127.0.0.1", 1)])
    master = sentinel.master_for("svc", ssl=tls)  # asks nothing until it connects
    assert isinstance(LoopRedis.for_client(master), LoopRedis)


@pytest.mark.parametrize(
    "made",
    [
        pytest.param(lambda: Sentinel([("127.0.0.1", 1)]).slave_for("svc"), id="replicas"),
        pytest.param(
            lambda: redis.Redis.from_url("redis://127.0.0.1:1/0", decode_responses=True),
            id="decoded replies",
        ),
        pytest.param(lambda: redis.Redis.from_url("redis://127.0.0.1:1/0?protocol=3"), id="RESP3"),
    ],
)
def test_other_deployments_keep_redis_pys_round_trip(made: Any) -> None:
    assert LoopRedis.for_client(made()) is None


def test_a_cluster_client_keeps_redis_pys_round_trip() -> None:
    # A RedisCluster connects to its nodes as it is made; the check is on its type alone.
    assert LoopRedis.for_client(object.__new__(redis.RedisCluster)) is None


# Replies -------------------------------------------------------------------------------------


def test_replies_are_redis_pys_for_the_same_commands(empty_redis: redis.Redis) -> None:
    empty_redis.hset("loop:hash", mapping={"a": "1", "b": "2"})
    empty_redis.set("loop:string", "text")
    empty_redis.sadd("loop:set", "x")
    commands: list[tuple[Any, ...]] = [
        ("GET", "loop:string"),
        ("GET", "loop:absent"),
        ("MGET", "loop:string", "loop:absent"),
        ("HGETALL", "loop:hash"),  # redis-py makes this a dict
        ("EXISTS", "loop:hash"),
        ("SMISMEMBER", "loop:set", "x", "y"),
        ("EVAL", "return {1, 'two', false}", 0),
        ("HGET", "loop:string", "field"),  # WRONGTYPE: the error stands in its place
        ("EVALSHA", "0" * 40, 0),  # NOSCRIPT: the class redis-py raises for it
    ]
    loop_redis = LoopRedis(empty_redis)

    replies = asyncio.run(_sent(loop_redis, commands))

    expected = pipelined(empty_redis, commands)
    assert replies[:7] == expected[:7]
    assert replies[3] == {b"a": b"1", b"b": b"2"}
    assert isinstance(replies[7], redis.ResponseError) and "WRONGTYPE" in str(replies[7])
    assert type(replies[7]) is type(expected[7])
    assert isinstance(replies[8], NoScriptError) and isinstance(expected[8], NoScriptError)


def test_pipelines_in_flight_together_are_answered_each_with_its_own(
    empty_redis: redis.Redis,
) -> None:
    loop_redis = LoopRedis(empty_redis)

    async def three_at_once() -> list[Any]:
        sent = [
            loop_redis.send([("INCR", "loop:n"), ("INCR", "loop:n")]),
            loop_redis.send([("INCR", "loop:n")]),
            loop_redis.send([("GET", "loop:n"), ("INCR", "loop:n")]),
        ]
        assert loop_redis.in_flight == 3  # all written before any reply was read
        return list(await asyncio.gather(*sent))

    assert asyncio.run(three_at_once()) == [[1, 2], [3], [b"3", 4]]


def test_a_pipeline_larger_than_the_sockets_buffers_goes_whole(empty_redis: redis.Redis) -> None:
    big = "x" * 3_000_000
    commands: list[tuple[Any, ...]] = [("SET", f"loop:big:{i}", big) for i in range(4)]
    commands += [("STRLEN", f"loop:big:{i}") for i in range(4)]
    commands += [("GET", "loop:big:0")]

    replies = asyncio.run(_sent(LoopRedis(empty_redis), commands))

    assert replies[:4] == [True] * 4  # SET's callback, as redis-py gives it
    assert replies[4:8] == [len(big)] * 4
    assert replies[8] == big.encode()


def test_the_database_of_the_url_is_the_one_read(empty_redis: redis.Redis) -> None:
    url = empty_redis.connection_pool.connection_kwargs
    other_db = (url.get("db", 0) + 1) % 16
    other = redis.Redis(host=url["host"], port=url["port"], db=other_db)
    other.set("loop:which-db", "other")
    try:
        replies = asyncio.run(_sent(LoopRedis(other), [("GET", "loop:which-db")]))
        mine = asyncio.run(_sent(LoopRedis(empty_redis), [("GET", "loop:which-db")]))
    finally:
        other.delete("loop:which-db")
    assert replies == [b"other"] and mine == [None]


# The loop goes on ---------------------------------------------------------------------------


def test_the_loop_goes_on_while_redis_has_not_answered(own_redis: RedisInstance) -> None:
    loop_redis = LoopRedis(redis.Redis(port=own_redis.port, socket_timeout=10))

    async def while_frozen() -> tuple[int, list[Any]]:
        assert await loop_redis.send([("PING",)]) == [True]  # connected
        own_redis.freeze()
        pending = loop_redis.send([("SET", "loop:k", "v"), ("GET", "loop:k")])
        ticks = 0
        for _ in range(5):  # the loop runs other work meanwhile
            await asyncio.sleep(0.02)
            ticks += 1
        assert not pending.done()
        own_redis.thaw()
        return ticks, await pending

    assert asyncio.run(while_frozen()) == (5, [True, b"v"])


# Failures ------------------------------------------------------------------------------------


def test_nothing_listening_is_store_unavailable() -> None:
    from ..support.waiting import free_port

    loop_redis = LoopRedis(redis.Redis(port=free_port(), socket_connect_timeout=0.5))
    with pytest.raises(StoreUnavailable):
        asyncio.run(_sent(loop_redis, [("PING",)]))


def test_a_redis_that_stops_answering_fails_what_is_in_flight_and_the_next_connects_again(
    own_redis: RedisInstance,
) -> None:
    loop_redis = LoopRedis(redis.Redis(port=own_redis.port, socket_timeout=0.3))

    async def frozen_then_thawed() -> tuple[list[Any], list[Any]]:
        assert await loop_redis.send([("PING",)]) == [True]
        own_redis.freeze()
        first = loop_redis.send([("PING",)])
        second = loop_redis.send([("PING",)])
        outcomes = await asyncio.gather(first, second, return_exceptions=True)
        own_redis.thaw()
        return outcomes, await loop_redis.send([("SET", "loop:after", "1"), ("GET", "loop:after")])

    outcomes, after = asyncio.run(frozen_then_thawed())
    assert [type(outcome) for outcome in outcomes] == [StoreUnavailable, StoreUnavailable]
    assert isinstance(outcomes[0].__cause__, redis.TimeoutError)
    assert after == [True, b"1"]


def test_a_connection_redis_closes_is_noticed_and_replaced(empty_redis: redis.Redis) -> None:
    loop_redis = LoopRedis(empty_redis)

    async def killed_while_idle() -> list[Any]:
        (first_id,) = await loop_redis.send([("CLIENT", "ID")])
        empty_redis.client_kill_filter(_id=first_id)
        await asyncio.sleep(0.1)  # the loop reads the end of the connection meanwhile
        return [first_id, *(await loop_redis.send([("CLIENT", "ID"), ("PING",)]))]

    first_id, second_id, pong = asyncio.run(killed_while_idle())
    assert second_id != first_id and pong is True


def test_a_redis_killed_with_pipelines_in_flight_fails_them_as_unavailable(
    own_redis: RedisInstance,
) -> None:
    loop_redis = LoopRedis(redis.Redis(port=own_redis.port, socket_timeout=10))

    async def killed() -> list[Any]:
        assert await loop_redis.send([("PING",)]) == [True]
        own_redis.freeze()  # so that nothing is answered before the kill
        pending = loop_redis.send([("PING",)])
        own_redis.stop()
        return list(await asyncio.gather(pending, return_exceptions=True))

    (outcome,) = asyncio.run(killed())
    assert isinstance(outcome, StoreUnavailable)
    assert loop_redis.in_flight == 0


# TLS -----------------------------------------------------------------------------------------


def test_over_tls_replies_are_redis_pys_whatever_their_size(redis_over_tls: TlsRedis) -> None:
    client = redis.Redis.from_url(redis_over_tls.url(3), socket_timeout=10)
    big = "x" * 3_000_000  # many TLS records each way, writes the socket takes in parts
    commands: list[tuple[Any, ...]] = [("SET", f"loop:big:{i}", big) for i in range(4)]
    commands += [("GET", f"loop:big:{i}") for i in range(4)]
    commands += [("HSET", "loop:h", "f", "v"), ("HGETALL", "loop:h"), ("INCR", "loop:h")]
    loop_redis = LoopRedis.for_client(client)
    assert loop_redis is not None

    async def together() -> list[Any]:
        first = loop_redis.send(commands)
        second = loop_redis.send([("STRLEN", "loop:big:3"), ("INFO", "keyspace")])
        return [*(await first), *(await second)]

    replies = asyncio.run(together())

    expected = pipelined(client, commands)
    assert replies[:8] == expected[:8] == [True] * 4 + [big.encode()] * 4
    assert (replies[8], expected[8]) == (1, 0)  # a new field, then the same again
    assert replies[9] == expected[9] == {b"f": b"v"}
    assert isinstance(replies[10], redis.ResponseError) and "WRONGTYPE" in str(replies[10])
    assert replies[11] == len(big) and "db3" in replies[12]  # the URL's database


def test_over_tls_a_connection_redis_closes_is_noticed_and_replaced(
    redis_over_tls: TlsRedis,
) -> None:
    client = redis.Redis.from_url(redis_over_tls.url(), socket_timeout=10)
    loop_redis = LoopRedis.for_client(client)
    assert loop_redis is not None

    async def killed_while_idle() -> list[Any]:
        (first_id,) = await loop_redis.send([("CLIENT", "ID")])
        client.client_kill_filter(_id=first_id)
        await asyncio.sleep(0.1)  # the loop reads the end of the connection meanwhile
        assert loop_redis._sock is None
        return [first_id, *(await loop_redis.send([("CLIENT", "ID"), ("PING",)]))]

    first_id, second_id, pong = asyncio.run(killed_while_idle())
    assert second_id != first_id and pong is True


# Sentinel ------------------------------------------------------------------------------------


def _through_sentinel(deployment: SentinelDeployment) -> LoopRedis:
    options = {**deployment.client_options, "socket_timeout": 2}  # TLS's, if it speaks TLS
    sentinel = Sentinel([("127.0.0.1", deployment.sentinel)], sentinel_kwargs=options, **options)
    loop_redis = LoopRedis.for_client(sentinel.master_for(SERVICE))
    assert loop_redis is not None
    return loop_redis


def test_behind_sentinel_the_pipelines_reach_the_master_it_names(
    sentinel: SentinelDeployment,
) -> None:
    loop_redis = _through_sentinel(sentinel)

    replies = asyncio.run(_sent(loop_redis, [("SET", "loop:where", "1"), ("INFO", "server")]))

    assert replies[0] is True
    assert replies[1]["tcp_port"] == sentinel.master


@pytest.mark.parametrize("deployment", ["sentinel", "sentinel_over_tls"])
def test_after_a_failover_the_next_pipeline_reaches_the_new_master(
    deployment: str, request: pytest.FixtureRequest
) -> None:
    sentinel: SentinelDeployment = request.getfixturevalue(deployment)
    loop_redis = _through_sentinel(sentinel)

    async def across_the_failover() -> tuple[Any, list[Any]]:
        assert await loop_redis.send([("SET", "loop:before", "1")]) == [True]
        sentinel.kill_master()
        lost = await asyncio.gather(loop_redis.send([("PING",)]), return_exceptions=True)
        wait_for(lambda: sentinel.named_master() == sentinel.replica, "the failover")
        where = ("CONFIG", "GET", "tls-port" if sentinel.tls else "port")
        return lost[0], await loop_redis.send([("SET", "loop:after", "1"), where])

    lost, (stored, server) = asyncio.run(across_the_failover())
    assert isinstance(lost, StoreUnavailable)  # the old master, gone
    assert stored is True and int(*server.values()) == sentinel.replica
    assert sentinel.client(sentinel.replica).get("loop:after") == b"1"


def test_a_master_demoted_behind_the_sentinels_back_drops_the_connection(
    sentinel: SentinelDeployment,
) -> None:
    # A demoted master that keeps its clients (no Sentinel reconfigured it: a partition, or
    # REPLICAOF by hand) answers writes READONLY. As redis-py does, the connection is given up,
    # so that the next one asks the Sentinels again, and what was in flight is unavailable.
    loop_redis = _through_sentinel(sentinel)
    master = redis.Redis(port=sentinel.master)

    async def demoted() -> tuple[list[Any], Any]:
        (first_id,) = await loop_redis.send([("CLIENT", "ID")])
        redis.Redis(port=sentinel.replica).replicaof("NO", "ONE")
        master.replicaof("127.0.0.1", sentinel.replica)
        outcome = await asyncio.gather(
            loop_redis.send([("GET", "loop:k"), ("SET", "loop:k", "v")]), return_exceptions=True
        )
        return outcome, first_id

    (outcome,), first_id = asyncio.run(demoted())
    assert isinstance(outcome, StoreUnavailable)
    assert isinstance(outcome.__cause__, redis.ReadOnlyError)
    assert loop_redis.in_flight == 0
    assert first_id not in [c["id"] for c in master.client_list()]


def test_a_connection_made_on_another_loop_is_replaced(empty_redis: redis.Redis) -> None:
    loop_redis = LoopRedis(empty_redis)
    first = asyncio.run(_sent(loop_redis, [("CLIENT", "ID")]))
    second = asyncio.run(_sent(loop_redis, [("CLIENT", "ID")]))
    assert first != second


async def _sent(loop_redis: LoopRedis, commands: list[tuple[Any, ...]]) -> list[Any]:
    return await loop_redis.send(commands)
