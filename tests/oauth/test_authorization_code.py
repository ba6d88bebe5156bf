"""The authorization code flow (RFC 6749 §4.1) with PKCE, OpenID Connect and our pages."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken
from flask.testing import FlaskClient
from joserfc import jwt
from joserfc.jwk import KeySet

from ..conftest import PASSWORD, LiveServer, bearer
from ..support.op import (
    REDIRECT_URI,
    approve,
    authorize,
    authorize_params,
    code_for,
    follow,
    hidden_fields,
    make_rp,
    pkce_pair,
    query_of,
    redeem,
    sign_in_through,
    submit_login,
)


class FakeClock:
    """The OP's clock, moved by hand."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(app: Any) -> FakeClock:
    import time

    fake = FakeClock(time.time())
    app.extensions["browser_sessions"].clock = fake
    return fake


# The whole flow, as a third-party relying party library sees it ------------------------------
def _browser_sign_in(browser: requests.Session, url: str) -> str:
    """Follow our pages like a browser without JavaScript; the final redirect to the client."""
    response = browser.get(url, allow_redirects=False)
    while response.status_code in (302, 303):
        location = urljoin(url, response.headers["Location"])
        if location.startswith(REDIRECT_URI):
            return location
        url = location
        response = browser.get(url, allow_redirects=False)
    html = response.text
    fields = hidden_fields(html)
    if 'name="password"' in html:
        data = {**fields, "email": "viewer@example.com", "password": PASSWORD}
        response = browser.post(urljoin(url, "/login"), data=data, allow_redirects=False)
    else:
        assert "Allow Partner Films?" in html
        response = browser.post(
            urljoin(url, "/consent"), data={**fields, "decision": "allow"}, allow_redirects=False
        )
    assert response.status_code in (302, 303), response.text
    location = urljoin(url, response.headers["Location"])
    return location if location.startswith(REDIRECT_URI) else _browser_sign_in(browser, location)


def test_authlib_client_runs_the_code_flow_over_http(live_server: LiveServer, user: Any) -> None:
    services = live_server.app.extensions["oidc"]
    rp = make_rp(services)
    meta = requests.get(f"{live_server.url}/.well-known/openid-configuration", timeout=5).json()
    session = OAuth2Session(
        rp.client_id,
        rp.client_secret,
        scope="openid profile email",
        redirect_uri=rp.redirect_uri,
        code_challenge_method="S256",
    )
    verifier = "v" * 20 + pkce_pair()[0]
    nonce = "nonce-123"
    url, state = session.create_authorization_url(
        meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce
    )
    callback = _browser_sign_in(requests.Session(), url)
    answer = query_of(callback)
    assert answer["state"] == state and answer["iss"] == live_server.url  # RFC 9207
    token = session.fetch_token(
        meta["token_endpoint"], authorization_response=callback, code_verifier=verifier
    )

    jwks = KeySet.import_key_set(requests.get(meta["jwks_uri"], timeout=5).json())
    decoded = jwt.decode(token["id_token"], jwks, algorithms=["RS256"])
    claims = CodeIDToken(
        decoded.claims,
        decoded.header,
        options={"iss": {"values": [live_server.url]}, "aud": {"values": [rp.client_id]}},
        params={"nonce": nonce, "access_token": token["access_token"], "client_id": rp.client_id},
    )
    claims.validate()  # iss, aud, exp, iat, nonce, at_hash, azp
    assert claims["nonce"] == nonce and claims["at_hash"]
    assert claims["sub"] == str(user.id) and claims["amr"] == ["pwd"]
    assert decoded.header["kid"] in {
        k["kid"] for k in requests.get(meta["jwks_uri"], timeout=5).json()["keys"]
    }
    access = session.get(meta["userinfo_endpoint"], timeout=5).json()
    assert {k: claims[k] for k in access} == access  # userinfo and the ID token agree
    assert access["email"] == "viewer@example.com"
    # The access token is the same session as the ID token's sid, refreshable by this client.
    assert token["refresh_token"].rsplit(".", 1)[1] == str(user.id)  # the refresh token's shape
    refreshed = session.refresh_token(meta["token_endpoint"])
    assert refreshed["access_token"] != token["access_token"]


# Browser part, PKCE and codes ---------------------------------------------------------------
def test_code_flow_tokens_share_the_browser_session(
    client: FlaskClient, services: Any, user: Any
) -> None:
    rp = make_rp(services)
    verifier, challenge = pkce_pair()
    code, params = code_for(client, rp, challenge)
    body = redeem(client, rp, code, verifier).json
    id_claims = jwt.decode(body["id_token"], services.keyring.current.key).claims
    access = services.tokens.verify_access_token(body["access_token"])
    assert id_claims["sid"] == access["sid"] and id_claims["nonce"] == params["nonce"]
    sessions = client.get("/api/v1/users/me/sessions", headers=bearer(body["access_token"])).json
    assert [s["id"] for s in sessions] == [access["sid"]]
    assert sessions[0]["auth_method"] == "password"
    # Ending that session (from the account API) signs the browser out too.
    client.delete(
        f"/api/v1/users/me/sessions/{access['sid']}", headers=bearer(body["access_token"])
    )
    again = authorize(client, authorize_params(rp, challenge))
    assert urlsplit(again.headers["Location"]).path == "/login"


def test_success_echoes_state_and_iss(client: FlaskClient, services: Any, user: Any) -> None:
    rp = make_rp(services, first_party=True)
    _, challenge = pkce_pair()
    params = authorize_params(rp, challenge)
    answer = sign_in_through(client, authorize(client, params))  # first party: no consent page
    query = query_of(answer.headers["Location"])
    assert answer.headers["Location"].startswith(REDIRECT_URI + "?")
    assert query["state"] == params["state"] and query["iss"] == "http://localhost"
    assert answer.headers["Cache-Control"] == "no-store"


@pytest.mark.parametrize(
    ("verifier", "error"),
    [(None, "invalid_request"), ("x" * 50, "invalid_grant"), ("short", "invalid_request")],
    ids=["missing", "wrong", "malformed"],
)
def test_a_bad_pkce_verifier_is_refused(
    client: FlaskClient, services: Any, user: Any, verifier: str | None, error: str
) -> None:
    rp = make_rp(services, public=True, grant_types=["authorization_code"])
    good, challenge = pkce_pair()
    code, _ = code_for(client, rp, challenge)
    response = redeem(client, rp, code, verifier)
    assert response.status_code in (400, 401) and response.json["error"] == error
    # The code was spent by the failed attempt: the right verifier cannot use it afterwards.
    assert redeem(client, rp, code, good).json["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "pkce",
    [
        {"code_challenge": None, "code_challenge_method": None},
        {"code_challenge_method": "plain"},
        {"code_challenge_method": None},
    ],
    ids=["missing", "plain", "method-omitted-means-plain"],
)
def test_pkce_s256_is_required(
    client: FlaskClient, services: Any, user: Any, pkce: dict[str, Any]
) -> None:
    rp = make_rp(services)
    _, challenge = pkce_pair()
    params = authorize_params(rp, challenge)
    params.update(pkce)
    response = authorize(client, {k: v for k, v in params.items() if v is not None})
    assert response.status_code == 302
    query = query_of(response.headers["Location"])
    assert query["error"] == "invalid_request" and query["state"] == params["state"]
    assert query["iss"] == "http://localhost"


def test_a_reused_code_is_refused_and_revokes_its_tokens(
    client: FlaskClient, services: Any, user: Any
) -> None:
    rp = make_rp(services)
    verifier, challenge = pkce_pair()
    code, _ = code_for(client, rp, challenge)
    first = redeem(client, rp, code, verifier).json
    assert client.get("/oauth/userinfo", headers=bearer(first["access_token"])).status_code == 200
    second = redeem(client, rp, code, verifier)
    assert second.status_code == 400 and second.json["error"] == "invalid_grant"
    # RFC 6749 §4.1.2: what the code gave out is revoked.
    assert client.get("/oauth/userinfo", headers=bearer(first["access_token"])).status_code == 401
    refresh = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": first["refresh_token"],
            "client_id": rp.client_id,
            "client_secret": rp.client_secret,
        },
    )
    assert refresh.json["error"] == "invalid_grant"


def test_a_code_is_bound_to_its_client_and_redirect_uri(
    client: FlaskClient, services: Any, user: Any
) -> None:
    rp = make_rp(services, redirect_uris=[REDIRECT_URI, "https://rp.example/other"])
    other = make_rp(services, name="Other")
    verifier, challenge = pkce_pair()
    code, _ = code_for(client, rp, challenge)
    assert redeem(client, other, code, verifier).json["error"] == "invalid_grant"
    code, _ = code_for(client, rp, challenge)
    wrong_uri = redeem(client, rp, code, verifier, redirect_uri="https://rp.example/other")
    assert wrong_uri.json["error"] == "invalid_grant"


def test_an_expired_code_is_refused(
    client: FlaskClient, services: Any, user: Any, clock: FakeClock
) -> None:
    rp = make_rp(services)
    verifier, challenge = pkce_pair()
    code, _ = code_for(client, rp, challenge)
    clock.now += 61  # codes live 60 s
    response = redeem(client, rp, code, verifier)
    assert response.status_code == 400 and response.json["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "change",
    [
        {"redirect_uri": "https://rp.example/callback/../evil"},
        {"redirect_uri": "https://evil.example/callback"},
        {"redirect_uri": REDIRECT_URI.upper()},
        {"redirect_uri": None},
        {"client_id": "no-such-client"},
        {"client_id": None},
    ],
    ids=["path-trick", "other-host", "case", "missing-uri", "unknown-client", "no-client"],
)
def test_bad_client_or_redirect_uri_is_shown_on_our_page(
    client: FlaskClient, services: Any, change: dict[str, Any]
) -> None:
    rp = make_rp(services)
    _, challenge = pkce_pair()
    params = authorize_params(rp, challenge)
    params.update(change)
    response = authorize(client, {k: v for k, v in params.items() if v is not None})
    assert response.status_code == 400 and "Location" not in response.headers
    assert response.mimetype == "text/html"
    assert "sign-in request is invalid" in response.get_data(as_text=True)
    assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]


def test_only_response_type_code(client: FlaskClient, services: Any) -> None:
    rp = make_rp(services)
    _, challenge = pkce_pair()
    response = authorize(client, authorize_params(rp, challenge, response_type="token"))
    query = query_of(response.headers["Location"])
    assert query["error"] == "unsupported_response_type" and "iss" in query


def test_a_repeated_parameter_is_refused(client: FlaskClient, services: Any) -> None:
    rp = make_rp(services)
    _, challenge = pkce_pair()
    url = "/oauth/authorize?" + urlencode(authorize_params(rp, challenge)) + "&scope=email"
    response = client.get(url)
    assert response.status_code == 400 and "scope is repeated" in response.get_data(as_text=True)


# prompt, max_age, login_hint ----------------------------------------------------------------
def test_prompt_none_without_a_session_is_login_required(
    client: FlaskClient, services: Any
) -> None:
    rp = make_rp(services)
    _, challenge = pkce_pair()
    params = authorize_params(rp, challenge, prompt="none")
    query = query_of(authorize(client, params).headers["Location"])
    assert query["error"] == "login_required" and query["state"] == params["state"]


def test_prompt_none_without_consent_is_consent_required(
    client: FlaskClient, services: Any, user: Any
) -> None:
    rp = make_rp(services)
    first_party = make_rp(services, first_party=True, name="Cinema web")
    _verifier, challenge = pkce_pair()
    code_for(client, first_party, challenge)  # signs the browser in
    query = query_of(
        authorize(client, authorize_params(rp, challenge, prompt="none")).headers["Location"]
    )
    assert query["error"] == "consent_required"


def test_prompt_none_with_session_and_consent_answers_silently(
    client: FlaskClient, services: Any, user: Any
) -> None:
    rp = make_rp(services)
    _verifier, challenge = pkce_pair()
    code_for(client, rp, challenge)
    response = authorize(client, authorize_params(rp, challenge, prompt="none"))
    assert "code" in query_of(response.headers["Location"])


def test_prompt_login_asks_again_even_with_a_session(
    client: FlaskClient, services: Any, user: Any, clock: FakeClock
) -> None:
    rp = make_rp(services, first_party=True)
    verifier, challenge = pkce_pair()
    code_for(client, rp, challenge)
    clock.now += 5
    response = authorize(client, authorize_params(rp, challenge, prompt="login"))
    assert urlsplit(response.headers["Location"]).path == "/login"
    after = sign_in_through(client, response)
    code = query_of(after.headers["Location"])["code"]
    id_token = redeem(client, rp, code, verifier).json["id_token"]
    claims = jwt.decode(id_token, services.keyring.current.key).claims
    assert claims["auth_time"] == int(clock.now)


def test_max_age_forces_a_new_sign_in_when_the_session_is_older(
    client: FlaskClient, services: Any, user: Any, clock: FakeClock
) -> None:
    rp = make_rp(services, first_party=True)
    verifier, challenge = pkce_pair()
    code_for(client, rp, challenge)
    signed_in_at = int(clock.now)
    clock.now += 120
    recent_enough = authorize(client, authorize_params(rp, challenge, max_age="300"))
    assert "code" in query_of(recent_enough.headers["Location"])
    too_old = authorize(client, authorize_params(rp, challenge, max_age="60"))
    assert urlsplit(too_old.headers["Location"]).path == "/login"
    code = query_of(sign_in_through(client, too_old).headers["Location"])["code"]
    claims = jwt.decode(
        redeem(client, rp, code, verifier).json["id_token"], services.keyring.current.key
    ).claims
    assert claims["auth_time"] == signed_in_at + 120


def test_an_invalid_max_age_is_an_invalid_request(client: FlaskClient, services: Any) -> None:
    rp = make_rp(services)
    _, challenge = pkce_pair()
    query = query_of(
        authorize(client, authorize_params(rp, challenge, max_age="-1")).headers["Location"]
    )
    assert query["error"] == "invalid_request"


def test_login_hint_fills_in_the_email(client: FlaskClient, services: Any) -> None:
    rp = make_rp(services)
    _, challenge = pkce_pair()
    response = authorize(client, authorize_params(rp, challenge, login_hint="fan@example.com"))
    page = follow(client, response).get_data(as_text=True)
    assert re.search(r'id="email"[^>]*value="fan@example.com"', page, re.S)


# Consent ------------------------------------------------------------------------------------
def test_consent_denied_is_access_denied(client: FlaskClient, services: Any, user: Any) -> None:
    rp = make_rp(services)
    _, challenge = pkce_pair()
    params = authorize_params(rp, challenge)
    consent_page = sign_in_through(client, authorize(client, params))
    assert consent_page.status_code == 200
    page = consent_page.get_data(as_text=True)
    assert "Partner Films" in page and "See your email address" in page
    query = query_of(approve(client, consent_page, "deny").headers["Location"])
    assert query["error"] == "access_denied" and query["state"] == params["state"]


def test_consent_is_remembered_per_client_and_scope_and_revocable(
    client: FlaskClient, services: Any, user: Any
) -> None:
    from oidc_server import consent

    rp = make_rp(services)
    _, challenge = pkce_pair()
    code_for(client, rp, challenge, scope="openid email")
    again = authorize(client, authorize_params(rp, challenge, scope="openid email"))
    assert "code" in query_of(again.headers["Location"])  # remembered
    more = authorize(client, authorize_params(rp, challenge, scope="openid email profile"))
    assert more.status_code == 200 and "See your login name" in more.get_data(as_text=True)
    forced = authorize(client, authorize_params(rp, challenge, scope="openid", prompt="consent"))
    assert forced.status_code == 200
    with services.db.session() as session:
        assert consent.revoke_consent(session, user.id, rp.client_id)
    revoked = authorize(client, authorize_params(rp, challenge, scope="openid email"))
    assert revoked.status_code == 200  # asked again


# CSRF ---------------------------------------------------------------------------------------
def test_forms_without_the_csrf_token_are_refused(
    client: FlaskClient, services: Any, user: Any
) -> None:
    rp = make_rp(services)
    _, challenge = pkce_pair()
    login_page = follow(client, authorize(client, authorize_params(rp, challenge)))
    fields = hidden_fields(login_page.get_data(as_text=True))
    fields.pop("csrf_token")
    refused = client.post(
        "/login", data={**fields, "email": "viewer@example.com", "password": PASSWORD}
    )
    assert refused.status_code == 400 and "security token" in refused.get_data(as_text=True)
    forged = client.post(
        "/login",
        data={
            **fields,
            "csrf_token": "0" * 64,
            "email": "viewer@example.com",
            "password": PASSWORD,
        },
    )
    assert forged.status_code == 400
    consent_page = follow(client, submit_login(client, login_page))
    fields = hidden_fields(consent_page.get_data(as_text=True))
    fields.pop("csrf_token")
    assert client.post("/consent", data={**fields, "decision": "allow"}).status_code == 400


def test_wrong_password_is_shown_on_the_form_and_recorded(
    client: FlaskClient, services: Any, user: Any
) -> None:
    from sqlalchemy import select

    from oidc_server.models import LoginHistory

    rp = make_rp(services)
    _, challenge = pkce_pair()
    login_page = follow(client, authorize(client, authorize_params(rp, challenge)))
    failed = submit_login(client, login_page, password="not the password")
    assert failed.status_code == 401
    assert "email or password is not right" in failed.get_data(as_text=True)
    assert 'aria-invalid="true"' in failed.get_data(as_text=True)
    with services.db.session() as session:
        rows = session.scalars(select(LoginHistory).where(LoginHistory.user_id == user.id)).all()
    assert [(r.method, r.success) for r in rows] == [("password", False)]
