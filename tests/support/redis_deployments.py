"""Private Redis deployments for tests: single servers, a master and replica behind Sentinel, a
three-node Cluster. Each is its own redis-server processes on spare loopback ports, never the
shared Redis, so tests may stop, fail over or reshard them."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from redis.sentinel import MasterNotFoundError, Sentinel

from .waiting import free_port, wait_for

#: The service name the Sentinel deployment's master goes by.
SERVICE = "mymaster"


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is a free port too."""
    while True:
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port


def start_redis(
    folder: Path, *extra: str, port: int | None = None
) -> tuple[subprocess.Popen[bytes], int]:
    """A private redis-server on a free loopback port, in the foreground of a subprocess."""
    folder.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = folder / "redis.log"
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder), "--daemonize", "no",
         "--logfile", str(log), *extra],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_connect_timeout=0.5)

    def answers() -> bool:
        assert process.poll() is None, f"redis-server exited: {log.read_text()[-2000:]}"
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    wait_for(answers, f"redis-server on port {port}")
    client.close()
    return process, port


def stop(process: subprocess.Popen[Any]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass(frozen=True)
class SentinelDeployment:
    """Ports of one Sentinel, the master it watches as ``SERVICE`` and that master's replica."""

    sentinel: int
    master: int
    replica: int
    processes: dict[int, subprocess.Popen[bytes]]

    def sentinel_client(self) -> redis.Redis:
        return redis.Redis(port=self.sentinel, socket_connect_timeout=0.5)

    def named_master(self) -> int | None:
        """The port of the master the Sentinel names now, as redis-py's clients find it (a
        master the Sentinel has just promoted is not named until it sees it a master)."""
        try:
            return Sentinel([("127.0.0.1", self.sentinel)]).discover_master(SERVICE)[1]
        except MasterNotFoundError:
            return None

    def kill_master(self) -> None:
        """Kill the master; the Sentinel promotes the replica within about two seconds."""
        process = self.processes[self.master]
        process.kill()
        process.wait(timeout=10)


@contextmanager
def sentinel_deployment(folder: Path) -> Iterator[SentinelDeployment]:
    """A master, its replica and one Sentinel watching them (quorum 1, a master that has not
    answered for a second is down)."""
    # No wait before the replica's first sync, none for a replica when stopping.
    quick = ("--repl-diskless-sync-delay", "0", "--shutdown-on-sigterm", "now")
    master, master_port = start_redis(folder / "master", *quick)
    replica, replica_port = start_redis(
        folder / "replica", *quick, "--replicaof", "127.0.0.1", str(master_port)
    )
    sentinel_port = free_port()
    config = folder / "sentinel.conf"  # Sentinel rewrites its own config file
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {folder}\n"
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
    )
    process = subprocess.Popen(
        ["redis-server", str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deployment = SentinelDeployment(
        sentinel_port, master_port, replica_port, {master_port: master, replica_port: replica}
    )
    try:
        client = deployment.sentinel_client()

        def knows_both() -> bool:
            assert process.poll() is None, "redis sentinel exited"
            try:
                replicas = client.sentinel_slaves(SERVICE)
                return client.sentinel_get_master_addr_by_name(SERVICE) is not None and any(
                    r["port"] == replica_port and r["master-link-status"] == "ok" for r in replicas
                )
            except redis.ConnectionError:
                return False

        wait_for(knows_both, "the Sentinel knowing its master and replica", deadline=30)
        client.close()
        yield deployment
    finally:
        stop(process)
        stop(replica)
        stop(master)


@contextmanager
def cluster_deployment(folder: Path) -> Iterator[list[int]]:
    """Three masters forming one Redis Cluster; their ports."""
    nodes = []
    try:
        for i in range(3):
            cluster_options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            nodes.append(
                start_redis(folder / f"node{i}", *cluster_options, port=free_cluster_port())
            )
        ports = [port for _, port in nodes]
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )  # fmt: skip
        assert created.returncode == 0, created.stdout + created.stderr
        clients = [redis.Redis(port=p) for p in ports]
        wait_for(
            lambda: all(c.cluster("info")["cluster_state"] == "ok" for c in clients),
            "the cluster agreeing on its slots",
        )
        for client in clients:
            client.close()
        yield ports
    finally:
        for process, _ in nodes:
            stop(process)
