"""The JWKS and the discovery documents answered before Flask (see ``oidc_server/direct``).

Every service that verifies our tokens fetches the JWKS (and, starting, the discovery
document), from every replica and after every cache expiry. These answers are the views' of
``web/wellknown.py``: the same documents (``KeyRing.jwks``, ``discovery_document``), written
by the app's JSON provider and sent with the same ``Cache-Control``. The bytes are encoded
again only when the document changes (a key rotated).

Only ``GET`` and ``HEAD`` without a query string or an ``Origin`` are answered; the routes are
exempt from rate limits, so this is used with them on as well.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import Any

from flask import Flask

from .. import cors
from ..rsgi import Answer
from ..services import Services
from ..web.wellknown import DISCOVERY_MAX_AGE, JWKS_MAX_AGE, discovery_document
from .answers import AnswerShape, ProxiedView, json_writer

JWKS_PATH = "/.well-known/jwks.json"
DISCOVERY_PATHS = (
    "/.well-known/openid-configuration",
    "/.well-known/oauth-authorization-server",
)


class _Document:
    """One well-known document: where it is read from, and its answers."""

    def __init__(
        self,
        read: Callable[[], dict[str, Any]],
        encode: Callable[[dict[str, Any]], bytes],
        shapes: dict[str, AnswerShape],
    ) -> None:
        self.read = read
        self.encode = encode
        self.shapes = shapes
        self._encoded: tuple[dict[str, Any], bytes] | None = None

    def body(self) -> bytes:
        document = self.read()  # the same object while unchanged (cached where it is made)
        if self._encoded is None or self._encoded[0] is not document:
            self._encoded = (document, self.encode(document))
        return self._encoded[1]


class DirectWellKnown:
    """``(environ, body) -> answer or None``: the JWKS or a discovery document for a plain
    ``GET`` or ``HEAD``, or None to let the app answer the request."""

    def __init__(self, svc: Services, write: Callable[[Any], bytes], *, vary_origin: bool) -> None:
        self.svc = svc
        self._seen = ProxiedView(svc)

        def document(
            read: Callable[[], dict[str, Any]], path: str, max_age: int
        ) -> tuple[str, _Document]:
            headers = [
                ("Content-Type", "application/json"),
                ("Cache-Control", f"public, max-age={max_age}"),
            ]
            shapes = AnswerShape.get_and_head(svc, path, headers, vary_origin=vary_origin)
            return path, _Document(read, write, shapes)

        self.documents = dict(
            [
                document(svc.keyring.jwks, JWKS_PATH, JWKS_MAX_AGE),
                *(
                    document(
                        partial(discovery_document, svc.settings, path.rsplit("/", 1)[1]),
                        path,
                        DISCOVERY_MAX_AGE,
                    )
                    for path in DISCOVERY_PATHS
                ),
            ]
        )

    @classmethod
    def for_app(cls, app: Flask) -> DirectWellKnown | None:
        """The direct path for ``app``'s well-known documents; None when Flask would indent
        its JSON (debug mode)."""
        write = json_writer(app)
        if write is None:
            return None
        return cls(app.extensions["oidc"], write, vary_origin=cors.enabled(app))

    async def __call__(self, environ: dict[str, Any], body: bytes) -> Answer | None:
        started = time.perf_counter()
        document = self.documents.get(environ["PATH_INFO"])
        if (
            document is None
            or environ.get("QUERY_STRING")
            or "HTTP_ORIGIN" in environ  # a browser's: CORS decides its headers
        ):
            return None
        shape = document.shapes.get(environ["REQUEST_METHOD"])
        if shape is None:
            return None
        return shape.answer(self._seen(environ), document.body(), started)
