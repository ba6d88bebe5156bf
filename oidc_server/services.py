"""The long-lived objects one app holds, built from settings in one place."""

from __future__ import annotations

from dataclasses import dataclass, field

import redis

from .clients import ClientCache
from .config import Settings
from .db import Database, ReplicaRest
from .keys import KeyRing
from .roles import RoleCache, RoleChecker, role_cache_for
from .security import PasswordHasher
from .tokens.access_tokens import AccessTokenCodec
from .tokens.memory_store import MemoryTokenStore
from .tokens.redis_store import RedisTokenStore
from .tokens.service import TokenService
from .tokens.store import TokenStore

#: Seconds to connect to the read replica, unless ``DATABASE_REPLICA_URL`` sets its own.
REPLICA_CONNECT_TIMEOUT = 2
#: Seconds a worker leaves its read replica alone after the replica failed it.
REPLICA_REST_SECONDS = 10.0


@dataclass
class Services:
    settings: Settings
    db: Database
    #: Where lag-tolerant reads go (``context.read_from_replica``): a replica of ``db`` when
    #: ``DATABASE_REPLICA_URL`` is set, else ``db`` itself.
    replica: Database
    #: When this worker tries ``replica`` again after it failed (reads and readiness alike).
    replica_rest: ReplicaRest
    store: TokenStore
    keyring: KeyRing
    tokens: TokenService
    hasher: PasswordHasher
    #: Users' role ids and account cards, in Redis when the token store is Redis.
    role_cache: RoleCache
    #: The one-call "does this user hold this role" check, reading ``role_cache``.
    role_checker: RoleChecker
    client_cache: ClientCache = field(default_factory=ClientCache)
    #: The Redis client that ``store`` and ``role_cache`` share; None without Redis. Reads of
    #: both go out together through it (``tokens.reads.read_together``).
    redis: redis.Redis | None = None

    @classmethod
    def build(cls, settings: Settings, store: TokenStore | None = None) -> Services:
        if store is None:
            store = (
                RedisTokenStore.from_url(settings.redis_url)
                if settings.redis_url
                else MemoryTokenStore()
            )
        keyring = KeyRing(settings.oidc_keys_dir, max_token_lifetime=settings.access_token_ttl)
        codec = AccessTokenCodec(
            keyring,
            issuer=settings.oidc_issuer,
            audience=settings.access_token_audience,
            ttl=settings.access_token_ttl,
        )
        redis_client = store.redis if isinstance(store, RedisTokenStore) else None
        db = Database(settings.resolved_database_url)
        replica = (
            # Bounded: each read tries the replica before falling back to the primary, and a
            # replica that does not answer would hold every history page for the OS's TCP timeout.
            Database(settings.database_replica_url, connect_timeout=REPLICA_CONNECT_TIMEOUT)
            if settings.database_replica_url
            else db
        )
        role_cache = role_cache_for(redis_client, settings.roles_cache_ttl)
        return cls(
            settings=settings,
            db=db,
            replica=replica,
            replica_rest=ReplicaRest(REPLICA_REST_SECONDS),
            store=store,
            keyring=keyring,
            tokens=TokenService(store, codec, settings.refresh_token_ttl),
            hasher=PasswordHasher(
                time_cost=settings.password_hash_time_cost,
                memory_cost=settings.password_hash_memory_cost,
                parallelism=settings.password_hash_parallelism,
            ),
            role_cache=role_cache,
            role_checker=RoleChecker(db.sessions, role_cache),
            redis=redis_client,
        )
