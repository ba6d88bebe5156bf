"""default roles

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DEFAULT_ROLES = {
    "admin": "Full administrative access",
    "subscriber": "A paying subscriber: the full catalogue",
    "moderator": "Moderates reviews and comments",
}

roles = sa.table(
    "roles",
    sa.column("id", sa.Uuid()),
    sa.column("name", sa.String()),
    sa.column("description", sa.String()),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    now = datetime.now(UTC)
    op.bulk_insert(
        roles,
        [
            # Stable ids so that every deployment names the default roles the same way.
            {
                "id": uuid.uuid5(uuid.NAMESPACE_URL, f"oidc-server:role:{name}"),
                "name": name,
                "description": description,
                "created_at": now,
            }
            for name, description in DEFAULT_ROLES.items()
        ],
    )


def downgrade() -> None:
    op.execute(roles.delete().where(roles.c.name.in_(list(DEFAULT_ROLES))))
