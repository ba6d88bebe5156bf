"""`oidc-server history partition`: the live login history becomes monthly partitions.

Each test gets a database of its own, copied from a migrated template (a conversion cannot be
undone); PostgreSQL only, as partitions are: these run whenever ``TEST_DATABASE_URL`` is set
(always in CI).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import Connection, Engine, create_engine, delete, func, select, text
from sqlalchemy.orm import Session

from oidc_server import history_partitions, lifecycle
from oidc_server.config import Settings
from oidc_server.db import alembic_config, upgrade
from oidc_server.history import record_login
from oidc_server.history_pages import history_page, page_query
from oidc_server.history_partitions import BEFORE, DEFAULT, partition_login_history, partitions
from oidc_server.models import LoginHistory, User

from .conftest import TEST_DATABASE_URL
from .support.cli import run_cli
from .support.databases import drop_database, fresh_database

#: The conversion's clock: its first month is the one after next, January 2027.
NOW = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
FIRST_MONTH = datetime(2027, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def template_url() -> Iterator[str]:
    """A migrated database that each test's database is copied from."""
    if not TEST_DATABASE_URL:
        pytest.skip("TEST_DATABASE_URL not set: no PostgreSQL here (CI always sets it)")
    url = fresh_database(TEST_DATABASE_URL, "_history_template")
    upgrade(url)
    yield url
    drop_database(TEST_DATABASE_URL, "_history_template")


@pytest.fixture
def engine(template_url: str) -> Iterator[Engine]:
    engine = create_engine(fresh_database(TEST_DATABASE_URL, "_history", template=template_url))
    yield engine
    engine.dispose()
    drop_database(TEST_DATABASE_URL, "_history")


def _add_users(connection: Connection, count: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(count)]
    connection.execute(
        User.__table__.insert(),
        [
            {"id": i, "login": f"{i}@example.com", "is_active": True, "created_at": NOW}
            | {"updated_at": NOW}
            for i in ids
        ],
    )
    return ids


def _add_history(connection: Connection, user_id: uuid.UUID, moments: list[datetime]) -> None:
    connection.execute(
        LoginHistory.__table__.insert(),
        [
            {
                "id": uuid.uuid4(),
                "user_id": user_id,
                "logged_in_at": moment,
                "method": "password",
                "success": True,
                "device": "pc",
            }
            for moment in moments
        ],
    )


def _all_pages(engine: Engine, user_id: uuid.UUID) -> list[Any]:
    """Every entry of the user's history, walking the pages as a client does."""
    entries, cursor = [], None
    with Session(engine) as session:
        while True:
            page = history_page(session, user_id, limit=7, cursor=cursor)
            entries += page.items
            if page.next_cursor is None:
                return entries
            cursor = page.next_cursor


def _count(connection: Connection, table: str) -> int:
    return connection.exec_driver_sql(f"SELECT count(*) FROM {table}").scalar_one()  # noqa: S608


def _wait_until(condition: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


def _year_of_sign_ins(engine: Engine) -> tuple[list[uuid.UUID], int]:
    """Three users, each with a sign-in every 5 days of the past year."""
    moments = [NOW - timedelta(days=5 * n, minutes=n) for n in range(73)]
    with engine.begin() as connection:
        users = _add_users(connection, 3)
        for user_id in users:
            _add_history(connection, user_id, moments)
    return users, 3 * len(moments)


def test_the_table_becomes_monthly_partitions_and_keeps_every_row(engine: Engine) -> None:
    users, rows = _year_of_sign_ins(engine)
    before = {user_id: _all_pages(engine, user_id) for user_id in users}

    result = partition_login_history(engine, now=NOW, months_ahead=3)

    assert result.converted
    assert result.created == ["login_history_2027_01", "login_history_2027_02"]
    assert [(p.name, p.lower, p.upper) for p in result.partitions] == [
        (BEFORE, None, FIRST_MONTH),
        ("login_history_2027_01", FIRST_MONTH, datetime(2027, 2, 1, tzinfo=UTC)),
        (
            "login_history_2027_02",
            datetime(2027, 2, 1, tzinfo=UTC),
            datetime(2027, 3, 1, tzinfo=UTC),
        ),
        (DEFAULT, None, None),
    ]
    with engine.connect() as connection:
        assert history_partitions.is_partitioned(connection)
        assert _count(connection, "login_history") == _count(connection, BEFORE) == rows
        key = connection.exec_driver_sql(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = 'login_history'::regclass AND contype = 'p'"
        ).scalar_one()
        assert key == "PRIMARY KEY (id, logged_in_at)"
        # The old table's CHECK did its work at the ATTACH and is gone.
        checks = text(
            "SELECT 1 FROM pg_constraint WHERE conrelid = to_regclass(:table) AND contype = 'c'"
        )
        assert not connection.execute(checks, {"table": BEFORE}).all()
    for user_id in users:
        assert _all_pages(engine, user_id) == before[user_id]


def test_months_are_cut_in_utc_whatever_the_session_time_zone(engine: Engine) -> None:
    """PostgreSQL renders partition bounds in the session's time zone (New York: the first
    month starts on 2026-12-31 19:00-05); they are read back as UTC months."""
    new_york = create_engine(engine.url, connect_args={"options": "-c timezone=America/New_York"})
    try:
        result = partition_login_history(new_york, now=NOW, months_ahead=3)
    finally:
        new_york.dispose()
    assert result.created == ["login_history_2027_01", "login_history_2027_02"]
    assert [p.upper for p in result.partitions[:3]] == [
        datetime(2027, month, 1, tzinfo=UTC) for month in (1, 2, 3)
    ]


def test_the_migrations_see_no_drift_on_a_partitioned_history(engine: Engine) -> None:
    partition_login_history(engine, now=NOW)
    url = engine.url.render_as_string(hide_password=False)
    upgrade(url)  # at head already: nothing to do, nothing refused
    command.check(alembic_config(url))  # the months are not tables the models lack


def test_sign_ins_go_on_while_the_table_is_converted(engine: Engine) -> None:
    """A writer inserting as the app does, one transaction per sign-in, during the whole
    conversion: none fails, and every row it committed is there afterwards."""
    with engine.begin() as connection:
        (user_id,) = _add_users(connection, 1)
        _add_history(connection, user_id, [NOW - timedelta(minutes=n) for n in range(5000)])
    stop, committed, failures = threading.Event(), [], []

    def sign_in_repeatedly() -> None:
        while not stop.is_set():
            try:
                with Session(engine) as session, session.begin():
                    entry = record_login(
                        session,
                        user_id=user_id,
                        method="password",
                        success=True,
                        user_agent="",
                        ip="127.0.0.1",
                    )
                    session.flush()
                    entry_id = entry.id
                committed.append(entry_id)
            except Exception as error:  # what the test is about
                failures.append(error)

    writer = threading.Thread(target=sign_in_repeatedly)
    writer.start()
    try:
        _wait_until(lambda: len(committed) >= 20 or failures)  # the writer is up and running
        result = partition_login_history(engine)
        seen = len(committed)
        _wait_until(lambda: len(committed) >= seen + 20 or failures)  # and goes on, into the new
    finally:
        stop.set()
        writer.join()

    assert result.converted
    assert failures == []
    with engine.connect() as connection:
        stored = set(
            connection.execute(
                select(LoginHistory.id).where(LoginHistory.ip == "127.0.0.1")
            ).scalars()
        )
        assert _count(connection, "login_history") == 5000 + len(committed)
    assert stored == set(committed)


def test_running_it_again_creates_the_months_coming_up_and_moves_their_rows(
    engine: Engine,
) -> None:
    user_id = _year_of_sign_ins(engine)[0][0]
    partition_login_history(engine, now=NOW, months_ahead=0)
    # A sign-in in a month nobody created a partition for (the daily run was missed).
    april = datetime(2027, 4, 10, tzinfo=UTC)
    with engine.begin() as connection:
        _add_history(connection, user_id, [april])
        assert _count(connection, DEFAULT) == 1

    again = partition_login_history(engine, now=datetime(2027, 3, 20, tzinfo=UTC), months_ahead=1)

    assert not again.converted
    assert again.created == [
        "login_history_2027_01",
        "login_history_2027_02",
        "login_history_2027_03",
        "login_history_2027_04",
    ]
    with engine.connect() as connection:
        assert _count(connection, DEFAULT) == 0
        where = connection.execute(
            text("SELECT tableoid::regclass::text FROM login_history WHERE logged_in_at = :at"),
            {"at": april},
        ).scalar_one()
        assert where == "login_history_2027_04"
    assert (
        partition_login_history(
            engine, now=datetime(2027, 3, 20, tzinfo=UTC), months_ahead=1
        ).created
        == []
    )


def test_a_new_sign_in_lands_in_its_month(engine: Engine) -> None:
    partition_login_history(engine, now=NOW, months_ahead=3)
    with engine.begin() as connection:
        (user_id,) = _add_users(connection, 1)
        _add_history(connection, user_id, [datetime(2027, 2, 14, 9, tzinfo=UTC), NOW])
        placed = connection.execute(
            text("SELECT tableoid::regclass::text FROM login_history ORDER BY logged_in_at")
        ).scalars()
        assert list(placed) == [BEFORE, "login_history_2027_02"]


def test_the_purge_drops_months_past_the_retention_and_deletes_the_rest(engine: Engine) -> None:
    partition_login_history(engine, now=NOW, months_ahead=4)
    with engine.begin() as connection:
        (user_id,) = _add_users(connection, 1)
        _add_history(
            connection,
            user_id,
            [
                datetime(2026, 6, 1, tzinfo=UTC),  # the old table's rows
                datetime(2027, 1, 15, tzinfo=UTC),
                datetime(2027, 2, 3, tzinfo=UTC),  # past the cutoff, in the cutoff's month
                datetime(2027, 2, 25, tzinfo=UTC),  # within the retention
                datetime(2027, 3, 2, tzinfo=UTC),
            ],
        )

    purge = lifecycle.purge_login_history(
        lambda: Session(engine), 30, batch_size=10, now=datetime(2027, 3, 12, tzinfo=UTC)
    )

    assert purge.cutoff == datetime(2027, 2, 10, tzinfo=UTC)
    assert purge.dropped_partitions == [BEFORE, "login_history_2027_01"]
    assert purge.deleted == 1
    with engine.connect() as connection:
        names = [p.name for p in partitions(connection)]
        assert names[:2] == ["login_history_2027_02", "login_history_2027_03"]
        left = connection.execute(
            select(LoginHistory.logged_in_at).order_by(LoginHistory.logged_in_at)
        ).scalars()
        assert list(left) == [datetime(2027, 2, 25, tzinfo=UTC), datetime(2027, 3, 2, tzinfo=UTC)]


def test_erasing_a_user_takes_their_history_from_every_partition(engine: Engine) -> None:
    partition_login_history(engine, now=NOW, months_ahead=3)
    with engine.begin() as connection:
        gone, kept = _add_users(connection, 2)
        moments = [datetime(2026, 5, 1, tzinfo=UTC), datetime(2027, 1, 5, tzinfo=UTC)]
        moments.append(datetime(2031, 1, 1, tzinfo=UTC))  # in the default partition
        _add_history(connection, gone, moments)
        _add_history(connection, kept, moments)
        connection.execute(delete(User).where(User.id == gone))
        owners = connection.execute(select(LoginHistory.user_id)).scalars().all()
    assert owners == [kept] * 3


def _scanned_tables(connection: Connection, user_id: uuid.UUID, after: Any) -> set[str]:
    sql = str(
        page_query(user_id, 20, after).compile(
            dialect=connection.dialect, compile_kwargs={"literal_binds": True}
        )
    )
    plan = connection.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {sql}").scalar_one()

    def relations(node: dict[str, Any]) -> set[str]:
        own = {node["Relation Name"]} if "Relation Name" in node else set()
        return own.union(*(relations(child) for child in node.get("Plans", [])))

    return relations(plan[0]["Plan"])


def test_a_later_page_skips_the_months_newer_than_its_cursor(engine: Engine) -> None:
    partition_login_history(engine, now=NOW, months_ahead=3)
    with engine.begin() as connection:
        (user_id,) = _add_users(connection, 1)
        _add_history(
            connection,
            user_id,
            [datetime(2027, 1, day, tzinfo=UTC) for day in range(1, 29)]
            + [datetime(2027, 2, day, tzinfo=UTC) for day in range(1, 29)],
        )
    with engine.connect() as connection:
        first = _scanned_tables(connection, user_id, None)
        in_january = (datetime(2027, 1, 20, tzinfo=UTC), uuid.UUID(int=0))
        later = _scanned_tables(connection, user_id, in_january)
    assert first == {BEFORE, "login_history_2027_01", "login_history_2027_02", DEFAULT}
    # The months the cursor leaves out are not read; nor is the default partition, which can
    # only hold rows outside every month.
    assert later == {BEFORE, "login_history_2027_01"}
    pages = _all_pages(engine, user_id)
    assert [e.logged_in_at for e in pages] == sorted((e.logged_in_at for e in pages), reverse=True)
    assert len(pages) == 56


def test_a_lock_it_cannot_get_in_time_leaves_the_table_as_it_was(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(history_partitions, "LOCK_TIMEOUT", "200ms")
    with engine.begin() as connection:
        (user_id,) = _add_users(connection, 1)
        _add_history(connection, user_id, [NOW])
    reader = engine.connect()
    reader.begin()
    reader.execute(select(func.count()).select_from(LoginHistory)).scalar_one()  # holds a lock
    try:
        with pytest.raises(history_partitions.LockNotAvailable):
            partition_login_history(engine, now=NOW)
    finally:
        reader.rollback()
        reader.close()
    with engine.begin() as connection:
        assert not history_partitions.is_partitioned(connection)
        _add_history(connection, user_id, [NOW + timedelta(minutes=1)])
        assert _count(connection, "login_history") == 2
    assert partition_login_history(engine, now=NOW).converted  # and a later run succeeds


def test_an_index_an_interrupted_run_left_invalid_is_built_again(engine: Engine) -> None:
    """A concurrent index build that is interrupted leaves an invalid index behind (marked so
    by hand here); the next run replaces it rather than reuse it as the key."""
    users, rows = _year_of_sign_ins(engine)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.exec_driver_sql(
            "CREATE UNIQUE INDEX CONCURRENTLY login_history_id_logged_in_at "
            "ON login_history (id, logged_in_at)"
        )
        connection.exec_driver_sql(
            "UPDATE pg_index SET indisvalid = false "
            "WHERE indexrelid = 'login_history_id_logged_in_at'::regclass"
        )

    assert partition_login_history(engine, now=NOW).converted

    with engine.connect() as connection:
        assert _count(connection, "login_history") == rows
        key = connection.execute(
            text(
                "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
                "WHERE i.indrelid = to_regclass(:table) AND i.indisprimary"
            ),
            {"table": BEFORE},
        ).scalar_one()
        assert key is True
    assert len(_all_pages(engine, users[0])) == rows // 3


def test_the_cli_partitions_and_reports(engine: Engine, settings: Settings) -> None:
    url = engine.url.render_as_string(hide_password=False)
    result = run_cli(replace(settings, database_url=url), "history", "partition")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["converted"] is True
    assert report["partitions"][0] == BEFORE
    assert report["partitions"][-1] == DEFAULT
    assert report["prepare_seconds"] > 0
    assert report["swap_seconds"] > 0
    again = json.loads(run_cli(replace(settings, database_url=url), "history", "partition").stdout)
    assert again["converted"] is False
    assert again["created"] == []
    assert again["swap_seconds"] == again["prepare_seconds"] == 0


def test_the_cli_refuses_sqlite_plainly(settings: Settings, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    result = run_cli(replace(settings, database_url=url), "history", "partition")
    assert result.returncode == 1
    assert "partitioning the login history needs PostgreSQL; this database is sqlite" in (
        result.stderr
    )
    assert "Traceback" not in result.stderr


def test_the_purge_command_drops_months_and_gives_up_plainly_on_a_held_lock(
    engine: Engine, settings: Settings
) -> None:
    # Converted in June 2019: the old table holds everything before August 2019.
    partition_login_history(engine, now=datetime(2019, 6, 1, tzinfo=UTC), months_ahead=0)
    with engine.begin() as connection:
        (user_id,) = _add_users(connection, 1)
        _add_history(connection, user_id, [datetime(2019, 7, 1, tzinfo=UTC), NOW])
    purge_env = replace(settings, database_url=engine.url.render_as_string(hide_password=False))
    days = str((datetime.now(UTC) - datetime(2020, 1, 1, tzinfo=UTC)).days)  # cutoff ~2020

    reader = engine.connect()
    reader.begin()
    reader.execute(text(f"SELECT count(*) FROM {BEFORE}"))  # noqa: S608 (ours) holds a lock
    try:
        held = run_cli(purge_env, "history", "purge", "--older-than", days)
    finally:
        reader.rollback()
        reader.close()
    assert held.returncode == 1
    assert "no lock within" in held.stderr and "Traceback" not in held.stderr

    result = run_cli(purge_env, "history", "purge", "--older-than", days)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["dropped_partitions"] == [BEFORE]
    assert report["deleted"] == 0
    with engine.connect() as connection:
        left = connection.execute(select(LoginHistory.logged_in_at)).scalars().all()
    assert left == [NOW]


def test_months_start_again_from_the_current_one_after_the_purge_dropped_them_all(
    engine: Engine,
) -> None:
    """The daily run stopped for longer than the retention: every month was purged."""
    partition_login_history(engine, now=NOW, months_ahead=1)
    purge = lifecycle.purge_login_history(
        lambda: Session(engine), 30, now=datetime(2027, 6, 1, tzinfo=UTC)
    )
    assert purge.dropped_partitions == [BEFORE]  # the only month there was

    again = partition_login_history(engine, now=datetime(2027, 6, 1, tzinfo=UTC), months_ahead=1)

    assert again.created == ["login_history_2027_06", "login_history_2027_07"]
    with engine.begin() as connection:
        (user_id,) = _add_users(connection, 1)
        _add_history(connection, user_id, [datetime(2027, 6, 2, tzinfo=UTC)])
        placed = connection.execute(text("SELECT tableoid::regclass::text FROM login_history"))
        assert placed.scalar_one() == "login_history_2027_06"
