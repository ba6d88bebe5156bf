"""Roles without HTTP: validation, changes and their audit entries, the cached membership check."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis

from oidc_server import audit
from oidc_server import roles as domain
from oidc_server.accounts import create_user
from oidc_server.models import AuditLog, Role
from oidc_server.roles import Miss, RoleAdmin, RoleChecker
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.store import StoreUnavailable

from .conftest import PASSWORD
from .support.roles import audit_entries, cache_of, count_queries, role_id, role_names_of

ACTOR = "billing-service"


@pytest.fixture
def cache(services: Any) -> domain.RoleCache:
    return cache_of(services)


@pytest.fixture
def checker(services: Any, cache: domain.RoleCache) -> RoleChecker:
    return RoleChecker(services.db.sessions, cache)


def admin(services: Any, cache: domain.RoleCache, actor: str = ACTOR) -> tuple[Any, RoleAdmin]:
    session = services.db.sessions()
    return session, RoleAdmin(session, cache, actor)


def grant(services: Any, cache: domain.RoleCache, user_id: uuid.UUID, role: str) -> bool:
    session, changes = admin(services, cache)
    with session:
        _, created = changes.assign(user_id, role_id(services, role))
    return created


def revoke(services: Any, cache: domain.RoleCache, user_id: uuid.UUID, role: str) -> bool:
    session, changes = admin(services, cache)
    with session:
        return changes.revoke(user_id, role_id(services, role))


def new_user(services: Any, login: str) -> uuid.UUID:
    with services.db.session() as session:
        return create_user(session, services.hasher, login, PASSWORD).id


# Validation ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("editor", "editor"),
        ("Editor", "editor"),
        ("  content_ops-2 ", "content_ops-2"),
        ("ab", "ab"),
    ],
)
def test_role_names_are_stored_trimmed_and_lowercase(given: str, stored: str) -> None:
    assert domain.normalise_name(given) == stored


@pytest.mark.parametrize(
    "name",
    ["", "a", "1admin", "-admin", "ad min", "admin!", "rôle", "a" * 65, None, 42, "admin\x00"],
)
def test_malformed_role_names_are_refused(name: Any) -> None:
    with pytest.raises(domain.InvalidRole) as caught:
        domain.normalise_name(name)
    assert caught.value.field == "name"


def test_descriptions_are_optional_and_bounded() -> None:
    assert domain.check_description(None) is None
    assert domain.check_description("   ") is None
    assert domain.check_description("x" * 500) == "x" * 500
    with pytest.raises(domain.InvalidRole):
        domain.check_description("x" * 501)
    with pytest.raises(domain.InvalidRole):
        domain.check_description(["not", "text"])


# Changes and their audit entries --------------------------------------------------------


def test_create_stores_the_role_and_its_audit_entry_together(
    services: Any, cache: domain.RoleCache
) -> None:
    session, changes = admin(services, cache)
    with session:
        role = changes.create("Editor", "Edits the catalogue")
    assert role.name == "editor"
    (entry,) = audit_entries(services, domain.ROLE_CREATED)
    assert (entry.actor, entry.target) == (ACTOR, str(role.id))
    assert entry.details == {"name": "editor", "description": "Edits the catalogue"}
    assert entry.created_at is not None


def test_a_name_taken_in_any_case_is_refused_and_nothing_is_recorded(
    services: Any, cache: domain.RoleCache
) -> None:
    session, changes = admin(services, cache)
    with session, pytest.raises(domain.RoleNameTaken):
        changes.create("ADMIN")
    assert audit_entries(services) == []


def test_update_renames_and_records_what_changed(services: Any, cache: domain.RoleCache) -> None:
    moderator = role_id(services, "moderator")
    session, changes = admin(services, cache)
    with session:
        role = changes.update(moderator, name="Curator", description=None)
    assert (role.name, role.description) == ("curator", None)
    (entry,) = audit_entries(services, domain.ROLE_UPDATED)
    assert entry.details["changes"]["name"] == {"from": "moderator", "to": "curator"}
    assert entry.details["changes"]["description"]["to"] is None


def test_an_update_that_changes_nothing_is_not_recorded(
    services: Any, cache: domain.RoleCache
) -> None:
    session, changes = admin(services, cache)
    with session:
        role = changes.update(role_id(services, "admin"), name="ADMIN")
    assert role.name == "admin"
    assert audit_entries(services) == []


def test_renaming_onto_another_roles_name_is_refused(
    services: Any, cache: domain.RoleCache
) -> None:
    session, changes = admin(services, cache)
    with session, pytest.raises(domain.RoleNameTaken):
        changes.update(role_id(services, "moderator"), name="Subscriber")
    with services.db.session() as check:
        assert check.get(Role, role_id(services, "moderator")) is not None


def test_deleting_a_role_takes_it_from_every_holder(
    services: Any, cache: domain.RoleCache, checker: RoleChecker
) -> None:
    users = [new_user(services, f"holder{i}@example.com") for i in range(3)]
    for user_id in users:
        grant(services, cache, user_id, "subscriber")
        grant(services, cache, user_id, "moderator")
    subscriber = role_id(services, "subscriber")
    assert checker.has_role(users[0], subscriber)  # warms the cache when there is one

    session, changes = admin(services, cache)
    with session:
        assert changes.delete(subscriber) == 3

    assert all(role_names_of(services, u) == ["moderator"] for u in users)
    assert not checker.has_role(users[0], subscriber)
    (entry,) = audit_entries(services, domain.ROLE_DELETED)
    assert entry.details == {"name": "subscriber", "unassigned_users": 3}


def test_assigning_twice_changes_nothing_the_second_time(
    services: Any, cache: domain.RoleCache
) -> None:
    user_id = new_user(services, "twice@example.com")
    assert grant(services, cache, user_id, "moderator") is True
    assert grant(services, cache, user_id, "moderator") is False
    (entry,) = audit_entries(services, domain.ROLE_GRANTED)
    assert entry.target == str(user_id)
    assert entry.details == {"role_id": str(role_id(services, "moderator")), "role": "moderator"}


def test_revoking_records_only_a_real_change(services: Any, cache: domain.RoleCache) -> None:
    user_id = new_user(services, "revoke@example.com")
    assert revoke(services, cache, user_id, "admin") is False
    grant(services, cache, user_id, "admin")
    assert revoke(services, cache, user_id, "admin") is True
    assert role_names_of(services, user_id) == []
    assert [e.action for e in audit_entries(services)] == [
        domain.ROLE_GRANTED,
        domain.ROLE_REVOKED,
    ]


@pytest.mark.parametrize("missing", ["user", "role"])
@pytest.mark.parametrize("malformed", [False, True])
def test_unknown_or_malformed_ids_are_not_found(
    services: Any, cache: domain.RoleCache, missing: str, malformed: bool
) -> None:
    user_id: Any = new_user(services, "present@example.com")
    role: Any = role_id(services, "admin")
    absent: Any = "not-a-uuid" if malformed else uuid.uuid4()
    if missing == "user":
        user_id, expected = absent, domain.UserNotFound
    else:
        role, expected = absent, domain.RoleNotFound
    session, changes = admin(services, cache)
    with session:
        with pytest.raises(expected):
            changes.assign(user_id, role)
        with pytest.raises(expected):
            changes.revoke(user_id, role)
    assert audit_entries(services) == []


# The membership check ----------------------------------------------------------------------


def test_the_check_follows_every_change_at_once(
    services: Any, cache: domain.RoleCache, checker: RoleChecker
) -> None:
    user_id = new_user(services, "live@example.com")
    moderator = role_id(services, "moderator")
    assert not checker.has_role(user_id, moderator)
    grant(services, cache, user_id, "moderator")
    assert checker.has_role(user_id, moderator)
    revoke(services, cache, user_id, "moderator")
    assert not checker.has_role(user_id, moderator)


def test_a_change_by_another_process_shows_in_this_ones_checks(services: Any) -> None:
    """Two caches built alike are two worker processes: they share only Redis and the DB."""
    worker_a = RoleChecker(services.db.sessions, cache_of(services))
    worker_b_cache = cache_of(services)
    user_id = new_user(services, "shared@example.com")
    admin_role = role_id(services, "admin")
    assert not worker_a.has_role(user_id, admin_role)
    grant(services, worker_b_cache, user_id, "admin")
    assert worker_a.has_role(user_id, admin_role)


def test_a_process_that_reads_no_cache_still_invalidates_the_others(services: Any) -> None:
    """The CLI, or a server with ROLES_CACHE_TTL=0, next to servers that do cache."""
    client = services.store.redis if isinstance(services.store, RedisTokenStore) else None
    not_reading = domain.role_cache_for(client, ttl=0)
    server = RoleChecker(services.db.sessions, cache_of(services))
    user_id = new_user(services, "mixed@example.com")
    moderator = role_id(services, "moderator")
    assert not server.has_role(user_id, moderator)
    grant(services, not_reading, user_id, "moderator")
    assert server.has_role(user_id, moderator)


def test_a_read_that_raced_a_change_is_never_cached(
    services: Any, cache: domain.RoleCache, checker: RoleChecker
) -> None:
    user_id = new_user(services, "race@example.com")
    admin_role = role_id(services, "admin")
    # A reader misses and reads the database (no roles) ...
    miss = cache.lookup(user_id, admin_role)
    assert isinstance(miss, Miss)
    stale: list[uuid.UUID] = []
    # ... then a change commits before the reader stores what it read.
    grant(services, cache, user_id, "admin")
    assert cache.fill(user_id, miss, stale) is False
    assert checker.has_role(user_id, admin_role)


def test_a_warm_check_needs_no_query_and_a_cold_one_needs_one(
    services: Any, cache: domain.RoleCache, checker: RoleChecker
) -> None:
    user_id = new_user(services, "queries@example.com")
    grant(services, cache, user_id, "subscriber")
    grant(services, cache, user_id, "moderator")
    subscriber, admin_role = role_id(services, "subscriber"), role_id(services, "admin")
    with count_queries(services) as cold:
        assert checker.has_role(user_id, subscriber)
    with count_queries(services) as warm:
        assert checker.has_role(user_id, subscriber)
        assert not checker.has_role(user_id, admin_role)
    assert len(cold) == 1
    # With Redis the second and third checks are cache hits; without it, one query each.
    assert len(warm) == (0 if cache.enabled else 2)


def test_cache_entries_expire_by_the_configured_ttl(services: Any, cache: domain.RoleCache) -> None:
    user_id = new_user(services, "ttl@example.com")
    miss = cache.lookup(user_id, role_id(services, "admin"))
    assert isinstance(miss, Miss)
    stored = cache.fill(user_id, miss, [])
    if cache.enabled:
        assert stored
        key = f"oidc:roles:{{{user_id}}}"
        ttl = services.store.redis.ttl(key)
        assert 0 < ttl <= services.settings.roles_cache_ttl
    else:
        assert not stored


def dead_redis_cache() -> domain.RedisRoleCache:
    """A cache whose Redis refuses connections: port 1 on loopback has nothing listening."""
    client = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5)
    return domain.RedisRoleCache(client, ttl=300)


def test_with_redis_down_the_check_still_answers_from_the_database(services: Any) -> None:
    user_id = new_user(services, "outage@example.com")
    grant(services, cache_of(services), user_id, "moderator")
    checker = RoleChecker(services.db.sessions, dead_redis_cache())
    assert checker.has_role(user_id, role_id(services, "moderator"))
    assert not checker.has_role(user_id, role_id(services, "admin"))


def test_with_redis_down_a_change_is_refused_and_nothing_is_written(services: Any) -> None:
    user_id = new_user(services, "refused@example.com")
    session = services.db.sessions()
    with session, pytest.raises(StoreUnavailable):
        RoleAdmin(session, dead_redis_cache(), ACTOR).assign(user_id, role_id(services, "admin"))
    assert role_names_of(services, user_id) == []
    assert audit_entries(services) == []


# The audit trail -------------------------------------------------------------------------------


def test_audit_listing_is_newest_first_and_honours_since_and_limit(services: Any) -> None:
    base = datetime(2030, 1, 1, tzinfo=UTC)
    with services.db.session() as session:
        for minutes in range(5):
            session.add(
                AuditLog(
                    actor="cli",
                    action="role.create",
                    target=str(minutes),
                    details={},
                    created_at=base + timedelta(minutes=minutes),
                )
            )
    with services.db.session() as session:
        newest = audit.list_entries(session, limit=2)
        recent = audit.list_entries(session, since=base + timedelta(minutes=3))
    assert [e.target for e in newest] == ["4", "3"]
    assert [e.target for e in recent] == ["4", "3"]
    assert audit.as_dict(newest[0])["created_at"] == "2030-01-01T00:04:00+00:00"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", datetime(2030, 1, 1, 11, 30, tzinfo=UTC)),
        ("2d", datetime(2029, 12, 30, 12, 0, tzinfo=UTC)),
        ("2029-12-31", datetime(2029, 12, 31, tzinfo=UTC)),
        ("2029-12-31T10:00:00Z", datetime(2029, 12, 31, 10, tzinfo=UTC)),
        ("2029-12-31T13:00:00+03:00", datetime(2029, 12, 31, 10, tzinfo=UTC)),
    ],
)
def test_since_takes_an_age_or_an_iso_time(text: str, expected: datetime) -> None:
    assert audit.parse_since(text, now=datetime(2030, 1, 1, 12, tzinfo=UTC)) == expected


@pytest.mark.parametrize("text", ["yesterday", "5 minutes", "-3d", "2029-13-01"])
def test_since_refuses_what_it_cannot_read(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        audit.parse_since(text)
