"""Every /api/v1 operation keeps the contract its OpenAPI description states, under fuzzing.

Schemathesis reads our own ``/openapi.json`` and, for each operation, sends boundary cases,
then random valid and invalid requests (a bounded number per operation), authenticated as
the operation needs: a fresh user session per case for user operations (so that one case
signing out does not fail the next), a ``client_credentials`` token with ``roles:read
roles:write`` for the roles API. Every response must be no 5xx, a status the operation
documents explicitly, the documented content type, headers and body schema; an operation that
declares bearer auth must refuse the request without it; invalid data must be refused.

The description is built at import from the API blueprints alone (no database, keys or
network; a test checks the app serves exactly it), so that each operation is its own pytest
item with a fresh app. The ``default`` response flask-smorest adds to every operation is
dropped before loading: with it, any status would count as documented. A second run points
valid requests at things that exist (the user, a held role, the case's own session, a linked
social account, a code from the stand-in provider, the right password), so that success
responses are checked as well as 404s.
"""

from __future__ import annotations

import copy
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis import Case
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from oidc_server import api
from oidc_server.models import SocialAccount, User
from oidc_server.tokens.service import LoginContext

from ..conftest import PASSWORD, MachineClient, bearer
from ..social.conftest import APP_REDIRECT
from ..support.fake_providers import FakeProviders
from ..support.roles import machine_token

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    ignored_auth,
    negative_data_rejection,
]
#: Random cases per operation (schemathesis adds its boundary cases and schema examples to
#: the first test); with a fresh app per operation the file takes about half a minute.
EXAMPLES_PER_OPERATION = 25
EXAMPLES_ABOUT_REAL_THINGS = 10


def published_description() -> dict[str, Any]:
    """``/openapi.json`` as the app serves it, from a bare Flask app with only the API on it."""
    bare = Flask(__name__)
    api.init_app(bare)
    return bare.test_client().get("/openapi.json").get_json()


def without_default_responses(spec: dict[str, Any]) -> dict[str, Any]:
    """The description with only the statuses each operation documents explicitly."""
    strict = copy.deepcopy(spec)
    for path_item in strict["paths"].values():
        for operation in path_item.values():
            if isinstance(operation, dict):
                operation.get("responses", {}).pop("default", None)
    return strict


DESCRIPTION = published_description()
#: Everything schemathesis does: schema examples, boundary (coverage) cases, then fuzzing.
schema = schemathesis.openapi.from_dict(without_default_responses(DESCRIPTION))
#: Valid requests only, fuzzing alone, for the cases re-pointed at real things: an invalid
#: request made valid would look accepted-though-invalid, and schema examples cannot be
#: combined with extra strategies.
fuzzing_only = schemathesis.openapi.from_dict(
    without_default_responses(DESCRIPTION),
    config=schemathesis.Config.from_dict(
        {
            "generation": {"mode": "positive"},
            "phases": {"examples": {"enabled": False}, "coverage": {"enabled": False}},
        }
    ),
)


@dataclass
class World:
    """What exists in the app under test, and how to get credentials for it."""

    services: Any
    fake: FakeProviders
    user: User
    role_id: str
    social_account_id: str
    machine_token: str

    def user_session(self) -> tuple[str, str, str]:
        """A new session of the user: its access token, refresh token and id."""
        login = LoginContext(
            user_id=str(self.user.id),
            client_id=self.services.settings.first_party_client_id,
            scope="openid profile email",
            roles=[],
            auth_method="password",
        )
        token, session = self.services.tokens.start_session(login)
        return token["access_token"], token["refresh_token"], session.sid


@pytest.fixture
def world(
    client: FlaskClient, services: Any, user: User, machine: MachineClient, fake: FakeProviders
) -> World:
    token = machine_token(client, machine, "roles:read roles:write")
    role = client.post(
        "/api/v1/roles/",
        json={"name": "fuzzed", "description": "made for the fuzzer"},
        headers=bearer(token),
    )
    assert role.status_code == 201, role.json
    # The user holds it, so the HEAD check and the assignment operations can answer 200 too.
    held = client.post(f"/api/v1/users/{user.id}/roles/{role.json['id']}", headers=bearer(token))
    assert held.status_code == 201, held.json
    with services.db.session() as session:
        account = SocialAccount(user_id=user.id, provider="yandex", subject="fuzz-1", email=None)
        session.add(account)
        session.flush()
        account_id = str(account.id)
    return World(services, fake, user, role.json["id"], account_id, token)


def credentials(case: Case, world: World) -> tuple[dict[str, str], str]:
    """The bearer header the operation needs, and the session id when it is a user's token."""
    if not case.operation.definition.raw.get("security"):
        return {}, ""
    if "/roles" in case.path:
        return bearer(world.machine_token), ""
    access_token, _, sid = world.user_session()
    return bearer(access_token), sid


def point_at_real_things(case: Case, world: World, sid: str, provider: str) -> None:
    """Replace generated identifiers and credentials with ones that exist in the app."""
    known = {
        "user_id": str(world.user.id),
        "role_id": world.role_id,
        "session_id": sid,
        "social_account_id": world.social_account_id,
        "provider": provider,
    }
    for name in case.path_parameters or {}:
        if known.get(name):
            case.path_parameters[name] = known[name]
    body = case.body
    if not isinstance(body, dict):
        return  # the operation takes no body
    where = (case.method.upper(), case.operation.path)
    if where == ("POST", "/api/v1/auth/login"):
        body.update(login=world.user.login, password=PASSWORD)
    elif where == ("POST", "/api/v1/auth/register"):
        body.update(login=f"{uuid.uuid4().hex}@example.com", password=PASSWORD)
    elif where == ("POST", "/api/v1/auth/refresh"):
        body["refresh_token"] = world.user_session()[1]
    elif "code" in body and "redirect_uri" in body:  # social sign-in and linking
        body.update(
            code=world.fake.issue_code(provider, redirect_uri=APP_REDIRECT),
            redirect_uri=APP_REDIRECT,
        )
        body.pop("code_verifier", None)  # the code was issued without PKCE or nonce
        body.pop("nonce", None)


def send(case: Case, app: Flask, headers: dict[str, str]) -> None:
    """Send the case to this test's app in-process, and run every check on the answer."""
    # The operation and its schema are built at import; the app exists per test. Both need
    # it: the auth check's probes (the request again, without the token) go through the schema.
    case.operation.app = app
    case.operation.schema.app = app
    # Passed apart from the case, so schemathesis knows the token is real (not generated) and
    # its auth check sends the request again without it, expecting a refusal.
    case.call_and_validate(headers=headers, checks=CHECKS)


FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    database=None,
    # One app serves all examples of an operation, on purpose: state carries over.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ_SETTINGS
@schema.parametrize()
def test_every_operation_answers_as_documented(case: Case, app: Flask, world: World) -> None:
    headers, _ = credentials(case, world)
    send(case, app, headers)


@settings(FUZZ_SETTINGS, max_examples=EXAMPLES_ABOUT_REAL_THINGS)
@fuzzing_only.given(provider=st.sampled_from(["google", "yandex"]))
@fuzzing_only.parametrize()
def test_every_operation_answers_as_documented_about_things_that_exist(
    case: Case, provider: str, app: Flask, world: World
) -> None:
    headers, sid = credentials(case, world)
    point_at_real_things(case, world, sid, provider)
    send(case, app, headers)


def test_the_fuzzed_description_is_the_one_the_app_serves(client: FlaskClient) -> None:
    assert client.get("/openapi.json").get_json() == DESCRIPTION
