"""The direct answers (oidc_server/direct) through the production server, over real HTTP:
tokens, refreshes, role checks and introspection answered, and the app still answering around
them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from flask import Flask

from oidc_server.clients import clients_changed
from oidc_server.models import OAuthClient
from oidc_server.tokens.redis_store import RedisTokenStore
from tests.conftest import PASSWORD, make_client
from tests.support.roles import role_id
from tests.support.server import production_server


def test_tokens_role_checks_and_introspection_through_the_production_server(
    app: Flask, services: Any, settings: Any, tmp_path: Path, user: Any
) -> None:
    # Both direct answers (tokens and role checks) and the app behind them, over real HTTP.
    if not isinstance(services.store, RedisTokenStore):
        pytest.skip("TEST_REDIS_URL not set (CI always sets it)")
    machine = make_client(services)
    with production_server(settings, tmp_path) as server:
        base = server.url
        jwks = jwt.PyJWKClient(base + "/.well-known/jwks.json")
        with requests.Session() as http:
            http.auth = (machine.client_id, machine.client_secret)
            answers = [
                http.post(base + "/oauth/token", data={"grant_type": "client_credentials"})
                for _ in range(20)
            ]
            assert [a.status_code for a in answers] == [200] * 20
            ids = set()
            for answer in answers:
                assert answer.headers["Cache-Control"] == "no-store"
                claims = _verified(jwks, settings, answer.json()["access_token"])
                assert (claims["sub"], claims["scope"]) == (
                    machine.client_id,
                    "roles:read roles:write",
                )
                ids.add(claims["jti"])
            assert len(ids) == 20

            echoed = http.post(
                base + "/oauth/token",
                data={"grant_type": "client_credentials"},
                headers={"X-Request-ID": "traced-token-request"},
            )
            assert echoed.headers["X-Request-ID"] == "traced-token-request"

            wrong = http.post(
                base + "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(machine.client_id, "not-the-secret"),
            )
            assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"

            # Not the plain request the direct answer takes: the app refuses it (RFC 6749 §3.1).
            twice = http.post(
                base + "/oauth/token",
                data="grant_type=client_credentials&grant_type=client_credentials",
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert twice.status_code == 400 and twice.json()["error"] == "invalid_request"
            in_url = http.post(
                base + "/oauth/token?grant_type=client_credentials",
                data={"scope": "roles:read"},
            )
            assert in_url.status_code == 400 and in_url.json()["error"] == "invalid_request"

            bearer = {"Authorization": f"Bearer {answers[0].json()['access_token']}"}
            role = role_id(services, "moderator")
            check = f"{base}/api/v1/users/{user.id}/roles/{role}"
            held = []
            for change in (requests.post, None, requests.delete, None):
                if change is not None:
                    assert change(check, headers=bearer, timeout=10).status_code in (201, 204)
                held += [requests.head(check, headers=bearer, timeout=10) for _ in range(3)]
            statuses = [answer.status_code for answer in held]
            assert statuses == [200] * 6 + [404] * 3 + [404] * 3
            assert all(answer.headers["Content-Length"] == "0" for answer in held)

            token = answers[1].json()["access_token"]
            introspected = [
                http.post(base + "/oauth/introspect", data={"token": token}) for _ in range(3)
            ]
            assert [i.json()["active"] for i in introspected] == [True] * 3
            assert introspected[0].json()["sub"] == machine.client_id
            http.post(base + "/oauth/revoke", data={"token": token})
            after = http.post(base + "/oauth/introspect", data={"token": token})
            assert after.json() == {"active": False}

            signed_in = requests.post(
                base + "/oauth/token",
                data={
                    "grant_type": "password",
                    "client_id": "cinema-app",
                    "username": user.login,
                    "password": PASSWORD,
                },
                timeout=30,
            )
            users_bearer = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
            mine = [requests.get(base + "/api/v1/users/me", headers=users_bearer, timeout=10)]
            mine += [requests.get(base + "/api/v1/users/me", headers=users_bearer, timeout=10)]
            assert [m.status_code for m in mine] == [200, 200]
            assert mine[0].json() == mine[1].json() and mine[1].json()["login"] == user.login
            peeked = requests.head(base + "/api/v1/users/me", headers=users_bearer, timeout=10)
            assert peeked.headers["Content-Length"] == mine[1].headers["Content-Length"]

            # Refresh: a chain of rotations, then the first token again: reuse ends the session.
            first = signed_in.json()["refresh_token"]
            chain = [first]
            for _ in range(4):
                rotated = _refresh(base, chain[-1])
                assert rotated.status_code == 200, rotated.text
                assert rotated.headers["Cache-Control"] == "no-store"
                chain.append(rotated.json()["refresh_token"])
                claims = _verified(jwks, settings, rotated.json()["access_token"])
                assert (claims["sub"], claims["client_id"]) == (str(user.id), "cinema-app")
            assert len(set(chain)) == 5
            reused = _refresh(base, first)
            assert reused.status_code == 400 and reused.json()["error"] == "invalid_grant"
            ended = _refresh(base, chain[-1])
            assert ended.status_code == 400 and ended.json()["error"] == "invalid_grant"
            metrics = requests.get(base + "/metrics", timeout=10).text
            assert "oidc_refresh_token_reuse_total 1.0" in metrics

            with services.db.session() as session:
                row = session.query(OAuthClient).filter_by(client_id=machine.client_id).one()
                row.is_active = False
            clients_changed(services.store)
            refused = http.post(base + "/oauth/token", data={"grant_type": "client_credentials"})
            assert refused.status_code == 401
    log = server.log.read_text()
    assert machine.client_secret not in log
    assert not any(a.json()["access_token"] in log for a in answers)
    assert not any(token in log for token in chain)


def _verified(jwks: jwt.PyJWKClient, settings: Any, token: str) -> dict[str, Any]:
    """The claims of ``token``, verified with PyJWT through the server's JWKS."""
    return jwt.decode(
        token,
        jwks.get_signing_key_from_jwt(token).key,
        algorithms=["RS256"],
        audience=settings.access_token_audience,
        issuer=settings.oidc_issuer,
    )


def _refresh(base: str, refresh_token: str) -> requests.Response:
    form = {"grant_type": "refresh_token", "client_id": "cinema-app"}
    return requests.post(
        base + "/oauth/token", data={**form, "refresh_token": refresh_token}, timeout=10
    )
