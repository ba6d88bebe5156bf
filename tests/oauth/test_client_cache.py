"""Workers cache clients, and drop them as soon as any client changes."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from flask.testing import FlaskClient

from oidc_server.clients import CLIENTS_GENERATION, ClientCache, clients_changed
from oidc_server.models import OAuthClient
from oidc_server.rsgi import RECEIVED_AT
from oidc_server.tokens.redis_store import RedisTokenStore

from ..conftest import MachineClient
from ..support.redis_trips import round_trips


def token_status(
    client: FlaskClient, machine: MachineClient, received_at: float | None = None
) -> int:
    return client.post(
        "/oauth/token",
        data={"grant_type": "client_credentials"},
        headers=machine.basic,
        environ_base=_arrival(received_at),
    ).status_code


def _arrival(received_at: float | None) -> dict[str, Any]:
    """The arrival stamp the production server puts on each request (oidc_server/rsgi.py)."""
    return {} if received_at is None else {RECEIVED_AT: received_at}


def deactivate(services: Any, client_id: str) -> None:
    with services.db.session() as session:
        session.query(OAuthClient).filter_by(client_id=client_id).one().is_active = False


def test_a_cached_client_is_served_without_the_database(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    assert token_status(client, machine) == 200
    deactivate(services, machine.client_id)  # behind the cache's back: no generation bump
    assert token_status(client, machine) == 200


def introspection_status(
    client: FlaskClient, machine: MachineClient, received_at: float | None = None
) -> int:
    # Introspection reads the generation together with the token's own reads.
    return client.post(
        "/oauth/introspect",
        data={"token": "not-a-token"},
        headers=machine.basic,
        environ_base=_arrival(received_at),
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
        clients_changed(services.store)
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


# One generation read answers the requests that arrived before it was sent, or within its lease


def test_a_generation_read_answers_requests_received_until_its_lease_ends() -> None:
    cache = ClientCache(lease=0.25)
    assert cache.generation_read_since(10.0) is None  # nothing read yet
    cache.note_generation_read(10.0, "g1")
    assert cache.generation_read_since(9.5) == "g1"  # received before the read was sent
    assert cache.generation_read_since(10.0) == "g1"
    assert cache.generation_read_since(10.2) == "g1"  # received within its lease
    assert cache.generation_read_since(10.25) is None  # the lease is over: read again
    assert cache.generation_read_since(10.5) is None
    assert cache.generation_read_since(None) is None  # a request without its arrival time
    cache.note_generation_read(9.0, "older")  # a slower thread's earlier read: not kept
    assert cache.generation_read_since(10.2) == "g1"
    cache.note_generation_read(11.0, "g2")
    assert cache.generation_read_since(11.2) == "g2"


def test_without_a_lease_a_read_answers_only_requests_received_before_it_was_sent() -> None:
    cache = ClientCache(lease=0)
    cache.note_generation_read(10.0, "g1")
    assert cache.generation_read_since(9.5) == "g1"
    assert cache.generation_read_since(10.0) is None


def test_clients_changed_returns_after_the_lease_of_every_read_sent_before_it(
    services: Any,
) -> None:
    worker = ClientCache()
    worker.note_generation_read(time.monotonic(), "before the change")
    clients_changed(services.store)
    assert services.store.get_generation(CLIENTS_GENERATION) != "before the change"
    # A request received now must read the generation again, and so see the change.
    assert worker.generation_read_since(time.monotonic()) is None


@pytest.mark.parametrize(("lease", "trips_expected"), [(60.0, 0), (0.0, 1)])
def test_a_request_received_after_a_read_uses_it_while_its_lease_lasts(
    client: FlaskClient,
    machine: MachineClient,
    services: Any,
    monkeypatch: pytest.MonkeyPatch,
    lease: float,
    trips_expected: int,
) -> None:
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")
    monkeypatch.setattr(services.client_cache, "lease", lease)
    assert token_status(client, machine, time.monotonic()) == 200  # reads the generation
    with round_trips(monkeypatch) as trips:
        assert token_status(client, machine, time.monotonic()) == 200
    assert len(trips) == trips_expected


@pytest.mark.parametrize("status_of", [token_status, introspection_status])
def test_a_client_change_is_seen_by_every_request_received_after_it(
    client: FlaskClient,
    machine: MachineClient,
    services: Any,
    status_of: Callable[..., int],
) -> None:
    assert status_of(client, machine, time.monotonic()) == 200  # its read is now the newest
    deactivate(services, machine.client_id)
    clients_changed(services.store)
    assert status_of(client, machine, time.monotonic()) == 401


@pytest.mark.parametrize("status_of", [token_status, introspection_status])
def test_a_request_received_before_a_generation_read_uses_its_answer(
    client: FlaskClient,
    machine: MachineClient,
    services: Any,
    monkeypatch: pytest.MonkeyPatch,
    status_of: Callable[..., int],
) -> None:
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")
    arrived = time.monotonic()  # both requests arrive; the first one to run reads
    assert status_of(client, machine, arrived) == 200
    with round_trips(monkeypatch) as trips:
        # Neither request reads anything else: the grant signs, a malformed token is not looked up.
        assert status_of(client, machine, arrived) == 200
        assert trips == []
        assert status_of(client, machine) == 200  # no arrival time: it reads
        assert len(trips) == 1


def test_a_client_change_is_seen_by_an_introspection_that_reads_its_token(
    client: FlaskClient, machine: MachineClient, services: Any
) -> None:
    # With the token's own reads to send, the generation rides with them unless already read.
    token = client.post(
        "/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic
    ).json["access_token"]

    def introspect() -> Any:
        return client.post(
            "/oauth/introspect",
            data={"token": token},
            headers=machine.basic,
            environ_base=_arrival(time.monotonic()),
        )

    assert introspect().json["active"] is True
    deactivate(services, machine.client_id)
    clients_changed(services.store)
    assert introspect().status_code == 401
