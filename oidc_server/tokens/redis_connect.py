"""A Redis client from ``REDIS_URL``: one server, a Redis Cluster, or a master found by Sentinel.

The deployment is chosen by the URL's scheme, the same schemes the ``limits`` library (behind
flask-limiter) understands, so one ``REDIS_URL`` serves the token store and the rate limits:

- ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS), ``unix:///path?db=N``:
  one server, as ``redis.Redis.from_url`` reads it (query options included).
- ``redis+cluster://[[user]:password@]host:port[,host:port...][?option=value&...]``,
  ``rediss+cluster://...`` (TLS): a Redis Cluster. The nodes listed are only where discovery
  starts; a cluster has database 0 only. The token store keeps each session's keys on one slot
  (hash tags), so its scripts work.
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db][?option=...]``,
  ``rediss+sentinel://...`` (TLS to the Sentinels and the master alike): the master that the
  Sentinels name ``service_name``, looked up again after a failover. The credentials are used
  for the Sentinels and the master alike, as ``limits`` does.

The query of a Cluster or Sentinel URL takes the connection options of ``CONNECTION_OPTIONS``
and, with TLS, of ``TLS_OPTIONS`` (a private CA: ``?ssl_ca_certs=/path/ca.pem``), spelt as
redis-py spells them in a single server's URL; any other is refused rather than ignored. As in
redis-py's own URLs, an option in the URL wins over the same option given by the code.

Error messages name the scheme or an option, never a value: a URL can hold a password.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError
from redis.sentinel import Sentinel

CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
SINGLE_SCHEMES = ("redis", "rediss", "unix")
DEFAULT_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
#: What a deployment raises when it cannot answer, whatever the command: unreachable, too
#: slow, or a Cluster down (``CLUSTERDOWN`` still, after redis-py's retries). Callers answer
#: these as the store being unavailable (503), never as a failure of the request itself.
UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, ClusterDownError)
#: Options that also apply to the connections to the Sentinels themselves (and, with TLS,
#: every one of ``TLS_OPTIONS``: one URL, one certificate authority).
_SENTINEL_CONNECTION_OPTIONS = ("socket_timeout", "socket_connect_timeout")


class RedisUrlError(ValueError):
    """``REDIS_URL`` cannot be understood."""


def _seconds(text: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(text)
    return value


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1"):
        return True
    if lowered in ("false", "no", "0"):
        return False
    raise ValueError(text)


def _one_of(*allowed: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise ValueError(text)
        return text

    return parse


def _text(text: str) -> str:
    if not text:
        raise ValueError(text)
    return text


#: Query options of a Cluster or Sentinel URL, with how each value is read.
CONNECTION_OPTIONS: dict[str, Callable[[str], Any]] = {
    "socket_timeout": _seconds,
    "socket_connect_timeout": _seconds,
    "socket_keepalive": _flag,
    "health_check_interval": _count,
}
#: Query options of a ``rediss+cluster://`` or ``rediss+sentinel://`` URL only.
TLS_OPTIONS: dict[str, Callable[[str], Any]] = {
    "ssl_ca_certs": _text,
    "ssl_ca_path": _text,
    "ssl_certfile": _text,
    "ssl_keyfile": _text,
    "ssl_cert_reqs": _one_of("none", "optional", "required"),
    "ssl_check_hostname": _flag,
}

RedisClient = redis.Redis | RedisCluster


@dataclass(frozen=True)
class _MultiHostUrl:
    scheme: str
    username: str | None
    password: str | None
    hosts: list[tuple[str, int]]
    path: list[str]
    #: The query's options, read (``CONNECTION_OPTIONS``, ``TLS_OPTIONS``).
    options: dict[str, Any]

    @property
    def tls(self) -> bool:
        return self.scheme.startswith("rediss+")


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
    if parts.fragment:
        raise RedisUrlError(f"{scheme}:// URL takes no fragment")
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
    options = _query_options(parts.query, scheme)
    return _MultiHostUrl(scheme, username, password, hosts, path, options)


def _query_options(query: str, scheme: str) -> dict[str, Any]:
    allowed = {**CONNECTION_OPTIONS, **(TLS_OPTIONS if scheme.startswith("rediss+") else {})}
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise RedisUrlError(f"{scheme}:// URL has a query that is not name=value pairs") from None
    options: dict[str, Any] = {}
    for name, text in pairs:
        if name not in allowed:
            hint = " (TLS options need rediss+)" if name in TLS_OPTIONS else ""
            raise RedisUrlError(f"{scheme}:// URL has an unknown option {name!r}{hint}")
        if name in options:
            raise RedisUrlError(f"{scheme}:// URL gives the option {name!r} twice")
        try:
            options[name] = allowed[name](text)
        except ValueError:
            raise RedisUrlError(f"{scheme}:// URL has a bad value for {name!r}") from None
    return options


def _auth(parsed: _MultiHostUrl) -> dict[str, Any]:
    auth: dict[str, Any] = {}
    if parsed.username:
        auth["username"] = parsed.username
    if parsed.password is not None:
        auth["password"] = parsed.password
    return auth


def _parse_cluster(url: str) -> _MultiHostUrl:
    parsed = _parse_multi_host(url, DEFAULT_PORT)
    if parsed.path not in ([], ["0"]):
        raise RedisUrlError(
            f"{parsed.scheme}:// URL may name database 0 only (a cluster has no other)"
        )
    return parsed


def _sentinel_target(parsed: _MultiHostUrl) -> tuple[str, int]:
    """The service name and database number of a Sentinel URL's path."""
    if not parsed.path or len(parsed.path) > 2:
        raise RedisUrlError(
            f"{parsed.scheme}:// URL needs a path of /service_name or /service_name/db"
        )
    db = 0
    if len(parsed.path) == 2:
        if not parsed.path[1].isdigit():
            raise RedisUrlError(f"{parsed.scheme}:// URL has a database that is not a number")
        db = int(parsed.path[1])
    return parsed.path[0], db


def check_url(url: str) -> None:
    """Raise ``RedisUrlError`` if ``url`` cannot be understood; connects to nothing (so that a
    server refuses a mistyped ``REDIS_URL`` once at start, not in each worker it forks)."""
    scheme = scheme_of(url)
    if scheme in SINGLE_SCHEMES:
        try:
            redis.connection.parse_url(url)
        except ValueError as refused:  # names the option, never its value
            raise RedisUrlError(f"{scheme}:// URL: {refused}") from None
    elif scheme in CLUSTER_SCHEMES:
        _parse_cluster(url)
    elif scheme in SENTINEL_SCHEMES:
        _sentinel_target(_parse_multi_host(url, DEFAULT_SENTINEL_PORT))
    else:
        raise _unsupported(scheme)


def connect(url: str, **options: Any) -> RedisClient:
    """A client for the Redis deployment ``url`` names; ``options`` go to its connections."""
    scheme = scheme_of(url)
    if scheme in SINGLE_SCHEMES:
        return redis.Redis.from_url(url, **options)
    if scheme in CLUSTER_SCHEMES:
        parsed = _parse_cluster(url)
        return RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in parsed.hosts],
            ssl=parsed.tls,
            **_auth(parsed),
            **{**options, **parsed.options},
        )
    if scheme in SENTINEL_SCHEMES:
        parsed = _parse_multi_host(url, DEFAULT_SENTINEL_PORT)
        service, db = _sentinel_target(parsed)
        auth = _auth(parsed)
        master_options = {**options, **parsed.options, **({"ssl": True} if parsed.tls else {})}
        sentinel = Sentinel(
            parsed.hosts,
            sentinel_kwargs={**auth, **_sentinel_options(master_options)},
            **auth,
            **master_options,
        )
        # master_for's client asks the Sentinels for the master on each new connection, so
        # after a failover the next command reaches the new master.
        return sentinel.master_for(service, db=db)
    raise _unsupported(scheme)


def limiter_storage(url: str) -> tuple[str, dict[str, Any]]:
    """Flask-Limiter's ``RATELIMIT_STORAGE_URI`` and ``RATELIMIT_STORAGE_OPTIONS`` for ``url``.

    ``limits`` reads a single server's URL as redis-py does. Of a Cluster or Sentinel URL it
    reads the hosts, credentials and service name only: TLS, the query's options and a
    Sentinel's database are handed to it as options instead.
    """
    scheme = scheme_of(url)
    if scheme in SINGLE_SCHEMES:
        return url, {}
    netloc = urlsplit(url).netloc
    if scheme in CLUSTER_SCHEMES:
        parsed = _parse_cluster(url)
        tls = {"ssl": True} if parsed.tls else {}
        return f"redis+cluster://{netloc}", {**tls, **parsed.options}
    if scheme in SENTINEL_SCHEMES:
        parsed = _parse_multi_host(url, DEFAULT_SENTINEL_PORT)
        service, db = _sentinel_target(parsed)
        options: dict[str, Any] = {**({"db": db} if db else {}), **parsed.options}
        if parsed.tls:
            options["ssl"] = True
        if sentinels := _sentinel_options(options):
            options["sentinel_kwargs"] = sentinels
        return f"redis+sentinel://{netloc}/{service}", options
    raise _unsupported(scheme)


def _sentinel_options(master_options: dict[str, Any]) -> dict[str, Any]:
    """Of the options for the master's connections, those for the Sentinels' too."""
    shared = (*_SENTINEL_CONNECTION_OPTIONS, "ssl", *TLS_OPTIONS)
    return {k: v for k, v in master_options.items() if k in shared}


def _unsupported(scheme: str) -> RedisUrlError:
    return RedisUrlError(
        f"unsupported REDIS_URL scheme {scheme!r}: use redis://, rediss://, unix://, "
        "redis+cluster://, rediss+cluster://, redis+sentinel:// or rediss+sentinel://"
    )
