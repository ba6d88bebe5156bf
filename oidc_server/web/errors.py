"""One JSON error shape for everything outside the OAuth endpoints' RFC 6749 §5.2 bodies."""

from __future__ import annotations

import logging

from authlib.oauth2.rfc6749.errors import InsecureTransportError
from flask import Flask, Response, jsonify
from sqlalchemy.exc import DBAPIError, OperationalError
from werkzeug.exceptions import HTTPException

from ..tokens.store import StoreUnavailable

log = logging.getLogger(__name__)

#: Seconds a client should wait before retrying when a backing store is down.
RETRY_AFTER_UNAVAILABLE = 5


def error_response(status: int, code: str, message: str) -> Response:
    response = jsonify(error=code, message=message)
    response.status_code = status
    return response


def init_app(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        if exc.response is not None:  # already a full response (Authlib's bearer errors)
            return exc.response
        code = (exc.name or "error").lower().replace(" ", "_")
        response = error_response(exc.code or 500, code, exc.description or exc.name)
        for key, value in exc.get_headers():
            if key.lower() != "content-type":
                response.headers[key] = value
        return response

    @app.errorhandler(InsecureTransportError)
    def _insecure_transport(exc: InsecureTransportError) -> Response:
        # Authlib refuses OAuth over plain http to any host but a loopback one (RFC 6749 §1.6,
        # RFC 8252 §7.3) while it builds its request, before an endpoint's own error handling.
        response = jsonify(error=exc.error, error_description=exc.description)
        response.status_code = 400
        return response

    @app.errorhandler(StoreUnavailable)
    def _store_unavailable(_exc: StoreUnavailable) -> Response:
        log.error("token store unavailable")
        response = error_response(503, "temporarily_unavailable", "try again shortly")
        response.headers["Retry-After"] = str(RETRY_AFTER_UNAVAILABLE)
        return response

    @app.errorhandler(DBAPIError)
    def _database_unavailable(exc: DBAPIError) -> Response:
        if not exc.connection_invalidated and not isinstance(exc, OperationalError):
            log.exception("database error")
            return error_response(500, "server_error", "an unexpected error occurred")
        log.error("database unavailable")
        response = error_response(503, "temporarily_unavailable", "try again shortly")
        response.headers["Retry-After"] = str(RETRY_AFTER_UNAVAILABLE)
        return response

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(500, "server_error", "an unexpected error occurred")
