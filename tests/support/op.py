"""Helpers for the browser-facing OP tests: clients, PKCE pairs, and filling in our forms."""

from __future__ import annotations

import base64
import hashlib
import secrets
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from ..conftest import PASSWORD, make_client

REDIRECT_URI = "https://rp.example/callback"
LOGOUT_URI = "https://rp.example/signed-out"


@dataclass
class RelyingParty:
    client_id: str
    client_secret: str
    redirect_uri: str = REDIRECT_URI


def make_rp(
    services: Any, *, first_party: bool = False, public: bool = False, **kw: Any
) -> RelyingParty:
    """A web app registered for the code flow (third-party and confidential by default)."""
    options: dict[str, Any] = {
        "name": "Partner Films",
        "grant_types": ["authorization_code", "refresh_token"],
        "scopes": ["openid", "profile", "email"],
        "redirect_uris": [REDIRECT_URI],
        "post_logout_redirect_uris": [LOGOUT_URI],
        "confidential": not public,
        "first_party": first_party,
    }
    options.update(kw)
    made = make_client(services, **options)
    return RelyingParty(made.client_id, made.client_secret, options["redirect_uris"][0])


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "input" and values.get("name") and values.get("type") == "hidden":
            self.fields[values["name"] or ""] = values.get("value") or ""


def hidden_fields(html: str) -> dict[str, str]:
    parser = _Forms()
    parser.feed(html)
    return parser.fields


def query_of(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def authorize_params(rp: RelyingParty, challenge: str, **extra: str) -> dict[str, str]:
    params = {
        "response_type": "code",
        "client_id": rp.client_id,
        "redirect_uri": rp.redirect_uri,
        "scope": "openid profile email",
        "state": "st-" + secrets.token_urlsafe(8),
        "nonce": "n-" + secrets.token_urlsafe(8),
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    params.update(extra)
    return {k: v for k, v in params.items() if v is not None}


def authorize(client: FlaskClient, params: dict[str, str]) -> TestResponse:
    return client.get("/oauth/authorize?" + urlencode(params))


def submit_login(
    client: FlaskClient,
    login_page: TestResponse,
    email: str = "viewer@example.com",
    password: str = PASSWORD,
) -> TestResponse:
    fields = hidden_fields(login_page.get_data(as_text=True))
    return client.post("/login", data={**fields, "email": email, "password": password})


def follow(client: FlaskClient, response: TestResponse) -> TestResponse:
    """Follow one redirect within our server."""
    assert response.status_code in (302, 303), response.status_code
    parts = urlsplit(response.headers["Location"])
    return client.get(parts.path + ("?" + parts.query if parts.query else ""))


def sign_in_through(client: FlaskClient, first: TestResponse) -> TestResponse:
    """From a redirect to /login: sign in, and return what the pending request answers then."""
    login_page = follow(client, first)
    assert login_page.status_code == 200
    signed_in = submit_login(client, login_page)
    assert signed_in.status_code == 303, signed_in.get_data(as_text=True)
    return follow(client, signed_in)


def approve(
    client: FlaskClient, consent_page: TestResponse, decision: str = "allow"
) -> TestResponse:
    fields = hidden_fields(consent_page.get_data(as_text=True))
    return client.post("/consent", data={**fields, "decision": decision})


def code_for(
    client: FlaskClient, rp: RelyingParty, challenge: str, **extra: str
) -> tuple[str, dict[str, str]]:
    """Run the browser part of the flow (sign in, consent if asked); the code and the params."""
    params = authorize_params(rp, challenge, **extra)
    response = authorize(client, params)
    if response.status_code == 302 and urlsplit(response.headers["Location"]).path == "/login":
        response = sign_in_through(client, response)
    if response.status_code == 200:  # the consent page
        response = approve(client, response)
    assert response.status_code == 302, response.get_data(as_text=True)
    query = query_of(response.headers["Location"])
    assert "code" in query, query
    return query["code"], params


def redeem(
    client: FlaskClient, rp: RelyingParty, code: str, verifier: str | None, **extra: str
) -> TestResponse:
    data = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": rp.redirect_uri,
        "client_id": rp.client_id,
        **({"code_verifier": verifier} if verifier is not None else {}),
        **extra,
    }
    if rp.client_secret:
        data["client_secret"] = rp.client_secret
    return client.post("/oauth/token", data=data)
