"""The device authorization grant (RFC 8628): a TV app from start to tokens."""

from __future__ import annotations

import time
from typing import Any

import pytest
from flask.testing import FlaskClient
from joserfc import jwt

from ..conftest import bearer, make_client
from ..support.op import follow, hidden_fields, submit_login

DEVICE = "urn:ietf:params:oauth:grant-type:device_code"


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(app: Any) -> FakeClock:
    fake = FakeClock()
    app.extensions["device_flow"].clock = fake
    return fake


@pytest.fixture
def tv(services: Any) -> str:
    """A public TV app, the way an operator registers one."""
    return make_client(
        services,
        name="Cinema TV",
        grant_types=[DEVICE, "refresh_token"],
        scopes=["openid", "profile"],
        confidential=False,
        first_party=True,
    ).client_id


def start(client: FlaskClient, client_id: str, scope: str = "openid profile") -> dict[str, Any]:
    response = client.post(
        "/oauth/device_authorization", data={"client_id": client_id, "scope": scope}
    )
    assert response.status_code == 200, response.json
    assert response.headers["Cache-Control"] == "no-store"
    return response.json


def poll(client: FlaskClient, client_id: str, device_code: str) -> Any:
    return client.post(
        "/oauth/token",
        data={"grant_type": DEVICE, "device_code": device_code, "client_id": client_id},
    )


def enter_code(client: FlaskClient, user_code: str, decision: str) -> Any:
    """Sign in at /activate, type the code, then allow or deny."""
    login_page = follow(client, client.get("/activate"))
    assert follow(client, submit_login(client, login_page)).status_code == 200
    page = client.get("/activate")
    typed = client.post(
        "/activate",
        data={**hidden_fields(page.get_data(as_text=True)), "user_code": user_code.lower()},
    )
    assert typed.status_code == 200 and "Allow Cinema TV on your TV?" in typed.get_data(
        as_text=True
    )
    return client.post(
        "/activate", data={**hidden_fields(typed.get_data(as_text=True)), "decision": decision}
    )


def test_device_flow_from_start_to_tokens_with_each_polling_answer(
    client: FlaskClient, services: Any, user: Any, tv: str, clock: FakeClock
) -> None:
    body = start(client, tv)
    assert body["verification_uri"] == "http://localhost/activate"
    assert body["expires_in"] == 600 and body["interval"] == 5
    code = body["user_code"]
    assert len(code) == 9 and code[4] == "-"
    assert set(code.replace("-", "")) <= set("BCDFGHJKLMNPQRSTVWXZ")  # no vowels, no look-alikes
    assert body["verification_uri_complete"].endswith("?user_code=" + code.replace("-", ""))

    pending = poll(client, tv, body["device_code"])
    assert pending.status_code == 400 and pending.json["error"] == "authorization_pending"
    too_fast = poll(client, tv, body["device_code"])
    assert too_fast.json["error"] == "slow_down"
    clock.now += 6  # the interval is now 10 s: 6 s later is still too fast
    assert poll(client, tv, body["device_code"]).json["error"] == "slow_down"
    clock.now += 16
    assert poll(client, tv, body["device_code"]).json["error"] == "authorization_pending"

    done = enter_code(client, code, "allow")
    assert done.status_code == 200 and "Your TV is connected" in done.get_data(as_text=True)
    clock.now += 16
    tokens = poll(client, tv, body["device_code"])
    assert tokens.status_code == 200, tokens.json
    assert tokens.json["refresh_token"] and tokens.json["scope"] == "openid profile"
    claims = jwt.decode(tokens.json["id_token"], services.keyring.current.key).claims
    assert claims["aud"] == tv and claims["sub"] == str(user.id)
    me = client.get("/oauth/userinfo", headers=bearer(tokens.json["access_token"]))
    assert me.json["sub"] == str(user.id)
    # The TV is its own device in the sessions list, apart from the browser's sign-in.
    sessions = client.get(
        "/api/v1/users/me/sessions", headers=bearer(tokens.json["access_token"])
    ).json
    assert sorted(s["auth_method"] for s in sessions) == ["device", "password"]
    # A device code gives tokens once.
    assert poll(client, tv, body["device_code"]).json["error"] == "invalid_grant"


def test_a_denied_request_is_access_denied(client: FlaskClient, user: Any, tv: str) -> None:
    body = start(client, tv)
    done = enter_code(client, body["user_code"], "deny")
    assert "TV not connected" in done.get_data(as_text=True)
    assert poll(client, tv, body["device_code"]).json["error"] == "access_denied"


def test_an_expired_device_code_is_expired_token(
    client: FlaskClient, tv: str, clock: FakeClock
) -> None:
    body = start(client, tv)
    clock.now += 601
    assert poll(client, tv, body["device_code"]).json["error"] == "expired_token"


def test_unknown_device_codes_and_other_clients_are_invalid_grant(
    client: FlaskClient, services: Any, tv: str
) -> None:
    body = start(client, tv)
    other = make_client(
        services, name="Other TV", grant_types=[DEVICE], scopes=["openid"], confidential=False
    ).client_id
    assert poll(client, tv, "no-such-code").json["error"] == "invalid_grant"
    assert poll(client, other, body["device_code"]).json["error"] == "invalid_grant"
    assert poll(client, tv, "").json["error"] == "invalid_request"


def test_only_device_clients_may_ask_and_only_for_their_scopes(
    client: FlaskClient, services: Any, tv: str
) -> None:
    web = make_client(
        services,
        name="Web",
        grant_types=["refresh_token", "password"],
        scopes=["openid"],
        confidential=False,
        first_party=True,
    ).client_id
    refused = client.post("/oauth/device_authorization", data={"client_id": web})
    assert refused.status_code == 400 and refused.json["error"] == "unauthorized_client"
    unknown = client.post("/oauth/device_authorization", data={"client_id": "nobody"})
    assert unknown.status_code == 401 and unknown.json["error"] == "invalid_client"
    scope = client.post(
        "/oauth/device_authorization", data={"client_id": tv, "scope": "roles:write"}
    )
    assert scope.status_code == 400 and scope.json["error"] == "invalid_scope"


@pytest.mark.parametrize(
    "query",
    [
        "client_id={tv}&client_id={tv}",
        "client_id={tv}&scope=openid&scope=profile",
        "client_id={tv}&client_secret=x&client_secret=y",
    ],
)
def test_a_parameter_given_twice_starts_no_device_flow(
    client: FlaskClient, tv: str, query: str
) -> None:
    response = client.post(
        "/oauth/device_authorization",
        data=query.format(tv=tv),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 400 and response.json["error"] == "invalid_request"
    assert "device_code" not in response.json


def test_parameters_in_the_url_start_no_device_flow(client: FlaskClient, tv: str) -> None:
    response = client.post(f"/oauth/device_authorization?client_id={tv}", data={"scope": "openid"})
    assert response.status_code == 400 and response.json["error"] == "invalid_request"


def test_a_wrong_or_used_user_code_is_refused_on_the_page(
    client: FlaskClient, user: Any, tv: str
) -> None:
    body = start(client, tv)
    enter_code(client, body["user_code"], "allow")
    page = client.get("/activate")
    for typed in ("BBBB-BBBB", body["user_code"], "AEIO-0101"):
        response = client.post(
            "/activate", data={**hidden_fields(page.get_data(as_text=True)), "user_code": typed}
        )
        assert response.status_code == 400 and "not valid or has expired" in response.get_data(
            as_text=True
        )


def test_activate_needs_a_signed_in_person(client: FlaskClient) -> None:
    response = client.get("/activate?user_code=BCDFGHJK")
    assert response.status_code == 302 and response.headers["Location"].startswith("/login?next=")
    assert "user_code%3DBCDFGHJK" in response.headers["Location"]


def test_user_code_entry_is_rate_limited(settings: Any, token_store: Any, user: Any) -> None:
    from dataclasses import replace

    from oidc_server.app import create_app

    limited = create_app(replace(settings, ratelimit_enabled=True), store=token_store)
    browser = limited.test_client()
    login_page = follow(browser, browser.get("/activate"))
    follow(browser, submit_login(browser, login_page))
    fields = hidden_fields(browser.get("/activate").get_data(as_text=True))
    answers = [
        browser.post("/activate", data={**fields, "user_code": "BBBB-BBBB"}).status_code
        for _ in range(11)
    ]
    assert answers[:10] == [400] * 10 and answers[10] == 429
    limited.extensions["oidc"].db.dispose()
