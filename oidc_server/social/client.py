"""Talking to the providers through Authlib's Flask OAuth client, and nothing else.

Authlib's ``authorize_redirect`` / ``authorize_access_token`` keep state in Flask's cookie
session; we only use its lower-level calls (``create_authorization_url``,
``fetch_access_token``, ``parse_id_token``) so that the flow's secrets stay server-side in
the token store (see ``flow``). Every way a provider can fail is turned into one of three
exceptions here, so callers never see ``requests`` or ``joserfc`` errors.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from authlib.integrations.base_client import OAuthError
from flask import Flask
from joserfc.errors import JoseError

from .claims import ClaimsError, SocialIdentity
from .providers import ProviderSpec

log = logging.getLogger(__name__)


def _transport_errors() -> tuple[type[Exception], ...]:
    """What a provider's HTTP exchange may raise besides an OAuth error: network failures,
    5xx (``raise_for_status``), non-JSON bodies (``ValueError``), JSON of the wrong shape.

    ``requests`` (with Authlib's client, about 6 MB per worker) is imported only once a
    provider is enabled.
    """
    import requests

    return (requests.RequestException, ValueError, KeyError, TypeError)


class ProviderError(Exception):
    """The provider is unreachable, failing, or answered something unusable."""


class CodeRejected(Exception):
    """The provider refused the authorization code: unknown, expired, used, or not ours."""


class IdTokenInvalid(Exception):
    """The ID token failed a check: signature, iss, aud, exp, nonce or a required claim."""


@dataclass(frozen=True)
class AuthorizationRequest:
    """Where to send the browser, and the secrets its callback must be checked against."""

    url: str
    state: str
    nonce: str | None
    code_verifier: str | None


class ProviderClient:
    """One provider, through an Authlib ``FlaskOAuth2App`` registered for it."""

    def __init__(self, spec: ProviderSpec, remote: Any) -> None:
        self.spec = spec
        self._remote = remote

    @property
    def name(self) -> str:
        return self.spec.name

    def authorization_request(self, redirect_uri: str) -> AuthorizationRequest:
        """A fresh authorization URL with state, PKCE S256 and, for OIDC, a nonce."""
        try:
            rv = self._remote.create_authorization_url(redirect_uri)
        except (*_transport_errors(), RuntimeError) as exc:  # RuntimeError: discovery lacks a URL
            raise self._failed("authorization request", exc) from None
        return AuthorizationRequest(
            url=rv["url"],
            state=rv["state"],
            nonce=rv.get("nonce"),
            code_verifier=rv.get("code_verifier"),
        )

    def identity(
        self,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str | None = None,
        nonce: str | None = None,
    ) -> SocialIdentity:
        """Redeem ``code`` and return who signed in, from the verified ID token or user info."""
        token = self._fetch_token(code, redirect_uri, code_verifier)
        claims = (
            self._id_token_claims(token, nonce) if self.spec.is_openid else self._userinfo(token)
        )
        try:
            return self.spec.to_identity(claims)
        except ClaimsError as exc:
            raise self._failed("claims", exc) from None

    def _fetch_token(self, code: str, redirect_uri: str, code_verifier: str | None) -> Any:
        try:
            token = self._remote.fetch_access_token(
                redirect_uri=redirect_uri, code=code, code_verifier=code_verifier
            )
        except OAuthError as exc:
            if exc.error == "invalid_grant":  # RFC 6749 §5.2: the code is the problem
                raise CodeRejected(exc.description or "invalid_grant") from None
            # invalid_client and friends: our registration is wrong, not the user's input.
            raise self._failed(f"token endpoint error {exc.error}", exc) from None
        except (*_transport_errors(), RuntimeError) as exc:
            raise self._failed("token endpoint", exc) from None
        if not isinstance(token, dict) or not isinstance(token.get("access_token"), str):
            raise self._failed("token endpoint", ValueError("no access_token"))
        return token

    def _claims_options(self) -> dict[str, Any]:
        """Every ID-token check we rely on, spelled out: Authlib checks only iss by default."""
        issuer = self._remote.load_server_metadata().get("issuer")
        if not isinstance(issuer, str) or not issuer:
            raise ProviderError(f"{self.name}: discovery document has no issuer")
        return {
            "iss": {"essential": True, "values": self.spec.accepted_issuers(issuer)},
            "aud": {"essential": True, "value": self.spec.client_id},
            "sub": {"essential": True},
            "exp": {"essential": True},
            "iat": {"essential": True},
        }

    def _id_token_claims(self, token: dict[str, Any], nonce: str | None) -> dict[str, Any]:
        if not isinstance(token.get("id_token"), str):
            raise self._failed("token endpoint", ValueError("no id_token"))
        try:
            # A nonce we sent must come back; without one (an app's own flow) it is not checked.
            claims = self._remote.parse_id_token(
                token, nonce=nonce, claims_options=self._claims_options()
            )
        except JoseError as exc:
            log.warning(
                "rejected an ID token", extra={"provider": self.name, "reason": repr(exc)[:200]}
            )
            raise IdTokenInvalid(str(exc) or type(exc).__name__) from None
        except (*_transport_errors(), RuntimeError) as exc:  # the JWKS could not be fetched
            raise self._failed("jwks", exc) from None
        return dict(claims)

    def _userinfo(self, token: dict[str, Any]) -> dict[str, Any]:
        headers = {"Authorization": f"{self.spec.userinfo_scheme} {token['access_token']}"}
        try:
            # withhold_token: Authlib would send "Bearer"; Yandex documents "OAuth <token>".
            resp = self._remote.get(
                self.spec.userinfo_url,
                withhold_token=True,
                headers=headers,
                params=dict(self.spec.userinfo_params),
            )
            resp.raise_for_status()
            data = resp.json()
        except _transport_errors() as exc:
            raise self._failed("userinfo", exc) from None
        if not isinstance(data, dict):
            raise self._failed("userinfo", ValueError("not a JSON object"))
        return data

    def _failed(self, step: str, exc: BaseException) -> ProviderError:
        # The exception's class and the step only: bodies and URLs may carry codes or tokens.
        log.warning(
            "social provider failed",
            extra={"provider": self.name, "step": step, "error": type(exc).__name__},
        )
        return ProviderError(f"{self.name}: {step} failed")


def register_clients(
    app: Flask, specs: dict[str, ProviderSpec], timeout: int
) -> dict[str, ProviderClient]:
    """Register each provider with a fresh ``authlib.integrations.flask_client.OAuth``."""
    if not specs:
        return {}
    from authlib.integrations.flask_client import OAuth  # lazily: see _transport_errors

    oauth = OAuth(app)
    clients: dict[str, ProviderClient] = {}
    for name, spec in specs.items():
        remote = oauth.register(
            name,
            client_id=spec.client_id,
            client_secret=spec.client_secret,
            server_metadata_url=spec.metadata_url or None,
            authorize_url=spec.authorize_url or None,
            access_token_url=spec.token_url or None,
            client_kwargs={
                "code_challenge_method": "S256",
                "scope": spec.scope,
                # Without it a provider that never answers holds a worker forever.
                "default_timeout": timeout,
            },
        )
        clients[name] = ProviderClient(spec, remote)
    return clients
