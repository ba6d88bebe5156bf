"""POST /oauth/token: each grant's success and failure paths (RFC 6749 §4.3, §4.4, §5, §6)."""

from __future__ import annotations

import base64
import secrets
import threading
import time
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient

from oidc_server.models import User
from oidc_server.security import hash_token
from oidc_server.tokens.redis_store import RedisTokenStore
from oidc_server.tokens.store import RefreshRecord, SessionRecord

from ..conftest import MachineClient, bearer, make_client, password_login
from ..support.redis_trips import round_trips
from ..support.roles import count_queries


def token_error(response: Any, status: int, error: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.json["error"] == error
    assert response.headers["Cache-Control"] == "no-store"


# client_credentials ---------------------------------------------------------------------


def test_client_credentials_issues_an_rfc9068_token(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    response = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic
    )
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == services.settings.access_token_ttl
    assert "refresh_token" not in body
    claims = services.tokens.verify_access_token(body["access_token"])
    assert claims["sub"] == claims["client_id"] == machine.client_id
    assert claims["scope"] == "roles:read roles:write"
    assert {"iss", "aud", "exp", "iat", "jti"} <= claims.keys()
    assert "sid" not in claims


@pytest.mark.parametrize("path", ["/oauth/token", "/oauth/introspect", "/oauth/revoke"])
def test_plain_http_to_a_public_host_is_refused_cleanly(
    client: FlaskClient, machine: MachineClient, path: str
) -> None:
    # Authlib refuses OAuth over http except to loopback hosts, before the endpoint's own
    # error handling: it must still be an RFC 6749 error, never a 500.
    data = {"grant_type": "client_credentials", "token": "x"}
    refused = client.post(path, data=data, headers=machine.basic, base_url="http://auth.example")
    token_error(refused, 400, "insecure_transport")
    over_tls = client.post(path, data=data, headers=machine.basic, base_url="https://auth.example")
    assert over_tls.status_code == 200


def test_client_credentials_with_secret_in_body(
    client: FlaskClient, machine: MachineClient
) -> None:
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": machine.client_id,
            "client_secret": machine.client_secret,
            "scope": "roles:read",
        },
    )
    assert response.status_code == 200
    assert response.json["scope"] == "roles:read"


def test_wrong_secret_is_invalid_client(client: FlaskClient, machine: MachineClient) -> None:
    wrong = MachineClient(machine.client_id, "not-the-secret")
    response = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=wrong.basic
    )
    token_error(response, 401, "invalid_client")
    assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_basic_credentials_that_do_not_decode_are_invalid_client(client: FlaskClient) -> None:
    not_utf8 = base64.b64encode(b"\xff\xfe:\xfd").decode()
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": "Basic " + not_utf8},
    )
    token_error(response, 401, "invalid_client")
    assert response.headers["WWW-Authenticate"].startswith("Basic")


def test_unknown_client_is_invalid_client(client: FlaskClient) -> None:
    ghost = MachineClient("no-such-client", "whatever")
    response = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=ghost.basic
    )
    token_error(response, 401, "invalid_client")


def test_scope_beyond_the_clients_is_invalid_scope(
    client: FlaskClient, machine: MachineClient
) -> None:
    response = client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "scope": "roles:read openid"},
        headers=machine.basic,
    )
    token_error(response, 400, "invalid_scope")


def test_grant_not_allowed_for_the_client_is_unauthorized_client(
    client: FlaskClient, services: Any
) -> None:
    other = make_client(services, grant_types=["refresh_token"], scopes=["roles:read"])
    response = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=other.basic
    )
    token_error(response, 400, "unauthorized_client")


@pytest.mark.parametrize("grant_type", ["implicit", "urn:x", "PASSWORD", ""])
def test_unsupported_grant_type(
    client: FlaskClient, machine: MachineClient, grant_type: str
) -> None:
    response = client.post("/oauth/token", data={"grant_type": grant_type}, headers=machine.basic)
    token_error(response, 400, "unsupported_grant_type")


def test_missing_grant_type(client: FlaskClient, machine: MachineClient) -> None:
    token_error(
        client.post("/oauth/token", data={}, headers=machine.basic), 400, "unsupported_grant_type"
    )


def test_token_endpoint_only_accepts_post(client: FlaskClient) -> None:
    response = client.get("/oauth/token?grant_type=client_credentials")
    assert response.status_code == 405
    assert response.is_json


# password -------------------------------------------------------------------------------


def test_password_grant_starts_a_session(client: FlaskClient, user: User, services: Any) -> None:
    response = password_login(client)
    assert response.status_code == 200
    body = response.json
    assert body["scope"] == "openid profile email"
    claims = services.tokens.verify_access_token(body["access_token"])
    assert claims["sub"] == str(user.id)
    assert claims["client_id"] == "cinema-app"
    assert claims["roles"] == []
    assert claims["sid"] == body["refresh_token"].split(".")[0]
    assert services.store.get_session(claims["sid"]).user_id == str(user.id)


def test_password_grant_puts_roles_in_the_token(
    client: FlaskClient, user: User, services: Any
) -> None:
    from oidc_server.models import Role, UserRole

    with services.db.session() as session:
        role = session.query(Role).filter_by(name="subscriber").one()
        session.add(UserRole(user_id=user.id, role_id=role.id))
    claims = services.tokens.verify_access_token(password_login(client).json["access_token"])
    assert claims["roles"] == ["subscriber"]


@pytest.mark.parametrize(
    ("username", "password"),
    [("viewer@example.com", "wrong password!"), ("nobody@example.com", "correct horse battery")],
)
def test_bad_credentials_give_one_answer(
    client: FlaskClient, user: User, username: str, password: str
) -> None:
    response = password_login(client, username, password)
    token_error(response, 400, "invalid_grant")
    assert response.json["error_description"] == "Invalid username or password."


def test_disabled_user_cannot_sign_in(client: FlaskClient, user: User, services: Any) -> None:
    with services.db.session() as session:
        session.get(User, user.id).is_active = False
    token_error(password_login(client), 400, "invalid_grant")


@pytest.mark.parametrize("missing", ["username", "password"])
def test_password_grant_missing_parameters(client: FlaskClient, user: User, missing: str) -> None:
    data = {
        "grant_type": "password",
        "client_id": "cinema-app",
        "username": "viewer@example.com",
        "password": "x",
    }
    del data[missing]
    token_error(client.post("/oauth/token", data=data), 400, "invalid_request")


def test_repeated_parameters_are_invalid_request(client: FlaskClient, user: User) -> None:
    response = client.post(
        "/oauth/token",
        data={
            "grant_type": "password",
            "client_id": "cinema-app",
            "username": ["viewer@example.com", "other@example.com"],
            "password": "x",
        },
    )
    token_error(response, 400, "invalid_request")


FORM = {"Content-Type": "application/x-www-form-urlencoded"}


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ("", "grant_type=client_credentials&grant_type=client_credentials"),
        ("", "grant_type=client_credentials&grant_type=password"),
        ("grant_type=client_credentials", "grant_type=client_credentials"),
        ("scope=roles%3Awrite", "grant_type=client_credentials&scope=roles%3Aread"),
    ],
    ids=[
        "grant_type twice, the same grant",
        "grant_type twice, two grants",
        "grant_type in the query and the body",
        "scope in the query and the body",
    ],
)
def test_a_parameter_given_twice_is_invalid_request_wherever_it_is_given(
    client: FlaskClient, machine: MachineClient, query: str, body: str
) -> None:
    # RFC 6749 §3.1: parameters must not be included more than once. Authlib reads the query
    # and the body alike, so a parameter in both is given twice too.
    path = f"/oauth/token?{query}" if query else "/oauth/token"
    response = client.post(path, data=body, headers={**machine.basic, **FORM})
    token_error(response, 400, "invalid_request")


@pytest.mark.parametrize("repeated", ["client_id", "client_secret"])
def test_client_credentials_in_the_body_given_twice_are_invalid_request(
    client: FlaskClient, machine: MachineClient, repeated: str
) -> None:
    fields = [
        ("grant_type", "client_credentials"),
        ("client_id", machine.client_id),
        ("client_secret", machine.client_secret),
    ]
    fields += [(name, value) for name, value in fields if name == repeated]
    body = "&".join(f"{name}={value}" for name, value in fields)
    token_error(client.post("/oauth/token", data=body, headers=FORM), 400, "invalid_request")


@pytest.mark.parametrize(
    "body",
    [
        {"client_id": "{id}", "client_secret": "{secret}"},
        {"client_secret": "{secret}"},
        {"client_id": "cinema-app"},
    ],
    ids=["Basic and client_secret_post", "a client_secret beside Basic", "another client_id"],
)
def test_basic_credentials_beside_other_credentials_are_invalid_request(
    client: FlaskClient, machine: MachineClient, body: dict[str, str]
) -> None:
    # RFC 6749 §2.3: one authentication method per request; §5.2: invalid_request.
    data = {"grant_type": "client_credentials"}
    data |= {
        name: value.format(id=machine.client_id, secret=machine.client_secret)
        for name, value in body.items()
    }
    token_error(
        client.post("/oauth/token", data=data, headers=machine.basic), 400, "invalid_request"
    )


def test_basic_credentials_may_come_with_their_own_client_id(
    client: FlaskClient, machine: MachineClient
) -> None:
    data = {"grant_type": "client_credentials", "client_id": machine.client_id}
    assert client.post("/oauth/token", data=data, headers=machine.basic).status_code == 200


@pytest.mark.parametrize(
    ("query", "body"),
    [
        ("client_secret={secret}", "grant_type=client_credentials&client_id={id}"),
        ("grant_type=client_credentials", ""),
        ("scope=roles%3Aread", "grant_type=client_credentials"),
    ],
    ids=["a client secret", "the grant", "a scope"],
)
def test_parameters_in_the_url_are_invalid_request(
    client: FlaskClient, machine: MachineClient, query: str, body: str
) -> None:
    # RFC 6749 §2.3.1, §3.2: in the request body; a URL ends up in every proxy's access log.
    fill = {"id": machine.client_id, "secret": machine.client_secret}
    headers = {**FORM, **({} if "client_id" in body else machine.basic)}
    response = client.post(
        f"/oauth/token?{query.format(**fill)}", data=body.format(**fill), headers=headers
    )
    token_error(response, 400, "invalid_request")


def test_a_refresh_token_in_the_url_is_refused_and_not_spent(
    client: FlaskClient, user: User
) -> None:
    tokens = password_login(client).json
    in_url = client.post(
        f"/oauth/token?refresh_token={tokens['refresh_token']}",
        data={"grant_type": "refresh_token", "client_id": "cinema-app"},
    )
    token_error(in_url, 400, "invalid_request")
    # The token in the body, and only a harmless parameter in the URL: refused all the same.
    beside_a_query = refresh(client, tokens["refresh_token"], path="/oauth/token?scope=openid")
    token_error(beside_a_query, 400, "invalid_request")
    in_body = refresh(client, tokens["refresh_token"])
    assert in_body.status_code == 200


def test_password_grant_is_for_first_party_clients_only(
    client: FlaskClient, user: User, services: Any
) -> None:
    from oidc_server.clients import ClientError

    with pytest.raises(ClientError):
        make_client(services, grant_types=["password"], scopes=["openid"])
    third = make_client(services, grant_types=["client_credentials"], scopes=["openid"])
    response = client.post(
        "/oauth/token",
        data={"grant_type": "password", "username": "viewer@example.com", "password": "x"},
        headers=third.basic,
    )
    token_error(response, 400, "unauthorized_client")


def test_password_hash_is_upgraded_when_parameters_change(
    client: FlaskClient, user: User, services: Any
) -> None:
    from oidc_server.security import PasswordHasher

    old_hash = user.password_hash
    services.hasher = PasswordHasher(time_cost=2, memory_cost=2048, parallelism=1)
    assert password_login(client).status_code == 200
    with services.db.session() as session:
        new_hash = session.get(User, user.id).password_hash
    assert new_hash != old_hash and "m=2048,t=2,p=1" in new_hash
    assert password_login(client).status_code == 200


# refresh_token --------------------------------------------------------------------------


def refresh(client: FlaskClient, token: str, path: str = "/oauth/token", **extra: str) -> Any:
    return client.post(
        path,
        data={
            "grant_type": "refresh_token",
            "client_id": "cinema-app",
            "refresh_token": token,
            **extra,
        },
    )


def test_refresh_rotates_the_token(client: FlaskClient, user: User, services: Any) -> None:
    first = password_login(client).json
    second = refresh(client, first["refresh_token"])
    assert second.status_code == 200
    assert second.json["refresh_token"] != first["refresh_token"]
    old = services.tokens.verify_access_token(first["access_token"])
    new = services.tokens.verify_access_token(second.json["access_token"])
    assert new["sid"] == old["sid"] and new["jti"] != old["jti"]
    assert refresh(client, second.json["refresh_token"]).status_code == 200


def test_a_warm_refresh_costs_two_redis_round_trips_and_no_query(
    client: FlaskClient, user: User, services: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The client check's generation and the user's card go together; the rotation alone."""
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")
    first = refresh(client, password_login(client).json["refresh_token"]).json  # warms caches
    with round_trips(monkeypatch) as trips, count_queries(services) as queries:
        second = refresh(client, first["refresh_token"])
    assert second.status_code == 200
    assert len(trips) == 2
    assert queries == []


def test_a_refresh_token_names_its_user_and_a_forged_name_spends_nothing(
    client: FlaskClient, user: User
) -> None:
    first = password_login(client).json
    sid, secret, named = first["refresh_token"].split(".")
    assert named == str(user.id)
    forged = f"{sid}.{secret}.{uuid.uuid4()}"
    token_error(refresh(client, forged), 400, "invalid_grant")
    assert refresh(client, first["refresh_token"]).status_code == 200


def test_a_refresh_token_from_before_it_named_its_user_still_refreshes(
    client: FlaskClient, user: User, services: Any
) -> None:
    # What a session started by the previous release holds: "<sid>.<random>".
    now = int(time.time())
    sid = "legacy-session"
    legacy = f"{sid}.{secrets.token_urlsafe(32)}"
    services.tokens.store.start_session(
        SessionRecord(sid, str(user.id), "cinema-app", now, now, now, "password"),
        hash_token(legacy),
        RefreshRecord(sid, str(user.id), "cinema-app", "openid", now, now + 600),
        600,
    )
    renewed = refresh(client, legacy)
    assert renewed.status_code == 200, renewed.json
    assert renewed.json["refresh_token"].split(".")[0::2] == [sid, str(user.id)]
    token_error(refresh(client, legacy), 400, "invalid_grant")  # spent: reuse


def test_reusing_a_refresh_token_revokes_the_whole_session(
    client: FlaskClient, user: User, services: Any
) -> None:
    first = password_login(client).json
    second = refresh(client, first["refresh_token"]).json
    token_error(refresh(client, first["refresh_token"]), 400, "invalid_grant")
    # Every token of that login is dead now: the successor and both access tokens.
    token_error(refresh(client, second["refresh_token"]), 400, "invalid_grant")
    assert services.tokens.verify_access_token(first["access_token"]) is None
    assert services.tokens.verify_access_token(second["access_token"]) is None
    me = client.get("/oauth/userinfo", headers=bearer(second["access_token"]))
    assert me.status_code == 401


def test_refresh_may_narrow_but_not_widen_scope(client: FlaskClient, user: User) -> None:
    first = password_login(client).json
    narrowed = refresh(client, first["refresh_token"], scope="openid")
    assert narrowed.status_code == 200 and narrowed.json["scope"] == "openid"
    token_error(
        refresh(client, narrowed.json["refresh_token"], scope="openid roles:write"),
        400,
        "invalid_scope",
    )
    # Refused before anything was spent: the token still refreshes, once.
    assert refresh(client, narrowed.json["refresh_token"]).status_code == 200


@pytest.mark.parametrize("token", ["", "garbage", "a.b", "x" * 300, "sid.secret.extra"])
def test_unknown_refresh_tokens_are_invalid_grant(
    client: FlaskClient, user: User, token: str
) -> None:
    response = refresh(client, token)
    assert response.status_code == 400
    assert response.json["error"] in {"invalid_grant", "invalid_request"}


def test_refresh_token_is_bound_to_its_client(
    client: FlaskClient, user: User, services: Any
) -> None:
    first = password_login(client).json
    other = make_client(
        services, grant_types=["refresh_token", "client_credentials"], scopes=["openid"]
    )
    response = client.post(
        "/oauth/token",
        data={"grant_type": "refresh_token", "refresh_token": first["refresh_token"]},
        headers=other.basic,
    )
    token_error(response, 400, "invalid_grant")
    # Another client's attempt spends nothing and ends nothing: the owner still refreshes.
    assert refresh(client, first["refresh_token"]).status_code == 200


def test_refresh_of_a_disabled_user_fails(client: FlaskClient, user: User, services: Any) -> None:
    first = password_login(client).json
    with services.db.session() as session:
        session.get(User, user.id).is_active = False
    token_error(refresh(client, first["refresh_token"]), 400, "invalid_grant")


def test_concurrent_refreshes_have_exactly_one_winner(app: Any, user: User, services: Any) -> None:
    first = password_login(app.test_client()).json
    statuses: list[int] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        local = app.test_client()
        barrier.wait()
        statuses.append(refresh(local, first["refresh_token"]).status_code)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] + [400] * 7
