"""Monthly partitions of ``login_history`` on PostgreSQL: retention by dropping whole months.

``login_history`` is the one table that grows without bound (every sign-in attempt). Pages of
it are keyset queries on ``(user_id, logged_in_at, id)`` and cost the same at any size, but a
purge that deletes row by row gets slower and bloats the table as it grows. Partitioned by
month on ``logged_in_at``, a month past the retention is dropped at once, and every partition
keeps the same index, so pages still read about a page's worth of rows (one short index probe
per partition kept).

Opt-in (``oidc-server history partition``), never a migration: it is for deployments whose
history has outgrown one table, and the embedded SQLite default has no partitions. It is
written to run against a live database, with sign-ins going on:

1. outside any transaction, the index the partitioned key needs is built concurrently, and a
   ``CHECK`` that every row is older than the first partition's start is added ``NOT VALID``
   and then validated (neither blocks reads or writes);
2. one short transaction (milliseconds, whatever the table's size, under ``lock_timeout``)
   renames the table, creates the partitioned ``login_history`` with the same columns, key,
   foreign key and index, and attaches the old table as the partition of everything before
   that start: the validated ``CHECK`` and the existing indexes spare PostgreSQL any scan;
3. monthly partitions are created from that start to a few months ahead, and a ``DEFAULT``
   partition takes any row no month covers, so a sign-in never fails for want of a partition.

Run it again daily (cron, beside ``history purge``): it creates the months coming up, moving
into a new month any rows the default partition took for it. The primary key of a partitioned
table must contain the partition key, so it becomes ``(id, logged_in_at)``; ids stay random
UUIDs, and the application still finds a row by ``id`` alone.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

TABLE: Final = "login_history"
#: The table as it was before the conversion, kept as the partition of everything older.
BEFORE: Final = "login_history_before_partitions"
DEFAULT: Final = "login_history_default"
#: How long a DDL statement here waits for its lock before giving up: while it waits behind a
#: long transaction, every sign-in and page that needs the table queues behind it in turn.
LOCK_TIMEOUT: Final = "2s"
MONTHS_AHEAD: Final = 3

_INDEX = "ix_login_history_user_id_logged_in_at"
_KEY_INDEX = "login_history_id_logged_in_at"
_CHECK = "login_history_before_partitions_check"


class NotPostgreSQL(Exception):
    """Partitioning needs PostgreSQL."""


class LockNotAvailable(Exception):
    """A lock was not granted within ``LOCK_TIMEOUT``: the table is as it was (an index or
    ``CHECK`` the online step made stays, and the next run reuses it); run it again."""


@dataclass(frozen=True)
class Partition:
    """One partition of ``login_history``: rows with ``lower <= logged_in_at < upper``."""

    name: str
    #: None: no lower bound (``MINVALUE``); for the default partition too.
    lower: datetime | None
    #: None for the default partition.
    upper: datetime | None

    @property
    def is_default(self) -> bool:
        return self.upper is None


@dataclass(frozen=True)
class Conversion:
    """What ``partition_login_history`` did."""

    converted: bool
    created: list[str]
    partitions: list[Partition]
    #: Of a conversion: the online step (index, CHECK), and the swap holding the table's lock.
    prepare_seconds: float = 0.0
    swap_seconds: float = 0.0


def month_start(moment: datetime) -> datetime:
    moment = moment.astimezone(UTC)
    return datetime(moment.year, moment.month, 1, tzinfo=UTC)


def next_month(month: datetime) -> datetime:
    return month.replace(year=month.year + month.month // 12, month=month.month % 12 + 1)


def month_partition_name(month: datetime) -> str:
    return f"{TABLE}_{month:%Y_%m}"


def is_partitioned(connection: Connection) -> bool:
    kind = connection.execute(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:table)"), {"table": TABLE}
    ).scalar()
    return kind == "p"


_PARTITIONS_SQL = text(
    "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i "
    "JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = to_regclass(:table)"
)


def partition_names(connection: Connection) -> set[str]:
    """The tables that are partitions of ``login_history`` (none on SQLite), whatever their
    bounds (the migrations ask, and must not depend on how an operator partitioned)."""
    if connection.dialect.name != "postgresql":
        return set()
    return {name for name, _bound in connection.execute(_PARTITIONS_SQL, {"table": TABLE})}


def partitions(connection: Connection) -> list[Partition]:
    """The partitions of ``login_history``, oldest first, the default one last (none while
    it is a plain table)."""
    rows = connection.execute(_PARTITIONS_SQL, {"table": TABLE}).all()
    found = [Partition(name, *_bounds(bound)) for name, bound in rows]
    return sorted(found, key=lambda p: (p.is_default, p.lower or datetime.min.replace(tzinfo=UTC)))


def _bounds(expression: str) -> tuple[datetime | None, datetime | None]:
    """``FOR VALUES FROM ('...') TO ('...')``, ``FROM (MINVALUE) TO (...)`` or ``DEFAULT``."""
    if expression == "DEFAULT":
        return None, None
    match = re.fullmatch(r"FOR VALUES FROM \((.+)\) TO \((.+)\)", expression)
    if match is None:
        raise ValueError(f"unexpected partition bound: {expression}")
    # Rendered in the session's time zone: brought back to UTC, where the months are cut.
    lower, upper = (
        None if value == "MINVALUE" else datetime.fromisoformat(value.strip("'")).astimezone(UTC)
        for value in match.groups()
    )
    return lower, upper


def partition_login_history(
    engine: Engine, *, now: datetime | None = None, months_ahead: int = MONTHS_AHEAD
) -> Conversion:
    """Convert ``login_history`` to monthly partitions if it is not yet, and create the months
    up to ``months_ahead`` after the current one. Safe to run again, and after an interruption.
    """
    if engine.dialect.name != "postgresql":
        raise NotPostgreSQL("partitioning the login history needs PostgreSQL")
    if months_ahead < 0:
        raise ValueError("months_ahead must not be negative")
    now = (now or datetime.now(UTC)).astimezone(UTC)
    with engine.connect() as connection:
        converted = not is_partitioned(connection)
    prepare_seconds = swap_seconds = 0.0
    if converted:
        # The old table keeps every row until the month after next: rows written while the
        # conversion runs (stamped now) must pass its CHECK, whenever in the month it runs.
        first_month = next_month(next_month(month_start(now)))
        started = time.monotonic()
        _prepare(engine, first_month)
        prepared = time.monotonic()
        _swap(engine, first_month)
        prepare_seconds, swap_seconds = prepared - started, time.monotonic() - prepared
    with engine.begin() as connection:
        return Conversion(
            converted=converted,
            created=_create_months(connection, month_start(now), months_ahead),
            partitions=partitions(connection),
            prepare_seconds=prepare_seconds,
            swap_seconds=swap_seconds,
        )


def _set_lock_timeout(connection: Connection, scope: str = "LOCAL") -> None:
    """``LOCAL``: until the transaction ends; ``SESSION``: until reset (autocommit steps)."""
    connection.exec_driver_sql(f"SET {scope} lock_timeout = '{LOCK_TIMEOUT}'")


def _prepare(engine: Engine, first_month: datetime) -> None:
    """Step 1, outside transactions: the key's index and the proof that every row is older."""
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        _set_lock_timeout(connection, "SESSION")
        try:
            valid = connection.execute(
                text("SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:index)"),
                {"index": _KEY_INDEX},
            ).scalar()
            for statement in (
                # An interrupted concurrent build leaves an invalid index behind.
                *([f"DROP INDEX CONCURRENTLY {_KEY_INDEX}"] if valid is False else []),
                f"CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS {_KEY_INDEX} "
                f"ON {TABLE} (id, logged_in_at)",
                # Dropped first: an interrupted run may have left one with another bound.
                f"ALTER TABLE {TABLE} DROP CONSTRAINT IF EXISTS {_CHECK}",
                f"ALTER TABLE {TABLE} ADD CONSTRAINT {_CHECK} CHECK "
                f"(logged_in_at < '{first_month.isoformat()}'::timestamptz) NOT VALID",
                f"ALTER TABLE {TABLE} VALIDATE CONSTRAINT {_CHECK}",
            ):
                _execute_ddl(connection, statement)
        finally:
            connection.exec_driver_sql("RESET lock_timeout")  # back to the pool as it came


def _swap(engine: Engine, first_month: datetime) -> None:
    """Step 2, one transaction: the partitioned table takes the old one's place."""
    bound = f"'{first_month.isoformat()}'"
    with engine.begin() as connection:
        _set_lock_timeout(connection)
        for statement in (
            f"ALTER TABLE {TABLE} RENAME TO {BEFORE}",
            f"ALTER TABLE {BEFORE} DROP CONSTRAINT pk_login_history",
            f"ALTER TABLE {BEFORE} ADD CONSTRAINT {BEFORE}_pkey "
            f"PRIMARY KEY USING INDEX {_KEY_INDEX}",
            f"ALTER INDEX {_INDEX} RENAME TO {BEFORE}_user_id_logged_in_at",
            f"CREATE TABLE {TABLE} (LIKE {BEFORE} INCLUDING DEFAULTS) "
            "PARTITION BY RANGE (logged_in_at)",
            f"ALTER TABLE {TABLE} ADD CONSTRAINT pk_login_history PRIMARY KEY (id, logged_in_at)",
            f"ALTER TABLE {TABLE} ADD CONSTRAINT fk_login_history_user_id_users "
            "FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE",
            f"CREATE INDEX {_INDEX} ON {TABLE} (user_id, logged_in_at, id)",
            f"ALTER TABLE {TABLE} ATTACH PARTITION {BEFORE} "
            f"FOR VALUES FROM (MINVALUE) TO ({bound})",
            f"ALTER TABLE {BEFORE} DROP CONSTRAINT {_CHECK}",
            f"CREATE TABLE {DEFAULT} PARTITION OF {TABLE} DEFAULT",
        ):
            _execute_ddl(connection, statement)


def _execute_ddl(connection: Connection, statement: str) -> None:
    try:
        connection.exec_driver_sql(statement)
    except OperationalError as error:
        if getattr(error.orig, "sqlstate", None) == "55P03":  # lock_not_available
            raise LockNotAvailable(
                f"no lock within {LOCK_TIMEOUT} (a long transaction holds {TABLE}); run it again"
            ) from None
        raise


def _create_months(connection: Connection, current: datetime, months_ahead: int) -> list[str]:
    """Monthly partitions after the newest one, up to ``months_ahead`` months after ``current``;
    rows the default partition took for a month are moved into it."""
    _set_lock_timeout(connection)
    # After the newest month; from the current one if the purge has dropped every month (the
    # daily run stopped for longer than the retention).
    start = max((p.upper for p in partitions(connection) if p.upper is not None), default=current)
    end = current
    for _ in range(months_ahead + 1):
        end = next_month(end)
    created: list[str] = []
    if start >= end:
        return created
    # Rows routed to the default partition while these months are created would stop the
    # ATTACH below; none should arrive (they are months ahead), and none can while this holds.
    _execute_ddl(connection, f"LOCK TABLE {DEFAULT} IN ACCESS EXCLUSIVE MODE")
    while start < end:
        name, upper = month_partition_name(start), next_month(start)
        # Every name and bound here is ours (datetimes rendered by isoformat): nothing to quote.
        bounds = f"'{start.isoformat()}'", f"'{upper.isoformat()}'"
        for statement in (
            f"CREATE TABLE {name} (LIKE {TABLE} INCLUDING DEFAULTS)",
            f"WITH moved AS (DELETE FROM {DEFAULT} WHERE logged_in_at >= {bounds[0]} "  # noqa: S608
            f"AND logged_in_at < {bounds[1]} RETURNING *) INSERT INTO {name} SELECT * FROM moved",
            f"ALTER TABLE {TABLE} ATTACH PARTITION {name} "
            f"FOR VALUES FROM ({bounds[0]}) TO ({bounds[1]})",
        ):
            _execute_ddl(connection, statement)
        created.append(name)
        start = upper
    return created


def drop_partitions_before(connection: Connection, cutoff: datetime) -> list[str]:
    """Drop the partitions whose rows are all older than ``cutoff``; their names."""
    if connection.dialect.name != "postgresql":
        return []
    _set_lock_timeout(connection)
    dropped = []
    for partition in partitions(connection):
        if partition.upper is not None and partition.upper <= cutoff:
            _execute_ddl(connection, f"DROP TABLE {partition.name}")
            dropped.append(partition.name)
    return dropped
