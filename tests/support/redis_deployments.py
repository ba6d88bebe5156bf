"""Private Redis deployments for tests: single servers (plain or TLS only), a master and
replica behind Sentinel (plain or TLS only), a three-node Cluster (plain or TLS, with or
without a replica). Each is its own redis-server processes on spare loopback ports, never the
shared Redis, so tests may stop, fail over or reshard them."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
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
    folder: Path,
    *extra: str,
    port: int | None = None,
    client_options: dict[str, Any] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """A private redis-server on a free loopback port, in the foreground of a subprocess;
    ``client_options`` are what a client needs to reach it (TLS: ``tls_options``)."""
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
    client = redis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=0.5, **(client_options or {})
    )

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
    """Ports of one Sentinel, the master it watches as ``SERVICE`` and that master's replica;
    with TLS, every one of them speaks TLS only and ``client_options`` reach them."""

    sentinel: int
    master: int
    replica: int
    processes: dict[int, subprocess.Popen[bytes]]
    client_options: dict[str, Any]

    @property
    def tls(self) -> bool:
        return bool(self.client_options)

    def url(self, db: int = 0) -> str:
        """The ``REDIS_URL`` of the master, found through the Sentinel."""
        scheme = "rediss+sentinel" if self.tls else "redis+sentinel"
        query = f"?ssl_ca_certs={self.client_options['ssl_ca_certs']}" if self.tls else ""
        return f"{scheme}://127.0.0.1:{self.sentinel}/{SERVICE}/{db}{query}"

    def client(self, port: int, db: int = 0) -> redis.Redis:
        """A client of the Sentinel's, the master's or the replica's ``port``."""
        return redis.Redis(
            host="127.0.0.1", port=port, db=db, socket_connect_timeout=0.5, **self.client_options
        )

    def sentinel_client(self) -> redis.Redis:
        return self.client(self.sentinel)

    def named_master(self) -> int | None:
        """The port of the master the Sentinel names now, as redis-py's clients find it (a
        master the Sentinel has just promoted is not named until it sees it a master)."""
        sentinel = Sentinel([("127.0.0.1", self.sentinel)], sentinel_kwargs=self.client_options)
        try:
            return sentinel.discover_master(SERVICE)[1]
        except MasterNotFoundError:
            return None

    def kill_master(self) -> None:
        """Kill the master; the Sentinel promotes the replica within about two seconds."""
        process = self.processes[self.master]
        process.kill()
        process.wait(timeout=10)


@contextmanager
def sentinel_deployment(folder: Path, *, tls: bool = False) -> Iterator[SentinelDeployment]:
    """A master, its replica and one Sentinel watching them (quorum 1, a master that has not
    answered for a second is down). With ``tls``, all three speak TLS only, to clients and to
    each other, with the certificate ``folder / "tls/cert.pem"``."""
    # No wait before the replica's first sync, none for a replica when stopping.
    quick = ["--repl-diskless-sync-delay", "0", "--shutdown-on-sigterm", "now"]
    client: dict[str, Any] = {}

    def tls_node(port: int) -> list[str]:
        nonlocal client
        if not tls:
            return []
        server, client = tls_options(folder / "tls", port)
        return [*server, "--tls-replication", "yes"]

    master_port = free_port()
    master, _ = start_redis(
        folder / "master", *quick, *tls_node(master_port), port=master_port, client_options=client
    )
    replica_port = free_port()
    replica, _ = start_redis(
        folder / "replica", *quick, *tls_node(replica_port),
        "--replicaof", "127.0.0.1", str(master_port), port=replica_port, client_options=client,
    )  # fmt: skip
    sentinel_port = free_port()
    # A config file's lines are redis-server's options without their dashes; the TLS ones come
    # after "port", so that their "port 0" wins.
    words = tls_node(sentinel_port)
    sentinel_tls = "".join(f"{words[i][2:]} {words[i + 1]}\n" for i in range(0, len(words), 2))
    config = folder / "sentinel.conf"  # Sentinel rewrites its own config file
    config.write_text(
        f"port {sentinel_port}\nbind 127.0.0.1\ndir {folder}\n{sentinel_tls}"
        f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
        f"sentinel down-after-milliseconds {SERVICE} 1000\n"
    )
    process = subprocess.Popen(
        ["redis-server", str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deployment = SentinelDeployment(
        sentinel_port,
        master_port,
        replica_port,
        {master_port: master, replica_port: replica},
        client,
    )
    try:
        asked = deployment.sentinel_client()

        def knows_both() -> bool:
            assert process.poll() is None, "redis sentinel exited"
            try:
                replicas = asked.sentinel_slaves(SERVICE)
                return asked.sentinel_get_master_addr_by_name(SERVICE) is not None and any(
                    r["port"] == replica_port and r["master-link-status"] == "ok" for r in replicas
                )
            except redis.ConnectionError:
                return False

        wait_for(knows_both, "the Sentinel knowing its master and replica", deadline=30)
        asked.close()
        yield deployment
    finally:
        stop(process)
        stop(replica)
        stop(master)


@dataclass(frozen=True)
class TlsRedis:
    """A redis-server that speaks TLS only, with a certificate for 127.0.0.1."""

    port: int
    ca_file: Path

    def url(self, db: int = 0) -> str:
        return f"rediss://127.0.0.1:{self.port}/{db}?ssl_ca_certs={self.ca_file}"


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, signed by its own key; (certificate, key) files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


def tls_options(folder: Path, port: int) -> tuple[list[str], dict[str, Any]]:
    """redis-server's arguments to speak TLS only on ``port`` (with a certificate in
    ``folder``, made once; clients need none), and a client's options to reach it."""
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    if not cert_file.exists():
        cert_file, key_file = self_signed_certificate(folder)
    server = ["--port", "0", "--tls-port", str(port),
              "--tls-cert-file", str(cert_file), "--tls-key-file", str(key_file),
              "--tls-ca-cert-file", str(cert_file), "--tls-auth-clients", "no"]  # fmt: skip
    return server, {"ssl": True, "ssl_ca_certs": str(cert_file)}


@contextmanager
def tls_redis(folder: Path) -> Iterator[TlsRedis]:
    """A redis-server on a free port that speaks TLS only."""
    port = free_port()
    server, client = tls_options(folder / "tls", port)
    process, _ = start_redis(folder, *server, port=port, client_options=client)
    try:
        yield TlsRedis(port, Path(client["ssl_ca_certs"]))
    finally:
        stop(process)


@contextmanager
def cluster_deployment(
    folder: Path,
    *,
    tls: bool = False,
    with_replica: bool = False,
    quick_failure: bool = False,
    ports: list[int] | None = None,
) -> Iterator[list[int]]:
    """Three masters forming one Redis Cluster; their ports. With ``tls``, the nodes speak
        TLS only, to clients and to each other, with the certificate ``folder / "tls/cert.pem"``.
        With ``with_replica``, a fourth node replicates the first (its port comes last) and takes
        over once the first has not answered for a second. With ``quick_failure``, a node that has
        not answered for a second is failed (without a replica, the cluster is then down). Its three
    masters listen on ``ports`` if given (``free_cluster_port``), else on free ports."""
    nodes = []
    client: dict[str, Any] = {}

    chosen = list(ports or [])

    def start_node(name: str) -> int:
        nonlocal client
        port = chosen.pop(0) if chosen else free_cluster_port()
        options = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        if with_replica or quick_failure:
            options += ["--cluster-node-timeout", "1000"]
        if tls:
            server, client = tls_options(folder / "tls", port)
            options += [*server, "--tls-cluster", "yes", "--tls-replication", "yes"]
        nodes.append(start_redis(folder / name, *options, port=port, client_options=client))
        return port

    def cli(*args: str) -> None:
        cli_tls = ["--tls", "--cacert", client["ssl_ca_certs"]] if tls else []
        done = subprocess.run(
            ["redis-cli", *cli_tls, "--cluster", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr

    try:
        node_ports = [start_node(f"node{i}") for i in range(3)]
        addresses = [f"127.0.0.1:{p}" for p in node_ports]
        cli("create", *addresses, "--cluster-replicas", "0", "--cluster-yes")
        clients = [redis.Redis(host="127.0.0.1", port=p, **client) for p in node_ports]
        wait_for(
            lambda: all(c.cluster("info")["cluster_state"] == "ok" for c in clients),
            "the cluster agreeing on its slots",
        )
        if with_replica:
            replica = start_node("replica")
            master_id = clients[0].cluster("myid")
            cli("add-node", f"127.0.0.1:{replica}", addresses[0],
                "--cluster-slave", "--cluster-master-id", master_id)  # fmt: skip
            clients.append(redis.Redis(host="127.0.0.1", port=replica, **client))
            wait_for(
                lambda: clients[3].info("replication").get("master_link_status") == "up",
                "the replica in sync with its master",
            )
            node_ports.append(replica)
        for each in clients:
            each.close()
        yield node_ports
    finally:
        for process, _ in nodes:
            stop(process)
