"""Roles: their CRUD, their assignment to users, an audit entry per change, and the fast check.

Every change commits in one transaction with its audit entry (``RoleAdmin``).

``RoleChecker`` answers "does user U have role R" (the ``HEAD`` that other services call on
many requests). With Redis it reads a per-user set of role ids kept in Redis, which every
worker process shares; on a miss it reads the user's role ids once from the primary key of
``user_roles`` and stores them. Without Redis (the embedded mode) there is no cache: one
primary-key lookup per check, so a change made by another process (the CLI) shows at once.
``ROLES_CACHE_TTL=0`` turns reading the cache off; changes still invalidate it then.

The same cache holds each user's account card (``AccountCard``: login, created_at, whether
there is a password, role names), which introspection, userinfo, refresh and ``/users/me``
read instead of the database. It shares the entry's generation counter, so every change that
invalidates a user's roles drops the card too; a role rename invalidates every holder, because
the card has role names where the set has ids. Only active users get a card: whatever some
day deactivates a user must invalidate their entries as erasure does.

Why the cache is never stale across processes: next to each user's entry is a generation
counter. A reader that misses notes the generation, reads the database, and stores what it
read only if the generation has not moved (one Lua script), so a read that raced a change is
never cached. A change bumps the generation and drops the entry before its commit (so an
unreachable Redis aborts the change instead of leaving stale entries) and again after it (so a
reader that filled between the two is dropped). Only if Redis fails between the commit and the
second bump can an entry outlive a change, and then for at most ``ROLES_CACHE_TTL`` seconds.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, ParamSpec, TypeVar

import redis
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from . import audit
from .models import Role, User, UserRole
from .tokens.reads import Reads, read_together
from .tokens.redis_connect import UNAVAILABLE
from .tokens.store import StoreUnavailable

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

#: A role name: a short lowercase slug. Names are stored lowercased, so uniqueness ignores case.
NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9_-]{1,63}")
NAME_RULE: Final = (
    "2 to 64 characters: a letter, then letters, digits, '_' or '-' (stored lowercase)"
)
MAX_DESCRIPTION: Final = 500

# Audit actions of this module.
ROLE_CREATED: Final = "role.create"
ROLE_UPDATED: Final = "role.update"
ROLE_DELETED: Final = "role.delete"
ROLE_GRANTED: Final = "user_role.grant"
ROLE_REVOKED: Final = "user_role.revoke"


class _Unset:
    """The value of a PATCH field that was not sent (None means "clear it")."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET: Final = _Unset()


class RoleError(Exception):
    """A role request that cannot be honoured; ``code`` is machine-readable."""

    code = "role_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidRole(RoleError):
    code = "invalid_role"


class RoleNotFound(RoleError):
    code = "role_not_found"


class UserNotFound(RoleError):
    code = "user_not_found"


class RoleNameTaken(RoleError):
    code = "role_name_taken"


@dataclass(frozen=True)
class AccountCard:
    """What token checks need of an active user, cached beside their role ids."""

    user_id: uuid.UUID
    login: str
    has_password: bool
    created_at: datetime
    roles: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps(
            [self.login, self.has_password, self.created_at.isoformat(), list(self.roles)],
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, user_id: uuid.UUID, raw: str | bytes) -> AccountCard:
        login, has_password, created_at, roles = json.loads(raw)
        return cls(user_id, login, has_password, datetime.fromisoformat(created_at), tuple(roles))


@dataclass(frozen=True)
class Assignment:
    """A user's holding of a role."""

    user_id: uuid.UUID
    role_id: uuid.UUID
    role: str
    assigned_at: datetime


def normalise_name(name: Any) -> str:
    """The stored form of a role name (trimmed, lowercased), or ``InvalidRole``."""
    if not isinstance(name, str):
        raise InvalidRole(f"a role name is {NAME_RULE}", field="name")
    normalised = name.strip().lower()
    if not NAME_PATTERN.fullmatch(normalised):
        raise InvalidRole(f"a role name is {NAME_RULE}", field="name")
    return normalised


def check_description(description: Any) -> str | None:
    """The stored form of a description (trimmed; empty means none), or ``InvalidRole``."""
    if description is None:
        return None
    if not isinstance(description, str):
        raise InvalidRole("the description must be a string", field="description")
    description = description.strip()
    if "\x00" in description:
        # PostgreSQL text cannot hold NUL; refused here rather than failing at the insert.
        raise InvalidRole("the description must not contain NUL characters", field="description")
    if len(description) > MAX_DESCRIPTION:
        raise InvalidRole(
            f"the description has at most {MAX_DESCRIPTION} characters", field="description"
        )
    return description or None


def _as_uuid(value: uuid.UUID | str, missing: type[RoleError]) -> uuid.UUID:
    """``value`` as a UUID; a malformed id names nothing, so it is "not found"."""
    if isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise missing("no such " + ("user" if missing is UserNotFound else "role")) from None


def list_roles(session: Session) -> list[Role]:
    """Every role, by name."""
    return list(session.scalars(select(Role).order_by(Role.name)))


def get_role(session: Session, role_id: uuid.UUID | str, *, lock: bool = False) -> Role:
    """The role with this id, or ``RoleNotFound``; ``lock`` holds its row until commit."""
    role = session.get(Role, _as_uuid(role_id, RoleNotFound), with_for_update=lock or None)
    if role is None:
        raise RoleNotFound("no such role")
    return role


def find_role_by_name(session: Session, name: str) -> Role:
    """The role with this name (any case), or ``RoleNotFound``."""
    try:
        normalised = normalise_name(name)
    except InvalidRole:
        raise RoleNotFound(f"no role named {name!r}") from None
    role = session.scalar(select(Role).where(Role.name == normalised))
    if role is None:
        raise RoleNotFound(f"no role named {normalised!r}")
    return role


def _get_user(session: Session, user_id: uuid.UUID | str) -> User:
    user = session.get(User, _as_uuid(user_id, UserNotFound))
    if user is None:
        raise UserNotFound("no such user")
    return user


# The cache -------------------------------------------------------------------------------


class Miss:
    """A cache miss, carrying the generation a fill must still find to be stored."""

    __slots__ = ("generation",)

    def __init__(self, generation: bytes | str) -> None:
        self.generation = generation


#: The answer of a cache that stores nothing.
_ALWAYS_MISS: Final = Miss(b"")


class RoleCache(ABC):
    """Per-user sets of role ids, invalidated by every change."""

    @abstractmethod
    def lookup(self, user_id: uuid.UUID, role_id: uuid.UUID) -> bool | Miss:
        """Whether the cached set has ``role_id``, or a ``Miss``. One round trip."""

    @abstractmethod
    def lookup_reads(self, user_id: uuid.UUID, role_id: uuid.UUID) -> Reads[bool | Miss]:
        """``lookup`` as a read, to send with other stores' (``read_together``)."""

    @abstractmethod
    def fill(self, user_id: uuid.UUID, miss: Miss, role_ids: Iterable[uuid.UUID]) -> bool:
        """Store the user's role ids unless a change came after ``miss``; True if stored."""

    @abstractmethod
    def lookup_card(self, user_id: uuid.UUID) -> AccountCard | Miss:
        """The user's cached account card, or a ``Miss``. One round trip."""

    @abstractmethod
    def card_reads(self, user_id: uuid.UUID) -> Reads[AccountCard | Miss]:
        """``lookup_card`` as a read, to send with other stores' (``read_together``)."""

    @abstractmethod
    def fill_card(self, card: AccountCard, miss: Miss) -> bool:
        """Store the card unless a change came after ``miss``; True if stored."""

    @abstractmethod
    def invalidate(self, user_ids: Iterable[uuid.UUID]) -> None:
        """Drop these users' entries and refuse fills that started before this call."""

    @property
    def enabled(self) -> bool:
        """Whether checks read (and fill) this cache; else they ask the database."""
        return True


class NoRoleCache(RoleCache):
    """No cache: every check asks the database (the embedded mode, without Redis)."""

    def lookup(self, user_id: uuid.UUID, role_id: uuid.UUID) -> bool | Miss:
        return _ALWAYS_MISS

    def lookup_reads(self, user_id: uuid.UUID, role_id: uuid.UUID) -> Reads[bool | Miss]:
        return Reads.local(lambda: _ALWAYS_MISS)

    def fill(self, user_id: uuid.UUID, miss: Miss, role_ids: Iterable[uuid.UUID]) -> bool:
        return False

    def lookup_card(self, user_id: uuid.UUID) -> AccountCard | Miss:
        return _ALWAYS_MISS

    def card_reads(self, user_id: uuid.UUID) -> Reads[AccountCard | Miss]:
        return Reads.local(lambda: _ALWAYS_MISS)

    def fill_card(self, card: AccountCard, miss: Miss) -> bool:
        return False

    def invalidate(self, user_ids: Iterable[uuid.UUID]) -> None:
        return None

    @property
    def enabled(self) -> bool:
        return False


# KEYS: entry, generation. ARGV: generation seen at the miss, ttl, role ids...
_FILL = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SADD', KEYS[1], '*', unpack(ARGV, 3))
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""

# KEYS: card, generation. ARGV: generation seen at the miss, ttl, card.
_FILL_CARD = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[3], 'EX', ARGV[2])
return 1
"""

#: Invalidations sent to Redis per round trip when a role held by many users is deleted.
_INVALIDATE_BATCH = 500


def _redis_errors(fn: Callable[P, R]) -> Callable[P, R]:
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except UNAVAILABLE as exc:
            raise StoreUnavailable("role cache unavailable") from exc

    return wrapper


class RedisRoleCache(RoleCache):
    """The cache in Redis, shared by every worker process; see the module docstring."""

    #: A generation must outlive any reader's miss-to-fill interval (milliseconds), or an
    #: expired and recreated counter could match a stale reader; a day is ample, and it
    #: keeps counters of users whose roles no longer change from piling up.
    GENERATION_TTL: Final = 86_400

    def __init__(self, client: redis.Redis, ttl: int, prefix: str = "oidc") -> None:
        self.redis = client
        self.ttl = ttl
        self.prefix = prefix
        self._fill = client.register_script(_FILL)
        self._fill_card = client.register_script(_FILL_CARD)

    def _keys(self, user_id: uuid.UUID) -> list[str]:
        # One hash tag per user: every key of a script sits on one Redis Cluster slot.
        return [f"{self.prefix}:roles:{{{user_id}}}", f"{self.prefix}:rolegen:{{{user_id}}}"]

    def _card_keys(self, user_id: uuid.UUID) -> list[str]:
        return [f"{self.prefix}:card:{{{user_id}}}", f"{self.prefix}:rolegen:{{{user_id}}}"]

    @property
    def enabled(self) -> bool:
        # With a TTL of 0 nothing is read or stored, but changes still invalidate: other
        # processes (servers, when this is the CLI) may be caching with their own TTL.
        return self.ttl > 0

    def lookup(self, user_id: uuid.UUID, role_id: uuid.UUID) -> bool | Miss:
        return read_together(self.redis, self.lookup_reads(user_id, role_id))[0]

    def lookup_reads(self, user_id: uuid.UUID, role_id: uuid.UUID) -> Reads[bool | Miss]:
        if not self.enabled:
            return Reads.local(lambda: _ALWAYS_MISS)
        entry, generation = self._keys(user_id)
        # The entry always holds "*", so that "loaded with no roles" differs from "absent".
        # On a miss the generation comes from the next command, not atomically with it: a
        # fill only needs a generation read before its database read (see the docstring).
        return Reads(
            (("SMISMEMBER", entry, "*", str(role_id)), ("GET", generation)),
            lambda replies: _held_or_miss(*replies),
        )

    @_redis_errors
    def fill(self, user_id: uuid.UUID, miss: Miss, role_ids: Iterable[uuid.UUID]) -> bool:
        if not self.enabled:
            return False
        args = [miss.generation, self.ttl, *(str(r) for r in role_ids)]
        return self._fill(keys=self._keys(user_id), args=args) == 1

    def lookup_card(self, user_id: uuid.UUID) -> AccountCard | Miss:
        return read_together(self.redis, self.card_reads(user_id))[0]

    def card_reads(self, user_id: uuid.UUID) -> Reads[AccountCard | Miss]:
        if not self.enabled:
            return Reads.local(lambda: _ALWAYS_MISS)
        # One MGET (both keys carry the user's hash tag): the card, or the generation a
        # fill must still find. Atomic like the script it replaced, and pipelinable.
        return Reads(
            (("MGET", *self._card_keys(user_id)),),
            lambda replies: _card_or_miss(user_id, *replies[0]),
        )

    @_redis_errors
    def fill_card(self, card: AccountCard, miss: Miss) -> bool:
        if not self.enabled:
            return False
        args = [miss.generation, self.ttl, card.to_json()]
        return self._fill_card(keys=self._card_keys(card.user_id), args=args) == 1

    @_redis_errors
    def invalidate(self, user_ids: Iterable[uuid.UUID]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pending = 0
        for user_id in user_ids:
            entry, generation = self._keys(user_id)
            # Bump first: from here on no fill that started earlier is accepted.
            pipe.incr(generation)
            pipe.expire(generation, self.GENERATION_TTL)
            pipe.delete(entry, self._card_keys(user_id)[0])
            pending += 1
            if pending == _INVALIDATE_BATCH:
                pipe.execute()
                pending = 0
        if pending:
            pipe.execute()


def _held_or_miss(members: list[int], generation: bytes | None) -> bool | Miss:
    loaded, held = members
    return held == 1 if loaded == 1 else Miss(generation or b"")


def _card_or_miss(
    user_id: uuid.UUID, card: bytes | None, generation: bytes | None
) -> AccountCard | Miss:
    if card is None:
        return Miss(generation or b"")
    try:
        return AccountCard.from_json(user_id, card)
    except (ValueError, TypeError):
        # A card in another shape (written by another release during a rolling deploy):
        # answer from the database without replacing it; it expires by its TTL.
        log.warning("unreadable account card in the role cache", extra={"user_id": user_id})
        return _ALWAYS_MISS


def role_cache_for(client: redis.Redis | None, ttl: int) -> RoleCache:
    """The Redis cache when there is Redis (read only with a positive TTL), else no cache."""
    if client is None:
        return NoRoleCache()
    return RedisRoleCache(client, ttl)


class RoleChecker:
    """Answers "does this user have this role" from the cache, else one indexed query."""

    def __init__(self, sessions: Callable[[], Session], cache: RoleCache) -> None:
        self.sessions = sessions
        self.cache = cache

    def has_role(
        self, user_id: uuid.UUID, role_id: uuid.UUID, looked_up: bool | Miss | None = None
    ) -> bool:
        """True if the user holds the role now; unknown users and roles hold nothing.

        ``looked_up`` is the cache's answer when the caller already asked it (``lookup_reads``,
        sent with a bearer check).
        """
        if looked_up is not None:
            cached = looked_up
        else:
            try:
                cached = self.cache.lookup(user_id, role_id)
            except StoreUnavailable:
                # The database has the answer; a cache outage only costs speed here.
                return self._ask_database(user_id, role_id)
        if not isinstance(cached, Miss):
            return cached
        if not self.cache.enabled:
            return self._ask_database(user_id, role_id)
        with self.sessions() as session:
            role_ids = set(
                session.scalars(select(UserRole.role_id).where(UserRole.user_id == user_id))
            )
        # Answered from the database either way; a failed fill is retried by the next check.
        with contextlib.suppress(StoreUnavailable):
            self.cache.fill(user_id, cached, role_ids)
        return role_id in role_ids

    def _ask_database(self, user_id: uuid.UUID, role_id: uuid.UUID) -> bool:
        with self.sessions() as session:
            # The primary key (user_id, role_id) answers this from its index.
            found = session.scalar(
                select(UserRole.user_id).where(
                    UserRole.user_id == user_id, UserRole.role_id == role_id
                )
            )
        return found is not None


def read_card(
    session: Session,
    cache: RoleCache,
    user_id: str | uuid.UUID,
    looked_up: AccountCard | Miss | None = None,
) -> AccountCard | None:
    """The active user's card from the cache, else from one query (then cached); else None.

    ``looked_up`` is the cache's answer when the caller already asked it (``card_reads``, sent
    with a bearer check). Unknown, malformed and inactive user ids give None. A cache outage
    costs only speed.
    """
    try:
        key = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
    except ValueError:
        return None
    if looked_up is not None:
        cached = looked_up
    else:
        try:
            cached = cache.lookup_card(key)
        except StoreUnavailable:
            cached = _ALWAYS_MISS
    if isinstance(cached, AccountCard):
        return cached
    rows = session.execute(
        select(User.login, User.password_hash.is_not(None), User.created_at, Role.name)
        .outerjoin(UserRole, UserRole.user_id == User.id)
        .outerjoin(Role, Role.id == UserRole.role_id)
        .where(User.id == key, User.is_active)
        .order_by(Role.name)
    ).all()
    if not rows:
        return None
    login, has_password, created_at, _ = rows[0]
    roles = tuple(row[3] for row in rows if row[3])
    card = AccountCard(key, login, bool(has_password), created_at, roles)
    if cached is not _ALWAYS_MISS:
        # Answered from the database either way; a failed fill is retried by the next read.
        with contextlib.suppress(StoreUnavailable):
            cache.fill_card(card, cached)
    return card


# Changes ---------------------------------------------------------------------------------


class RoleAdmin:
    """Role changes by one actor; each commits with its audit entry and then shows at once.

    Each method ends the session's transaction (commit, or rollback on error), so the session
    must come with no pending changes of its own.
    """

    def __init__(self, session: Session, cache: RoleCache, actor: str) -> None:
        self.session = session
        self.cache = cache
        self.actor = actor

    def create(self, name: Any, description: Any = None) -> Role:
        """Create a role; ``RoleNameTaken`` if the name (in any case) exists."""
        role = Role(name=normalise_name(name), description=check_description(description))
        self._check_name_free(role.name)
        self.session.add(role)
        self._flush_or_name_taken(role.name)
        audit.record(
            self.session,
            self.actor,
            ROLE_CREATED,
            str(role.id),
            {"name": role.name, "description": role.description},
        )
        self._commit(())
        return role

    def update(
        self,
        role_id: uuid.UUID | str,
        *,
        name: Any = UNSET,
        description: Any = UNSET,
    ) -> Role:
        """Rename a role or change its description; fields left ``UNSET`` stay as they are."""
        role = get_role(self.session, role_id, lock=True)
        changes: dict[str, dict[str, str | None]] = {}
        if name is not UNSET:
            new_name = normalise_name(name)
            if new_name != role.name:
                changes["name"] = {"from": role.name, "to": new_name}
        if description is not UNSET:
            new_description = check_description(description)
            if new_description != role.description:
                changes["description"] = {"from": role.description, "to": new_description}
        if not changes:
            self.session.commit()  # releases the row lock; nothing to record
            return role
        if "name" in changes:
            self._check_name_free(new_name)
        for field, change in changes.items():
            setattr(role, field, change["to"])
        self._flush_or_name_taken(role.name)
        audit.record(self.session, self.actor, ROLE_UPDATED, str(role.id), {"changes": changes})
        # Role-id sets survive a rename, but account cards list role names.
        holders: list[uuid.UUID] = []
        if "name" in changes:
            holders = list(
                self.session.scalars(select(UserRole.user_id).where(UserRole.role_id == role.id))
            )
        self._commit(holders)
        return role

    def delete(self, role_id: uuid.UUID | str) -> int:
        """Delete a role and its assignments; returns how many users lost it."""
        # The row lock makes concurrent assignments of this role wait for our commit (their
        # foreign-key check locks it too), then fail: the holders read below are all of them.
        role = get_role(self.session, role_id, lock=True)
        role_key, role_name = role.id, role.name
        holders = list(
            self.session.scalars(select(UserRole.user_id).where(UserRole.role_id == role_key))
        )
        self.session.execute(delete(UserRole).where(UserRole.role_id == role_key))
        self.session.execute(delete(Role).where(Role.id == role_key))
        audit.record(
            self.session,
            self.actor,
            ROLE_DELETED,
            str(role_key),
            {"name": role_name, "unassigned_users": len(holders)},
        )
        self._commit(holders)
        return len(holders)

    def assign(self, user_id: uuid.UUID | str, role_id: uuid.UUID | str) -> tuple[Assignment, bool]:
        """Give a user a role; the second value is False if the user already had it."""
        user = _get_user(self.session, user_id)
        role = get_role(self.session, role_id)
        existing = self.session.get(UserRole, (user.id, role.id))
        if existing is not None:
            return Assignment(user.id, role.id, role.name, existing.created_at), False
        key, role_name = (user.id, role.id), role.name
        link = UserRole(user_id=user.id, role_id=role.id)
        self.session.add(link)
        try:
            self.session.flush()
        except IntegrityError:
            # A concurrent assignment won (idempotent), or the user or role was just deleted.
            # The transaction held nothing else, so rolling all of it back loses nothing.
            self.session.rollback()
            raced = self.session.get(UserRole, key)
            if raced is not None:
                return Assignment(*key, role_name, raced.created_at), False
            if self.session.get(User, key[0], populate_existing=True) is None:
                raise UserNotFound("no such user") from None
            raise RoleNotFound("no such role") from None
        audit.record(
            self.session,
            self.actor,
            ROLE_GRANTED,
            str(user.id),
            {"role_id": str(role.id), "role": role.name},
        )
        self._commit([user.id])
        return Assignment(user.id, role.id, role.name, link.created_at), True

    def revoke(self, user_id: uuid.UUID | str, role_id: uuid.UUID | str) -> bool:
        """Take a role from a user; False if the user did not have it (nothing changes)."""
        user = _get_user(self.session, user_id)
        role = get_role(self.session, role_id)
        removed = self.session.scalars(
            delete(UserRole)
            .where(UserRole.user_id == user.id, UserRole.role_id == role.id)
            .returning(UserRole.user_id)
        ).all()
        if not removed:
            self.session.commit()  # nothing was written; ends the transaction
            return False
        audit.record(
            self.session,
            self.actor,
            ROLE_REVOKED,
            str(user.id),
            {"role_id": str(role.id), "role": role.name},
        )
        self._commit([user.id])
        return True

    def _check_name_free(self, name: str) -> None:
        if self.session.scalar(select(Role.id).where(Role.name == name)) is not None:
            raise RoleNameTaken(f"a role named {name!r} exists", field="name")

    def _flush_or_name_taken(self, name: str) -> None:
        """Flush; a unique violation here is a concurrent change that took the name first.

        The transaction holds only this change, so rolling all of it back is exact and no
        savepoint is needed.
        """
        try:
            self.session.flush()
        except IntegrityError:
            self.session.rollback()
            raise RoleNameTaken(f"a role named {name!r} exists", field="name") from None

    def _commit(self, user_ids: Sequence[uuid.UUID]) -> None:
        """Commit, invalidating the users' cached roles before and after (module docstring)."""
        if user_ids:
            try:
                self.cache.invalidate(user_ids)
            except StoreUnavailable:
                self.session.rollback()
                raise
        self.session.commit()
        if user_ids:
            try:
                self.cache.invalidate(user_ids)
            except StoreUnavailable:
                log.warning(
                    "role cache invalidation failed after commit; entries expire by their TTL",
                    extra={"users": len(user_ids)},
                )
