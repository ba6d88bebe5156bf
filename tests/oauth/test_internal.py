"""Token requests built inside the server answer exactly as POST /oauth/token does."""

from __future__ import annotations

from typing import Any

from flask import Flask

from oidc_server.models import User
from oidc_server.oauth.internal import run_token_request

from ..conftest import PASSWORD


def test_internal_password_grant_issues_a_session(app: Flask, user: User, services: Any) -> None:
    form = {
        "grant_type": "password",
        "client_id": "cinema-app",
        "username": user.login,
        "password": PASSWORD,
    }
    with app.test_request_context(
        "/api/v1/auth/login", method="POST", headers={"Authorization": "Bearer ignored"}
    ):
        status, body = run_token_request(form)
    assert status == 200
    claims = services.tokens.verify_access_token(body["access_token"])
    assert claims["sub"] == str(user.id) and claims["sid"]


def test_internal_requests_fail_like_the_endpoint(app: Flask, user: User) -> None:
    form = {
        "grant_type": "password",
        "client_id": "cinema-app",
        "username": user.login,
        "password": "wrong password",
    }
    with app.test_request_context("/api/v1/auth/login", method="POST"):
        status, body = run_token_request(form)
    assert status == 400 and body["error"] == "invalid_grant"
