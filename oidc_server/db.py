"""Database engine and sessions, plus the Alembic entry points the CLI and tests use."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import Session, sessionmaker

from .config import PROJECT_ROOT

if TYPE_CHECKING:
    from alembic.config import Config as AlembicConfig


def make_engine(url: str, connect_timeout: int | None = None) -> Engine:
    """Create an engine; SQLite gets its folder created and foreign keys switched on.

    ``connect_timeout`` (seconds, PostgreSQL) applies unless the URL sets its own.
    """
    # hide_parameters: a failed INSERT must not put emails or hashes into error logs.
    kwargs: dict[str, Any] = {"pool_pre_ping": True, "hide_parameters": True}
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        kwargs = {"connect_args": {"check_same_thread": False}, "hide_parameters": True}
    else:
        kwargs.update(pool_size=10, max_overflow=20)
        if connect_timeout is not None and "connect_timeout" not in make_url(url).query:
            kwargs["connect_args"] = {"connect_timeout": connect_timeout}
    engine = create_engine(url, **kwargs)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=5000")
            cursor.close()

    return engine


def import_driver(url: str) -> None:
    """Import the database driver the URL names, which ``create_engine`` would import later.

    The production server calls it before forking its workers, so that they share the driver's
    pages and none spends its start importing it (psycopg: about 0.1 s).
    """
    make_url(url).get_dialect().import_dbapi()


class Database:
    """An engine and its session factory."""

    def __init__(self, url: str, connect_timeout: int | None = None) -> None:
        self.url = url
        self.engine = make_engine(url, connect_timeout)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on any error."""
        with self.sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


class ReplicaRest:
    """Whether this worker may try its read replica now: after a failure it is left alone for
    ``seconds``, its reads going straight to the primary, so that a replica that is down costs
    one failed attempt per period instead of one (up to a connect timeout long) per request."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._until = 0.0

    def allows(self) -> bool:
        return self._clock() >= self._until

    def failed(self) -> None:
        self._until = self._clock() + self.seconds


# Alembic is imported only where migrations run: it adds about 11 MB to every worker otherwise.


def alembic_config(database_url: str) -> AlembicConfig:
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig(str(PROJECT_ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(PROJECT_ROOT / "migrations"))
    cfg.attributes["database_url"] = database_url
    return cfg


def upgrade(database_url: str, revision: str = "heads") -> None:
    """Bring the schema at ``database_url`` up to ``revision``."""
    from alembic import command

    command.upgrade(alembic_config(database_url), revision)
