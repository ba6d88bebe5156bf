"""The operator CLI's roles and audit commands, run as the real console script."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask.testing import FlaskClient

from oidc_server import roles as domain
from oidc_server.config import Settings
from oidc_server.models import AuditLog, User

from .conftest import MachineClient
from .support.cli import run_cli
from .support.roles import audit_entries, machine_headers, role_id, role_names_of


@pytest.mark.parametrize(
    "command",
    [["roles"], ["roles", "grant"], ["roles", "revoke"], ["audit"], ["audit", "list"]],
    ids=" ".join,
)
def test_every_new_command_has_help(settings: Settings, command: list[str]) -> None:
    result = run_cli(settings, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage: oidc-server" in result.stdout


def test_grant_bootstraps_the_first_admin_and_is_audited_as_cli(
    app: Any, settings: Settings, user: User, services: Any
) -> None:
    result = run_cli(settings, "roles", "grant", "Viewer@Example.com", "Admin")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "user_id": str(user.id),
        "login": "viewer@example.com",
        "role": "admin",
        "granted": True,
    }
    assert role_names_of(services, user.id) == ["admin"]
    (entry,) = audit_entries(services)
    assert (entry.actor, entry.action, entry.target) == ("cli", domain.ROLE_GRANTED, str(user.id))


def test_granting_again_changes_nothing(
    app: Any, settings: Settings, user: User, services: Any
) -> None:
    run_cli(settings, "roles", "grant", user.login, "moderator")
    again = run_cli(settings, "roles", "grant", user.login, "moderator")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["granted"] is False
    assert len(audit_entries(services)) == 1


def test_revoke_takes_the_role_and_says_whether_it_was_held(
    app: Any, settings: Settings, user: User, services: Any
) -> None:
    run_cli(settings, "roles", "grant", user.login, "subscriber")
    first = run_cli(settings, "roles", "revoke", user.login, "subscriber")
    second = run_cli(settings, "roles", "revoke", user.login, "subscriber")
    assert json.loads(first.stdout)["revoked"] is True
    assert json.loads(second.stdout)["revoked"] is False
    assert role_names_of(services, user.id) == []
    assert [e.action for e in audit_entries(services)] == [domain.ROLE_GRANTED, domain.ROLE_REVOKED]


def test_a_cli_change_shows_at_once_in_the_servers_head(
    client: FlaskClient, machine: MachineClient, settings: Settings, user: User, services: Any
) -> None:
    headers = machine_headers(client, machine, "roles:read")
    check = f"/api/v1/users/{user.id}/roles/{role_id(services, 'admin')}/"
    assert client.head(check, headers=headers).status_code == 404  # cached by the server
    assert run_cli(settings, "roles", "grant", user.login, "admin").returncode == 0
    assert client.head(check, headers=headers).status_code == 200
    assert run_cli(settings, "roles", "revoke", user.login, "admin").returncode == 0
    assert client.head(check, headers=headers).status_code == 404


@pytest.mark.parametrize(
    ("login", "role", "message"),
    [
        ("nobody@example.com", "admin", "no user with the login"),
        ("viewer@example.com", "superuser", "no role named 'superuser'"),
        ("viewer@example.com", "not a role!", "no role named"),
    ],
)
@pytest.mark.parametrize("command", ["grant", "revoke"])
def test_unknown_users_and_roles_fail_with_a_message(
    app: Any,
    settings: Settings,
    user: User,
    services: Any,
    login: str,
    role: str,
    message: str,
    command: str,
) -> None:
    result = run_cli(settings, "roles", command, login, role)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert audit_entries(services) == []


def test_with_redis_unreachable_a_grant_is_refused_and_nothing_changes(
    app: Any, settings: Settings, user: User, services: Any
) -> None:
    # Port 1 on loopback has nothing listening.
    unreachable = replace(settings, redis_url="redis://127.0.0.1:1/0")
    result = run_cli(unreachable, "roles", "grant", user.login, "admin")
    assert result.returncode == 1
    assert "nothing was changed" in result.stderr
    assert role_names_of(services, user.id) == []
    assert audit_entries(services) == []


def add_entries(services: Any, moments: list[datetime]) -> None:
    with services.db.session() as session:
        for index, moment in enumerate(moments):
            session.add(
                AuditLog(
                    actor="billing",
                    action="role.create",
                    target=f"t{index}",
                    details={"name": f"r{index}"},
                    created_at=moment,
                )
            )


def test_audit_list_prints_json_newest_first(app: Any, settings: Settings, services: Any) -> None:
    now = datetime.now(UTC)
    add_entries(services, [now - timedelta(days=3), now - timedelta(hours=2), now])
    result = run_cli(settings, "audit", "list", "--json")
    assert result.returncode == 0, result.stderr
    entries = json.loads(result.stdout)
    assert [e["target"] for e in entries] == ["t2", "t1", "t0"]
    assert set(entries[0]) == {"id", "created_at", "actor", "action", "target", "details"}
    assert entries[0]["actor"] == "billing"
    assert entries[0]["details"] == {"name": "r2"}
    assert datetime.fromisoformat(entries[0]["created_at"]).tzinfo is not None


@pytest.mark.parametrize(
    ("options", "targets"),
    [
        (["--since", "1d"], ["t2", "t1"]),
        (["--since", "30m"], ["t2"]),
        (["--limit", "1"], ["t2"]),
        (["--since", "2000-01-01", "--limit", "2"], ["t2", "t1"]),
    ],
)
def test_audit_list_filters_by_since_and_limit(
    app: Any, settings: Settings, services: Any, options: list[str], targets: list[str]
) -> None:
    now = datetime.now(UTC)
    add_entries(services, [now - timedelta(days=3), now - timedelta(hours=2), now])
    result = run_cli(settings, "audit", "list", *options, "--json")
    assert result.returncode == 0, result.stderr
    assert [e["target"] for e in json.loads(result.stdout)] == targets


def test_audit_list_without_json_prints_one_line_per_entry(
    app: Any, settings: Settings, services: Any
) -> None:
    add_entries(services, [datetime.now(UTC)])
    result = run_cli(settings, "audit", "list")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    assert "billing" in line and "role.create" in line and "t0" in line


@pytest.mark.parametrize("options", [["--since", "last week"], ["--limit", "0"]])
def test_audit_list_refuses_bad_options(app: Any, settings: Settings, options: list[str]) -> None:
    result = run_cli(settings, "audit", "list", *options)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert options[0] in result.stderr
