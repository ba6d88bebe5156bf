"""Migrations build the models' schema on empty PostgreSQL and SQLite, without drift."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from sqlalchemy import create_engine, inspect

from oidc_server.db import alembic_config, upgrade
from oidc_server.models import Base


def assert_no_drift(url: str) -> None:
    """`alembic check` raises when the models differ from the migrated schema."""
    command.check(alembic_config(url))
    engine = create_engine(url)
    tables = set(inspect(engine).get_table_names()) - {"alembic_version"}
    engine.dispose()
    assert tables == set(Base.metadata.tables)


def test_an_empty_sqlite_database_upgrades_to_the_models(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)
    assert_no_drift(url)


def test_the_session_database_matches_the_models(database_url: str) -> None:
    """The suite's database (PostgreSQL in CI) was migrated from empty at session start."""
    assert_no_drift(database_url)


def test_migrations_downgrade_and_upgrade_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'roundtrip.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    engine = create_engine(url)
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
    engine.dispose()
    upgrade(url)
    assert_no_drift(url)
