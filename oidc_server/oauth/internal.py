"""Running a token request from inside the server, for /api/v1 endpoints that wrap a grant.

``/api/v1/auth/login`` is the ``password`` grant on behalf of the first-party client, and
``/api/v1/auth/refresh`` its ``refresh_token`` grant: they build the form a client would have
sent and let the same Authlib grant answer it, so checks and side effects are identical.
"""

from __future__ import annotations

from typing import Any

from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request
from flask import request as flask_request
from werkzeug.datastructures import MultiDict

from .server import authorization_server


class _FormPayload(OAuth2Payload):
    def __init__(self, form: MultiDict[str, str]) -> None:
        self._form = form

    @property
    def data(self) -> MultiDict[str, str]:
        return self._form

    @property
    def datalist(self) -> dict[str, list[str]]:
        return {key: self._form.getlist(key) for key in self._form}


class InternalTokenRequest(OAuth2Request):
    """A token request with a form we built, carrying the real request's URL and headers."""

    def __init__(self, form: dict[str, str]) -> None:
        headers = {k: v for k, v in flask_request.headers.items() if k.lower() != "authorization"}
        super().__init__(method="POST", uri=flask_request.url, headers=headers)
        self._form: MultiDict[str, str] = MultiDict(form)
        self.payload = _FormPayload(self._form)

    @property
    def form(self) -> MultiDict[str, str]:
        return self._form

    @property
    def args(self) -> MultiDict[str, str]:
        return MultiDict()


def run_token_request(form: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """Answer ``form`` as POST /oauth/token would; returns the status and the JSON body."""
    response = authorization_server().create_token_response(InternalTokenRequest(form))
    return response.status_code, response.get_json()
