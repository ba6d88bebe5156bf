"""/api/v1/roles/: role CRUD for machine clients, the scope rules, the audit trail, the docs."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from oidc_server import roles as domain
from oidc_server.config import Settings
from oidc_server.tokens.store import TokenStore

from ..conftest import MachineClient, bearer, make_client, password_login
from ..support.accounts import throttled_app
from ..support.roles import audit_entries, machine_headers, role_id

ROLE_OPERATIONS = [
    ("GET", "/api/v1/roles/", "roles:read"),
    ("POST", "/api/v1/roles/", "roles:write"),
    ("PATCH", "/api/v1/roles/{role}", "roles:write"),
    ("DELETE", "/api/v1/roles/{role}", "roles:write"),
    ("POST", "/api/v1/users/{user}/roles/{role}", "roles:write"),
    ("DELETE", "/api/v1/users/{user}/roles/{role}", "roles:write"),
    ("HEAD", "/api/v1/users/{user}/roles/{role}/", "roles:read"),
]
OPERATION_IDS = [f"{m} {p}" for m, p, _ in ROLE_OPERATIONS]


def call(client: FlaskClient, method: str, path: str, services: Any, **kwargs: Any) -> Any:
    path = path.format(user=uuid.uuid4(), role=role_id(services, "moderator"))
    if method in ("POST", "PATCH") and "/roles/" in path and "/users/" not in path:
        kwargs.setdefault("json", {"name": "curator"})
    return client.open(path, method=method, **kwargs)


def error_of(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.json["error"] == error
    assert isinstance(response.json["message"], str)
    return response.json


# Who may call -------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "scope"), ROLE_OPERATIONS, ids=OPERATION_IDS)
def test_no_token_is_401_with_a_bearer_challenge(
    client: FlaskClient, services: Any, method: str, path: str, scope: str
) -> None:
    response = call(client, method, path, services)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    if method != "HEAD":
        assert response.json["error"] in {"unauthorized", "invalid_token"}


@pytest.mark.parametrize(("method", "path", "scope"), ROLE_OPERATIONS, ids=OPERATION_IDS)
def test_a_forged_token_is_401_invalid_token(
    client: FlaskClient, services: Any, method: str, path: str, scope: str
) -> None:
    response = call(client, method, path, services, headers=bearer("not.a.jwt"))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(("method", "path", "scope"), ROLE_OPERATIONS, ids=OPERATION_IDS)
def test_a_users_token_is_403(
    client: FlaskClient, services: Any, user: Any, method: str, path: str, scope: str
) -> None:
    login = password_login(client)
    assert login.status_code == 200
    response = call(client, method, path, services, headers=bearer(login.json["access_token"]))
    assert response.status_code == 403
    if method != "HEAD":
        assert response.json["error"] == "forbidden"


@pytest.mark.parametrize(("method", "path", "scope"), ROLE_OPERATIONS, ids=OPERATION_IDS)
def test_a_client_token_without_the_scope_is_403(
    client: FlaskClient,
    services: Any,
    machine: MachineClient,
    method: str,
    path: str,
    scope: str,
) -> None:
    other = "roles:write" if scope == "roles:read" else "roles:read"
    response = call(client, method, path, services, headers=machine_headers(client, machine, other))
    assert response.status_code == 403
    assert f'scope="{scope}"' in response.headers["WWW-Authenticate"]
    if method != "HEAD":
        assert response.json["error"] == "insufficient_scope"


def test_a_client_without_any_roles_scope_cannot_list(client: FlaskClient, services: Any) -> None:
    reporting = make_client(services, scopes=["openid"])
    response = client.get("/api/v1/roles/", headers=machine_headers(client, reporting))
    error_of(response, 403, "insufficient_scope")


# Create and list -----------------------------------------------------------------------------


def test_create_answers_201_with_the_role_stored_lowercase(
    client: FlaskClient, machine: MachineClient
) -> None:
    headers = machine_headers(client, machine)
    response = client.post(
        "/api/v1/roles/", json={"name": "Editor", "description": "Edits"}, headers=headers
    )
    assert response.status_code == 201
    role = response.json
    assert set(role) == {"id", "name", "description", "created_at"}
    assert (role["name"], role["description"]) == ("editor", "Edits")
    assert uuid.UUID(role["id"])
    listed = client.get("/api/v1/roles/", headers=headers).json
    assert role in listed


def test_description_is_optional(client: FlaskClient, machine: MachineClient) -> None:
    response = client.post(
        "/api/v1/roles/", json={"name": "critic"}, headers=machine_headers(client, machine)
    )
    assert response.status_code == 201
    assert response.json["description"] is None


@pytest.mark.parametrize("name", ["admin", "ADMIN", " Admin "])
def test_a_taken_name_in_any_case_is_409(
    client: FlaskClient, machine: MachineClient, name: str
) -> None:
    response = client.post(
        "/api/v1/roles/", json={"name": name}, headers=machine_headers(client, machine)
    )
    error_of(response, 409, "role_name_taken")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "a"},
        {"name": "9lives"},
        {"name": "two words"},
        {"name": "x" * 65},
        {"name": None},
        {"name": 7},
        {"name": "critic", "description": "x" * 501},
        {"name": "critic", "description": 5},
        {"name": "critic", "unknown": True},
    ],
    ids=repr,
)
def test_an_invalid_body_is_422_with_per_field_details(
    client: FlaskClient, machine: MachineClient, services: Any, body: dict[str, Any]
) -> None:
    response = client.post("/api/v1/roles/", json=body, headers=machine_headers(client, machine))
    problem = error_of(response, 422, "unprocessable_entity")
    assert problem["details"]
    assert audit_entries(services) == []


def test_a_body_that_is_not_json_is_400(client: FlaskClient, machine: MachineClient) -> None:
    response = client.post(
        "/api/v1/roles/",
        data='{"name": "critic"',
        content_type="application/json",
        headers=machine_headers(client, machine),
    )
    error_of(response, 400, "bad_request")


def test_a_form_body_is_422_as_it_names_no_role(
    client: FlaskClient, machine: MachineClient
) -> None:
    response = client.post(
        "/api/v1/roles/",
        data="name=critic",
        content_type="application/x-www-form-urlencoded",
        headers=machine_headers(client, machine),
    )
    assert error_of(response, 422, "unprocessable_entity")["details"] == {
        "name": ["Missing data for required field."]
    }


def test_list_has_the_default_roles_by_name(client: FlaskClient, machine: MachineClient) -> None:
    response = client.get("/api/v1/roles/", headers=machine_headers(client, machine, "roles:read"))
    assert response.status_code == 200
    names = [role["name"] for role in response.json]
    assert names == sorted(names)
    assert {"admin", "subscriber", "moderator"} <= set(names)


@pytest.mark.parametrize("path", ["/api/v1/roles", "/api/v1/roles/"])
def test_the_collection_answers_with_or_without_the_slash(
    client: FlaskClient, machine: MachineClient, path: str
) -> None:
    response = client.get(path, headers=machine_headers(client, machine))
    assert response.status_code == 200


# Update and delete ---------------------------------------------------------------------------


def test_patch_renames_and_keeps_what_was_not_sent(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    moderator = role_id(services, "moderator")
    response = client.patch(
        f"/api/v1/roles/{moderator}",
        json={"name": "Curator"},
        headers=machine_headers(client, machine),
    )
    assert response.status_code == 200
    assert response.json["id"] == str(moderator)
    assert response.json["name"] == "curator"
    assert response.json["description"] == "Moderates reviews and comments"


def test_patch_with_null_description_clears_it(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    response = client.patch(
        f"/api/v1/roles/{role_id(services, 'moderator')}",
        json={"description": None},
        headers=machine_headers(client, machine),
    )
    assert response.status_code == 200
    assert response.json["description"] is None


def test_renaming_onto_an_existing_name_is_409(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    response = client.patch(
        f"/api/v1/roles/{role_id(services, 'moderator')}",
        json={"name": "Admin"},
        headers=machine_headers(client, machine),
    )
    error_of(response, 409, "role_name_taken")


@pytest.mark.parametrize("body", [{"name": "no spaces please"}, {"name": None}, {"extra": 1}])
def test_an_invalid_patch_is_422(
    client: FlaskClient, machine: MachineClient, services: Any, body: dict[str, Any]
) -> None:
    response = client.patch(
        f"/api/v1/roles/{role_id(services, 'moderator')}",
        json=body,
        headers=machine_headers(client, machine),
    )
    error_of(response, 422, "unprocessable_entity")


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
def test_an_unknown_role_is_404(client: FlaskClient, machine: MachineClient, method: str) -> None:
    response = client.open(
        f"/api/v1/roles/{uuid.uuid4()}",
        method=method,
        json={"name": "ghost"},
        headers=machine_headers(client, machine),
    )
    error_of(response, 404, "role_not_found")


@pytest.mark.parametrize("method", ["PATCH", "DELETE"])
@pytest.mark.parametrize("role", ["not-a-uuid", "1234", "%00"])
def test_a_malformed_role_id_is_404_not_500(
    client: FlaskClient, machine: MachineClient, method: str, role: str
) -> None:
    response = client.open(
        f"/api/v1/roles/{role}",
        method=method,
        json={"name": "ghost"},
        headers=machine_headers(client, machine),
    )
    assert response.status_code == 404
    assert response.json["error"] == "not_found"


def test_delete_is_204_and_the_role_is_gone(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    headers = machine_headers(client, machine)
    moderator = role_id(services, "moderator")
    response = client.delete(f"/api/v1/roles/{moderator}", headers=headers)
    assert response.status_code == 204
    assert response.get_data() == b""
    names = [role["name"] for role in client.get("/api/v1/roles/", headers=headers).json]
    assert "moderator" not in names
    assert client.delete(f"/api/v1/roles/{moderator}", headers=headers).status_code == 404


# The audit trail ----------------------------------------------------------------------------


def test_every_change_is_audited_with_the_client_id(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    headers = machine_headers(client, machine)
    created = client.post("/api/v1/roles/", json={"name": "critic"}, headers=headers).json
    client.patch(f"/api/v1/roles/{created['id']}", json={"description": "Reviews"}, headers=headers)
    client.delete(f"/api/v1/roles/{created['id']}", headers=headers)
    client.get("/api/v1/roles/", headers=headers)  # reads are not audited

    entries = audit_entries(services)
    assert [e.action for e in entries] == [
        domain.ROLE_CREATED,
        domain.ROLE_UPDATED,
        domain.ROLE_DELETED,
    ]
    assert {e.actor for e in entries} == {machine.client_id}
    assert {e.target for e in entries} == {created["id"]}
    assert entries[1].details == {"changes": {"description": {"from": None, "to": "Reviews"}}}


def test_a_refused_change_leaves_no_audit_entry(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    headers = machine_headers(client, machine)
    client.post("/api/v1/roles/", json={"name": "admin"}, headers=headers)
    client.patch(f"/api/v1/roles/{uuid.uuid4()}", json={"name": "ghost"}, headers=headers)
    assert audit_entries(services) == []


# The documentation -----------------------------------------------------------------------------


EXPECTED_ERRORS = {
    ("/api/v1/roles/", "get"): {"401", "403", "429", "503"},
    ("/api/v1/roles/", "post"): {"400", "401", "403", "409", "413", "422", "429", "503"},
    ("/api/v1/roles/{role_id}", "patch"): {
        "400",
        "401",
        "403",
        "404",
        "409",
        "413",
        "422",
        "429",
        "503",
    },
    ("/api/v1/roles/{role_id}", "delete"): {"401", "403", "404", "429", "503"},
    ("/api/v1/users/{user_id}/roles/{role_id}", "post"): {"401", "403", "404", "429", "503"},
    ("/api/v1/users/{user_id}/roles/{role_id}", "delete"): {"401", "403", "404", "429", "503"},
    ("/api/v1/users/{user_id}/roles/{role_id}/", "head"): {"401", "403", "404", "503"},
}


@pytest.mark.parametrize(("path", "method"), list(EXPECTED_ERRORS), ids=lambda v: str(v))
def test_each_operation_is_documented_with_security_and_error_shapes(
    client: FlaskClient, path: str, method: str
) -> None:
    spec = client.get("/openapi.json").json
    operation = spec["paths"][path][method]
    assert operation["security"] == [{"bearerAuth": []}]
    documented = {s for s in operation["responses"] if s[0] in "45"}
    assert documented == EXPECTED_ERRORS[(path, method)]
    for status in documented:
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/Error"}
    error_schema = spec["components"]["schemas"]["Error"]
    assert set(error_schema["properties"]) == {"error", "message", "details"}
    success = {"get": "200", "post": "201", "patch": "200", "delete": "204", "head": "200"}
    assert success[method] in operation["responses"]
    if "{role_id}" in path:
        assert {p["name"] for p in spec["paths"][path]["parameters"]} >= {"role_id"}


def test_the_role_schemas_are_documented(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").json
    operation = spec["paths"]["/api/v1/roles/"]["post"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    created = operation["responses"]["201"]["content"]["application/json"]["schema"]
    assert body == created == {"$ref": "#/components/schemas/Role"}
    role = spec["components"]["schemas"]["Role"]
    assert set(role["properties"]) == {"id", "name", "description", "created_at"}
    assert role["properties"]["description"]["maxLength"] == 500
    assert role["required"] == ["name"]


# Limits and hostile bodies -------------------------------------------------------------------


def test_head_is_exempt_from_the_per_address_limit_but_the_rest_is_not(
    settings: Settings, token_store: TokenStore
) -> None:
    with throttled_app(settings, token_store, ratelimit_default="3 per minute") as app:
        svc = app.extensions["oidc"]
        client = app.test_client()
        headers = machine_headers(client, make_client(svc))
        check = f"/api/v1/users/{uuid.uuid4()}/roles/{role_id(svc, 'admin')}/"
        answers = {client.head(check, headers=headers).status_code for _ in range(10)}
        listings = [client.get("/api/v1/roles/", headers=headers).status_code for _ in range(4)]
    assert answers == {404}
    assert listings[-1] == 429


def test_a_nul_in_a_description_is_422_not_a_database_error(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    response = client.post(
        "/api/v1/roles/",
        json={"name": "critic", "description": "bad\x00byte"},
        headers=machine_headers(client, machine),
    )
    assert error_of(response, 422, "unprocessable_entity")["details"]["description"]
    assert audit_entries(services) == []


def test_json_nested_too_deeply_is_400_not_500(client: FlaskClient, machine: MachineClient) -> None:
    body = "[" * 20_000 + "]" * 20_000
    response = client.post(
        "/api/v1/roles/",
        data=body,
        content_type="application/json",
        headers=machine_headers(client, machine),
    )
    error_of(response, 400, "bad_request")


def test_a_body_over_the_size_limit_is_413(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    too_big = "x" * (services.settings.max_content_length + 1)
    response = client.post(
        "/api/v1/roles/",
        json={"name": "critic", "description": too_big},
        headers=machine_headers(client, machine),
    )
    assert response.status_code == 413
    assert "error" in response.json
