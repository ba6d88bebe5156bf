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
    """Ready when the database and the token store both answer.

    A read replica, when one is set, is checked and reported but does not decide: its reads
    fall back to the primary (``context.read_from_replica``), so taking every instance out of
    the load balancer over it would turn a slower history page into an outage. While the
    replica rests after a failure it is reported down without being tried, and a failed check
    starts such a rest, as a failed read does.
    """
    svc = services()
    checks = {"database": _database_ok(svc.db), "token_store": svc.store.ping()}
    ok = all(checks.values())
    if svc.replica is not svc.db:
        replica_ok = False
        if svc.replica_rest.allows():
            replica_ok = _database_ok(svc.replica)
            if not replica_ok:
                svc.replica_rest.failed()
        checks["database_replica"] = replica_ok
    return jsonify(status="ok" if ok else "unavailable", checks=checks), 200 if ok else 503


def _database_ok(database: Database) -> bool:
    try:
        with database.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
