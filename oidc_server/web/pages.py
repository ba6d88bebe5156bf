"""The browser-facing OpenID Provider: authorize, sign in, consent, sign out, activate a TV.

Server-rendered pages that work without JavaScript. The flow of one authorization:

1. ``GET /oauth/authorize`` validates the request with Authlib. An unknown client or a
   redirect URI that is not registered is shown on our error page, never redirected to.
   Other errors go back to the client's redirect URI with ``state`` and ``iss`` (RFC 9207).
2. The request's parameters travel on as a signed, timestamped value (``pending``), so
   nothing is stored until a person acts and any worker can continue the flow.
3. Without a browser session (or with ``prompt=login`` / a ``max_age`` the session is older
   than) the person is sent to ``/login``; after signing in, back to
   ``/oauth/authorize/continue``. A sign-in newer than the pending request satisfies both.
4. Third-party clients need consent (remembered per client and scopes); first-party skip it.
5. The code goes to the redirect URI with ``state`` and ``iss``.

Every form carries a CSRF token (an HMAC of a random per-browser cookie), every page forbids
framing, and nothing here is cached.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
from typing import Any
from urllib.parse import urlencode

from authlib.common.urls import add_params_to_uri
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749.errors import (
    AccessDeniedError,
    InvalidClientError,
    InvalidRequestError,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc8628 import DEVICE_CODE_GRANT_TYPE
from authlib.oidc.core.errors import ConsentRequiredError, LoginRequiredError
from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from werkzeug.datastructures import MultiDict

from .. import accounts, consent, observability
from ..clients import RegisteredClient
from ..context import client_ip, db_session, services, user_agent
from ..credentials import TooManyAttempts, sign_in_with_password
from ..history import record_then_start
from ..models import User
from ..oauth.authorization_code import Approval, AuthorizationRequest
from ..oauth.browser_sessions import BrowserSessions
from ..oauth.device import (
    check_device_scope,
    device_flow,
    display_user_code,
    normalise_user_code,
)
from ..oauth.grants import single_valued
from ..oauth.server import authorization_server
from ..ratelimit import _setting, limiter, login_backoff, login_per_ip
from ..social.providers import enabled_providers
from ..tokens.store import SessionRecord

log = logging.getLogger(__name__)

bp = Blueprint("pages", __name__)

SESSION_COOKIE = "op_session"
CSRF_COOKIE = "op_csrf"
#: Seconds a person has to sign in and consent before the pending request expires.
PENDING_TTL = 600
#: What each scope means to a person, for the consent page.
SCOPE_DESCRIPTIONS = {
    "openid": "Know who you are (your account id)",
    "profile": "See your login name and roles",
    "email": "See your email address",
    "roles:read": "Read roles",
    "roles:write": "Change roles",
}
#: Per IP: TVs ask for codes rarely; people type a code a few times at most.
DEVICE_AUTHORIZATION_LIMIT = "30 per minute"
ACTIVATE_LIMIT = "10 per minute"
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
}


class PageError(Exception):
    """A problem shown to the person on our own error page (never redirected anywhere)."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


# Browser state -------------------------------------------------------------------------------
def browser_sessions() -> BrowserSessions:
    return current_app.extensions["browser_sessions"]


def _secure_cookies() -> bool:
    return services().settings.oidc_issuer.startswith("https://")


def current_session() -> tuple[SessionRecord, User] | None:
    """The browser's live session and its active user, if it is signed in."""
    if "op_session" not in g:
        found = None
        record = browser_sessions().find(request.cookies.get(SESSION_COOKIE))
        if record is not None:
            user = accounts.get_user(db_session(), record.user_id)
            if user is not None and user.is_active:
                found = (record, user)
        g.op_session = found
    return g.op_session


def _csrf_secret() -> str:
    """The browser's CSRF cookie value, made (and set on the response) on first use."""
    value = request.cookies.get(CSRF_COOKIE) or g.get("new_csrf_cookie")
    if not value:
        value = secrets.token_urlsafe(32)
        g.new_csrf_cookie = value
    return value


def csrf_token() -> str:
    """The token forms carry: bound to this browser's cookie, useless anywhere else."""
    key = services().settings.secret_key.encode()
    return hmac.new(key, b"csrf:" + _csrf_secret().encode(), hashlib.sha256).hexdigest()


def check_csrf() -> None:
    cookie = request.cookies.get(CSRF_COOKIE)
    sent = request.form.get("csrf_token", "")
    if not cookie or not sent or not hmac.compare_digest(sent, csrf_token()):
        raise PageError(
            400,
            "This form has expired",
            "The form was not sent from this site or its security token is missing. "
            "Go back, reload the page and try again.",
        )


def _pending_serializer() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(services().settings.secret_key, salt="oidc-pending-authorization")


def _pack_pending(params: MultiDict[str, str]) -> str:
    return str(_pending_serializer().dumps({k: params[k] for k in params}))


def _unpack_pending(value: str | None) -> tuple[MultiDict[str, str], float]:
    """The parameters of a pending request and when it was first made."""
    if not value or len(value) > 8192:
        raise PageError(400, "Sign-in request missing", "Go back to the app and start again.")
    try:
        data, signed_at = _pending_serializer().loads(
            value, max_age=PENDING_TTL, return_timestamp=True
        )
    except SignatureExpired:
        raise PageError(
            400, "This sign-in took too long", "Go back to the app and start again."
        ) from None
    except BadSignature:
        raise PageError(
            400, "Sign-in request invalid", "Go back to the app and start again."
        ) from None
    return MultiDict(data), signed_at.timestamp()


def _safe_next(value: str | None) -> str:
    """A local path to return to after signing in; anything else falls back to the home page."""
    if (
        value
        and value.startswith("/")
        and not value.startswith("//")
        and "\\" not in value
        and len(value) < 8192
        and value.split("?", 1)[0] in ("/oauth/authorize/continue", "/activate", "/signed-in")
    ):
        return value
    return "/signed-in"


# Responses --------------------------------------------------------------------------------
def render(template: str, status: int = 200, **context: Any) -> Response:
    response = make_response(render_template(template, csrf_token=csrf_token(), **context), status)
    return response


def error_page(status: int, title: str, message: str) -> Response:
    return render("error.html", status, title=title, message=message)


def _to_client(redirect_uri: str, params: list[tuple[str, str]]) -> Response:
    """Back to the client, always with our ``iss`` (RFC 9207 §2)."""
    params = [*params, ("iss", services().settings.oidc_issuer)]
    return redirect(add_params_to_uri(redirect_uri, params), 302)


def _oauth_error(error: OAuth2Error, state: str | None) -> Response:
    if error.redirect_uri and not isinstance(error, InvalidClientError):
        body = [(k, v) for k, v in error.get_body() if k != "state"]
        if state:
            body.append(("state", state))
        return _to_client(error.redirect_uri, body)
    # RFC 6749 §4.1.2.1: no valid client and redirect URI, no redirect (no open redirector).
    return error_page(400, "This app's sign-in request is invalid", _describe(error))


def _describe(error: OAuth2Error) -> str:
    if isinstance(error, InvalidClientError):
        return "The app is not registered here. Contact the app's developer."
    description = error.description or error.error or "invalid request"
    return f"{description} Contact the app's developer."


# The authorization endpoint ---------------------------------------------------------------
def _authorization_request(params: MultiDict[str, str]) -> AuthorizationRequest:
    return AuthorizationRequest(services().settings.oidc_issuer + "/oauth/authorize", params)


def _max_age(params: MultiDict[str, str]) -> int | None:
    raw = params.get("max_age")
    if raw is None or raw == "":
        return None
    if not raw.isdigit() or len(raw) > 10:
        return -1
    return int(raw)


def _authorize(params: MultiDict[str, str], requested_at: float, pending: str) -> Response:
    """Decide one authorization request: sign-in, consent, or a code for the client."""
    signed_in = current_session()
    server = authorization_server()
    state = params.get("state")
    try:
        grant = server.get_consent_grant(
            request=_authorization_request(params), end_user=signed_in[1] if signed_in else None
        )
    except OAuth2Error as error:
        return _oauth_error(error, state)
    client: RegisteredClient = grant.client
    redirect_uri = grant.redirect_uri
    prompts = set(params.get("prompt", "").split())
    max_age = _max_age(params)
    if max_age == -1 or not prompts <= {"none", "login", "consent", "select_account"}:
        return _to_client(
            redirect_uri,
            _with_state(
                [("error", "invalid_request"), ("error_description", "Invalid prompt or max_age.")],
                state,
            ),
        )
    now = browser_sessions().clock()
    login_needed = signed_in is None
    if signed_in is not None:
        auth_time = signed_in[0].auth_time
        fresh = auth_time >= int(requested_at)  # signed in since this request was made
        too_old = max_age is not None and now - auth_time > max_age
        login_needed = not fresh and ("login" in prompts or too_old)
    if login_needed:
        if "none" in prompts:
            return _oauth_error(LoginRequiredError(redirect_uri=redirect_uri), state)
        query = {"next": "/oauth/authorize/continue?" + urlencode({"pending": pending})}
        if params.get("login_hint"):
            query["login_hint"] = params["login_hint"][:320]
        return redirect(url_for("pages.login") + "?" + urlencode(query), 302)
    assert signed_in is not None
    record, user = signed_in
    scopes = grant.request.scope.split()
    if not client.is_first_party and (
        "consent" in prompts
        or not consent.has_consent(db_session(), user.id, client.client_id, scopes)
    ):
        if "none" in prompts:
            return _oauth_error(ConsentRequiredError(redirect_uri=redirect_uri), state)
        return render(
            "consent.html",
            client=client,
            user=user,
            scopes=[(s, SCOPE_DESCRIPTIONS.get(s, s)) for s in scopes],
            pending=pending,
        )
    return _issue_code(grant, user, record)


def _with_state(params: list[tuple[str, str]], state: str | None) -> list[tuple[str, str]]:
    return [*params, ("state", state)] if state else params


def _issue_code(grant: Any, user: User, record: SessionRecord) -> Response:
    try:
        _, _, headers = grant.create_authorization_response(
            grant.redirect_uri, Approval(user, record)
        )
    except OAuth2Error as error:
        return _oauth_error(error, grant.request.payload.state)
    location = dict(headers)["Location"]
    return _to_client(location, [])


@bp.route("/oauth/authorize", methods=["GET", "POST"])
def authorize() -> Response:
    """OIDC Core §3.1.2.1: GET and POST; the parameters of a POST are its form."""
    params = MultiDict(request.form if request.method == "POST" else request.args)
    # RFC 6749 §3.1: a repeated parameter is an error; checked before the values are packed.
    for name in (
        "response_type",
        "client_id",
        "redirect_uri",
        "scope",
        "state",
        "nonce",
        "code_challenge",
        "code_challenge_method",
        "prompt",
        "max_age",
        "login_hint",
    ):
        if len(params.getlist(name)) > 1:
            return error_page(
                400,
                "This app's sign-in request is invalid",
                f"The parameter {name} is repeated. Contact the app's developer.",
            )
    if len(params) > 40 or any(len(v) > 4096 for v in params.values()):
        return error_page(400, "This app's sign-in request is invalid", "The request is too large.")
    return _authorize(params, browser_sessions().clock(), _pack_pending(params))


@bp.get("/oauth/authorize/continue")
def authorize_continue() -> Response:
    """Pick a pending request up again after the person signed in."""
    pending = request.args.get("pending")
    params, requested_at = _unpack_pending(pending)
    assert pending is not None
    return _authorize(params, requested_at, pending)


@bp.post("/consent")
def consent_decision() -> Response:
    """The person's answer on the consent page."""
    check_csrf()
    pending = request.form.get("pending")
    params, requested_at = _unpack_pending(pending)
    assert pending is not None
    signed_in = current_session()
    if signed_in is None:
        return _authorize(params, requested_at, pending)  # sends them to sign in first
    record, user = signed_in
    try:
        grant = authorization_server().get_consent_grant(
            request=_authorization_request(params), end_user=user
        )
    except OAuth2Error as error:
        return _oauth_error(error, params.get("state"))
    if request.form.get("decision") != "allow":
        return _oauth_error(
            AccessDeniedError(redirect_uri=grant.redirect_uri), grant.request.payload.state
        )
    consent.remember_consent(
        db_session(), user.id, grant.client.client_id, grant.request.scope.split()
    )
    db_session().commit()
    return _issue_code(grant, user, record)


# Signing in -------------------------------------------------------------------------------
def _start_browser_session(
    user: User, method: str, client_id: str, sid: str
) -> tuple[str, SessionRecord]:
    login = browser_sessions().start(
        user_id=str(user.id),
        auth_method=method,
        client_id=client_id,
        user_agent=user_agent(),
        ip=client_ip(),
        sid=sid,
    )
    return login.cookie, login.session


def _client_of_next(next_path: str) -> str:
    """The client a sign-in is for, read from the pending request it returns to."""
    if not next_path.startswith("/oauth/authorize/continue?"):
        return ""
    from urllib.parse import parse_qs

    pending = parse_qs(next_path.split("?", 1)[1]).get("pending", [""])[0]
    try:
        params, _ = _unpack_pending(pending)
    except PageError:
        return ""
    return params.get("client_id", "")[:64]


def signed_in_response(cookie: str, next_path: str) -> Response:
    response = redirect(next_path, 303)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        httponly=True,
        samesite="Lax",
        secure=_secure_cookies(),
        path="/",
        max_age=services().settings.refresh_token_ttl,
    )
    return response


def _login_form(status: int = 200, **context: Any) -> Response:
    providers = sorted(enabled_providers(services().settings))
    next_path = _safe_next(context.pop("next_path", None) or request.values.get("next"))
    return render(
        "login.html",
        status,
        next_path=next_path,
        providers=providers,
        login_hint=context.pop("login_hint", request.args.get("login_hint", "")),
        **context,
    )


@bp.get("/login")
def login() -> Response:
    return _login_form()


def _form_login_key() -> str:
    """The account a form sign-in is for, as the API's per-account limit keys it."""
    from ..login_backoff import account_key

    try:
        return account_key(request.form.get("email", "")[:320] or "no-login")
    except Exception:  # flask-limiter takes any exception for a storage outage
        return "unreadable-login"


login_per_account = limiter.shared_limit(
    _setting("ratelimit_login_per_account"),
    scope="login-account",
    key_func=_form_login_key,
    deduct_when=lambda response: response.status_code == 401,
)


@bp.post("/login")
@login_per_ip
@login_per_account
def login_submit() -> Response:
    """Password sign-in: the checks, backoff and history of /api/v1/auth/login."""
    check_csrf()
    email = request.form.get("email", "").strip()
    password = request.form.get("password", "")
    next_path = _safe_next(request.form.get("next"))
    if not email or not password:
        return _login_form(
            400, next_path=next_path, login_hint=email, error="Enter your email and password."
        )
    session = db_session()
    try:
        user = sign_in_with_password(
            session,
            services().hasher,
            login_backoff(),
            email,
            password,
            user_agent=user_agent(),
            ip=client_ip(),
        )
    except TooManyAttempts as throttled:
        observability.rate_limited()
        response = _login_form(
            429,
            next_path=next_path,
            login_hint=email,
            error=f"Too many failed attempts. Try again in {throttled.retry_after} seconds.",
        )
        response.headers["Retry-After"] = str(throttled.retry_after)
        return response
    if user is None:
        observability.login_failed()
        return _login_form(
            401, next_path=next_path, login_hint=email, error="The email or password is not right."
        )
    client_id = _client_of_next(next_path)
    # History first, then the session (see record_then_start); the commit also keeps a
    # password rehash done while authenticating.
    cookie, _ = record_then_start(
        session,
        lambda sid: _start_browser_session(user, "password", client_id, sid),
        user_id=user.id,
        method="password",
        user_agent=user_agent(),
        ip=client_ip(),
    )
    return signed_in_response(cookie, next_path)


@bp.get("/signed-in")
def signed_in() -> Response:
    """Where a sign-in that was for no app ends up."""
    found = current_session()
    if found is None:
        return redirect(url_for("pages.login"), 302)
    return render("signed_in.html", user=found[1])


# Google and Yandex -----------------------------------------------------------------------
SOCIAL_STATE_NAMESPACE = "op_social_state"
SOCIAL_CALLBACK = "/login/social/{provider}/callback"


class _BrowserSessionStarter:
    """What ``social.accounts.sign_in`` needs of a token service: here, a browser session."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.cookie = ""

    def start_session(
        self, login: Any, sid: str | None = None
    ) -> tuple[dict[str, Any], SessionRecord]:
        started = browser_sessions().start(
            user_id=login.user_id,
            auth_method=login.auth_method,
            client_id=self.client_id,
            user_agent=login.user_agent,
            ip=login.ip,
            sid=sid,
        )
        self.cookie = started.cookie
        return {}, started.session

    def end_session(self, sid: str) -> None:
        browser_sessions().end(sid)


def _provider(name: str) -> Any:
    from ..social import SocialError, flows

    try:
        return flows().client(name)
    except SocialError:
        raise PageError(404, "Unknown sign-in provider", "Choose another way to sign in.") from None


@bp.get("/login/social/<provider>")
def social_start(provider: str) -> Response:
    """Send the browser to Google or Yandex; state, nonce and PKCE verifier stay here."""
    from ..social.client import ProviderError

    client = _provider(provider)
    next_path = _safe_next(request.args.get("next"))
    redirect_uri = services().settings.oidc_issuer + SOCIAL_CALLBACK.format(provider=provider)
    try:
        started = client.authorization_request(redirect_uri)
    except ProviderError:
        return error_page(
            502, "Sign-in unavailable", f"{client.spec.display_name} did not answer. Try again."
        )
    services().store.put_once(
        SOCIAL_STATE_NAMESPACE,
        started.state,
        {
            "provider": provider,
            "redirect_uri": redirect_uri,
            "nonce": started.nonce,
            "code_verifier": started.code_verifier,
            "next": next_path,
        },
        services().settings.social_state_ttl,
    )
    return redirect(started.url, 302)


@bp.get("/login/social/<provider>/callback")
def social_callback(provider: str) -> Response:
    """The provider returns here; the person is signed in and sent back to what they were doing."""
    from ..social import SocialError
    from ..social import accounts as social_accounts
    from ..social.client import CodeRejected, IdTokenInvalid, ProviderError

    client = _provider(provider)
    state = request.args.get("state", "")[:512]
    saved = services().store.take_once(SOCIAL_STATE_NAMESPACE, state) if state else None
    if saved is None or saved.get("provider") != provider:
        return error_page(
            400, "Sign-in expired", "The sign-in was not started here or took too long. Try again."
        )
    next_path = _safe_next(saved.get("next"))
    if request.args.get("error"):
        return _login_form(
            400,
            next_path=next_path,
            error=f"The sign-in with {client.spec.display_name} was cancelled.",
        )
    code = request.args.get("code", "")
    if not code or len(code) > 4096:
        return error_page(400, "Sign-in failed", "The provider sent no authorization code.")
    try:
        identity = client.identity(
            code=code,
            redirect_uri=saved["redirect_uri"],
            code_verifier=saved.get("code_verifier"),
            nonce=saved.get("nonce"),
        )
    except (CodeRejected, IdTokenInvalid):
        return error_page(
            400,
            "Sign-in failed",
            f"{client.spec.display_name} could not confirm the sign-in. Try again.",
        )
    except ProviderError:
        return error_page(
            502, "Sign-in unavailable", f"{client.spec.display_name} did not answer. Try again."
        )
    starter = _BrowserSessionStarter(_client_of_next(next_path))
    origin = social_accounts.SignInOrigin(
        client_id=starter.client_id, user_agent=user_agent(), ip=client_ip()
    )
    try:
        social_accounts.sign_in(db_session(), starter, provider, identity, origin)  # type: ignore[arg-type]
    except SocialError as exc:
        return _login_form(
            409 if exc.code.startswith("account_exists") else 403,
            next_path=next_path,
            error=exc.message,
        )
    return signed_in_response(starter.cookie, next_path)


# RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0) ------------------------------
LOGOUT_PARAMS = (
    "id_token_hint",
    "post_logout_redirect_uri",
    "state",
    "client_id",
    "logout_hint",
    "ui_locales",
)


def _logout_target(params: MultiDict[str, str]) -> tuple[dict[str, Any] | None, str | None]:
    """The verified hint and the redirect URI to return to, or a ``PageError``."""
    hint = None
    if params.get("id_token_hint"):
        hint = current_app.extensions["id_tokens"].read_hint(params["id_token_hint"])
        if hint is None:
            raise PageError(
                400, "Sign-out request invalid", "The app sent an ID token we did not issue."
            )
    client_id = params.get("client_id") or (hint or {}).get("aud")
    if hint is not None and params.get("client_id") and params["client_id"] != hint.get("aud"):
        raise PageError(400, "Sign-out request invalid", "client_id does not match the ID token.")
    uri = params.get("post_logout_redirect_uri")
    if not uri:
        return hint, None
    client = authorization_server().query_client(client_id) if client_id else None
    if client is None or not client.check_post_logout_redirect_uri(uri):
        # §3: only registered URIs, or this endpoint would be an open redirector.
        raise PageError(
            400,
            "Sign-out request invalid",
            "The app asked to return to an address it has not registered.",
        )
    return hint, uri


def _signed_out(uri: str | None, state: str | None) -> Response:
    if uri:
        response = redirect(add_params_to_uri(uri, [("state", state)] if state else []), 302)
    else:
        response = render("signed_out.html")
    response.delete_cookie(
        SESSION_COOKIE, path="/", httponly=True, samesite="Lax", secure=_secure_cookies()
    )
    return response


@bp.route("/logout", methods=["GET", "POST"])
def logout() -> Response:
    """end_session_endpoint: a valid id_token_hint signs out at once, else the person confirms."""
    params = MultiDict(
        {k: request.values[k][:8192] for k in LOGOUT_PARAMS if request.values.get(k)}
    )
    hint, uri = _logout_target(params)
    found = current_session()
    confirmed = request.method == "POST" and request.form.get("confirm") == "yes"
    if confirmed:
        check_csrf()
    hint_matches = hint is not None and (found is None or str(found[1].id) == hint.get("sub"))
    if not confirmed and not hint_matches:
        if found is None and hint is None:
            return _signed_out(uri, params.get("state"))  # nothing to end
        return render("logout.html", params=list(params.items(multi=True)))
    if hint is not None and isinstance(hint.get("sid"), str):
        record = services().store.get_session(hint["sid"])
        if record is not None and record.user_id == hint.get("sub"):
            browser_sessions().end(hint["sid"])
    if found is not None:
        browser_sessions().end(found[0].sid)
    return _signed_out(uri, params.get("state"))


# Device authorization (RFC 8628) -------------------------------------------------------------
def _json_error(status: int, error: OAuth2Error) -> Response:
    body = {"error": error.error}
    if error.description:
        body["error_description"] = error.description
    response = jsonify(body)
    response.status_code = status
    return response


@bp.post("/oauth/device_authorization")
@limiter.limit(DEVICE_AUTHORIZATION_LIMIT)
def device_authorization() -> Response:
    """RFC 8628 §3.1-3.2: a device code and user code for a TV app."""
    server = authorization_server()
    oauth_request = server.create_oauth2_request(None)
    try:
        single_valued(oauth_request, "scope")
        client = server.authenticate_client(
            oauth_request,
            ["client_secret_basic", "client_secret_post", "none"],
            endpoint="device_authorization",
        )
    except InvalidRequestError as error:  # a parameter given twice, two authentications
        return _json_error(400, error)
    except OAuth2Error as error:
        return _json_error(401, error)
    if not client.check_grant_type(DEVICE_CODE_GRANT_TYPE):
        return _json_error(400, UnauthorizedClientError("The client may not use the device grant."))
    try:
        scope = check_device_scope(client, request.form.get("scope"))
    except OAuth2Error as error:
        return _json_error(400, error)
    issuer = services().settings.oidc_issuer
    body = device_flow().start(client.client_id, scope, issuer + "/activate")
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response


def _activate_form(status: int = 200, **context: Any) -> Response:
    return render("activate.html", status, **context)


@bp.get("/activate")
def activate() -> Response:
    """Where a person types the code their TV shows (verification_uri)."""
    user_code = normalise_user_code(request.args.get("user_code", ""))
    if current_session() is None:
        next_path = "/activate" + ("?" + urlencode({"user_code": user_code}) if user_code else "")
        return redirect(url_for("pages.login") + "?" + urlencode({"next": next_path}), 302)
    return _activate_form(user_code=display_user_code(user_code) if user_code else "")


@bp.post("/activate")
@limiter.limit(ACTIVATE_LIMIT)
def activate_submit() -> Response:
    """Check a typed code (rate limited per IP), then ask the person to approve the TV."""
    check_csrf()
    found = current_session()
    if found is None:
        return redirect(url_for("pages.login") + "?" + urlencode({"next": "/activate"}), 303)
    typed = request.form.get("user_code", "")
    pending = device_flow().pending_request(typed)
    if pending is None:
        return _activate_form(
            400, user_code=typed[:20], error="That code is not valid or has expired. Check the TV."
        )
    client = authorization_server().query_client(pending["client_id"])
    if client is None:
        return _activate_form(400, error="That code is not valid or has expired. Check the TV.")
    if request.form.get("decision") not in ("allow", "deny"):
        scopes = [(s, SCOPE_DESCRIPTIONS.get(s, s)) for s in pending["scope"].split()]
        return render(
            "activate_confirm.html",
            client=client,
            user=found[1],
            scopes=scopes,
            user_code=display_user_code(pending["user_code"]),
        )
    approved = request.form["decision"] == "allow"
    record, user = found
    done = device_flow().decide(
        typed,
        approved=approved,
        user_id=str(user.id),
        auth_time=record.auth_time,
        auth_method=record.auth_method,
    )
    if not done:
        return _activate_form(400, error="That code is not valid or has expired. Check the TV.")
    return render("activate_done.html", approved=approved, client=client)


# Hooks ------------------------------------------------------------------------------------
@bp.after_request
def _page_headers(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    new_cookie = g.get("new_csrf_cookie")
    if new_cookie and not request.cookies.get(CSRF_COOKIE):
        response.set_cookie(
            CSRF_COOKIE,
            new_cookie,
            httponly=True,
            samesite="Lax",
            secure=_secure_cookies(),
            path="/",
        )
    if response.status_code == 429 and response.mimetype == "application/json":
        # flask-limiter answers in the API's JSON shape; a person gets a page instead.
        page = error_page(429, "Too many attempts", "Please wait a minute and try again.")
        page.headers["Retry-After"] = response.headers.get("Retry-After", "60")
        for name, value in SECURITY_HEADERS.items():
            page.headers.setdefault(name, value)
        return page
    return response


@bp.errorhandler(PageError)
def _page_error(error: PageError) -> Response:
    return error_page(error.status, error.title, error.message)


def init_app(app: Flask) -> None:
    svc = app.extensions["oidc"]
    app.extensions["browser_sessions"] = BrowserSessions(svc.store, svc.settings.refresh_token_ttl)
    app.register_blueprint(bp)
