"""Workers cache clients, and drop them as soon as any client changes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from oidc_server.clients import CLIENTS_GENERATION
from oidc_server.models import OAuthClient

from ..conftest import MachineClient


def token_status(client: FlaskClient, machine: MachineClient) -> int:
    return client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic
    ).status_code


def deactivate(services: Any, client_id: str) -> None:
    with services.db.session() as session:
        session.query(OAuthClient).filter_by(client_id=client_id).one().is_active = False


def test_a_cached_client_is_served_without_the_database(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    assert token_status(client, machine) == 200
    deactivate(services, machine.client_id)  # behind the cache's back: no generation bump
    assert token_status(client, machine) == 200


def introspection_status(client: FlaskClient, machine: MachineClient) -> int:
    # Introspection reads the generation together with the token's own reads.
    return client.post(
        "/oauth/introspect", data={"token": "not-a-token"}, headers=machine.basic
    ).status_code


@pytest.mark.parametrize("status_of", [token_status, introspection_status])
def test_a_generation_bump_drops_cached_clients_in_every_worker(
    app: Any,
    client: FlaskClient,
    machine: MachineClient,
    services: Any,
    status_of: Callable[[FlaskClient, MachineClient], int],
) -> None:
    from oidc_server.app import create_app

    other_app = create_app(services.settings, store=services.store)
    other_worker = other_app.test_client()
    try:
        assert status_of(client, machine) == 200
        assert status_of(other_worker, machine) == 200
        deactivate(services, machine.client_id)
        services.store.bump_generation(CLIENTS_GENERATION)
        assert status_of(client, machine) == 401
        assert status_of(other_worker, machine) == 401
    finally:
        other_app.extensions["oidc"].db.dispose()


def test_cached_entries_expire_after_max_age(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    assert token_status(client, machine) == 200
    deactivate(services, machine.client_id)
    services.client_cache.max_age = 0
    assert token_status(client, machine) == 401
