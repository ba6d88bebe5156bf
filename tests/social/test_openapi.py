"""The social operations are documented in /openapi.json, errors in the one error shape."""

from __future__ import annotations

from typing import Any

import pytest

OPERATIONS = {
    ("/api/v1/social/login/{provider}", "get"): ("302", {"404", "502", "503"}, False),
    ("/api/v1/social/login/{provider}", "post"): (
        "200",
        {"400", "403", "404", "409", "422", "502", "503"},
        False,
    ),
    ("/api/v1/social/callback/{provider}", "get"): (
        "200",
        {"400", "403", "404", "409", "422", "502", "503"},
        False,
    ),
    ("/api/v1/users/me/social-accounts/", "get"): ("200", {"401", "403"}, True),
    ("/api/v1/users/me/social-accounts/{provider}", "post"): (
        "201",
        {"400", "401", "403", "404", "409", "422", "502", "503"},
        True,
    ),
    ("/api/v1/users/me/social-accounts/{social_account_id}", "delete"): (
        "204",
        {"401", "403", "404", "409"},
        True,
    ),
}


@pytest.fixture
def spec(client: Any) -> dict[str, Any]:
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    return resp.get_json()


def resolve(spec: dict[str, Any], ref: str) -> dict[str, Any]:
    node: Any = spec
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


@pytest.mark.parametrize(("path", "method"), list(OPERATIONS))
def test_operation_is_documented(spec, path, method):
    success, errors, needs_bearer = OPERATIONS[(path, method)]
    operation = spec["paths"][path][method]
    responses = operation["responses"]
    assert success in responses
    for status in errors:
        response = responses[status]
        if "$ref" in response:  # a shared response component
            response = resolve(spec, response["$ref"])
        schema = response["content"]["application/json"]["schema"]
        properties = resolve(spec, schema["$ref"])["properties"]
        assert {"error", "message", "details"} <= set(properties), status
    assert (operation.get("security") == [{"bearerAuth": []}]) is needs_bearer


def test_redirect_and_bodies_are_described(spec):
    login = spec["paths"]["/api/v1/social/login/{provider}"]
    assert "Location" in login["get"]["responses"]["302"]["headers"]
    body = login["post"]["requestBody"]["content"]["application/json"]["schema"]
    code = resolve(spec, body["$ref"])
    assert set(code["required"]) == {"code", "redirect_uri"}
    assert {"code_verifier", "nonce"} <= set(code["properties"])
    token = login["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {"access_token", "refresh_token", "token_type", "expires_in"} <= set(
        resolve(spec, token["$ref"])["properties"]
    )
    callback = spec["paths"]["/api/v1/social/callback/{provider}"]["get"]
    assert {p["name"] for p in callback["parameters"] if p["in"] == "query"} >= {
        "code",
        "state",
        "error",
    }
    listing = spec["paths"]["/api/v1/users/me/social-accounts/"]["get"]["responses"]["200"]
    items = listing["content"]["application/json"]["schema"]["items"]
    assert set(resolve(spec, items["$ref"])["properties"]) == {
        "id",
        "provider",
        "subject",
        "email",
        "linked_at",
    }
