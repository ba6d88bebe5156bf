"""/api/v1/users/{user_id}/roles/{role_id}: assigning, revoking and the one-call HEAD check.

A change must show in the user's next access token and at once in ``HEAD`` and in
introspection, also when the check runs in another worker process.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from oidc_server import roles as domain
from oidc_server.app import create_app
from oidc_server.config import Settings
from oidc_server.models import User
from oidc_server.tokens.memory_store import MemoryTokenStore
from oidc_server.tokens.redis_store import RedisTokenStore

from ..conftest import PASSWORD, LiveServer, MachineClient, password_login
from ..support.cli import run_cli
from ..support.roles import audit_entries, count_queries, machine_headers, role_id, role_names_of


def assignment_path(user_id: Any, role: Any) -> str:
    return f"/api/v1/users/{user_id}/roles/{role}"


def introspect(client: FlaskClient, machine: MachineClient, token: str) -> dict[str, Any]:
    response = client.post("/oauth/introspect", data={"token": token}, headers=machine.basic)
    assert response.status_code == 200
    return response.json


def roles_claim(services: Any, access_token: str) -> list[str]:
    claims = services.tokens.verify_access_token(access_token)
    assert claims is not None
    return claims["roles"]


@pytest.fixture
def headers(client: FlaskClient, machine: MachineClient) -> dict[str, str]:
    return machine_headers(client, machine)


# Assigning ----------------------------------------------------------------------------------


def test_assigning_is_201_then_200_and_changes_nothing_the_second_time(
    client: FlaskClient, headers: dict[str, str], user: User, services: Any
) -> None:
    moderator = role_id(services, "moderator")
    first = client.post(assignment_path(user.id, moderator), headers=headers)
    again = client.post(assignment_path(user.id, moderator), headers=headers)
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json == again.json
    assert first.json["user_id"] == str(user.id)
    assert first.json["role_id"] == str(moderator)
    assert first.json["role"] == "moderator"
    assert "assigned_at" in first.json
    assert role_names_of(services, user.id) == ["moderator"]
    assert len(audit_entries(services, domain.ROLE_GRANTED)) == 1


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_an_unknown_user_is_404(
    client: FlaskClient, headers: dict[str, str], services: Any, method: str
) -> None:
    path = assignment_path(uuid.uuid4(), role_id(services, "admin"))
    response = client.open(path, method=method, headers=headers)
    assert response.status_code == 404
    assert response.json["error"] == "user_not_found"


@pytest.mark.parametrize("method", ["POST", "DELETE"])
def test_an_unknown_role_is_404(
    client: FlaskClient, headers: dict[str, str], user: User, method: str
) -> None:
    response = client.open(assignment_path(user.id, uuid.uuid4()), method=method, headers=headers)
    assert response.status_code == 404
    assert response.json["error"] == "role_not_found"


@pytest.mark.parametrize("method", ["POST", "DELETE", "HEAD"])
@pytest.mark.parametrize("which", ["user", "role"])
def test_a_malformed_id_is_404_never_500(
    client: FlaskClient, headers: dict[str, str], user: User, services: Any, method: str, which: str
) -> None:
    user_part = "nobody" if which == "user" else str(user.id)
    role_part = "12345" if which == "role" else str(role_id(services, "admin"))
    path = assignment_path(user_part, role_part) + ("/" if method == "HEAD" else "")
    response = client.open(path, method=method, headers=headers)
    assert response.status_code == 404


# Revoking -----------------------------------------------------------------------------------


def test_revoking_is_204_and_again_204(
    client: FlaskClient, headers: dict[str, str], user: User, services: Any
) -> None:
    admin = role_id(services, "admin")
    client.post(assignment_path(user.id, admin), headers=headers)
    first = client.delete(assignment_path(user.id, admin), headers=headers)
    again = client.delete(assignment_path(user.id, admin), headers=headers)
    assert (first.status_code, again.status_code) == (204, 204)
    assert role_names_of(services, user.id) == []
    grants = audit_entries(services, domain.ROLE_GRANTED)
    revokes = audit_entries(services, domain.ROLE_REVOKED)
    assert len(grants) == len(revokes) == 1
    assert revokes[0].actor == grants[0].actor
    assert revokes[0].target == str(user.id)
    assert revokes[0].details == {"role_id": str(admin), "role": "admin"}


# The HEAD check -----------------------------------------------------------------------------


@pytest.mark.parametrize("slash", ["/", ""], ids=["with slash", "without slash"])
def test_head_is_200_when_held_and_404_when_not_in_both_forms(
    client: FlaskClient,
    machine: MachineClient,
    headers: dict[str, str],
    user: User,
    services: Any,
    slash: str,
) -> None:
    moderator = role_id(services, "moderator")
    check = assignment_path(user.id, moderator) + slash
    read_only = machine_headers(client, machine, "roles:read")

    before = client.head(check, headers=read_only)
    client.post(assignment_path(user.id, moderator), headers=headers)
    after = client.head(check, headers=read_only)
    client.delete(assignment_path(user.id, moderator), headers=headers)
    revoked = client.head(check, headers=read_only)

    assert [before.status_code, after.status_code, revoked.status_code] == [404, 200, 404]
    assert after.get_data() == b"" and before.get_data() == b""
    assert "Location" not in after.headers


@pytest.mark.parametrize("who", ["user", "role"])
def test_head_for_an_unknown_user_or_role_is_404(
    client: FlaskClient, headers: dict[str, str], user: User, services: Any, who: str
) -> None:
    user_id = uuid.uuid4() if who == "user" else user.id
    role = uuid.uuid4() if who == "role" else role_id(services, "admin")
    assert client.head(assignment_path(user_id, role) + "/", headers=headers).status_code == 404


def test_head_asks_the_database_at_most_once(
    client: FlaskClient, headers: dict[str, str], user: User, services: Any
) -> None:
    subscriber = role_id(services, "subscriber")
    client.post(assignment_path(user.id, subscriber), headers=headers)
    check = assignment_path(user.id, subscriber) + "/"
    with count_queries(services) as cold:
        assert client.head(check, headers=headers).status_code == 200
    with count_queries(services) as warm:
        for _ in range(5):
            assert client.head(check, headers=headers).status_code == 200
    assert len(cold) == 1
    cached = isinstance(services.store, RedisTokenStore)
    # A warm check is a Redis hit with no SQL; without Redis, one primary-key lookup each.
    assert len(warm) == (0 if cached else 5)


@pytest.fixture
def other_worker(settings: Settings, redis_client: Any, app: Flask) -> Iterator[Flask]:
    """A second app on the same database (and Redis): another worker process's view."""
    store = MemoryTokenStore() if redis_client is None else RedisTokenStore(redis_client)
    other = create_app(settings, store=store)
    yield other
    other.extensions["oidc"].db.dispose()


def test_a_change_made_in_one_worker_shows_at_once_in_anothers_head(
    client: FlaskClient,
    other_worker: Flask,
    machine: MachineClient,
    headers: dict[str, str],
    user: User,
    services: Any,
) -> None:
    other = other_worker.test_client()
    other_headers = machine_headers(other, machine, "roles:read")
    admin = role_id(services, "admin")
    check = assignment_path(user.id, admin) + "/"

    assert other.head(check, headers=other_headers).status_code == 404  # now cached there
    assert client.post(assignment_path(user.id, admin), headers=headers).status_code == 201
    assert other.head(check, headers=other_headers).status_code == 200
    assert client.delete(assignment_path(user.id, admin), headers=headers).status_code == 204
    assert other.head(check, headers=other_headers).status_code == 404


# Roles in tokens and introspection ----------------------------------------------------------


def test_an_assigned_role_is_in_the_next_token_and_at_once_in_introspection(
    client: FlaskClient,
    machine: MachineClient,
    headers: dict[str, str],
    user: User,
    services: Any,
) -> None:
    earlier = password_login(client).json["access_token"]
    assert roles_claim(services, earlier) == []

    client.post(assignment_path(user.id, role_id(services, "subscriber")), headers=headers)

    assert introspect(client, machine, earlier)["roles"] == ["subscriber"]
    later = password_login(client).json["access_token"]
    assert roles_claim(services, later) == ["subscriber"]


def test_users_me_shows_a_change_at_once_with_the_same_token(
    client: FlaskClient, headers: dict[str, str], user: User, services: Any
) -> None:
    own = {"Authorization": f"Bearer {password_login(client).json['access_token']}"}
    assert client.get("/api/v1/users/me", headers=own).json["roles"] == []
    moderator = role_id(services, "moderator")
    client.post(assignment_path(user.id, moderator), headers=headers)
    assert client.get("/api/v1/users/me", headers=own).json["roles"] == ["moderator"]
    client.delete(assignment_path(user.id, moderator), headers=headers)
    assert client.get("/api/v1/users/me", headers=own).json["roles"] == []


def test_refresh_and_userinfo_follow_a_change_after_they_have_read_the_user(
    client: FlaskClient, headers: dict[str, str], user: User, services: Any
) -> None:
    """Both read the cached account card: a grant made after that read must still show."""

    def refreshed(refresh_token: str) -> dict[str, Any]:
        form = {"grant_type": "refresh_token", "client_id": "cinema-app"}
        response = client.post("/oauth/token", data={**form, "refresh_token": refresh_token})
        assert response.status_code == 200
        return response.json

    def userinfo_roles(access_token: str) -> list[str]:
        response = client.get(
            "/oauth/userinfo", headers={"Authorization": f"Bearer {access_token}"}
        )
        assert response.status_code == 200
        return response.json["roles"]

    tokens = refreshed(password_login(client, scope="openid profile").json["refresh_token"])
    assert roles_claim(services, tokens["access_token"]) == []
    assert userinfo_roles(tokens["access_token"]) == []

    client.post(assignment_path(user.id, role_id(services, "moderator")), headers=headers)

    assert userinfo_roles(tokens["access_token"]) == ["moderator"]
    assert roles_claim(services, refreshed(tokens["refresh_token"])["access_token"]) == [
        "moderator"
    ]


def test_a_revoked_role_leaves_the_next_token_and_introspection_at_once(
    client: FlaskClient,
    machine: MachineClient,
    headers: dict[str, str],
    user: User,
    services: Any,
) -> None:
    admin = role_id(services, "admin")
    client.post(assignment_path(user.id, admin), headers=headers)
    earlier = password_login(client).json["access_token"]
    assert roles_claim(services, earlier) == ["admin"]

    client.delete(assignment_path(user.id, admin), headers=headers)

    assert introspect(client, machine, earlier)["roles"] == []
    assert roles_claim(services, password_login(client).json["access_token"]) == []


def test_deleting_a_role_takes_it_from_head_tokens_and_introspection(
    client: FlaskClient,
    machine: MachineClient,
    headers: dict[str, str],
    user: User,
    services: Any,
) -> None:
    moderator = role_id(services, "moderator")
    client.post(assignment_path(user.id, moderator), headers=headers)
    client.post(assignment_path(user.id, role_id(services, "subscriber")), headers=headers)
    check = assignment_path(user.id, moderator) + "/"
    assert client.head(check, headers=headers).status_code == 200
    earlier = password_login(client).json["access_token"]

    assert client.delete(f"/api/v1/roles/{moderator}", headers=headers).status_code == 204

    assert client.head(check, headers=headers).status_code == 404
    assert introspect(client, machine, earlier)["roles"] == ["subscriber"]
    assert roles_claim(services, password_login(client).json["access_token"]) == ["subscriber"]
    assert audit_entries(services, domain.ROLE_DELETED)[0].details["unassigned_users"] == 1


def test_a_renamed_role_shows_under_its_new_name(
    client: FlaskClient,
    machine: MachineClient,
    headers: dict[str, str],
    user: User,
    services: Any,
) -> None:
    moderator = role_id(services, "moderator")
    client.post(assignment_path(user.id, moderator), headers=headers)
    earlier = password_login(client).json["access_token"]
    # Read once first, so that the answer after the rename cannot come from a cold cache.
    assert introspect(client, machine, earlier)["roles"] == ["moderator"]
    client.patch(f"/api/v1/roles/{moderator}", json={"name": "curator"}, headers=headers)
    assert introspect(client, machine, earlier)["roles"] == ["curator"]
    assert client.head(assignment_path(user.id, moderator), headers=headers).status_code == 200


# The whole cycle over real HTTP, by a client the operator CLI created -------------------------


def test_a_cli_made_machine_client_runs_the_whole_cycle_over_http(
    live_server: LiveServer,
) -> None:
    svc = live_server.app.extensions["oidc"]
    created = run_cli(
        svc.settings,
        "clients",
        "create",
        "--name",
        "catalogue",
        "--grant-type",
        "client_credentials",
        "--scope",
        "roles:read roles:write",
        "--json",
    )
    assert created.returncode == 0, created.stderr
    credentials = json.loads(created.stdout)
    basic = (credentials["client_id"], credentials["client_secret"])
    from oidc_server.accounts import create_user

    with svc.db.session() as session:
        user_id = create_user(session, svc.hasher, "live@example.com", PASSWORD).id

    url = live_server.url
    token = requests.post(
        f"{url}/oauth/token", data={"grant_type": "client_credentials"}, auth=basic, timeout=10
    )
    assert token.status_code == 200
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    role = api.post(f"{url}/api/v1/roles/", json={"name": "Editor"}, timeout=10)
    assert role.status_code == 201
    role_ref = role.json()["id"]
    assert api.post(f"{url}/api/v1/roles/", json={"name": "editor"}, timeout=10).status_code == 409
    assert "editor" in [r["name"] for r in api.get(f"{url}/api/v1/roles/", timeout=10).json()]
    renamed = api.patch(
        f"{url}/api/v1/roles/{role_ref}", json={"description": "Edits the catalogue"}, timeout=10
    )
    assert renamed.status_code == 200 and renamed.json()["description"] == "Edits the catalogue"

    assignment = f"{url}/api/v1/users/{user_id}/roles/{role_ref}"
    assert api.post(assignment, timeout=10).status_code == 201
    assert api.post(assignment, timeout=10).status_code == 200
    for check in (assignment, assignment + "/"):
        answer = api.head(check, allow_redirects=False, timeout=10)
        assert answer.status_code == 200

    login = requests.post(
        f"{url}/oauth/token",
        data={
            "grant_type": "password",
            "client_id": "cinema-app",
            "username": "live@example.com",
            "password": PASSWORD,
        },
        timeout=10,
    )
    user_token = login.json()["access_token"]
    assert svc.tokens.verify_access_token(user_token)["roles"] == ["editor"]
    described = requests.post(
        f"{url}/oauth/introspect", data={"token": user_token}, auth=basic, timeout=10
    ).json()
    assert described["roles"] == ["editor"]

    assert api.delete(assignment, timeout=10).status_code == 204
    assert api.head(assignment + "/", allow_redirects=False, timeout=10).status_code == 404
    assert api.post(assignment, timeout=10).status_code == 201
    assert api.delete(f"{url}/api/v1/roles/{role_ref}", timeout=10).status_code == 204
    assert api.head(assignment, allow_redirects=False, timeout=10).status_code == 404
    described = requests.post(
        f"{url}/oauth/introspect", data={"token": user_token}, auth=basic, timeout=10
    ).json()
    assert described["roles"] == []

    audited = run_cli(svc.settings, "audit", "list", "--json")
    assert audited.returncode == 0, audited.stderr
    entries = json.loads(audited.stdout)
    assert [e["action"] for e in reversed(entries)] == [
        "role.create",
        "role.update",
        "user_role.grant",
        "user_role.revoke",
        "user_role.grant",
        "role.delete",
    ]
    assert {e["actor"] for e in entries} == {credentials["client_id"]}
