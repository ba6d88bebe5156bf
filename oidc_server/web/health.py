"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from ..context import services
from ..db import Database

bp = Blueprint("health", __name__, url_prefix="/health")


@bp.get("/live")
def live() -> Response:
    return jsonify(status="ok")


@bp.get("/ready")
def ready() -> tuple[Response, int]:
    """Ready when the database, its replica if one is set, and the token store answer."""
    svc = services()
    checks = {"database": _database_ok(svc.db), "token_store": svc.store.ping()}
    if svc.replica is not svc.db:
        checks["database_replica"] = _database_ok(svc.replica)
    ok = all(checks.values())
    return jsonify(status="ok" if ok else "unavailable", checks=checks), 200 if ok else 503


def _database_ok(database: Database) -> bool:
    try:
        with database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
