"""Account cards: what introspection, userinfo, refresh and /users/me read instead of the DB."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from oidc_server import roles as domain
from oidc_server.accounts import create_user, get_user
from oidc_server.lifecycle import erase_user
from oidc_server.roles import AccountCard, Miss, RoleAdmin, read_card

from .support.roles import cache_of, count_queries, role_id
from .test_roles_domain import ACTOR, dead_redis_cache, grant, new_user, revoke


@pytest.fixture
def cache(services: Any) -> domain.RoleCache:
    return cache_of(services)


def card_of(services: Any, cache: domain.RoleCache, user_id: uuid.UUID) -> AccountCard | None:
    with services.db.session() as session:
        return read_card(session, cache, user_id)


def test_a_card_holds_the_users_login_password_flag_and_sorted_role_names(
    services: Any, cache: domain.RoleCache
) -> None:
    user_id = new_user(services, "card@example.com")
    grant(services, cache, user_id, "subscriber")
    grant(services, cache, user_id, "admin")
    card = card_of(services, cache, user_id)
    assert card is not None
    assert (card.user_id, card.login, card.has_password) == (user_id, "card@example.com", True)
    assert card.roles == ("admin", "subscriber")
    with services.db.session() as session:
        assert card.created_at == get_user(session, user_id).created_at
    # A cached card reads back the same.
    assert card_of(services, cache, user_id) == card


@pytest.mark.parametrize("user_id", [uuid.uuid4(), "not-a-uuid", ""])
def test_unknown_and_malformed_users_have_no_card(
    services: Any, cache: domain.RoleCache, user_id: Any
) -> None:
    assert card_of(services, cache, user_id) is None


def test_a_warm_card_needs_no_query_and_a_cold_one_needs_one(
    services: Any, cache: domain.RoleCache
) -> None:
    user_id = new_user(services, "warm@example.com")
    with count_queries(services) as cold:
        first = card_of(services, cache, user_id)
    with count_queries(services) as warm:
        second = card_of(services, cache, user_id)
    assert first == second
    assert len(cold) == 1
    # With Redis the second read is a cache hit; without it, one query again.
    assert len(warm) == (0 if cache.enabled else 1)


def test_the_card_follows_role_grants_revocations_renames_and_deletions(
    services: Any, cache: domain.RoleCache
) -> None:
    user_id = new_user(services, "follows@example.com")
    assert card_of(services, cache, user_id).roles == ()  # type: ignore[union-attr]
    grant(services, cache, user_id, "moderator")
    assert card_of(services, cache, user_id).roles == ("moderator",)  # type: ignore[union-attr]
    with services.db.session() as session:
        RoleAdmin(session, cache, ACTOR).update(role_id(services, "moderator"), name="curator")
    assert card_of(services, cache, user_id).roles == ("curator",)  # type: ignore[union-attr]
    grant(services, cache, user_id, "subscriber")
    revoke(services, cache, user_id, "subscriber")
    assert card_of(services, cache, user_id).roles == ("curator",)  # type: ignore[union-attr]
    with services.db.session() as session:
        RoleAdmin(session, cache, ACTOR).delete(role_id(services, "curator"))
    assert card_of(services, cache, user_id).roles == ()  # type: ignore[union-attr]


def test_an_erased_user_has_no_card_at_once(services: Any, cache: domain.RoleCache) -> None:
    user_id = new_user(services, "erased@example.com")
    assert card_of(services, cache, user_id) is not None
    with services.db.session() as session:
        erase_user(
            session,
            services.store,
            cache,
            user_id,
            actor="test",
            initiated_by="user",
            secret_key=services.settings.secret_key,
        )
    assert card_of(services, cache, user_id) is None


def test_a_card_read_that_raced_a_change_is_never_cached(
    services: Any, cache: domain.RoleCache
) -> None:
    user_id = new_user(services, "cardrace@example.com")
    stale = card_of(services, cache, user_id)
    assert stale is not None
    cache.invalidate([user_id])
    # A reader misses and reads the database (no roles) ...
    miss = cache.lookup_card(user_id)
    assert isinstance(miss, Miss)
    # ... then a grant commits before the reader stores what it read.
    grant(services, cache, user_id, "admin")
    assert cache.fill_card(stale, miss) is False
    assert card_of(services, cache, user_id).roles == ("admin",)  # type: ignore[union-attr]


def test_cards_expire_by_the_configured_ttl(services: Any, cache: domain.RoleCache) -> None:
    user_id = new_user(services, "cardttl@example.com")
    card_of(services, cache, user_id)
    if not cache.enabled:
        assert isinstance(cache.lookup_card(user_id), Miss)
        return
    ttl = services.store.redis.ttl(f"oidc:card:{{{user_id}}}")
    assert 0 < ttl <= services.settings.roles_cache_ttl


def test_with_redis_down_the_card_comes_from_the_database(services: Any) -> None:
    user_id = new_user(services, "cardoutage@example.com")
    grant(services, cache_of(services), user_id, "moderator")
    card = card_of(services, dead_redis_cache(), user_id)
    assert card is not None and card.roles == ("moderator",)


def test_an_account_without_a_password_says_so_on_its_card(
    services: Any, cache: domain.RoleCache
) -> None:
    with services.db.session() as session:
        user_id = create_user(session, services.hasher, "social-only@example.com", None).id
    for _ in range(2):  # from the database, then from the cache
        card = card_of(services, cache, user_id)
        assert card is not None and card.has_password is False


def test_a_card_in_another_shape_is_read_from_the_database_instead(
    services: Any, cache: domain.RoleCache
) -> None:
    if not cache.enabled:
        pytest.skip("only the Redis cache stores cards")
    user_id = new_user(services, "oldshape@example.com")
    services.store.redis.set(f"oidc:card:{{{user_id}}}", '{"written": "by another release"}')
    card = card_of(services, cache, user_id)
    assert card is not None and card.login == "oldshape@example.com"
