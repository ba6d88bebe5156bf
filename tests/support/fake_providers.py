"""Stand-in Google (OpenID Connect) and Yandex (OAuth 2.0) identity providers for tests.

Both are served over real HTTP by a werkzeug server on 127.0.0.1 in a daemon thread, so the code
under test talks to them exactly as it would talk to accounts.google.com / oauth.yandex.ru:

    with FakeProviders() as fp:
        fp.identity["google"]["email"] = "bob@gmail.com"
        fp.faults.add("id_token_wrong_nonce")
        ...  # point the app at fp.google_metadata_url / fp.yandex_*_url

Every authorization request is auto-approved as ``identity[provider]``. ``faults`` holds knob names
(see ``FAULTS``); a name applies to both providers, or prefix it ("google:token_500") for one.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import re
import secrets
import socket
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, unquote_plus, urlencode, urlsplit, urlunsplit

from flask import Flask, Response, jsonify, redirect, request
from joserfc import jwt
from joserfc.jwk import RSAKey
from werkzeug.serving import WSGIRequestHandler, make_server

GOOGLE_KID = "fake-google-key-1"
CODE_TTL = 60  # seconds an authorization code stays redeemable
FAULTS = {
    "deny": "authorize redirects back with error=access_denied (user pressed Cancel)",
    "expire_codes": "every authorization code counts as expired at the token endpoint",
    "id_token_wrong_aud": "ID token aud is another client",
    "id_token_wrong_nonce": "ID token nonce differs from the one sent",
    "id_token_bad_signature": "ID token signed by a different key with the same kid",
    "id_token_wrong_iss": "ID token iss is not the discovery issuer",
    "id_token_expired": "ID token exp is an hour in the past",
    "token_500": "token endpoint answers 500 with an HTML page",
    "token_garbage": "token endpoint answers 200 with a non-JSON body",
    "userinfo_500": "userinfo endpoints answer 500",
    "down": "every endpoint answers 503 (see also FakeProviders.dead_url())",
}
DEFAULT_IDENTITY: dict[str, dict[str, Any]] = {
    "google": {
        "sub": "109876543210987654321",
        "email": "alice@gmail.com",
        "email_verified": True,
        "name": "Alice Example",
    },
    "yandex": {
        "id": "1000034426",
        "login": "alice.example",
        "default_email": "alice@yandex.ru",
        "emails": ["alice@yandex.ru"],
        "real_name": "Alice Example",
    },
}
_PKCE_VALUE = re.compile(r"[A-Za-z0-9._~-]{43,128}")  # RFC 7636 §4.1 / §4.2


@functools.cache
def _rsa_key(label: str) -> RSAKey:
    """RSA keys are slow to generate, so one per label per test session (all share GOOGLE_KID)."""
    return RSAKey.generate_key(2048, parameters={"kid": GOOGLE_KID, "use": "sig", "alg": "RS256"})


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _html(status: int, title: str, detail: str = "") -> Response:
    """Google and Yandex show HTML pages (not JSON) for errors they cannot redirect back."""
    body = f"<!doctype html><html><head><title>{title}</title></head><body><h1>{title}</h1>"
    return Response(f"{body}<p>{detail}</p></body></html>", status, mimetype="text/html")


def _oauth_error(error: str, description: str, status: int = 400, **headers: str) -> Response:
    """RFC 6749 §5.2 error response: JSON body, 400 (401 for invalid_client), no caching."""
    resp = jsonify(error=error, error_description=description)
    resp.status_code = status
    resp.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache", **headers})
    return resp


def _with_query(url: str, params: dict[str, str | None]) -> str:
    """Add params to url's query, keeping any query it already had (RFC 6749 §3.1.2)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query += [(k, v) for k, v in params.items() if v is not None]
    return urlunsplit(parts._replace(query=urlencode(query)))


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:  # no access log on stderr
        pass


class FakeProviders:
    """Google- and Yandex-like providers served by a werkzeug server on 127.0.0.1:<free port>."""

    def __init__(self) -> None:
        self.clients: dict[str, tuple[str, str]] = {
            "google": ("google-client-id", "google-secret"),
            "yandex": ("yandex-client-id", "yandex-secret"),
        }
        self.identity: dict[str, dict[str, Any]] = copy.deepcopy(DEFAULT_IDENTITY)
        self.faults: set[str] = set()
        self.requests_log: list[dict[str, Any]] = []
        self.code_ttl = CODE_TTL
        self._codes: dict[tuple[str, str], dict[str, Any]] = {}
        self._redeemed: dict[tuple[str, str], str] = {}  # code -> access token it produced
        self._tokens: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._key, self._rogue_key = _rsa_key("google"), _rsa_key("rogue")
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self.app = self._build_app()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeProviders:
        if self._server is None:
            self._server = make_server(
                "127.0.0.1", 0, self.app, threaded=True, request_handler=_QuietHandler
            )
            serve = functools.partial(self._server.serve_forever, poll_interval=0.05)
            self._thread = threading.Thread(target=serve, name="fake-providers", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            if self._thread is not None:
                self._thread.join(5)
            self._server = self._thread = None

    def __enter__(self) -> FakeProviders:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @staticmethod
    def dead_url() -> str:
        """Base URL of a loopback port nothing listens on: connecting is refused."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        return f"http://127.0.0.1:{port}"

    # -- URLs --------------------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("FakeProviders is not started")
        return f"http://127.0.0.1:{self._server.port}"

    @property
    def google_issuer(self) -> str:
        return f"{self.base_url}/google"

    @property
    def google_metadata_url(self) -> str:
        return f"{self.google_issuer}/.well-known/openid-configuration"

    @property
    def yandex_authorize_url(self) -> str:
        return f"{self.base_url}/yandex/authorize"

    @property
    def yandex_token_url(self) -> str:
        return f"{self.base_url}/yandex/token"

    @property
    def yandex_userinfo_url(self) -> str:
        return f"{self.base_url}/yandex/info"

    # -- state -------------------------------------------------------------------------------
    def fault(self, provider: str, name: str) -> bool:
        return name in self.faults or f"{provider}:{name}" in self.faults

    def issue_code(
        self,
        provider: str,
        *,
        redirect_uri: str,
        client_id: str | None = None,
        code_challenge: str | None = None,
        code_challenge_method: str | None = None,
        nonce: str | None = None,
        identity: dict[str, Any] | None = None,
        scope: str | None = None,
    ) -> str:
        """A code as if the user had approved in the browser (what /authorize hands out).

        Google's codes look like "4/0A..." and so need URL-encoding; a challenge without a
        method means "plain" (RFC 7636 §4.3).
        """
        code = ("4/0A" if provider == "google" else "") + secrets.token_urlsafe(24)
        if code_challenge and not code_challenge_method:
            code_challenge_method = "plain"
        if scope is None:
            scope = "openid email profile" if provider == "google" else ""
        if identity is None:
            identity = self.identity[provider]
        with self._lock:
            self._codes[(provider, code)] = {
                "client_id": client_id or self.clients[provider][0],
                "redirect_uri": redirect_uri,
                "nonce": nonce,
                "code_challenge": code_challenge or None,
                "code_challenge_method": code_challenge_method if code_challenge else None,
                "identity": copy.deepcopy(identity),
                "scope": scope,
                "issued_at": time.time(),
            }
        return code

    # -- HTTP --------------------------------------------------------------------------------
    def _build_app(self) -> Flask:
        app = Flask(__name__)

        @app.before_request
        def log_and_maybe_down() -> Response | None:
            provider = request.path.strip("/").split("/")[0]
            self.requests_log.append(
                {
                    "provider": provider,
                    "method": request.method,
                    "path": request.path,
                    "args": request.args.to_dict(),
                    "form": request.form.to_dict(),
                    "headers": dict(request.headers),
                }
            )
            if self.fault(provider, "down"):
                return _html(503, "503 Service Unavailable")
            return None

        any_provider = "<any(google, yandex):provider>"
        app.add_url_rule("/google/.well-known/openid-configuration", view_func=self._discovery)
        app.add_url_rule("/google/jwks", view_func=self._jwks)
        app.add_url_rule(f"/{any_provider}/authorize", view_func=self._authorize)
        app.add_url_rule(f"/{any_provider}/token", view_func=self._token, methods=["POST"])
        app.add_url_rule("/google/userinfo", view_func=self._google_userinfo)
        app.add_url_rule("/yandex/info", view_func=self._yandex_info)
        return app

    def _discovery(self) -> Response:
        """Mirrors https://accounts.google.com/.well-known/openid-configuration (OIDC Discovery)."""
        base = self.google_issuer
        return jsonify(
            {
                "issuer": base,
                "authorization_endpoint": f"{base}/authorize",
                "token_endpoint": f"{base}/token",
                "userinfo_endpoint": f"{base}/userinfo",
                "jwks_uri": f"{base}/jwks",
                "response_types_supported": ["code"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "scopes_supported": ["openid", "email", "profile"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "client_secret_basic",
                ],
                "code_challenge_methods_supported": ["plain", "S256"],
                "grant_types_supported": ["authorization_code"],
                "claims_supported": [
                    "aud",
                    "email",
                    "email_verified",
                    "exp",
                    "iat",
                    "iss",
                    "name",
                    "sub",
                    "nonce",
                    "at_hash",
                    "azp",
                ],
            }
        )

    def _jwks(self) -> Response:
        """Mirrors https://www.googleapis.com/oauth2/v3/certs: public RSA keys with kid/alg/use."""
        return jsonify({"keys": [self._key.as_dict(private=False)]})

    def _authorize(self, provider: str) -> Response:
        """Authorization endpoint (RFC 6749 §4.1.1, RFC 7636 §4.3), auto-approving the user.

        As Google/Yandex do, an unknown client or missing redirect_uri gets an error page; any
        other problem is redirected back with error=... and the state (RFC 6749 §4.1.2.1).
        """
        q = request.args
        if q.get("client_id") != self.clients[provider][0]:
            return _html(401, "Error 401: invalid_client", "The OAuth client was not found.")
        redirect_uri = q.get("redirect_uri")
        if not redirect_uri:
            return _html(
                400, "Error 400: invalid_request", "Missing required parameter: redirect_uri"
            )

        def back(**params: str | None) -> Response:
            return redirect(_with_query(redirect_uri, {**params, "state": q.get("state")}), 302)

        if q.get("response_type") != "code":
            return back(error="unsupported_response_type")
        if provider == "google" and not q.get("scope"):
            return back(
                error="invalid_request", error_description="Missing required parameter: scope"
            )
        challenge, method = q.get("code_challenge"), q.get("code_challenge_method")
        if challenge is not None and not _PKCE_VALUE.fullmatch(challenge):
            return back(error="invalid_request", error_description="Invalid code_challenge.")
        if method is not None and (challenge is None or method not in ("plain", "S256")):
            return back(error="invalid_request", error_description="Invalid code_challenge_method.")
        if self.fault(provider, "deny"):
            return back(error="access_denied")
        code = self.issue_code(
            provider,
            redirect_uri=redirect_uri,
            client_id=q["client_id"],
            code_challenge=challenge,
            code_challenge_method=method,
            nonce=q.get("nonce") if provider == "google" else None,
            scope=q.get("scope", ""),
        )
        if provider == "google":  # Google also echoes scope, authuser and prompt
            return back(code=code, scope=q["scope"], authuser="0", prompt="consent")
        return back(code=code)

    def _client_id_or_error(self, provider: str) -> tuple[str | None, Response | None]:
        """Client authentication, RFC 6749 §2.3.1: client_secret_basic (form-urlencoded id and
        secret inside HTTP Basic) or client_secret_post (body parameters), but not both."""
        form, header = request.form, request.headers.get("Authorization", "")
        client_id, secret = form.get("client_id"), form.get("client_secret")
        if header[:6].lower() == "basic ":
            if secret is not None:
                return None, _oauth_error("invalid_request", "Multiple client authentications.")
            try:
                raw = base64.b64decode(header[6:].strip(), validate=True).decode()
            except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
                raw = ""
            basic_id, _, secret = (unquote_plus(part) for part in raw.partition(":"))
            if client_id not in (None, basic_id):
                return None, _oauth_error("invalid_request", "client_id mismatch.")
            client_id = basic_id
        if (client_id, secret) != self.clients[provider]:
            return None, _oauth_error(
                "invalid_client",
                "Unauthorized",
                401,
                **{"WWW-Authenticate": f'Basic realm="{provider}"'},
            )
        return client_id, None

    def _token(self, provider: str) -> Response:
        """Token endpoint: authorization_code grant (RFC 6749 §4.1.3) with PKCE (RFC 7636 §4.6).

        Codes are single use (a second use also revokes the first token, RFC 6749 §4.1.2), bound
        to client_id and redirect_uri, and expire after ``code_ttl`` seconds.
        """
        if self.fault(provider, "token_500"):
            return _html(500, "500. That's an error.", "There was an error. Please try later.")
        if self.fault(provider, "token_garbage"):
            return Response("<html><body>Sorry, try again</body></html>", 200, mimetype="text/html")
        client_id, error = self._client_id_or_error(provider)
        if error is not None:
            return error
        form = request.form
        if form.get("grant_type") != "authorization_code":
            return _oauth_error("unsupported_grant_type", "Invalid grant_type.")
        if not form.get("code"):
            return _oauth_error("invalid_request", "Missing required parameter: code")
        key = (provider, form["code"])
        with self._lock:
            grant = self._codes.pop(key, None)
            if grant is None:
                self._tokens.pop(self._redeemed.get(key, ""), None)
                return _oauth_error("invalid_grant", "Malformed auth code or already redeemed.")
            self._redeemed[key] = ""
        expired = time.time() - grant["issued_at"] > self.code_ttl
        if expired or self.fault(provider, "expire_codes"):
            return _oauth_error("invalid_grant", "Code expired.")
        if grant["client_id"] != client_id:
            return _oauth_error("invalid_grant", "Code was issued to another client.")
        if grant["redirect_uri"] != form.get("redirect_uri"):
            return _oauth_error("invalid_grant", "redirect_uri does not match.")
        pkce_problem = self._pkce_problem(grant, form.get("code_verifier"))
        if pkce_problem:
            return _oauth_error("invalid_grant", pkce_problem)

        prefix = "ya29." if provider == "google" else "y0_"
        access_token = prefix + secrets.token_urlsafe(32)
        self._tokens[access_token] = {"provider": provider, "client_id": client_id, **grant}
        self._redeemed[key] = access_token
        if provider == "google":
            body = {
                "access_token": access_token,
                "token_type": "Bearer",
                "expires_in": 3599,
                "scope": grant["scope"],
            }
            if "openid" in grant["scope"].split():
                body["id_token"] = self._id_token(grant, access_token)
        else:  # https://yandex.ru/dev/id/doc/en/codes/code-url#token-response
            body = {
                "access_token": access_token,
                "token_type": "bearer",
                "expires_in": 31536000,
                "refresh_token": "1:" + secrets.token_urlsafe(32),
            }
        resp = jsonify(body)
        resp.headers.update({"Cache-Control": "no-store", "Pragma": "no-cache"})
        return resp

    @staticmethod
    def _pkce_problem(grant: dict[str, Any], verifier: str | None) -> str | None:
        """RFC 7636 §4.6, with Google's error descriptions."""
        challenge = grant["code_challenge"]
        if challenge is None:
            return "code_verifier or verifier is not needed." if verifier is not None else None
        if verifier is None:
            return "Missing code verifier."
        if grant["code_challenge_method"] == "S256":
            verifier = _b64url(hashlib.sha256(verifier.encode()).digest())
        if not _PKCE_VALUE.fullmatch(verifier) or not secrets.compare_digest(verifier, challenge):
            return "Invalid code verifier."
        return None

    def _id_token(self, grant: dict[str, Any], access_token: str) -> str:
        """Google's ID token (OIDC Core §2, §3.1.3.6): RS256 with kid, at_hash, azp."""
        now = int(time.time())
        digest = hashlib.sha256(access_token.encode()).digest()
        claims = {
            **grant["identity"],
            "iss": self.google_issuer,
            "azp": grant["client_id"],
            "aud": grant["client_id"],
            "at_hash": _b64url(digest[:16]),
            "iat": now,
            "exp": now + 3600,
        }
        if grant["nonce"] is not None:
            claims["nonce"] = grant["nonce"]
        if self.fault("google", "id_token_wrong_aud"):
            claims["aud"] = claims["azp"] = "someone-else.apps.googleusercontent.com"
        if self.fault("google", "id_token_wrong_nonce"):
            claims["nonce"] = f"not-{grant['nonce']}"
        if self.fault("google", "id_token_wrong_iss"):
            claims["iss"] = "https://accounts.google.com.evil.example"
        if self.fault("google", "id_token_expired"):
            claims["iat"], claims["exp"] = now - 7200, now - 3600
        key = self._rogue_key if self.fault("google", "id_token_bad_signature") else self._key
        return jwt.encode({"alg": "RS256", "kid": GOOGLE_KID, "typ": "JWT"}, claims, key)

    def _token_grant(self, provider: str, schemes: tuple[str, ...]) -> dict[str, Any] | None:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        grant = self._tokens.get(token.strip())
        if scheme.lower() in schemes and grant and grant["provider"] == provider:
            return grant
        return None

    def _google_userinfo(self) -> Response:
        """Mirrors https://openidconnect.googleapis.com/v1/userinfo (Bearer token, RFC 6750)."""
        if self.fault("google", "userinfo_500"):
            return _html(500, "500. That's an error.")
        grant = self._token_grant("google", ("bearer",))
        if grant is None:
            return _oauth_error(
                "invalid_token",
                "Invalid Credentials",
                401,
                **{"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
        return jsonify(grant["identity"])

    def _yandex_info(self) -> Response:
        """Mirrors https://login.yandex.ru/info?format=json: "Authorization: OAuth <token>"
        (Bearer is accepted too); psuid is Yandex's per-application pseudonymous id."""
        if self.fault("yandex", "userinfo_500"):
            return _html(500, "500 Internal Server Error")
        if request.args.get("format", "json") != "json":
            return Response("unsupported format", 400, mimetype="text/plain")
        grant = self._token_grant("yandex", ("oauth", "bearer"))
        if grant is None:
            return Response("401 Unauthorized", 401, mimetype="text/plain")
        ident = grant["identity"]
        seed = f"{ident.get('id')}:{grant['client_id']}".encode()
        psuid = "1." + _b64url(hashlib.sha256(seed).digest()[:24])
        return jsonify({**ident, "client_id": grant["client_id"], "psuid": psuid})
