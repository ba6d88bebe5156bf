"""The requests the production server answers without Flask: the few that are most of its traffic.

Machine clients ask for tokens, and services check roles, far more often than anything else
is asked, and each went through Flask's request machinery (routing, hooks, a response object)
and, for tokens, Authlib's: on the machine of session 11 that was more CPU than the RS256
signature a token needs, and nearly all of a role check's (docs/scaling.md). Each module here
answers one request shape of one endpoint with the calls the app's view makes and the answer
the app gives (body, headers, metrics, access line: ``answers.AnswerShape``):

- ``token``: ``client_credentials`` with Basic credentials of a cached client;
- ``refresh``: a refresh token of a user whose card is cached, for a cached client;
- ``role_check``: ``HEAD /api/v1/users/<id>/roles/<id>`` with a machine token, from the
  role cache;
- ``introspection``: an active access token, for a client with Basic credentials;
- ``users_me``: ``GET`` and ``HEAD /api/v1/users/me`` with a user's token, from the role
  cache;
- ``well_known``: the JWKS and the discovery documents.

Each answers only when its answer is the successful one (a token; 200 or 404 for a role
check; an active token's introspection; the signed-in user's account; a document). For
anything else it returns None and the request goes on to the app, which answers it as it
always has: so every error answer, and every case but the plain one, stays in one place, the
app. ``tests/direct`` holds each answer against the app's for the same request.

The production adapter (``oidc_server/rsgi.py``) asks ``answerer_for(app)`` before the app;
the test client and the embedded server never do.
"""

from __future__ import annotations

from typing import Any

from flask import Flask

from ..rsgi import Answer, FirstAnswer
from .introspection import DirectIntrospection
from .refresh import DirectRefresh
from .role_check import DirectRoleCheck
from .round_trips import RoundTrips
from .token import DirectClientCredentials
from .users_me import DirectUsersMe
from .well_known import DirectWellKnown


class DirectAnswers:
    """``(environ, body) -> answer or None``: the first answer of ``answerers``."""

    def __init__(self, answerers: list[FirstAnswer]) -> None:
        self.answerers = answerers

    async def __call__(self, environ: dict[str, Any], body: bytes) -> Answer | None:
        for answerer in self.answerers:
            given = await answerer(environ, body)
            if given is not None:
                return given
        return None


def answerer_for(app: Flask) -> DirectAnswers:
    """The direct answers ``app``'s settings allow (see each module), sharing their Redis
    round trips (``round_trips``)."""
    trips = RoundTrips(app.extensions["oidc"])
    made = (
        DirectClientCredentials.for_app(app, trips),
        DirectRefresh.for_app(app, trips),
        DirectRoleCheck.for_app(app, trips),
        DirectIntrospection.for_app(app, trips),
        DirectUsersMe.for_app(app, trips),
        DirectWellKnown.for_app(app),
    )
    return DirectAnswers([answerer for answerer in made if answerer is not None])
