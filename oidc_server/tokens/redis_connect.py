"""A Redis client from ``REDIS_URL``: one server, a Redis Cluster, or a master found by Sentinel.

The deployment is chosen by the URL's scheme, the same schemes the ``limits`` library (behind
flask-limiter) understands, so one ``REDIS_URL`` serves the token store and the rate limits:

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path?db=N``:
  one server, as ``redis.Redis.from_url`` reads it (query options included).
- ``redis+cluster://[[user]:password@]host:port[,host:port...]``, ``rediss+cluster://...`` (TLS):
  a Redis Cluster. The nodes listed are only where discovery starts; a cluster has database 0
  only. The token store keeps each session's keys on one slot (hash tags), so its scripts work.
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]``: the master
  that the Sentinels name ``service_name``, looked up again after a failover. The credentials
  are used for the Sentinels and the master alike, as ``limits`` does.

Error messages name the scheme only: a URL can hold a password.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError
from redis.sentinel import Sentinel

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel",)
SINGLE_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
#: What a deployment raises when it cannot answer, whatever the command: unreachable, too
#: slow, or a Cluster down (``CLUSTERDOWN`` still, after redis-py's retries). Callers answer
#: these as the store being unavailable (503), never as a failure of the request itself.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, ClusterDownError)
#: Options that also apply to the connections to the Sentinels themselves.
_SENTINEL_CONNECTION_OPTIONS = ("socket_timeout", "socket_connect_timeout")

RedisClient = redis.Redis | RedisCluster


class RedisUrlError(ValueError):
    """``REDIS_URL`` cannot be understood."""


@dataclass(frozen=True)
class _MultiHostUrl:
    scheme: str
    username: str | None
    password: str | None
    hosts: list[tuple[str, int]]
    path: list[str]


def scheme_of(url: str) -> str:
    """The lowercased scheme of ``url`` ("" if it has none)."""
    scheme, sep, _ = url.partition("://")
    return scheme.lower() if sep else ""


def _host_port(text: str, default_port: int, scheme: str) -> tuple[str, int]:
    if text.startswith("["):  # an IPv6 literal: [::1]:6379
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    if not host:
        raise RedisUrlError(f"{scheme}:// URL has an empty host")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        raise RedisUrlError(f"{scheme}:// URL has a port that is not a number") from None
    return host, port


def _parse_multi_host(url: str, default_port: int) -> _MultiHostUrl:
    """Split a URL whose host part lists several ``host:port`` (urllib reads only one)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise RedisUrlError(f"{scheme}:// URL takes no query or fragment")
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, has_password, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if has_password else None
    hosts = [_host_port(h, default_port, scheme) for h in hostlist.split(",") if h]
    if not hosts:
        raise RedisUrlError(f"{scheme}:// URL names no host")
    path = [unquote(p) for p in parts.path.split("/") if p]
    return _MultiHostUrl(scheme, username, password, hosts, path)


def _auth(parsed: _MultiHostUrl) -> dict[str, Any]:
    auth: dict[str, Any] = {}
    if parsed.username:
        auth["username"] = parsed.username
    if parsed.password is not None:
        auth["password"] = parsed.password
    return auth


def _sentinel_target(parsed: _MultiHostUrl) -> tuple[str, int]:
    """The service name and database number of a Sentinel URL's path."""
    if not parsed.path or len(parsed.path) > 2:
        raise RedisUrlError(
            "redis+sentinel:// URL needs a path of /service_name or /service_name/db"
        )
    db = 0
    if len(parsed.path) == 2:
        if not parsed.path[1].isdigit():
            raise RedisUrlError("redis+sentinel:// URL has a database that is not a number")
        db = int(parsed.path[1])
    return parsed.path[0], db


def connect(url: str, **options: Any) -> RedisClient:
    """A client for the Redis deployment ``url`` names; ``options`` go to its connections."""
    scheme = scheme_of(url)
    if scheme in SINGLE_SCHEMES:
        return redis.Redis.from_url(url, **options)
    if scheme in CLUSTER_SCHEMES:
        parsed = _parse_multi_host(url, DEFAULT_PORT)
        if parsed.path not in ([], ["0"]):
            raise RedisUrlError(
                f"{scheme}:// URL may name database 0 only (a cluster has no other)"
            )
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parsed.hosts],
            ssl=scheme.startswith("rediss"),
            **_auth(parsed),
            **options,
        )
    if scheme in SENTINEL_SCHEMES:
        parsed = _parse_multi_host(url, DEFAULT_SENTINEL_PORT)
        service, db = _sentinel_target(parsed)
        auth = _auth(parsed)
        sentinel_options = {k: v for k, v in options.items() if k in _SENTINEL_CONNECTION_OPTIONS}
        sentinel = Sentinel(
            parsed.hosts, sentinel_kwargs={**auth, **sentinel_options}, **auth, **options
        )
        # master_for's client asks the Sentinels for the master on each new connection, so
        # after a failover the next command reaches the new master.
        return sentinel.master_for(service, db=db)
    raise _unsupported(scheme)


def limiter_storage(url: str) -> tuple[str, dict[str, Any]]:
    """Flask-Limiter's ``RATELIMIT_STORAGE_URI`` and ``RATELIMIT_STORAGE_OPTIONS`` for ``url``.

    ``limits`` reads the single-server and cluster forms as they are, but takes TLS to a
    cluster as an option and has no database in a Sentinel URL (it would join the service
    name and the number), so those two are rewritten.
    """
    scheme = scheme_of(url)
    if scheme in SINGLE_SCHEMES or scheme == "redis+cluster":
        return url, {}
    if scheme == "rediss+cluster":
        return "redis+cluster://" + url.partition("://")[2], {"ssl": True}
    if scheme in SENTINEL_SCHEMES:
        parsed = _parse_multi_host(url, DEFAULT_SENTINEL_PORT)
        service, db = _sentinel_target(parsed)
        netloc = urlsplit(url).netloc
        return f"redis+sentinel://{netloc}/{service}", ({"db": db} if db else {})
    raise _unsupported(scheme)


def _unsupported(scheme: str) -> RedisUrlError:
    return RedisUrlError(
        f"unsupported REDIS_URL scheme {scheme!r}: use redis://, rediss://, unix://, "
        "redis+cluster://, rediss+cluster:// or redis+sentinel://"
    )
