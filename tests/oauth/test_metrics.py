"""The grants feed the Prometheus counters operators alert on."""

from __future__ import annotations

from typing import Any

from prometheus_client import REGISTRY

from ..conftest import MachineClient, password_login


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_tokens_failures_and_reuse_are_counted(
    client: Any, machine: MachineClient, user: Any
) -> None:
    issued_cc = sample("oidc_tokens_issued_total", grant="client_credentials")
    issued_pw = sample("oidc_tokens_issued_total", grant="password")
    issued_rt = sample("oidc_tokens_issued_total", grant="refresh_token")
    failures = sample("oidc_login_failures_total", method="password")
    reuse = sample("oidc_refresh_token_reuse_total")

    client.post("/oauth/token", data={"grant_type": "client_credentials"}, headers=machine.basic)
    tokens = password_login(client).json
    password_login(client, password="not the password")
    refresh = {
        "grant_type": "refresh_token",
        "client_id": "cinema-app",
        "refresh_token": tokens["refresh_token"],
    }
    client.post("/oauth/token", data=refresh)
    client.post("/oauth/token", data=refresh)  # spent: reuse detected

    assert sample("oidc_tokens_issued_total", grant="client_credentials") == issued_cc + 1
    assert sample("oidc_tokens_issued_total", grant="password") == issued_pw + 1
    assert sample("oidc_tokens_issued_total", grant="refresh_token") == issued_rt + 1
    assert sample("oidc_login_failures_total", method="password") == failures + 1
    assert sample("oidc_refresh_token_reuse_total") == reuse + 1
