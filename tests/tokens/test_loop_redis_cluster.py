"""A Redis Cluster's pipelines on the event loop (``oidc_server.tokens.loop_redis_cluster``):
each command on its slot's node, the replies in the commands' order, the cluster's changes
followed. The tests that leave their cluster as they found it share one (``emptied_cluster``);
those that move a slot or kill a node have one of their own (``redis_cluster``)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import NoScriptError

from oidc_server.tokens.loop_redis_cluster import SLOTS_RELOAD_INTERVAL, LoopRedisCluster
from oidc_server.tokens.reads import read_together
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.store import StoreUnavailable

from ..support.redis_deployments import cluster_deployment
from ..support.waiting import wait_for


def client_of(ports: list[int]) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", port) for port in ports],
        socket_timeout=2,
        socket_connect_timeout=2,
    )


@pytest.fixture
def shared_client(emptied_cluster: list[int]) -> Iterator[RedisCluster]:
    client = client_of(emptied_cluster)
    yield client
    client.close()


@pytest.fixture
def cluster_client(redis_cluster: list[int]) -> Iterator[RedisCluster]:
    client = client_of(redis_cluster)
    yield client
    client.close()


def on_the_loop(client: RedisCluster) -> LoopRedisCluster:
    """The loop's connections to ``client``'s cluster (which must be granted)."""
    loop_redis = LoopRedisCluster.for_client(client)
    assert loop_redis is not None
    return loop_redis


def key_on(client: RedisCluster, port: int, name: str) -> str:
    """A key named after ``name`` whose slot is on the node at ``port``."""
    for i in range(10_000):
        key = f"{name}:{i}"
        if client.nodes_manager.get_node_from_slot(client.keyslot(key)).port == port:
            return key
    raise AssertionError(f"no key of {port}")


def process_id(port: int) -> int:
    return int(redis.Redis(port=port).info("server")["process_id"])


async def _sent(loop_redis: LoopRedisCluster, commands: list[tuple[Any, ...]]) -> list[Any]:
    return await loop_redis.send(commands)


def test_redis_pys_cluster_client_is_read_on_the_loop(shared_client: RedisCluster) -> None:
    assert isinstance(LoopRedisCluster.for_client(shared_client), LoopRedisCluster)
    assert LoopRedisCluster.for_client(redis.Redis()) is None


def test_replies_are_redis_pys_in_the_commands_order_across_the_nodes(
    shared_client: RedisCluster, emptied_cluster: list[int]
) -> None:
    a, b, c = (key_on(shared_client, port, f"loop{n}") for n, port in enumerate(emptied_cluster))
    tagged = f"{{{a}}}"  # a hash tag: keys on a's slot
    shared_client.hset(f"{tagged}:hash", mapping={"f": "1"})
    shared_client.set(b, "bee")
    shared_client.set(f"{tagged}:string", "text")
    shared_client.sadd(c, "x")
    commands: list[tuple[Any, ...]] = [
        ("GET", b),
        ("HGETALL", f"{tagged}:hash"),
        ("SMISMEMBER", c, "x", "y"),
        ("MGET", f"{tagged}:string", f"{tagged}:absent"),
        ("EXISTS", c),
        ("HGET", b, "f"),  # WRONGTYPE, in its place
        ("EVALSHA", "0" * 40, 1, c),  # NOSCRIPT, as redis-py raises it
        ("EVAL", "return redis.call('GET', KEYS[1])", 1, b),
    ]
    loop_redis = on_the_loop(shared_client)

    replies = asyncio.run(_sent(loop_redis, commands))

    pipe = shared_client.pipeline()
    for command in commands:
        pipe.execute_command(*command)
    expected = pipe.execute(raise_on_error=False)
    assert replies[:5] == expected[:5]
    assert replies[:5] == [b"bee", {b"f": b"1"}, [True, False], [b"text", None], 1]
    assert type(replies[5]) is type(expected[5]) and "WRONGTYPE" in str(replies[5])
    assert isinstance(replies[6], NoScriptError)
    assert replies[7] == b"bee"
    assert loop_redis.in_flight == 0
    assert asyncio.run(_sent(loop_redis, [])) == []


def test_the_loop_goes_on_while_a_node_has_not_answered(
    shared_client: RedisCluster, emptied_cluster: list[int]
) -> None:
    loop_redis = on_the_loop(shared_client)
    keys = [key_on(shared_client, port, "frozen") for port in emptied_cluster]
    frozen = process_id(emptied_cluster[0])

    async def while_frozen() -> tuple[int, list[Any]]:
        await loop_redis.send([("SET", key, "v") for key in keys])  # connected to all three
        os.kill(frozen, signal.SIGSTOP)
        try:
            pending = loop_redis.send([("GET", key) for key in keys])
            ticks = 0
            for _ in range(5):
                await asyncio.sleep(0.02)
                ticks += 1
            assert not pending.done() and loop_redis.in_flight == 1
        finally:
            os.kill(frozen, signal.SIGCONT)
        return ticks, await pending

    assert asyncio.run(while_frozen()) == (5, [b"v", b"v", b"v"])


def test_a_slot_moved_to_another_node_is_followed_and_learnt(
    cluster_client: RedisCluster, redis_cluster: list[int]
) -> None:
    loop_redis = on_the_loop(cluster_client)
    source, target = redis_cluster[0], redis_cluster[1]
    key = key_on(cluster_client, source, "moving")
    slot = cluster_client.keyslot(key)
    asyncio.run(_sent(loop_redis, [("EXISTS", key)]))  # routed by the map as it was
    target_id = redis.Redis(port=target).cluster("myid")
    for port in (target, source, redis_cluster[2]):  # the empty slot's owner, as documented
        redis.Redis(port=port).execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)
    redis.Redis(port=target).set(key, "moved")

    # The source answers MOVED; redis-py follows it and learns where the slot went.
    assert asyncio.run(_sent(loop_redis, [("GET", key), ("EXISTS", key)])) == [b"moved", 1]
    assert cluster_client.nodes_manager.get_node_from_slot(slot).port == target


def test_a_node_lost_fails_its_commands_alone_and_the_map_is_reread_once_a_second(
    cluster_client: RedisCluster, redis_cluster: list[int]
) -> None:
    loop_redis = on_the_loop(cluster_client)
    lost, kept = redis_cluster[0], redis_cluster[1]
    on_lost, on_kept = key_on(cluster_client, lost, "lost"), key_on(cluster_client, kept, "kept")
    cluster_client.set(on_kept, "still here")
    rereads: list[float] = []
    reread = cluster_client.nodes_manager.initialize

    def counted_reread(*args: Any, **kwargs: Any) -> Any:
        rereads.append(asyncio.get_running_loop().time())
        return reread(*args, **kwargs)

    cluster_client.nodes_manager.initialize = counted_reread  # type: ignore[method-assign]

    async def node_killed() -> tuple[list[Any], list[Any], list[list[Any]]]:
        await loop_redis.send([("EXISTS", on_lost), ("EXISTS", on_kept)])
        os.kill(process_id(lost), signal.SIGKILL)
        during = await loop_redis.send([("GET", on_lost), ("GET", on_kept)])
        # The next pipeline reads the slot map again first (a live node answers it).
        after = await loop_redis.send([("GET", on_kept)])
        # The map still names the lost node (no replica took over), so its commands keep
        # failing; each failure asks for a reread, made at most once a second.
        still = [await loop_redis.send([("GET", on_lost), ("GET", on_kept)]) for _ in range(5)]
        assert len(rereads) == 1
        await asyncio.sleep(SLOTS_RELOAD_INTERVAL)
        still.append(await loop_redis.send([("GET", on_kept)]))
        return during, after, still

    during, after, still = asyncio.run(node_killed())
    assert isinstance(during[0], redis.ConnectionError)
    assert during[1] == b"still here"
    assert after == [b"still here"]
    assert all(isinstance(s[0], redis.ConnectionError) for s in still[:5])
    assert [s[-1] for s in still] == [b"still here"] * 6
    assert len(rereads) == 2 and rereads[1] - rereads[0] >= SLOTS_RELOAD_INTERVAL


def test_after_a_node_fails_over_the_pipelines_reach_its_replica(tmp_path: Path) -> None:
    with cluster_deployment(tmp_path / "cluster", with_replica=True) as ports:
        master, replica = ports[0], ports[3]
        client = RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", port) for port in ports[1:3]],
            socket_timeout=2,
            socket_connect_timeout=2,
        )
        loop_redis = on_the_loop(client)
        key = key_on(client, master, "failing-over")
        with redis.Redis(port=master) as written:
            written.set(key, "kept")
            assert written.wait(1, 5000) == 1  # on the replica too
        monitor = redis.Redis(port=ports[1])

        def promoted() -> bool:
            flags = monitor.cluster("nodes").get(f"127.0.0.1:{replica}", {}).get("flags", "")
            return "master" in flags

        async def across_the_failover() -> tuple[Any, Any]:
            os.kill(process_id(master), signal.SIGKILL)
            (lost,) = await loop_redis.send([("GET", key)])
            wait_for(promoted, "the replica promoted", deadline=30)
            await asyncio.sleep(SLOTS_RELOAD_INTERVAL)
            # The slot map is read again first; only this loop's pipelines run here, nothing
            # of redis-py's own client learns of the failover for it.
            (found,) = await loop_redis.send([("GET", key)])
            return lost, found

        lost, found = asyncio.run(across_the_failover())
        assert isinstance(lost, redis.ConnectionError)
        assert found == b"kept"
        assert client.nodes_manager.get_node_from_slot(client.keyslot(key)).port == replica
        # The dead master serves no slot now: its loop connection was forgotten with it.
        assert f"127.0.0.1:{master}" not in client.nodes_manager.nodes_cache
        assert f"127.0.0.1:{master}" not in loop_redis._nodes
        client.close()


def test_a_cluster_that_is_down_is_unavailable_to_every_command(tmp_path: Path) -> None:
    # No replica: once the others fail the killed node, every node answers CLUSTERDOWN, and
    # redis-py's resend of those gives up too. Unavailable, not an error of the command.
    with cluster_deployment(tmp_path / "cluster", quick_failure=True) as ports:
        client = client_of(ports[1:])
        loop_redis = on_the_loop(client)
        keys = [key_on(client, port, "down") for port in ports]
        asyncio.run(_sent(loop_redis, [("EXISTS", key) for key in keys]))  # connected
        monitor = redis.Redis(port=ports[1])
        os.kill(process_id(ports[0]), signal.SIGKILL)
        wait_for(lambda: monitor.cluster("info")["cluster_state"] == "fail", "the cluster down")

        replies = asyncio.run(_sent(loop_redis, [("GET", key) for key in keys]))

        assert [type(reply) for reply in replies] == [redis.ConnectionError] * 3
        # And so through redis-py alone, for the app's own reads and writes: a 503.
        store = RedisTokenStore(client)
        with pytest.raises(StoreUnavailable):
            read_together(client, store.access_token_reads("some-jti", None))
        with pytest.raises(StoreUnavailable):
            store.get_session("some-session")
        assert store.ping() is False
        client.close()


def test_a_cluster_over_tls_is_read_on_the_loop_too(tmp_path: Path) -> None:
    with cluster_deployment(tmp_path / "tls-cluster", tls=True) as ports:
        client = RedisCluster(
            startup_nodes=[ClusterNode("127.0.0.1", port) for port in ports],
            ssl=True,
            ssl_ca_certs=str(tmp_path / "tls-cluster" / "tls" / "cert.pem"),
            socket_timeout=5,
        )
        loop_redis = on_the_loop(client)
        keys = [key_on(client, port, "tls") for port in ports]
        big = "y" * 1_000_000
        commands: list[tuple[Any, ...]] = [("SET", key, big) for key in keys]
        commands += [("STRLEN", key) for key in keys] + [("GET", keys[1])]

        replies = asyncio.run(_sent(loop_redis, commands))

        assert replies == [True] * 3 + [len(big)] * 3 + [big.encode()]
        client.close()


def test_commands_that_cannot_be_routed_are_store_unavailable(
    shared_client: RedisCluster,
) -> None:
    loop_redis = on_the_loop(shared_client)
    with pytest.raises(StoreUnavailable):
        asyncio.run(_sent(loop_redis, [("MGET", "one-slot", "another-slot")]))
