"""Authlib's ``AuthorizationServer`` wired to our clients, grants and endpoints."""

from __future__ import annotations

from typing import Any

from authlib.integrations.flask_oauth2 import AuthorizationServer as _AuthorizationServer
from authlib.oauth2.rfc6749 import InvalidClientError, InvalidRequestError, OAuth2Request
from authlib.oauth2.rfc6749.authenticate_client import authenticate_client_secret_basic
from flask import Flask, current_app

from ..clients import SCOPES_SUPPORTED, RegisteredClient, find_client
from ..context import db_session, services
from .authorization_code import AuthorizationCodeGrant, OpenIDCode, S256CodeChallenge
from .clients_generation import clients_generation
from .device import DeviceCodeGrant, DeviceFlow
from .endpoints import IntrospectionEndpoint, RevocationEndpoint
from .grants import ClientCredentialsGrant, PasswordGrant, RefreshTokenGrant, single_valued
from .id_tokens import IdTokenIssuer


class AuthorizationServer(_AuthorizationServer):
    def query_client(self, client_id: str) -> RegisteredClient | None:
        svc = services()
        if not isinstance(client_id, str) or not client_id or len(client_id) > 64:
            return None
        return svc.client_cache.get(
            clients_generation(),
            client_id,
            lambda: find_client(db_session(), svc.settings.secret_key, client_id),
        )

    def authenticate_client(
        self, request: Any, methods: list[str], endpoint: str = "token"
    ) -> RegisteredClient:
        """Authlib's, for one authentication method per request (RFC 6749 §2.3): Basic
        credentials beside a ``client_secret`` in the body, or beside a ``client_id`` naming
        another client, are ``invalid_request`` (§5.2), where Authlib would use the first
        method that succeeds and ignore the rest.

        And for parameters in the body only: every endpoint that authenticates clients (token,
        revocation, introspection, device authorization) takes them in the request body
        (RFC 6749 §2.3.1, §3.2; RFC 7009 §2.1; RFC 7662 §2.1; RFC 8628 §3.1), while Authlib
        reads the URL's query too, where a secret or a refresh token would be written into
        every proxy's access log."""
        if request.args:
            raise InvalidRequestError("Send the parameters in the request body, not the URL.")
        single_valued(request, "client_id", "client_secret")
        if request.headers.get("Authorization", "")[:6].lower() == "basic ":
            given = request.payload.datalist
            if "client_secret" in given:
                raise InvalidRequestError("Use one client authentication method, not two.")
            client = super().authenticate_client(request, methods, endpoint)
            if given.get("client_id", [client.client_id]) != [client.client_id]:
                raise InvalidRequestError("The client_id differs from the authenticated client.")
            return client
        return super().authenticate_client(request, methods, endpoint)

    def create_oauth2_request(self, request: Any) -> Any:
        """Requests built by ``oauth.internal`` are used as they are; else Flask's request."""
        if isinstance(request, OAuth2Request):
            return request
        return super().create_oauth2_request(request)

    def create_token_response(self, request: Any = None) -> Any:
        """Authlib's, with ``grant_type`` checked like the grants' own parameters: given more
        than once, it makes an ``invalid_request`` (RFC 6749 §3.1), where Authlib would take
        the first. (The client's are checked by ``authenticate_client``.)"""
        oauth_request = self.create_oauth2_request(request)
        try:
            single_valued(oauth_request, "grant_type")
        except InvalidRequestError as error:
            return self.handle_error_response(oauth_request, error)
        return super().create_token_response(oauth_request)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Tokens are stored by ``TokenService`` as they are issued; nothing more to keep."""


def _safe_client_secret_basic(query_client: Any, request: Any) -> RegisteredClient | None:
    """Authlib's Basic parser, with undecodable credentials refused instead of crashing:
    401 and a challenge, as for any client that authenticated in the header (RFC 6749 §5.2)."""
    try:
        return authenticate_client_secret_basic(query_client, request)
    except (ValueError, UnicodeError):
        raise InvalidClientError(
            description="Malformed client credentials.", status_code=401
        ) from None


def authorization_server() -> AuthorizationServer:
    return current_app.extensions["authorization_server"]


def init_app(app: Flask) -> None:
    app.config["OAUTH2_SCOPES_SUPPORTED"] = list(SCOPES_SUPPORTED)
    server = AuthorizationServer()
    server.init_app(app)
    server.register_client_auth_method("client_secret_basic", _safe_client_secret_basic)
    server.register_grant(PasswordGrant)
    server.register_grant(RefreshTokenGrant)
    server.register_grant(ClientCredentialsGrant)
    # Issue 9, the browser-facing OpenID Provider: code flow with PKCE and ID tokens.
    server.register_grant(AuthorizationCodeGrant, [S256CodeChallenge(), OpenIDCode()])
    server.register_grant(DeviceCodeGrant)
    svc = app.extensions["oidc"]
    app.extensions["device_flow"] = DeviceFlow(svc.store)
    app.extensions["id_tokens"] = IdTokenIssuer(
        svc.keyring, svc.settings.oidc_issuer, svc.settings.access_token_ttl
    )
    server.register_endpoint(RevocationEndpoint)
    server.register_endpoint(IntrospectionEndpoint)
    app.extensions["authorization_server"] = server
