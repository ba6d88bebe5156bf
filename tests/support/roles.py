"""Helpers of the roles tests: machine tokens, role rows, the cache the app uses, SQL counts."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import event, select

from oidc_server.models import AuditLog, Role, UserRole
from oidc_server.roles import RoleCache, role_cache_for

from ..conftest import MachineClient, bearer


def machine_token(client: FlaskClient, machine: MachineClient, scope: str | None = None) -> str:
    """A ``client_credentials`` access token of ``machine``."""
    data = {"grant_type": "client_credentials"}
    if scope is not None:
        data["scope"] = scope
    response = client.post("/oauth/token", data=data, headers=machine.basic)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.json["access_token"]


def machine_headers(client: FlaskClient, machine: MachineClient, scope: str | None = None) -> Any:
    return bearer(machine_token(client, machine, scope))


def role_id(services: Any, name: str) -> uuid.UUID:
    with services.db.session() as session:
        return session.scalars(select(Role.id).where(Role.name == name)).one()


def role_names_of(services: Any, user_id: uuid.UUID) -> list[str]:
    with services.db.session() as session:
        return sorted(
            session.scalars(
                select(Role.name)
                .join(UserRole, UserRole.role_id == Role.id)
                .where(UserRole.user_id == user_id)
            )
        )


def audit_entries(services: Any, action: str | None = None) -> list[AuditLog]:
    """Audit entries, oldest first, optionally of one action."""
    with services.db.session() as session:
        query = select(AuditLog).order_by(AuditLog.created_at, AuditLog.id)
        if action is not None:
            query = query.where(AuditLog.action == action)
        return list(session.scalars(query))


def cache_of(services: Any) -> RoleCache:
    """A role cache equal to the app's: Redis when the suite runs on Redis, else none."""
    return role_cache_for(services.redis, services.settings.roles_cache_ttl)


_TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


@contextmanager
def count_queries(services: Any) -> Iterator[list[str]]:
    """Collect the queries the app's engine runs inside the block (not BEGIN and the like)."""
    statements: list[str] = []

    def _record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if not statement.lstrip().upper().startswith(_TRANSACTION_CONTROL):
            statements.append(statement)

    engine = services.db.engine
    event.listen(engine, "before_cursor_execute", _record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", _record)
