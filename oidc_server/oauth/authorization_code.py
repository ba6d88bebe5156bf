"""The authorization code grant (RFC 6749 §4.1) with PKCE (RFC 7636) and OpenID Connect.

Authlib's ``AuthorizationCodeGrant`` drives the protocol; this module fills its storage hooks
with the token store's single-use values and issues tokens into the browser's login session:

- Codes live ``CODE_TTL`` seconds under the SHA-256 of the code, bound to the client, the
  redirect URI, the PKCE challenge, the nonce and the session (``put_once``). Redeeming one
  takes it atomically, so of two concurrent uses exactly one succeeds.
- Taking a code leaves a "spent" marker behind. A second use finds it and ends the login
  session the code was issued in: every token issued from the code (and, since they share
  the session, the browser's sign-in) stops working (RFC 6749 §4.1.2, RFC 9700 §4.2.4).
- PKCE is required of every client with ``S256`` only (RFC 9700 §2.1.1); ``plain`` is refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request, grants
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError
from authlib.oauth2.rfc6749.hooks import hooked
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oidc.core import grants as oidc_grants
from flask import current_app
from werkzeug.datastructures import MultiDict

from .. import accounts, observability
from ..context import db_session, services
from ..models import User
from ..security import hash_token
from ..tokens.service import new_refresh_token
from ..tokens.store import RefreshRecord, SessionRecord
from .grants import single_valued

log = logging.getLogger(__name__)

#: Seconds a code may wait to be redeemed (RFC 6749 §4.1.2: "a maximum ... of 10 minutes").
CODE_TTL = 60
#: Seconds a spent code is remembered, so a replay is recognised and punished.
SPENT_CODE_TTL = 3600
CODE_NAMESPACE = "auth_code"
SPENT_NAMESPACE = "auth_code_spent"
NONCE_NAMESPACE = "oidc_nonce"


@dataclass(frozen=True)
class Approval:
    """Who approved an authorization request, and in which browser session."""

    user: User
    session: SessionRecord


@dataclass(frozen=True)
class AuthorizationCode:
    """A redeemed code's bindings, with the getters Authlib and its extensions call."""

    client_id: str
    redirect_uri: str
    scope: str
    user_id: str
    sid: str
    auth_time: int
    auth_method: str
    nonce: str | None
    code_challenge: str
    code_challenge_method: str

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.auth_time

    def get_acr(self) -> None:
        return None

    def get_amr(self) -> None:
        return None


class _ArgsPayload(OAuth2Payload):
    def __init__(self, params: MultiDict[str, str]) -> None:
        self._params = params

    @property
    def data(self) -> MultiDict[str, str]:
        return self._params

    @property
    def datalist(self) -> dict[str, list[str]]:
        return {key: self._params.getlist(key) for key in self._params}


class AuthorizationRequest(OAuth2Request):
    """An authorization request rebuilt from its parameters (fresh, or resumed after sign-in)."""

    def __init__(self, uri: str, params: MultiDict[str, str]) -> None:
        super().__init__(method="GET", uri=uri)
        self._params = params
        self.payload = _ArgsPayload(params)

    @property
    def args(self) -> MultiDict[str, str]:
        return self._params

    @property
    def form(self) -> MultiDict[str, str]:
        return MultiDict()


def _now() -> float:
    """The OP's clock (``BrowserSessions.clock``), which tests move explicitly."""
    return float(current_app.extensions["browser_sessions"].clock())


def _code_key(code: str) -> str:
    return hash_token(code)


class AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    """RFC 6749 §4.1; public clients authenticate with PKCE alone (``none``)."""

    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]

    def validate_authorization_request(self) -> str:
        # OIDC Core §3.1.2.1: redirect_uri is required; RFC 6749 §3.1: no repeated parameters.
        if not self.request.payload.redirect_uri:
            raise InvalidRequestError("Missing 'redirect_uri' in request.")
        return super().validate_authorization_request()

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        approval: Approval = request.user
        data = request.payload.data
        nonce = data.get("nonce") or None
        store = services().store
        store.put_once(
            CODE_NAMESPACE,
            _code_key(code),
            {
                "client_id": request.client.get_client_id(),
                "redirect_uri": request.payload.redirect_uri,
                "scope": request.scope,
                "user_id": str(approval.user.id),
                "sid": approval.session.sid,
                "auth_time": approval.session.auth_time,
                "auth_method": approval.session.auth_method,
                "nonce": nonce,
                "code_challenge": data.get("code_challenge"),
                "code_challenge_method": data.get("code_challenge_method"),
                "expires_at": _now() + CODE_TTL,
            },
            CODE_TTL,
        )
        if nonce:
            store.put_once(
                NONCE_NAMESPACE, _nonce_key(request.client.get_client_id(), nonce), {}, CODE_TTL
            )

    def validate_token_request(self) -> None:
        single_valued(self.request, "code", "redirect_uri", "code_verifier")
        super().validate_token_request()

    def query_authorization_code(self, code: str, client: Any) -> AuthorizationCode | None:
        if not isinstance(code, str) or not code or len(code) > 256:
            return None
        store = services().store
        key = _code_key(code)
        found = store.take_once(CODE_NAMESPACE, key)
        if found is None:
            spent = store.take_once(SPENT_NAMESPACE, key)
            if spent is not None:
                # RFC 6749 §4.1.2: revoke what the code gave out. Its tokens are in this
                # session, which nothing else can tell apart from them: end all of it.
                log.warning("authorization code reused; session ended", extra={"sid": spent["sid"]})
                services().tokens.end_session(spent["sid"])
            return None
        store.put_once(SPENT_NAMESPACE, key, {"sid": found["sid"]}, SPENT_CODE_TTL)
        if found.pop("expires_at") <= _now() or found["client_id"] != client.get_client_id():
            return None
        return AuthorizationCode(**found)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing to do: ``query_authorization_code`` took the code atomically."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> User | None:
        user = accounts.get_user(db_session(), authorization_code.user_id)
        return user if user is not None and user.is_active else None

    @hooked
    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        """Issue tokens into the code's login session; the OpenID hook adds the ID token."""
        client = self.request.client
        code: AuthorizationCode = self.request.authorization_code
        user = self.authenticate_user(code)
        if user is None:
            raise InvalidGrantError("There is no 'user' for this code.")
        self.request.user = user
        token = issue_session_tokens(
            user=user,
            client_id=client.get_client_id(),
            scope=code.scope,
            sid=code.sid,
            auth_time=code.auth_time,
            with_refresh_token=client.check_grant_type("refresh_token"),
        )
        if token is None:
            raise InvalidGrantError("The sign-in this code came from has ended.")
        observability.tokens_issued(self.GRANT_TYPE)
        return 200, token, self.TOKEN_RESPONSE_HEADER


def issue_session_tokens(
    *,
    user: User,
    client_id: str,
    scope: str,
    sid: str,
    auth_time: int,
    with_refresh_token: bool,
) -> dict[str, Any] | None:
    """A token response for ``client_id`` in the live session ``sid``; None if it has ended."""
    svc = services()
    roles = accounts.role_names(db_session(), user.id)
    refresh_token = None
    if with_refresh_token:
        now = int(time.time())
        refresh_token = new_refresh_token(sid, str(user.id))
        record = RefreshRecord(
            sid=sid,
            user_id=str(user.id),
            client_id=client_id,
            scope=scope,
            issued_at=now,
            expires_at=now + svc.tokens.refresh_token_ttl,
        )
        added = svc.store.add_refresh_token(
            sid, hash_token(refresh_token), record, svc.tokens.refresh_token_ttl
        )
        if not added:
            return None
    elif svc.store.get_session(sid) is None:
        return None
    access_token, _ = svc.tokens.codec.issue(
        subject=str(user.id),
        client_id=client_id,
        scope=scope,
        session_id=sid,
        roles=roles,
        auth_time=auth_time,
    )
    body: dict[str, Any] = {
        "access_token": access_token,
        "token_type": "Bearer",
        "expires_in": svc.tokens.codec.ttl,
        "scope": scope,
    }
    if refresh_token is not None:
        body["refresh_token"] = refresh_token
    return body


def _nonce_key(client_id: str, nonce: str) -> str:
    return hash_token(f"{client_id}\x00{nonce}")


class S256CodeChallenge(CodeChallenge):
    """PKCE for every client, S256 only (RFC 9700 §2.1.1, §4.8)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def __init__(self) -> None:
        super().__init__(required=True)

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("PKCE is required: send 'code_challenge' (S256).")
        if data.get("code_challenge_method") != "S256":
            # A missing method means "plain" (RFC 7636 §4.3), which we refuse too.
            raise InvalidRequestError("'code_challenge_method' must be 'S256'.")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("Missing 'code_verifier'.")
        super().validate_code_verifier(grant, result)


class OpenIDCode(oidc_grants.OpenIDCode):
    """OIDC Core §3.1: an ID token with the tokens when ``openid`` was granted."""

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        """A nonce already bound to a code of this client is a replay."""
        client_id = request.payload.client_id or ""
        return services().store.peek_once(NONCE_NAMESPACE, _nonce_key(client_id, nonce)) is not None

    def encode_id_token(self, token: dict[str, Any], request: OAuth2Request) -> str:
        code: AuthorizationCode = request.authorization_code
        user: User = request.user
        return id_token_issuer().issue(
            user=user,
            client_id=request.client.get_client_id(),
            scope=token["scope"],
            roles=accounts.role_names(db_session(), user.id),
            sid=code.sid,
            auth_time=code.auth_time,
            auth_method=code.auth_method,
            nonce=code.nonce,
            access_token=token["access_token"],
        )


def id_token_issuer() -> Any:
    """The app's ID token issuer (built once in ``oauth.server.init_app``)."""
    return current_app.extensions["id_tokens"]
