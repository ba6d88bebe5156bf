"""Alembic environment: the URL comes from the caller or from DATABASE_URL."""

from __future__ import annotations

from alembic import context

from oidc_server.config import Settings
from oidc_server.db import make_engine
from oidc_server.history_partitions import partition_names
from oidc_server.models import Base

config = context.config
target_metadata = Base.metadata


def _database_url() -> str:
    return config.attributes.get("database_url") or Settings.from_env().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(url=_database_url(), target_metadata=target_metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    url = _database_url()
    engine = make_engine(url)
    # The months of a partitioned login history (`oidc-server history partition`) are tables
    # the models do not name; autogenerate would offer to drop them. Read on a connection of
    # its own: a transaction begun on the migrations' one would swallow their commit.
    with engine.connect() as probe:
        partitions = partition_names(probe)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=url.startswith("sqlite"),
            compare_type=True,
            include_name=lambda name, kind, _parents: not (kind == "table" and name in partitions),
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
