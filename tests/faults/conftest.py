"""Own instances for the fault tests: they stop, freeze and kill services, never the shared ones.

One PostgreSQL cluster is made (``initdb``) once per run and holds one migrated database that
every module's servers use; each module starts its own Redis and app server processes and stops
them at its end. Like the storage tests, these need a PostgreSQL installation: they run
whenever ``TEST_DATABASE_URL`` is set (always in CI) and fail loudly if the server binaries
are missing then.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from oidc_server.bootstrap import ensure_first_party_client
from oidc_server.config import Settings
from oidc_server.db import Database, upgrade

from .processes import PostgresInstance
from .support import FAULTS_DATABASE, SECRET_KEY, Launcher


@pytest.fixture(scope="session")
def fault_postgres() -> Iterator[PostgresInstance]:
    """A PostgreSQL cluster of our own on a free port, made once per run."""
    if not os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("TEST_DATABASE_URL not set: no PostgreSQL here (CI always sets it)")
    # Not under pytest's tmp folder: as root the cluster belongs to the postgres user, who
    # cannot enter root's private folders.
    instance = PostgresInstance(Path(tempfile.mkdtemp(prefix="oidc-faults-pg-")))
    try:
        instance.init()
        instance.start()
        yield instance
    finally:
        instance.destroy()


@pytest.fixture(scope="session")
def fault_database(
    fault_postgres: PostgresInstance, tmp_path_factory: pytest.TempPathFactory
) -> str:
    """The migrated database of the fault tests' servers, with the first-party client."""
    fault_postgres.create_database(FAULTS_DATABASE)
    url = fault_postgres.url(FAULTS_DATABASE)
    upgrade(url)
    settings = Settings.from_env(
        {},
        app_env="test",
        database_url=url,
        secret_key=SECRET_KEY,
        instance_dir=str(tmp_path_factory.mktemp("faults-instance")),
    )
    database = Database(url)
    with database.session() as session:
        ensure_first_party_client(session, settings)
    database.dispose()
    return url


@pytest.fixture(scope="module")
def launch(
    fault_database: str, signing_key_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Launcher]:
    launcher = Launcher(tmp_path_factory.mktemp("faults"), fault_database, signing_key_file)
    try:
        yield launcher
    finally:
        launcher.close()
