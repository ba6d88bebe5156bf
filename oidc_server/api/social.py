"""/api/v1 social endpoints: sign-in with Google or Yandex, and the user's linked accounts."""

from __future__ import annotations

import uuid
from typing import Any, NoReturn

from flask import Response, redirect
from flask.views import MethodView
from marshmallow import EXCLUDE, fields, validate

from .. import accounts
from ..context import client_ip, db_session, services, user_agent
from ..models import User
from ..social import SocialError, flows
from ..social import accounts as social_accounts
from ..social.claims import SocialIdentity
from .common import BEARER, ApiSchema, abort, current_token, user_token_required
from .schemas import UtcDateTime, api_blueprint, error_responses

blp = api_blueprint("social", __name__, "Sign in with Google or Yandex; linked social accounts.")

#: HTTP status of each SocialError code.
STATUS = {
    "provider_not_found": 404,
    "not_found": 404,
    "invalid_state": 400,
    "invalid_request": 400,
    "invalid_redirect_uri": 400,
    "invalid_grant": 400,
    "invalid_id_token": 400,
    "authorization_failed": 400,
    "access_denied": 403,
    "verified_email_required": 403,
    "account_disabled": 403,
    "account_exists_link_required": 409,
    "social_account_linked_elsewhere": 409,
    "last_sign_in_method": 409,
    "provider_error": 502,
}
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
PROVIDER_PARAM = {"description": "`google` or `yandex`; unknown or not configured: 404"}


class SocialTokenResponseSchema(ApiSchema):
    """RFC 6749 §5.1 token response of a social sign-in."""

    access_token = fields.String(required=True)
    token_type = fields.String(required=True, metadata={"example": "Bearer"})
    expires_in = fields.Integer(required=True)
    refresh_token = fields.String(required=True)
    scope = fields.String(metadata={"example": "openid profile email"})


class SocialCallbackQuerySchema(ApiSchema):
    """What the provider appends to our callback URI (RFC 6749 §4.1.2)."""

    class Meta:
        unknown = EXCLUDE  # Google adds scope, authuser, prompt, hd

    code = fields.String(validate=validate.Length(max=4096))
    state = fields.String(validate=validate.Length(max=512))
    error = fields.String(validate=validate.Length(max=512))
    error_description = fields.String(validate=validate.Length(max=2048))


class SocialCodeSchema(ApiSchema):
    """An authorization code an app obtained from the provider itself."""

    code = fields.String(required=True, validate=validate.Length(min=1, max=4096))
    redirect_uri = fields.String(
        required=True,
        validate=validate.Length(min=1, max=2048),
        metadata={"description": "one of SOCIAL_REDIRECT_URIS, or our callback URI"},
    )
    code_verifier = fields.String(
        validate=validate.Regexp(r"^[A-Za-z0-9._~-]{43,128}$"),  # RFC 7636 §4.1
        metadata={"description": "the PKCE verifier, if the app sent a code_challenge"},
    )
    nonce = fields.String(
        validate=validate.Length(min=1, max=512),
        metadata={"description": "OpenID providers: the nonce the app sent, checked if given"},
    )


class SocialAccountSchema(ApiSchema):
    id = fields.UUID(required=True)
    provider = fields.String(required=True, metadata={"example": "google"})
    subject = fields.String(required=True, metadata={"description": "the provider's stable id"})
    email = fields.String(
        allow_none=True, metadata={"description": "as verified by the provider, else null"}
    )
    linked_at = UtcDateTime(required=True)


def _fail(exc: SocialError) -> NoReturn:
    abort(STATUS.get(exc.code, 400), exc.code, exc.message)


def _exchange(provider: str, body: dict[str, Any]) -> SocialIdentity:
    try:
        return flows().exchange(
            provider,
            code=body["code"],
            redirect_uri=body["redirect_uri"],
            code_verifier=body.get("code_verifier"),
            nonce=body.get("nonce"),
        )
    except SocialError as exc:
        _fail(exc)


def _sign_in(provider: str, identity: SocialIdentity) -> tuple[dict[str, Any], int, dict[str, str]]:
    svc = services()
    origin = social_accounts.SignInOrigin(
        client_id=svc.settings.first_party_client_id, user_agent=user_agent(), ip=client_ip()
    )
    try:
        result = social_accounts.sign_in(db_session(), svc.tokens, provider, identity, origin)
    except SocialError as exc:
        _fail(exc)
    return result.token, 200, NO_STORE


def _current_user() -> User:
    user = accounts.get_user(db_session(), current_token()["sub"])
    if user is None or not user.is_active:
        abort(401, "invalid_token", "the user no longer exists or is disabled")
    return user


def _errors(*statuses: int) -> Any:
    """Document each status, and those any operation can meet (413, 429, 503), as errors."""
    return error_responses(blp, *sorted(set(statuses) | {413, 429, 503}))


_EXCHANGE_ERRORS = (400, 403, 404, 409, 422, 502, 503)


@blp.route(
    "/social/login/<provider>", parameters=[{"in": "path", "name": "provider", **PROVIDER_PARAM}]
)
class SocialLogin(MethodView):
    @blp.doc(summary="Start a browser sign-in with Google or Yandex")
    @blp.response(
        302,
        description="to the provider's authorization page, with fresh state, nonce and PKCE",
        headers={"Location": {"schema": {"type": "string"}, "description": "provider URL"}},
    )
    @_errors(404, 502, 503)
    def get(self, provider: str) -> Response:
        """Redirect the browser to the provider; the flow's secrets are kept server-side."""
        try:
            url = flows().begin(provider)
        except SocialError as exc:
            _fail(exc)
        response = redirect(url, 302)
        response.headers.update(NO_STORE)
        return response

    @blp.doc(summary="Sign in with a code an app obtained from Google or Yandex")
    @blp.arguments(SocialCodeSchema)
    @blp.response(
        200, SocialTokenResponseSchema, headers={"Cache-Control": {"schema": {"type": "string"}}}
    )
    @_errors(*_EXCHANGE_ERRORS)
    def post(self, body: dict[str, Any], provider: str) -> Any:
        """Redeem the code at the provider and answer with our token response."""
        return _sign_in(provider, _exchange(provider, body))


@blp.route(
    "/social/callback/<provider>", parameters=[{"in": "path", "name": "provider", **PROVIDER_PARAM}]
)
class SocialCallback(MethodView):
    @blp.doc(summary="Finish a browser sign-in (the provider redirects here)")
    @blp.arguments(SocialCallbackQuerySchema, location="query")
    @blp.response(
        200, SocialTokenResponseSchema, headers={"Cache-Control": {"schema": {"type": "string"}}}
    )
    @_errors(400, 403, 404, 409, 422, 502, 503)
    def get(self, query: dict[str, Any], provider: str) -> Any:
        """Check state, redeem the code, verify the identity and answer with our tokens."""
        try:
            identity = flows().finish_callback(
                provider, code=query.get("code"), state=query.get("state"), error=query.get("error")
            )
        except SocialError as exc:
            _fail(exc)
        return _sign_in(provider, identity)


@blp.route("/users/me/social-accounts/")
class SocialAccounts(MethodView):
    @blp.doc(summary="List the caller's linked Google and Yandex accounts", security=BEARER)
    @user_token_required
    @blp.response(200, SocialAccountSchema(many=True))
    @_errors(401, 403)
    def get(self) -> Any:
        return social_accounts.list_accounts(db_session(), _current_user().id)


@blp.route(
    "/users/me/social-accounts/<provider>",
    parameters=[{"in": "path", "name": "provider", **PROVIDER_PARAM}],
)
class LinkSocialAccount(MethodView):
    @blp.doc(summary="Link a Google or Yandex account to the caller", security=BEARER)
    @user_token_required
    @blp.arguments(SocialCodeSchema)
    @blp.response(201, SocialAccountSchema, description="linked")
    @blp.alt_response(
        200, schema=SocialAccountSchema, description="already linked to the caller", success=True
    )
    @_errors(400, 401, 403, 404, 409, 422, 502, 503)
    def post(self, body: dict[str, Any], provider: str) -> Any:
        """Redeem the code and link the identity; 409 if it belongs to another user."""
        user = _current_user()
        identity = _exchange(provider, body)
        try:
            account, created = social_accounts.link(db_session(), user.id, provider, identity)
        except SocialError as exc:
            _fail(exc)
        return account, 201 if created else 200


@blp.route("/users/me/social-accounts/<social_account_id>")
class UnlinkSocialAccount(MethodView):
    @blp.doc(summary="Unlink one of the caller's social accounts", security=BEARER)
    @user_token_required
    @blp.response(204, description="unlinked")
    @_errors(401, 403, 404, 409)
    def delete(self, social_account_id: str) -> None:
        """404 unless the account is the caller's; 409 if it is their last way to sign in."""
        user_id: uuid.UUID = _current_user().id
        try:
            social_accounts.unlink(db_session(), user_id, social_account_id)
        except SocialError as exc:
            _fail(exc)
