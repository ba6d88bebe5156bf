"""Throwaway PostgreSQL databases beside the test database, for tests that need one of their own."""

from __future__ import annotations

from sqlalchemy import create_engine, make_url


def _run_on_server(primary_url: str, statement: str) -> None:
    admin = create_engine(
        make_url(primary_url).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as connection:
        connection.exec_driver_sql(statement)
    admin.dispose()


def fresh_database(primary_url: str, suffix: str, template: str | None = None) -> str:
    """An empty database (or a copy of the database ``template``) named after the one at
    ``primary_url`` plus ``suffix``, replacing any left by an earlier run; its URL."""
    primary = make_url(primary_url)
    name = f"{primary.database}{suffix}"
    drop_database(primary_url, suffix)
    copy = f' TEMPLATE "{make_url(template).database}"' if template else ""
    _run_on_server(primary_url, f'CREATE DATABASE "{name}"{copy}')
    return primary.set(database=name).render_as_string(hide_password=False)


def drop_database(primary_url: str, suffix: str) -> None:
    name = f"{make_url(primary_url).database}{suffix}"
    _run_on_server(primary_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
