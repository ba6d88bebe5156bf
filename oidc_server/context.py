"""Per-app services and per-request database sessions, for the web and OAuth glue layers."""

from __future__ import annotations

from flask import Flask, current_app, g, request
from sqlalchemy.orm import Session

from .services import Services


def services() -> Services:
    return current_app.extensions["oidc"]


def db_session() -> Session:
    """The request's database session, opened on first use and closed at teardown."""
    if "db_session" not in g:
        g.db_session = services().db.sessions()
    return g.db_session


def replica_session() -> Session:
    """A session on the read replica, for reads that tolerate its lag and feed no cache; the
    request's own ``db_session`` when no replica is configured (read-your-writes then)."""
    svc = services()
    if svc.replica is svc.db:
        return db_session()
    if "replica_session" not in g:
        g.replica_session = svc.replica.sessions()
    return g.replica_session


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
