"""Data lifecycle: login history retention, erasing users everywhere, and TTLs on everything
the token store and the app keep in Redis (or in process memory)."""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from click.testing import CliRunner, Result
from flask.testing import FlaskClient
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import func, select

from oidc_server import audit, lifecycle
from oidc_server.accounts import create_user
from oidc_server.cli import main
from oidc_server.config import Settings
from oidc_server.models import AuditLog, Base, LoginHistory, Role, SocialAccount, User
from oidc_server.roles import NoRoleCache
from oidc_server.security import hash_token
from oidc_server.tokens.memory_store import MemoryTokenStore
from oidc_server.tokens.reads import read_together
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.service import LoginContext, TokenService
from oidc_server.tokens.store import (
    RefreshRecord,
    Rotation,
    SessionRecord,
    StoreUnavailable,
    TokenStore,
)

from .conftest import PASSWORD, bearer, make_client
from .support.accounts import FakeClock, api_login, register, throttled_app
from .support.cli import OIDC_SERVER, run_cli, settings_env

VIEWER = "viewer@example.com"


# Helpers ------------------------------------------------------------------------------------


def rows_about(services: Any, user_id: uuid.UUID) -> dict[str, int]:
    """Rows of every table with a foreign key to users, for this user (the user row too)."""
    counts: dict[str, int] = {}
    with services.db.session() as session:
        counts["users"] = session.scalar(
            select(func.count()).select_from(User).where(User.id == user_id)
        )
        for table in Base.metadata.sorted_tables:
            for fk in table.foreign_keys:
                if fk.column.table.name == "users":
                    query = select(func.count()).select_from(table).where(fk.parent == user_id)
                    counts[f"{table.name}.{fk.parent.name}"] = session.scalar(query)
    return counts


def audit_text(services: Any) -> str:
    with services.db.session() as session:
        return json.dumps([audit.as_dict(e) for e in audit.list_entries(session, limit=10_000)])


def machine_token(client: FlaskClient, services: Any) -> str:
    machine = make_client(services)
    response = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic
    )
    return response.json["access_token"]


def introspect(client: FlaskClient, services: Any, token: str) -> bool:
    machine = make_client(services, name="resource server")
    response = client.post("/oauth/introspect", data={"token": token}, headers=machine.basic)
    return bool(response.json["active"])


def erase(client: FlaskClient, access_token: str, **body: Any) -> Any:
    return client.delete(
        "/api/v1/users/me", json=body if body else None, headers=bearer(access_token)
    )


def in_process_cli(settings: Settings, *args: str, stdin: str | None = None) -> Result:
    """The CLI run in this process (faster than ``run_cli``) with the same environment."""
    return CliRunner().invoke(main, list(args), input=stdin, env=settings_env(settings))


def social_only_user(services: Any, login: str, signed_in_ago: float = 0) -> dict[str, Any]:
    """A user without a password, linked to Google, with a session begun ``signed_in_ago`` s ago."""
    with services.db.session() as session:
        user = create_user(session, services.hasher, login, None)
        session.add(SocialAccount(user_id=user.id, provider="google", subject=f"g-{login}"))
        user_id = str(user.id)
    tokens = TokenService(
        services.store,
        services.tokens.codec,
        services.tokens.refresh_token_ttl,
        clock=lambda: time.time() - signed_in_ago,
    )
    token, _ = tokens.start_session(
        LoginContext(user_id, "cinema-app", "openid profile email", [], auth_method="google")
    )
    return {"user_id": user_id, **token}


# Erasure through the API --------------------------------------------------------------------


def test_erasing_oneself_removes_every_trace_and_ends_every_session(
    client: FlaskClient, services: Any, user: Any
) -> None:
    user_id = user.id
    first = api_login(client, user_agent="phone").json
    second = api_login(client, user_agent="tv").json
    assert api_login(client, password="wrong guess").status_code == 401  # a failed-login row
    with services.db.session() as session:
        session.add(SocialAccount(user_id=user_id, provider="yandex", subject="y-1", email=VIEWER))
        role_id = session.scalar(select(Role.id).where(Role.name == "subscriber"))
    roles_token = machine_token(client, services)
    role_path = f"/api/v1/users/{user_id}/roles/{role_id}"
    assert client.post(role_path, headers=bearer(roles_token)).status_code == 201  # audited
    assert client.head(role_path, headers=bearer(roles_token)).status_code == 200  # cached
    before = rows_about(services, user_id)
    assert before["users"] == 1 and all(
        before[k] >= 1
        for k in ("user_roles.user_id", "social_accounts.user_id", "login_history.user_id")
    )

    response = erase(client, first["access_token"], password=PASSWORD)

    assert response.status_code == 204, response.get_data(as_text=True)
    assert set(rows_about(services, user_id).values()) == {0}
    assert services.store.list_sessions(str(user_id)) == []
    for tokens in (first, second):  # every session's tokens died at once
        assert (
            client.get("/api/v1/users/me", headers=bearer(tokens["access_token"])).status_code
            == 401
        )
        assert not introspect(client, services, tokens["access_token"])
    refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert refreshed.status_code == 401
    assert client.head(role_path, headers=bearer(roles_token)).status_code == 404
    assert api_login(client).status_code == 401
    # The audit trail keeps an anonymous trace: a pseudonym, never the email or the id.
    name = lifecycle.pseudonym(services.settings.secret_key, user_id)
    with services.db.session() as session:
        erased = session.scalars(select(AuditLog).where(AuditLog.action == "user.erased")).all()
        assert [(e.target, e.actor, e.details["initiated_by"]) for e in erased] == [
            (name, "cinema-app", "user")
        ]
        grant = session.scalar(select(AuditLog).where(AuditLog.action == "user_role.grant"))
        assert grant.target == name  # the earlier entry now names the pseudonym as well
    trail = audit_text(services)
    assert VIEWER not in trail and str(user_id) not in trail
    # The login is free again.
    assert register(client, VIEWER, "a brand new passphrase").status_code == 201


def test_a_wrong_or_missing_password_erases_nothing(
    client: FlaskClient, services: Any, user: Any
) -> None:
    token = api_login(client).json["access_token"]
    wrong = erase(client, token, password="not my password")
    assert (wrong.status_code, wrong.json["error"]) == (403, "wrong_password")
    missing = erase(client, token)
    assert (missing.status_code, missing.json["error"]) == (422, "password_required")
    assert "password" in missing.json["details"]
    assert rows_about(services, user.id)["users"] == 1
    assert client.get("/api/v1/users/me", headers=bearer(token)).status_code == 200


def test_an_account_without_password_needs_a_recent_sign_in(
    client: FlaskClient, services: Any
) -> None:
    stale = social_only_user(services, "stale@example.com", signed_in_ago=3600)
    refused = erase(client, stale["access_token"])
    assert (refused.status_code, refused.json["error"]) == (403, "reauthentication_required")
    assert rows_about(services, uuid.UUID(stale["user_id"]))["users"] == 1

    fresh = social_only_user(services, "fresh@example.com")
    assert erase(client, fresh["access_token"]).status_code == 204
    assert set(rows_about(services, uuid.UUID(fresh["user_id"])).values()) == {0}


def test_erasure_needs_a_users_token(client: FlaskClient, services: Any) -> None:
    assert client.delete("/api/v1/users/me").status_code == 401
    machine = machine_token(client, services)
    assert client.delete("/api/v1/users/me", headers=bearer(machine)).status_code == 403


# Erasure: ordering and compensation ---------------------------------------------------------


def unreachable_store() -> RedisTokenStore:
    """A real Redis client whose server is not there (nothing listens on port 1)."""
    client = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    return RedisTokenStore(client)


def test_a_store_outage_aborts_the_erasure_before_any_row_changes(
    client: FlaskClient, services: Any, user: Any
) -> None:
    api_login(client)
    before = rows_about(services, user.id)
    with services.db.sessions() as session, pytest.raises(StoreUnavailable):
        lifecycle.erase_user(
            session,
            unreachable_store(),
            NoRoleCache(),
            user.id,
            actor="test",
            initiated_by="operator",
            secret_key=services.settings.secret_key,
        )
    assert rows_about(services, user.id) == before
    assert "user.erased" not in audit_text(services)


def racing_store(store: TokenStore, services: Any, user_id: str) -> TokenStore:
    """``store``, where a sign-in of the user lands right after the first sweep of sessions."""
    base = type(store)

    class Racing(base):  # type: ignore[misc, valid-type]
        raced = False

        def end_user_sessions(self, user_id_: str, keep_sid: str | None = None) -> int:
            ended = super().end_user_sessions(user_id_, keep_sid)
            if not self.raced:
                self.raced = True
                TokenService(self, services.tokens.codec, 3600).start_session(
                    LoginContext(user_id, "cinema-app", "openid", [], auth_method="password")
                )
            return ended

    if isinstance(store, RedisTokenStore):
        return Racing(store.redis)
    return Racing()


def test_a_sign_in_racing_the_erasure_is_ended_after_the_commit(services: Any, user: Any) -> None:
    store = racing_store(services.store, services, str(user.id))
    with services.db.sessions() as session:
        erasure = lifecycle.erase_user(
            session,
            store,
            NoRoleCache(),
            user.id,
            actor="test",
            initiated_by="operator",
            secret_key=services.settings.secret_key,
        )
    assert store.raced  # type: ignore[attr-defined]
    assert erasure.sessions_ended == 1  # the one that raced in
    assert store.list_sessions(str(user.id)) == []


def test_erasing_a_user_twice_finds_nobody_the_second_time(services: Any, user: Any) -> None:
    def run() -> lifecycle.Erasure:
        with services.db.sessions() as session:
            return lifecycle.erase_user(
                session,
                services.store,
                NoRoleCache(),
                user.id,
                actor="test",
                initiated_by="operator",
                secret_key=services.settings.secret_key,
            )

    run()
    with pytest.raises(lifecycle.UserNotFound):
        run()


# Erasure from the CLI -----------------------------------------------------------------------


def test_the_operator_erases_a_user_from_the_cli(
    client: FlaskClient, services: Any, settings: Settings, user: Any
) -> None:
    tokens = api_login(client).json
    refused = in_process_cli(settings, "users", "delete", VIEWER, stdin="n\n")
    assert refused.exit_code == 1 and rows_about(services, user.id)["users"] == 1

    done = run_cli(settings, "users", "delete", VIEWER.upper(), "--yes")

    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed["id"] == str(user.id)
    assert printed["pseudonym"] == lifecycle.pseudonym(settings.secret_key, user.id)
    assert set(rows_about(services, user.id).values()) == {0}
    if settings.redis_url:  # the servers' sessions, in the shared Redis, ended at once
        assert printed["sessions_ended"] == 1
        assert services.store.list_sessions(str(user.id)) == []
    else:  # an embedded server's in-process sessions are out of the CLI's reach, and it says so
        assert "no REDIS_URL" in done.stderr
    # Either way this server refuses the tokens: every check looks the user up.
    assert client.get("/api/v1/users/me", headers=bearer(tokens["access_token"])).status_code == 401
    refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 401
    unknown = in_process_cli(settings, "users", "delete", VIEWER, "--yes")
    assert unknown.exit_code == 1 and "no user" in unknown.stderr


# Login history retention --------------------------------------------------------------------


NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def add_history(
    services: Any, user_id: uuid.UUID, ages_in_days: list[float], now: datetime = NOW
) -> None:
    with services.db.session() as session:
        for age in ages_in_days:
            session.add(
                LoginHistory(
                    user_id=user_id,
                    method="password",
                    success=True,
                    ip="192.0.2.1",
                    logged_in_at=now - timedelta(days=age),
                )
            )


def history_ages(services: Any) -> list[int]:
    with services.db.session() as session:
        stamps = session.scalars(select(LoginHistory.logged_in_at)).all()
    return sorted(round((NOW - (s if s.tzinfo else s.replace(tzinfo=UTC))).days) for s in stamps)


def test_old_login_history_is_purged_in_batches(services: Any, user: Any) -> None:
    add_history(services, user.id, [1, 29, 31, 45, 90, 400, 401])
    purge = lifecycle.purge_login_history(services.db.sessions, 30, batch_size=2, now=NOW)
    assert purge.deleted == 5  # in three transactions of at most two rows
    assert purge.cutoff == NOW - timedelta(days=30)
    assert history_ages(services) == [1, 29]
    again = lifecycle.purge_login_history(services.db.sessions, 30, batch_size=2, now=NOW)
    assert again.deleted == 0


@pytest.mark.parametrize(("days", "batch"), [(0, 10), (-1, 10), (30, 0)])
def test_a_purge_refuses_nonsense_bounds(services: Any, days: int, batch: int) -> None:
    with pytest.raises(ValueError, match="at least"):
        lifecycle.purge_login_history(services.db.sessions, days, batch_size=batch)


def test_the_purge_command_keeps_the_configured_days(
    services: Any, settings: Settings, user: Any
) -> None:
    add_history(services, user.id, [2, 20, 40], now=datetime.now(UTC))
    env = {**settings_env(settings), "LOGIN_HISTORY_RETENTION_DAYS": "30"}
    default = subprocess.run(
        [OIDC_SERVER, "history", "purge"], env=env, capture_output=True, text=True, timeout=60
    )
    assert default.returncode == 0, default.stderr
    printed = json.loads(default.stdout)
    assert (printed["deleted"], printed["older_than_days"]) == (1, 30)
    explicit = in_process_cli(settings, "history", "purge", "--older-than", "10")
    assert explicit.exit_code == 0 and json.loads(explicit.stdout)["deleted"] == 1
    assert len(history_ages(services)) == 1
    refused = in_process_cli(settings, "history", "purge", "--older-than", "0")
    assert refused.exit_code == 2  # a usage error, nothing deleted
    assert len(history_ages(services)) == 1


# TTLs ---------------------------------------------------------------------------------------


def exercise_every_store_operation(store: TokenStore) -> set[str]:
    """Call each operation of the store interface in a way that writes; returns their names."""
    now = int(time.time())
    used: set[str] = set()

    def call(name: str, *args: Any) -> Any:
        used.add(name)
        return getattr(store, name)(*args)

    def session(sid: str, user_id: str = "u-1") -> None:
        record = SessionRecord(sid, user_id, "cinema-app", now, now, now, "password")
        refresh = RefreshRecord(sid, user_id, "cinema-app", "openid", now, now + 3600)
        call("start_session", record, hash_token(f"{sid}.r0"), refresh, 3600)

    session("s-1")
    session("s-2")
    session("s-3", "u-2")
    session("s-4", "u-3")  # left alive
    refresh = RefreshRecord("s-1", "u-1", "other-app", "openid", now, now + 3600)
    call("add_refresh_token", "s-1", hash_token("s-1.extra"), refresh, 3600)
    call("peek_refresh_token", "s-1", hash_token("s-1.r0"))
    call(
        "rotate_refresh_token",
        Rotation("s-1", hash_token("s-1.r0"), hash_token("s-1.r1"), now, 3600),
    )
    call(
        "rotate_refresh_token",
        Rotation("s-2", hash_token("s-2.r0"), hash_token("s-2.r1"), now, 3600),
    )
    call(
        "rotate_refresh_token",
        Rotation("s-2", hash_token("s-2.r0"), hash_token("s-2.r2"), now, 3600),
    )
    session("s-5")
    step = call("rotation", Rotation("s-5", hash_token("s-5.r0"), hash_token("s-5.r1"), now, 3600))
    read_together(getattr(store, "redis", None), step)  # the same write, sent with others
    call("get_session", "s-1")
    call("list_sessions", "u-1")
    call("end_session", "s-1")
    call("end_user_sessions", "u-2")
    call("deny_access_token", "jti-1", 900)
    call("is_access_token_active", "jti-1", "s-1")
    call("access_token_reads", "jti-1", "s-1")  # a read to send later: writes nothing
    call("put_once", "social", "state-1", {"nonce": "n"}, 600)
    call("put_once", "social", "state-2", {"nonce": "n"}, 600)
    call("peek_once", "social", "state-1")
    call("take_once", "social", "state-2")
    call("ping")
    call("bump_generation", "clients")
    call("get_generation", "clients")
    call("generation_reads", "clients")  # a read to send later: writes nothing
    for _ in range(6):
        call("record_login_failure", "account-digest", 900)
    call("hold_login_attempts", "account-digest", now + 5, 5, 900)
    call("claim_login_attempt", "account-digest", now + 10)
    call("record_login_failure", "other-digest", 900)
    call("clear_login_failures", "other-digest")
    return used


def store_interface() -> set[str]:
    """Every public operation of ``TokenStore``, so that a new one cannot escape the check."""
    return {
        name
        for name in dir(TokenStore)
        if not name.startswith("_") and callable(getattr(TokenStore, name))
    }


def assert_every_redis_key_expires(client: redis.Redis) -> int:
    keys = list(client.scan_iter(count=1000))
    assert keys, "nothing was written"
    forever = [key for key in keys if client.ttl(key) < 0]
    assert forever == [], f"keys without a TTL: {forever}"
    return len(keys)


def test_every_key_the_token_store_writes_expires(
    token_store: TokenStore, redis_client: redis.Redis | None
) -> None:
    if isinstance(token_store, RedisTokenStore):
        assert redis_client is not None
        used = exercise_every_store_operation(token_store)
        assert_every_redis_key_expires(redis_client)
        # Revocations and sessions live exactly as long as what they are about.
        assert 0 < redis_client.ttl("oidc:deny:jti-1") <= 900
        assert 0 < redis_client.ttl("oidc:{s-4}:session") <= 3600
    else:
        clock = FakeClock()
        store = MemoryTokenStore(clock)
        used = exercise_every_store_operation(store)
        assert not store.is_access_token_active("jti-1", None)
        clock.advance(7 * 24 * 3600 + 1)  # past the longest TTL written (a generation's week)
        assert store.is_access_token_active("jti-1", None)  # the denial lapsed with the token
        tables = [v for v in vars(store).values() if hasattr(v, "purge")]
        assert tables
        for table in tables:
            table.purge()
            assert len(table) == 0
    assert store_interface() <= used, store_interface() - used


def test_every_key_the_app_writes_to_redis_expires(
    settings: Settings, token_store: TokenStore, redis_client: redis.Redis | None
) -> None:
    clock = FakeClock(time.time())
    store = token_store if isinstance(token_store, RedisTokenStore) else MemoryTokenStore(clock)
    with throttled_app(settings, store) as app:
        services = app.extensions["oidc"]
        client = app.test_client()
        assert register(client, VIEWER, PASSWORD).status_code == 201
        for _ in range(3):
            api_login(client, password="wrong guess")  # backoff counters, limiter counters
        tokens = api_login(client).json
        refreshed = client.post(
            "/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}
        )
        access = refreshed.json["access_token"]
        client.post("/api/v1/auth/logout", headers=bearer(access))
        roles_token = machine_token(client, services)
        with services.db.session() as session:
            user_id = session.scalar(select(User.id))
            role_id = session.scalar(select(Role.id).where(Role.name == "admin"))
        client.head(f"/api/v1/users/{user_id}/roles/{role_id}", headers=bearer(roles_token))
        if redis_client is not None:
            assert assert_every_redis_key_expires(redis_client) > 5
        else:
            clock.advance(settings.refresh_token_ttl + 1)
            for table in [v for v in vars(store).values() if hasattr(v, "purge")]:
                table.purge()
                assert len(table) == 0


def stored_text(store: TokenStore) -> str:
    """Everything the store holds, keys and values, as text."""
    if isinstance(store, RedisTokenStore):
        parts = []
        for key in store.redis.scan_iter(count=1000):
            kind = store.redis.type(key).decode()
            value = {
                "string": lambda k: store.redis.get(k),
                "hash": lambda k: store.redis.hgetall(k),
                "zset": lambda k: store.redis.zrange(k, 0, -1),
                "set": lambda k: store.redis.smembers(k),
            }[kind](key)
            parts.append(f"{key!r} {value!r}")
        return "\n".join(parts)
    # The in-process store's own tables: what a memory dump of the process would show.
    return repr({name: getattr(table, "_items", table) for name, table in vars(store).items()})


def test_the_store_keeps_no_token_in_the_clear(
    client: FlaskClient, services: Any, user: Any
) -> None:
    first = api_login(client).json
    second = client.post(
        "/api/v1/auth/refresh", json={"refresh_token": first["refresh_token"]}
    ).json
    client.post("/api/v1/auth/logout", headers=bearer(second["access_token"]))  # a denied jti
    text = stored_text(services.store)
    assert "cinema-app" in text  # the dump really shows what is stored
    for tokens in (first, second):
        secret = tokens["refresh_token"].partition(".")[2]  # what follows the session id
        assert secret not in text
        assert tokens["access_token"] not in text
        assert hash_token(tokens["refresh_token"]) in text  # the digest is what is kept
