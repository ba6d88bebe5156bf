"""Recognising the plain requests the direct answers take: form POSTs with Basic credentials
of a cached client, and bearer tokens."""

from __future__ import annotations

from functools import lru_cache
from typing import Any
from urllib.parse import parse_qsl

from authlib.common.security import is_secure_transport
from authlib.oauth2.rfc6749.util import extract_basic_authorization

from ..clients import RegisteredClient
from ..services import Services

FORM_TYPE = "application/x-www-form-urlencoded"
BASIC = "client_secret_basic"


def plain_form_post(environ: dict[str, Any], path: str) -> bool:
    """A form POST to ``path``, without a query string (Authlib reads parameters from the
    query too) or an ``Origin`` (a browser's: CORS decides its headers)."""
    return (
        environ["REQUEST_METHOD"] == "POST"
        and environ["PATH_INFO"] == path
        and not environ.get("QUERY_STRING")
        and "HTTP_ORIGIN" not in environ
        and environ.get("CONTENT_TYPE", "").strip().lower() == FORM_TYPE
    )


def plain_form(body: bytes, allowed: frozenset[str]) -> dict[str, str] | None:
    """The form's fields if they are among ``allowed``, each given once, and it parses
    strictly as UTF-8; else None."""
    try:
        pairs = parse_qsl(
            body.decode("utf-8"), keep_blank_values=True, strict_parsing=True, errors="strict"
        )
    except (UnicodeDecodeError, ValueError):
        return None
    form = dict(pairs)
    if len(form) != len(pairs) or not set(form) <= allowed:
        return None
    return form


def basic_credentials(authorization: str | None) -> tuple[str, str] | None:
    """Client id and secret from ``Authorization: Basic``, parsed as Authlib parses them."""
    if not authorization:
        return None
    try:
        client_id, secret = extract_basic_authorization({"Authorization": authorization})
    except (ValueError, UnicodeError):
        return None
    if not client_id or not secret:
        return None
    return client_id, secret


def basic_client(
    svc: Services, generation: str, credentials: tuple[str, str], endpoint: str
) -> RegisteredClient | None:
    """The client that ``credentials`` (``basic_credentials``) authenticate at ``endpoint``
    (Authlib's endpoint name), from this worker's copy for the clients' ``generation``; None
    if it holds none, the secret is wrong, or Basic is not the client's method there."""
    client_id, secret = credentials
    client = svc.client_cache.cached(generation, client_id)
    if (
        client is None
        or not client.check_client_secret(secret)
        or not client.check_endpoint_auth_method(BASIC, endpoint)
    ):
        return None
    return client


def bearer_claims(svc: Services, authorization: str | None) -> dict[str, Any] | None:
    """The claims of the current access token in ``Authorization: Bearer``, as Authlib's
    bearer parsing and our codec accept it (None once expired); else None. Not whether it
    was revoked: that is a read the caller sends with its own."""
    if not authorization:
        return None
    parts = authorization.split(None, 1)
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return svc.tokens.decode_access_token(parts[1])


def secure_transport(environ: dict[str, Any]) -> bool:
    """Authlib's check of the request's URL: https, or http on loopback (else it answers
    ``insecure_transport``). ``environ`` as the app sees it (``answers.ProxiedView``)."""
    host = environ.get("HTTP_HOST") or environ["SERVER_NAME"]
    return _secure_transport(environ["wsgi.url_scheme"], host)


@lru_cache(maxsize=64)
def _secure_transport(scheme: str, host: str) -> bool:
    # Depends on nothing else; cached, as parsing an address costs more than a request's rest.
    return is_secure_transport(f"{scheme}://{host}/")
