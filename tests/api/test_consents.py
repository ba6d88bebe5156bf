"""A user lists the third-party apps they allowed and takes consent back."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from flask.testing import FlaskClient

from oidc_server import consent
from oidc_server.models import User

from ..conftest import MachineClient, bearer, make_client, password_login


def allow(services: Any, user: User, client: MachineClient, scopes: list[str]) -> None:
    with services.db.session() as session:
        consent.remember_consent(session, user.id, client.client_id, scopes)


def test_consents_are_listed_and_revoked(client: FlaskClient, user: User, services: Any) -> None:
    partner = make_client(services, scopes=["openid", "profile"])
    allow(services, user, partner, ["openid", "profile"])
    token = password_login(client).json["access_token"]

    listed = client.get("/api/v1/users/me/consents/", headers=bearer(token))
    assert listed.status_code == 200
    assert [(c["client_id"], c["scopes"]) for c in listed.json] == [
        (partner.client_id, ["openid", "profile"])
    ]
    # UTC with its offset on every database (SQLite hands back naive datetimes).
    assert datetime.fromisoformat(listed.json[0]["granted_at"]).utcoffset() == timedelta(0)

    revoked = client.delete(f"/api/v1/users/me/consents/{partner.client_id}", headers=bearer(token))
    assert revoked.status_code == 204
    with services.db.session() as session:
        assert not consent.has_consent(session, user.id, partner.client_id, ["openid"])
    assert client.get("/api/v1/users/me/consents/", headers=bearer(token)).json == []
    again = client.delete(f"/api/v1/users/me/consents/{partner.client_id}", headers=bearer(token))
    assert again.status_code == 404 and again.json["error"] == "not_found"


def test_another_users_consent_cannot_be_revoked(
    client: FlaskClient, user: User, services: Any
) -> None:
    from oidc_server.accounts import create_user

    partner = make_client(services, scopes=["openid"])
    with services.db.session() as session:
        other = create_user(session, services.hasher, "other@example.com", "another long pw 1")
    allow(services, other, partner, ["openid"])
    token = password_login(client).json["access_token"]
    response = client.delete(
        f"/api/v1/users/me/consents/{partner.client_id}", headers=bearer(token)
    )
    assert response.status_code == 404
    with services.db.session() as session:
        assert consent.has_consent(session, other.id, partner.client_id, ["openid"])


def test_consents_need_a_user_token(client: FlaskClient, machine: MachineClient) -> None:
    assert client.get("/api/v1/users/me/consents/").status_code == 401
    machine_token = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic
    ).json["access_token"]
    assert (
        client.get("/api/v1/users/me/consents/", headers=bearer(machine_token)).status_code == 403
    )
