"""/openapi.json is valid OpenAPI 3 and describes every /api/v1 route; /docs serves it."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate

IGNORED_METHODS = {"OPTIONS"}
ACCOUNT_OPERATIONS = {
    ("/api/v1/auth/register", "post"): False,
    ("/api/v1/auth/login", "post"): False,
    ("/api/v1/auth/refresh", "post"): False,
    ("/api/v1/auth/logout", "post"): True,
    ("/api/v1/auth/logout-all", "post"): True,
    ("/api/v1/users/me", "get"): True,
    ("/api/v1/users/me/change-password", "post"): True,
    ("/api/v1/users/me/login-history", "get"): True,
    ("/api/v1/users/me/sessions", "get"): True,
    ("/api/v1/users/me/sessions/{session_id}", "delete"): True,
}


@pytest.fixture
def spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json


def api_routes(app: Flask) -> Iterator[tuple[str, str]]:
    """(OpenAPI path, method) of every /api/v1 rule Flask would route."""
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        methods = set(rule.methods or ()) - IGNORED_METHODS
        if "GET" in methods:
            methods.discard("HEAD")  # Flask adds HEAD to every GET
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        for method in methods:
            yield path, method.lower()


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        if path.startswith("/api/v1/"):
            for method, operation in item.items():
                if method in {"get", "put", "post", "delete", "patch", "head"}:
                    yield path, method, operation


def resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        *_, kind, name = node["$ref"].split("/")
        node = spec["components"][kind][name]
    return node


def test_the_document_is_valid_openapi_3(spec: dict[str, Any]) -> None:
    assert spec["openapi"].startswith("3.")
    validate(spec)


def test_every_api_route_of_the_app_is_documented(app: Flask, spec: dict[str, Any]) -> None:
    routes = set(api_routes(app))
    assert set(ACCOUNT_OPERATIONS) <= routes
    missing = sorted(
        (path, method) for path, method in routes if method not in spec["paths"].get(path, {})
    )
    assert missing == []


def test_every_operation_documents_its_errors_in_the_one_error_shape(
    spec: dict[str, Any],
) -> None:
    error = spec["components"]["schemas"]["Error"]
    assert set(error["properties"]) == {"error", "message", "details"}
    assert set(error["required"]) == {"error", "message"}
    for path, method, operation in operations(spec):
        statuses = [code for code in operation["responses"] if code[0] in "45"]
        assert statuses, f"{method.upper()} {path} documents no error response"
        for code in [*statuses, "default"]:
            if code not in operation["responses"]:
                continue
            response = resolve(spec, operation["responses"][code])
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/Error"}, (path, method, code)


@pytest.mark.parametrize(("path", "method"), list(ACCOUNT_OPERATIONS))
def test_account_operations_document_their_statuses_and_security(
    spec: dict[str, Any], path: str, method: str
) -> None:
    operation = spec["paths"][path][method]
    responses = operation["responses"]
    assert "413" in responses and "429" in responses
    assert "Retry-After" in resolve(spec, responses["429"])["headers"]
    if ACCOUNT_OPERATIONS[(path, method)]:
        assert operation["security"] == [{"bearerAuth": []}]
        assert "401" in responses and "403" in responses
    else:
        assert "security" not in operation
    if "requestBody" in operation:
        assert "422" in responses and "400" in responses


def test_bearer_operations_name_the_bearer_scheme(spec: dict[str, Any]) -> None:
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
    }
    for path, method, operation in operations(spec):
        for requirement in operation.get("security", []):
            assert set(requirement) <= set(spec["components"]["securitySchemes"]), (path, method)
            assert "401" in operation["responses"], (path, method)


def request_schema(spec: dict[str, Any], path: str, method: str) -> dict[str, Any]:
    body = spec["paths"][path][method]["requestBody"]
    return resolve(spec, body["content"]["application/json"]["schema"])


def response_schema(spec: dict[str, Any], path: str, method: str, status: str) -> dict[str, Any]:
    response = resolve(spec, spec["paths"][path][method]["responses"][status])
    return resolve(spec, response["content"]["application/json"]["schema"])


def test_request_and_response_bodies_are_described(spec: dict[str, Any]) -> None:
    register = request_schema(spec, "/api/v1/auth/register", "post")
    assert set(register["properties"]) == {"login", "password"}
    assert set(register["required"]) == {"login", "password"}
    assert register["properties"]["password"]["maxLength"] == 1024
    assert set(response_schema(spec, "/api/v1/auth/register", "post", "201")["properties"]) == {
        "id",
        "login",
    }
    token = response_schema(spec, "/api/v1/auth/login", "post", "200")
    assert {"access_token", "token_type", "expires_in", "refresh_token"} <= set(token["required"])
    change = request_schema(spec, "/api/v1/users/me/change-password", "post")
    assert set(change["required"]) == {"old_password", "new_password1", "new_password2"}
    me = response_schema(spec, "/api/v1/users/me", "get", "200")
    assert set(me["properties"]) == {"id", "login", "roles", "has_password", "created_at"}
    page = response_schema(spec, "/api/v1/users/me/login-history", "get", "200")
    assert set(page["properties"]) == {"items", "next_cursor"}
    entry = resolve(spec, page["properties"]["items"]["items"])
    assert {"id", "user_id", "user_agent", "ip", "logged_in_at", "method", "device"} <= set(
        entry["properties"]
    )
    parameters = spec["paths"]["/api/v1/users/me/login-history"]["get"]["parameters"]
    assert {(p["name"], p["in"]) for p in parameters} == {("limit", "query"), ("cursor", "query")}
    sessions = response_schema(spec, "/api/v1/users/me/sessions", "get", "200")
    assert sessions["type"] == "array"
    assert "current" in resolve(spec, sessions["items"])["properties"]


def test_swagger_ui_is_served_at_docs(client: FlaskClient) -> None:
    response = client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert "swagger-ui" in page and "openapi.json" in page


def test_an_error_status_without_a_documented_response_is_refused_at_import() -> None:
    from flask_smorest import Blueprint

    from oidc_server.api.schemas import error_responses

    with pytest.raises(ValueError, match="418"):
        error_responses(Blueprint("teapot", __name__), 401, 418)


def test_every_api_schema_is_shared_rather_than_deep_copied() -> None:
    # flask-smorest deep-copies schema instances into every operation's doc otherwise.
    import copy
    import inspect

    from marshmallow import Schema

    import oidc_server.api as api_package
    from oidc_server.api import account_erase, auth, common, consents, roles, schemas, social, users
    from oidc_server.api.common import ApiSchema

    modules = [api_package, account_erase, auth, common, consents, roles, schemas, social, users]
    defined = {
        cls
        for module in modules
        for cls in vars(module).values()
        if inspect.isclass(cls) and issubclass(cls, Schema) and cls.__module__ == module.__name__
    }
    assert ApiSchema in defined and len(defined) > 10
    for cls in defined:
        assert issubclass(cls, ApiSchema), cls
        instance = cls()
        assert copy.deepcopy(instance) is instance
