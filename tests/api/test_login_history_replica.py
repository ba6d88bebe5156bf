"""DATABASE_REPLICA_URL: login-history pages are read from the replica, writes stay on the primary.

The "replica" here is a second migrated database that nothing replicates into: a row only it
holds shows where a page was read from. Replication itself is PostgreSQL's to do.
"""

from __future__ import annotations

import socket
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, insert, select

from oidc_server.app import create_app
from oidc_server.config import Settings
from oidc_server.db import Database, ReplicaRest, upgrade
from oidc_server.models import Base, LoginHistory, User
from oidc_server.tokens.store import TokenStore

from ..conftest import TEST_DATABASE_URL, bearer
from ..support.accounts import signed_in
from ..support.databases import fresh_database
from ..support.waiting import free_port

HISTORY = "/api/v1/users/me/login-history"


@pytest.fixture(scope="session")
def replica_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A second migrated database beside the test database: PostgreSQL in CI, else SQLite."""
    if not TEST_DATABASE_URL:
        url = f"sqlite:///{tmp_path_factory.mktemp('replica') / 'replica.db'}"
    else:
        url = fresh_database(TEST_DATABASE_URL, "_replica")
    upgrade(url)
    return url


@pytest.fixture
def replicated_app(
    app: Flask, user: User, settings: Settings, replica_url: str, token_store: TokenStore
) -> Iterator[Flask]:
    """The app of conftest's ``app`` fixture (which readied the primary and its ``user``), with
    a replica set, emptied."""
    replica = Database(replica_url)
    with replica.session() as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
    replica.dispose()
    replicated = create_app(replace(settings, database_replica_url=replica_url), store=token_store)
    yield replicated
    replicated.extensions["oidc"].db.dispose()
    replicated.extensions["oidc"].replica.dispose()


def copy_user_with_history(services: Any, user_id: uuid.UUID, user_agent: str) -> None:
    """What replication would bring: the user's row, and one history entry of the replica's."""
    with services.db.session() as primary:
        user = primary.execute(select(User.__table__).where(User.id == user_id)).one()
    with services.replica.session() as replica:
        replica.execute(insert(User.__table__), [user._asdict()])
        replica.execute(
            insert(LoginHistory),
            [
                {
                    "id": uuid.uuid4(),
                    "user_id": user_id,
                    "logged_in_at": datetime(2026, 1, 1, tzinfo=UTC),
                    "method": "password",
                    "success": True,
                    "user_agent": user_agent,
                    "ip": "127.0.0.1",
                    "device": "Other on Other (other)",
                }
            ],
        )


def test_history_pages_are_read_from_the_replica(replicated_app: Flask, user: User) -> None:
    client = replicated_app.test_client()
    services = replicated_app.extensions["oidc"]
    token, user_id = signed_in(client)["access_token"], user.id
    # The sign-in was written to the primary only.
    with services.db.session() as primary:
        on_primary = primary.scalars(
            select(LoginHistory.user_agent).where(LoginHistory.user_id == user_id)
        ).all()
    assert on_primary
    assert client.get(HISTORY, headers=bearer(token)).json["items"] == []
    copy_user_with_history(services, user_id, "seen-on-the-replica")
    items = client.get(HISTORY, headers=bearer(token)).json["items"]
    assert [item["user_agent"] for item in items] == ["seen-on-the-replica"]


def test_without_a_replica_history_is_read_from_the_primary(
    client: Any, services: Any, user: User
) -> None:
    assert services.replica is services.db
    token = signed_in(client)["access_token"]
    assert len(client.get(HISTORY, headers=bearer(token)).json["items"]) == 1


def test_writes_and_other_reads_stay_on_the_primary(replicated_app: Flask, user: User) -> None:
    client = replicated_app.test_client()
    token, user_id = signed_in(client)["access_token"], user.id
    # Registration and sign-in wrote nothing to the replica, and /users/me (its answer feeds
    # the account cache) came from the primary although the replica does not know the user.
    with replicated_app.extensions["oidc"].replica.session() as replica:
        assert replica.scalar(select(User.id).where(User.id == user_id)) is None
    me = client.get("/api/v1/users/me", headers=bearer(token))
    assert me.status_code == 200 and me.json["id"] == str(user_id)


def test_a_replica_that_does_not_answer_is_read_around_and_reported(
    app: Flask, user: User, settings: Settings, token_store: TokenStore, caplog: Any
) -> None:
    # ``app`` readies the primary (roles, the first-party client) that this app shares.
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none?connect_timeout=2"
    broken = create_app(replace(settings, database_replica_url=dead), store=token_store)
    client = broken.test_client()
    try:
        token = signed_in(client)["access_token"]
        pages = client.get(HISTORY, headers=bearer(token))
        # Read from the primary instead: the sign-in just made is there.
        assert pages.status_code == 200
        assert [item["user_agent"] for item in pages.json["items"]] == ["pytest"]
        assert "read replica unavailable" in caplog.text
        ready = client.get("/health/ready")
        assert ready.status_code == 200  # the instance still serves everything
        assert ready.json["checks"] == {
            "database": True,
            "token_store": True,
            "database_replica": False,
        }
    finally:
        broken.extensions["oidc"].db.dispose()
        broken.extensions["oidc"].replica.dispose()


def test_a_replica_that_failed_is_left_alone_for_a_while(
    app: Flask, user: User, settings: Settings, token_store: TokenStore
) -> None:
    # One attempt per rest period, not one per request: a silent replica costs each attempt
    # a connect timeout, and readiness probes would wait on it too.
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"
    broken = create_app(replace(settings, database_replica_url=dead), store=token_store)
    svc = broken.extensions["oidc"]
    now = [1000.0]
    svc.replica_rest = ReplicaRest(10, clock=lambda: now[0])
    attempts: list[object] = []
    event.listen(svc.replica.engine, "do_connect", lambda *args: attempts.append(args))
    client = broken.test_client()
    try:
        token = signed_in(client)["access_token"]

        def page_is_served() -> bool:
            return client.get(HISTORY, headers=bearer(token)).status_code == 200

        def replica_reported() -> bool:
            return client.get("/health/ready").json["checks"]["database_replica"]

        assert page_is_served() and len(attempts) == 1
        assert page_is_served() and replica_reported() is False
        assert len(attempts) == 1  # resting: neither the page nor the probe tried it
        now[0] += 10
        assert replica_reported() is False and len(attempts) == 2  # tried again, failed
        assert page_is_served() and len(attempts) == 2  # and that started a new rest
        now[0] += 10
        assert page_is_served() and len(attempts) == 3
    finally:
        svc.db.dispose()
        svc.replica.dispose()


def test_a_replica_that_accepts_and_never_answers_is_given_up_on(
    app: Flask, user: User, settings: Settings, token_store: TokenStore
) -> None:
    # Connections are accepted (the listen backlog) and then nothing is ever said: without the
    # replica's connect timeout, a history page would wait on it for good.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        replica = f"postgresql+psycopg://postgres@127.0.0.1:{port}/none"
        stuck = create_app(replace(settings, database_replica_url=replica), store=token_store)
        client = stuck.test_client()
        try:
            token = signed_in(client)["access_token"]
            answers: list[Any] = []
            reader = threading.Thread(
                target=lambda: answers.append(client.get(HISTORY, headers=bearer(token))),
                daemon=True,  # a failing run must not wait on it at exit
            )
            reader.start()
            reader.join(60)  # a bound on a hang, far above REPLICA_CONNECT_TIMEOUT
            assert answers, "the history page waited on the silent replica"
            assert answers[0].status_code == 200
            assert [item["user_agent"] for item in answers[0].json["items"]] == ["pytest"]
        finally:
            stuck.extensions["oidc"].db.dispose()
            stuck.extensions["oidc"].replica.dispose()


def test_a_query_the_replica_refuses_is_not_retried_on_the_primary(
    replicated_app: Flask, user: User
) -> None:
    # A broken query is a bug, not an outage: it would fail on the primary alike. (A
    # placeholder without its value: a ProgrammingError for psycopg and sqlite3 both.)
    from sqlalchemy.exc import ProgrammingError

    from oidc_server.context import read_from_replica

    with replicated_app.test_request_context():
        calls = []

        def bad_query(session: Any) -> Any:
            calls.append(session)
            connection = session.connection()
            placeholder = "%s" if connection.dialect.name == "postgresql" else "?"
            return connection.exec_driver_sql(f"SELECT {placeholder}").all()

        with pytest.raises(ProgrammingError):
            read_from_replica(bad_query)
        assert len(calls) == 1


def test_readiness_checks_an_answering_replica(replicated_app: Flask) -> None:
    ready = replicated_app.test_client().get("/health/ready")
    assert ready.status_code == 200
    assert ready.json["checks"]["database_replica"] is True
