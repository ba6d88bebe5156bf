"""RP-initiated logout (OpenID Connect RP-Initiated Logout 1.0) at /logout."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode, urlsplit

import pytest
from flask.testing import FlaskClient

from ..conftest import bearer
from ..support.op import (
    LOGOUT_URI,
    authorize,
    authorize_params,
    code_for,
    hidden_fields,
    make_rp,
    pkce_pair,
    query_of,
    redeem,
)


@pytest.fixture
def signed_in(client: FlaskClient, services: Any, user: Any) -> dict[str, Any]:
    """A browser signed in through a third-party app, and that app's tokens."""
    rp = make_rp(services)
    verifier, challenge = pkce_pair()
    code, _ = code_for(client, rp, challenge)
    tokens = redeem(client, rp, code, verifier).json
    return {"rp": rp, "tokens": tokens, "challenge": challenge}


def _alive(client: FlaskClient, tokens: dict[str, Any]) -> bool:
    return client.get("/oauth/userinfo", headers=bearer(tokens["access_token"])).status_code == 200


def test_logout_with_hint_ends_the_session_everywhere_and_returns_with_state(
    client: FlaskClient, signed_in: dict[str, Any]
) -> None:
    rp, tokens = signed_in["rp"], signed_in["tokens"]
    query = {
        "id_token_hint": tokens["id_token"],
        "post_logout_redirect_uri": LOGOUT_URI,
        "state": "bye-1",
    }
    response = client.get("/logout?" + urlencode(query))
    assert response.status_code == 302
    assert response.headers["Location"] == LOGOUT_URI + "?state=bye-1"
    assert "op_session=;" in response.headers["Set-Cookie"]
    assert not _alive(client, tokens)  # access token denied
    refresh = client.post(
        "/oauth/token",
        data={
            "grant_type": "refresh_token",
            "refresh_token": tokens["refresh_token"],
            "client_id": rp.client_id,
            "client_secret": rp.client_secret,
        },
    )
    assert refresh.json["error"] == "invalid_grant"  # refresh token dead
    again = authorize(client, authorize_params(rp, signed_in["challenge"]))
    assert urlsplit(again.headers["Location"]).path == "/login"  # the browser is signed out


def test_the_session_ends_even_when_the_browser_lost_its_cookie(
    client: FlaskClient, services: Any, signed_in: dict[str, Any]
) -> None:
    client.delete_cookie("op_session")
    response = client.get(
        "/logout?" + urlencode({"id_token_hint": signed_in["tokens"]["id_token"]})
    )
    assert response.status_code == 200 and "signed out" in response.get_data(as_text=True)
    assert not _alive(client, signed_in["tokens"])


@pytest.mark.parametrize(
    "uri",
    ["https://evil.example/", LOGOUT_URI + "/x", LOGOUT_URI.upper(), "javascript:alert(1)"],
)
def test_an_unregistered_post_logout_redirect_uri_is_refused_on_our_page(
    client: FlaskClient, signed_in: dict[str, Any], uri: str
) -> None:
    query = {"id_token_hint": signed_in["tokens"]["id_token"], "post_logout_redirect_uri": uri}
    response = client.get("/logout?" + urlencode(query))
    assert response.status_code == 400 and "Location" not in response.headers
    assert "not registered" in response.get_data(as_text=True)
    assert _alive(client, signed_in["tokens"])  # nothing was ended


def test_a_redirect_uri_needs_a_client_to_check_it_against(
    client: FlaskClient, signed_in: dict[str, Any]
) -> None:
    response = client.get("/logout?" + urlencode({"post_logout_redirect_uri": LOGOUT_URI}))
    assert response.status_code == 400
    with_client = client.get(
        "/logout?"
        + urlencode(
            {"post_logout_redirect_uri": LOGOUT_URI, "client_id": signed_in["rp"].client_id}
        )
    )
    assert with_client.status_code == 200 and "Sign out of Cinema?" in with_client.get_data(
        as_text=True
    )


@pytest.mark.parametrize(
    "hint", ["not-a-jwt", "a.b.c", "access"], ids=["garbage", "forged", "access-token"]
)
def test_a_hint_we_did_not_issue_as_an_id_token_is_refused(
    client: FlaskClient, signed_in: dict[str, Any], hint: str
) -> None:
    value = signed_in["tokens"]["access_token"] if hint == "access" else hint
    response = client.get("/logout?" + urlencode({"id_token_hint": value}))
    assert response.status_code == 400
    assert _alive(client, signed_in["tokens"])


def test_without_a_hint_the_person_confirms_with_a_csrf_protected_form(
    client: FlaskClient, signed_in: dict[str, Any]
) -> None:
    page = client.get(
        "/logout?"
        + urlencode(
            {
                "client_id": signed_in["rp"].client_id,
                "post_logout_redirect_uri": LOGOUT_URI,
                "state": "s2",
            }
        )
    )
    assert page.status_code == 200 and _alive(client, signed_in["tokens"])
    fields = hidden_fields(page.get_data(as_text=True))
    no_token = {k: v for k, v in fields.items() if k != "csrf_token"}
    assert client.post("/logout", data={**no_token, "confirm": "yes"}).status_code == 400
    assert _alive(client, signed_in["tokens"])
    done = client.post("/logout", data={**fields, "confirm": "yes"})
    assert done.status_code == 302 and query_of(done.headers["Location"]) == {"state": "s2"}
    assert not _alive(client, signed_in["tokens"])
