"""/api/v1/users/me/sessions: the devices a user is signed in on, and signing one out."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from flask.testing import FlaskClient

from oidc_server.accounts import create_user
from oidc_server.models import User

from ..conftest import PASSWORD, bearer
from ..support.accounts import CHROME_ON_WINDOWS, SAFARI_ON_IPHONE, signed_in


def sid_of(services: Any, tokens: dict[str, Any]) -> str:
    return services.tokens.verify_access_token(tokens["access_token"])["sid"]


def sessions_of(client: FlaskClient, tokens: dict[str, Any]) -> Any:
    response = client.get("/api/v1/users/me/sessions", headers=bearer(tokens["access_token"]))
    assert response.status_code == 200
    return response.json


def test_every_login_is_a_session_listed_with_its_device(
    client: FlaskClient, user: User, services: Any
) -> None:
    laptop = signed_in(client, ip="198.51.100.4", user_agent=CHROME_ON_WINDOWS)
    phone = signed_in(client, ip="203.0.113.9", user_agent=SAFARI_ON_IPHONE)
    listed = sessions_of(client, phone)
    assert {entry["id"] for entry in listed} == {sid_of(services, laptop), sid_of(services, phone)}
    by_id = {entry["id"]: entry for entry in listed}
    mine = by_id[sid_of(services, phone)]
    assert mine["current"] is True
    assert mine["ip"] == "203.0.113.9"
    assert mine["user_agent"] == SAFARI_ON_IPHONE
    assert "iOS" in mine["device"] and "mobile" in mine["device"]
    assert mine["auth_method"] == "password"
    other = by_id[sid_of(services, laptop)]
    assert other["current"] is False
    assert other["ip"] == "198.51.100.4"
    assert other["device"].startswith("Chrome 120")
    for entry in listed:
        created = datetime.fromisoformat(entry["created_at"])
        assert created.utcoffset() is not None
        assert datetime.fromisoformat(entry["last_used_at"]) >= created


def test_the_list_is_newest_first(client: FlaskClient, user: User, services: Any) -> None:
    tokens = [signed_in(client) for _ in range(3)]
    stored = services.store.list_sessions(str(user.id))
    listed = sessions_of(client, tokens[0])
    assert [entry["id"] for entry in listed] == [record.sid for record in stored]
    created = [entry["created_at"] for entry in listed]
    assert created == sorted(created, reverse=True)


def test_a_refresh_moves_the_sessions_last_use(
    client: FlaskClient, user: User, services: Any
) -> None:
    tokens = signed_in(client)
    (before,) = sessions_of(client, tokens)
    later = time.time() + 3600
    services.tokens._clock = lambda: later  # the service's injectable clock, an hour on
    refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]})
    assert refreshed.status_code == 200
    (after,) = sessions_of(client, refreshed.json)
    assert after["id"] == before["id"]
    assert after["created_at"] == before["created_at"]
    assert datetime.fromisoformat(after["last_used_at"]) == datetime.fromtimestamp(int(later), UTC)


def test_other_users_sessions_are_not_listed(
    client: FlaskClient, user: User, services: Any
) -> None:
    with services.db.session() as session:
        create_user(session, services.hasher, "neighbour@example.com", PASSWORD)
    neighbour = signed_in(client, "neighbour@example.com")
    mine = signed_in(client)
    assert [entry["id"] for entry in sessions_of(client, mine)] == [sid_of(services, mine)]
    assert sid_of(services, neighbour) not in {e["id"] for e in sessions_of(client, mine)}


def test_ending_another_session_signs_that_device_out(
    client: FlaskClient, user: User, services: Any
) -> None:
    here = signed_in(client)
    there = signed_in(client)
    response = client.delete(
        f"/api/v1/users/me/sessions/{sid_of(services, there)}",
        headers=bearer(here["access_token"]),
    )
    assert response.status_code == 204
    assert [entry["id"] for entry in sessions_of(client, here)] == [sid_of(services, here)]
    assert client.get("/api/v1/users/me", headers=bearer(there["access_token"])).status_code == 401
    refreshed = client.post("/api/v1/auth/refresh", json={"refresh_token": there["refresh_token"]})
    assert refreshed.status_code == 401


def test_ending_the_current_session_signs_the_caller_out(
    client: FlaskClient, user: User, services: Any
) -> None:
    here = signed_in(client)
    response = client.delete(
        f"/api/v1/users/me/sessions/{sid_of(services, here)}",
        headers=bearer(here["access_token"]),
    )
    assert response.status_code == 204
    assert client.get("/api/v1/users/me", headers=bearer(here["access_token"])).status_code == 401


def test_someone_elses_session_is_404_and_survives(
    client: FlaskClient, user: User, services: Any
) -> None:
    with services.db.session() as session:
        create_user(session, services.hasher, "neighbour@example.com", PASSWORD)
    neighbour = signed_in(client, "neighbour@example.com")
    mine = signed_in(client)
    response = client.delete(
        f"/api/v1/users/me/sessions/{sid_of(services, neighbour)}",
        headers=bearer(mine["access_token"]),
    )
    assert response.status_code == 404
    assert response.json == {"error": "not_found", "message": "no such session"}
    assert (
        client.get("/api/v1/users/me", headers=bearer(neighbour["access_token"])).status_code == 200
    )


def test_an_unknown_or_ended_session_is_404(client: FlaskClient, user: User, services: Any) -> None:
    here = signed_in(client)
    gone = signed_in(client)
    gone_sid = sid_of(services, gone)
    url = f"/api/v1/users/me/sessions/{gone_sid}"
    assert client.delete(url, headers=bearer(here["access_token"])).status_code == 204
    assert client.delete(url, headers=bearer(here["access_token"])).status_code == 404
    unknown = client.delete(
        "/api/v1/users/me/sessions/no-such-session", headers=bearer(here["access_token"])
    )
    assert unknown.status_code == 404


def test_sessions_need_a_users_bearer_token(client: FlaskClient, user: User) -> None:
    assert client.get("/api/v1/users/me/sessions").status_code == 401
    assert client.delete("/api/v1/users/me/sessions/anything").status_code == 401
