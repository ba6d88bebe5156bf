"""Per-app services and per-request database sessions, for the web and OAuth glue layers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, current_app, g, request
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from .services import Services

log = logging.getLogger(__name__)
T = TypeVar("T")


def services() -> Services:
    return current_app.extensions["oidc"]


def db_session() -> Session:
    """The request's database session, opened on first use and closed at teardown."""
    if "db_session" not in g:
        g.db_session = services().db.sessions()
    return g.db_session


def read_from_replica(read: Callable[[Session], T]) -> T:
    """``read`` on the read replica, for reads that tolerate its lag and feed no cache.

    Without a replica, ``read`` gets the request's own ``db_session`` (read-your-writes). If the
    replica cannot answer (down, unreachable, its connections dropped), the read is made on the
    primary instead and a warning logged: a replica's outage costs the primary some load, not
    the endpoints that use it. The replica is then left alone for a while (``replica_rest``).
    """
    svc = services()
    if svc.replica is svc.db or not svc.replica_rest.allows():
        return read(db_session())
    if "replica_session" not in g:
        g.replica_session = svc.replica.sessions()
    try:
        return read(g.replica_session)
    except DBAPIError as exc:
        if not (exc.connection_invalidated or isinstance(exc, OperationalError)):
            raise  # a bug in the query, not the replica's state: the primary would fail alike
        log.warning("read replica unavailable; reading from the primary for a while")
        svc.replica_rest.failed()
        g.pop("replica_session").close()
        return read(db_session())


def _printable(value: str, limit: int) -> str:
    """Header text safe to store: no NULs or lone surrogates (PostgreSQL refuses both)."""
    cleaned = value[:limit].replace("\x00", "")
    return cleaned.encode("utf-8", "replace").decode("utf-8")


def client_ip() -> str:
    return _printable(request.remote_addr or "", 64)


def user_agent() -> str:
    return _printable(request.headers.get("User-Agent", ""), 512)


def init_app(app: Flask) -> None:
    @app.teardown_appcontext
    def _close_db_session(_exc: BaseException | None) -> None:
        for name in ("db_session", "replica_session"):
            session = g.pop(name, None)
            if session is not None:
                session.rollback()
                session.close()
