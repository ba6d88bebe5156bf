"""Our server as third-party libraries see it, over real HTTP: PyJWT, joserfc, Authlib."""

from __future__ import annotations

import json
from typing import Any

import jwt as pyjwt
import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from joserfc import jwt as jose_jwt
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from .conftest import PASSWORD, LiveServer
from .support.cli import run_cli


@pytest.fixture
def machine_credentials(live_server: LiveServer) -> dict[str, str]:
    """A client made the way an operator makes one: with the console script."""
    settings = live_server.app.extensions["oidc"].settings
    result = run_cli(
        settings,
        "clients",
        "create",
        "--name",
        "catalogue",
        "--grant-type",
        "client_credentials",
        "--scope",
        "roles:read",
        "--json",
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def client_credentials_token(live_server: LiveServer, creds: dict[str, str]) -> str:
    session = OAuth2Session(creds["client_id"], creds["client_secret"], scope="roles:read")
    token = session.fetch_token(f"{live_server.url}/oauth/token", grant_type="client_credentials")
    assert token["token_type"] == "Bearer"
    return token["access_token"]


def verify_with_pyjwt(live_server: LiveServer, token: str) -> dict[str, Any]:
    jwks = pyjwt.PyJWKClient(f"{live_server.url}/.well-known/jwks.json", cache_keys=False)
    key = jwks.get_signing_key_from_jwt(token)
    return pyjwt.decode(
        token,
        key,
        algorithms=["RS256"],
        audience="cinema",
        issuer=live_server.url,
        options={"require": ["exp", "iat", "jti"]},
    )


def test_a_cli_client_token_verifies_with_pyjwt_and_joserfc(
    live_server: LiveServer, machine_credentials: dict[str, str]
) -> None:
    token = client_credentials_token(live_server, machine_credentials)
    claims = verify_with_pyjwt(live_server, token)
    assert claims["sub"] == claims["client_id"] == machine_credentials["client_id"]
    assert pyjwt.get_unverified_header(token)["typ"] == "at+jwt"

    keys = KeySet.import_key_set(
        requests.get(f"{live_server.url}/.well-known/jwks.json", timeout=5).json()
    )
    decoded = jose_jwt.decode(token, keys, algorithms=["RS256"])
    JWTClaimsRegistry(
        iss={"essential": True, "value": live_server.url},
        aud={"essential": True, "value": "cinema"},
        exp={"essential": True},
    ).validate(decoded.claims)
    assert decoded.header["kid"] in {k.kid for k in keys}


def test_tokens_signed_before_a_rotation_still_verify(
    live_server: LiveServer, machine_credentials: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import oidc_server.keys as keys_module

    monkeypatch.setattr(keys_module, "RELOAD_INTERVAL", 0.0)
    before = client_credentials_token(live_server, machine_credentials)
    settings = live_server.app.extensions["oidc"].settings
    assert run_cli(settings, "keys", "rotate").returncode == 0
    after = client_credentials_token(live_server, machine_credentials)
    assert pyjwt.get_unverified_header(after)["kid"] != pyjwt.get_unverified_header(before)["kid"]
    assert (
        verify_with_pyjwt(live_server, before)["jti"]
        != verify_with_pyjwt(live_server, after)["jti"]
    )


def test_authlib_client_runs_password_login_and_refresh(live_server: LiveServer) -> None:
    services = live_server.app.extensions["oidc"]
    from oidc_server.accounts import create_user

    with services.db.session() as session:
        create_user(session, services.hasher, "fan@example.com", PASSWORD)
    session = OAuth2Session("cinema-app", token_endpoint_auth_method="none")
    token = session.fetch_token(
        f"{live_server.url}/oauth/token", username="fan@example.com", password=PASSWORD
    )
    assert verify_with_pyjwt(live_server, token["access_token"])["sid"]
    refreshed = session.refresh_token(
        f"{live_server.url}/oauth/token", refresh_token=token["refresh_token"]
    )
    assert refreshed["refresh_token"] != token["refresh_token"]
    userinfo = session.get(f"{live_server.url}/oauth/userinfo", timeout=5)
    assert userinfo.status_code == 200 and userinfo.json()["email"] == "fan@example.com"
