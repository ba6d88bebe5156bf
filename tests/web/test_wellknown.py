"""Discovery (OIDC Discovery 1.0, RFC 8414) and JWKS, generated from config and keys."""

from __future__ import annotations

from typing import Any

import pytest
from authlib.oauth2.rfc8414 import AuthorizationServerMetadata
from authlib.oidc.discovery import OpenIDProviderMetadata
from flask.testing import FlaskClient


def validate_all(metadata: Any) -> None:
    """Every one of Authlib's validators, so a missing or malformed field fails the test."""
    for name in dir(metadata):
        if name.startswith("validate_"):
            getattr(metadata, name)()


def test_rfc8414_metadata_is_valid_and_names_our_endpoints(client: FlaskClient) -> None:
    response = client.get("/.well-known/oauth-authorization-server")
    assert response.status_code == 200
    body = response.json
    validate_all(AuthorizationServerMetadata(body))
    assert body["issuer"] == "http://localhost"
    assert body["token_endpoint"] == "http://localhost/oauth/token"
    assert body["jwks_uri"] == "http://localhost/.well-known/jwks.json"
    assert body["revocation_endpoint"] == "http://localhost/oauth/revoke"
    assert body["introspection_endpoint"] == "http://localhost/oauth/introspect"
    assert set(body["grant_types_supported"]) == {
        "authorization_code",
        "password",
        "refresh_token",
        "client_credentials",
        "urn:ietf:params:oauth:grant-type:device_code",
    }
    assert body["authorization_endpoint"] == "http://localhost/oauth/authorize"
    assert body["device_authorization_endpoint"] == "http://localhost/oauth/device_authorization"
    assert body["code_challenge_methods_supported"] == ["S256"]
    assert body["response_types_supported"] == ["code"]
    assert body["authorization_response_iss_parameter_supported"] is True


def test_openid_configuration_is_valid(client: FlaskClient) -> None:
    body = client.get("/.well-known/openid-configuration").json
    validate_all(OpenIDProviderMetadata(body))
    assert body["userinfo_endpoint"] == "http://localhost/oauth/userinfo"
    assert body["id_token_signing_alg_values_supported"] == ["RS256"]
    assert "openid" in body["scopes_supported"]
    assert body["end_session_endpoint"] == "http://localhost/logout"
    assert body["response_types_supported"] == ["code"]
    assert body["code_challenge_methods_supported"] == ["S256"]
    assert body["authorization_response_iss_parameter_supported"] is True
    assert {"nonce", "at_hash", "sid", "amr", "auth_time", "email"} <= set(body["claims_supported"])


def test_discovery_follows_the_configured_issuer(client: FlaskClient) -> None:
    """Every advertised URL is under the issuer, so a relying party never leaves it."""
    for path in ("/.well-known/openid-configuration", "/.well-known/oauth-authorization-server"):
        body = client.get(path).json
        urls = [v for k, v in body.items() if k.endswith(("_endpoint", "_uri", "documentation"))]
        assert urls and all(u.startswith(body["issuer"] + "/") for u in urls), urls


@pytest.mark.parametrize("path", ["/.well-known/jwks.json"])
def test_jwks_lists_public_keys_only(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert "max-age" in response.headers["Cache-Control"]
    (key,) = response.json["keys"]
    assert key["kid"] and key["alg"] == "RS256" and key["use"] == "sig"
    assert key.keys() == {"kty", "n", "e", "kid", "alg", "use"}
