"""The operator CLI, run as the real console script."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from oidc_server.config import Settings
from oidc_server.models import OAuthClient

from .conftest import MachineClient
from .support.cli import run_cli

COMMANDS = [
    [],
    ["serve"],
    ["db"],
    ["db", "upgrade"],
    ["keys"],
    ["keys", "rotate"],
    ["clients"],
    ["clients", "create"],
    ["users"],
    ["users", "create-admin"],
    ["history"],
    ["history", "purge"],
    ["history", "partition"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(settings: Settings, command: list[str]) -> None:
    result = run_cli(settings, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: oidc-server" in result.stdout


def test_clients_create_prints_the_secret_once_and_stores_a_hash(
    app: Any, client: FlaskClient, settings: Settings, services: Any
) -> None:
    result = run_cli(
        settings,
        "clients",
        "create",
        "--name",
        "billing",
        "--grant-type",
        "client_credentials",
        "--scope",
        "roles:read roles:write",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    credentials = json.loads(result.stdout)
    with services.db.session() as session:
        row = session.query(OAuthClient).filter_by(client_id=credentials["client_id"]).one()
        assert credentials["client_secret"] not in (row.client_secret_hash or "")
        assert row.grant_types == ["client_credentials"]
    machine = MachineClient(credentials["client_id"], credentials["client_secret"])
    token = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic
    )
    assert token.status_code == 200


def test_clients_create_refuses_bad_registrations(app: Any, settings: Settings) -> None:
    result = run_cli(settings, "clients", "create", "--name", "x", "--grant-type", "password")
    assert result.returncode != 0 and "first-party" in result.stderr
    result = run_cli(settings, "clients", "create", "--name", "x", "--grant-type", "implicit")
    assert result.returncode != 0


def test_create_admin_reads_the_password_from_stdin(
    app: Any, client: FlaskClient, settings: Settings
) -> None:
    result = run_cli(
        settings, "users", "create-admin", "Boss@Example.com", stdin="a long admin password\n"
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["roles"] == ["admin"]
    login = client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "client_id": "cinema-app",
            "username": "boss@example.com",
            "password": "a long admin password",
        },
    )
    assert login.status_code == 200
    again = run_cli(settings, "users", "create-admin", "boss@example.com", stdin="another pw 123\n")
    assert again.returncode != 0 and "already" in again.stderr


def test_db_upgrade_is_idempotent(app: Any, settings: Settings) -> None:
    for _ in range(2):
        result = run_cli(settings, "db", "upgrade")
        assert result.returncode == 0, result.stderr
        assert "database is up to date" in result.stdout


def test_keys_rotate_publishes_the_new_key(
    app: Any, client: FlaskClient, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    import oidc_server.keys as keys_module

    monkeypatch.setattr(keys_module, "RELOAD_INTERVAL", 0.0)
    before = {k["kid"] for k in client.get("/.well-known/jwks.json").json["keys"]}
    result = run_cli(settings, "keys", "rotate")
    assert result.returncode == 0, result.stderr
    new_kid = json.loads(result.stdout)["kid"]
    after = [k["kid"] for k in client.get("/.well-known/jwks.json").json["keys"]]
    assert after[0] == new_kid and before <= set(after)


def test_production_refusal_is_a_clear_cli_error(settings: Settings) -> None:
    import subprocess

    from .support.cli import OIDC_SERVER, settings_env

    env = settings_env(settings) | {"APP_ENV": "production", "SECRET_KEY": "dev"}
    result = subprocess.run(
        [OIDC_SERVER, "keys", "rotate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0 and "SECRET_KEY" in result.stderr
