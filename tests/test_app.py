"""The application factory's own parts."""

from __future__ import annotations

from flask import Flask, session
from flask.testing import FlaskClient

from oidc_server.app import LazyCookieSessions


def _session_echo(app: Flask) -> None:
    @app.get("/_test/session/write")
    def write() -> str:
        session["seen"] = "yes"
        return "written"

    @app.get("/_test/session/read")
    def read() -> str:
        return session.get("seen", "nothing")


def test_flask_sessions_still_work_although_the_signer_is_built_only_for_a_cookie(
    app: Flask,
) -> None:
    assert isinstance(app.session_interface, LazyCookieSessions)
    _session_echo(app)
    client: FlaskClient = app.test_client()
    assert client.get("/_test/session/read").text == "nothing"
    assert client.get("/_test/session/write").text == "written"
    assert client.get("/_test/session/read").text == "yes"


def test_a_forged_session_cookie_is_ignored(app: Flask) -> None:
    _session_echo(app)
    client: FlaskClient = app.test_client()
    client.set_cookie("session", "eyJzZWVuIjoieWVzIn0.forged.signature")
    assert client.get("/_test/session/read").text == "nothing"
