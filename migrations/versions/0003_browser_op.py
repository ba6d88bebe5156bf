"""consents and post-logout redirect URIs (the browser-facing OpenID Provider)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("oauth_clients") as batch:
        batch.add_column(
            sa.Column("post_logout_redirect_uris", sa.JSON(), nullable=False, server_default="[]")
        )
    with op.batch_alter_table("oauth_clients") as batch:
        batch.alter_column("post_logout_redirect_uris", server_default=None)
    op.create_table(
        "consents",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("client_id", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("granted_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_consents_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["client_id"],
            ["oauth_clients.client_id"],
            name=op.f("fk_consents_client_id_oauth_clients"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_consents")),
        sa.UniqueConstraint("user_id", "client_id", name=op.f("uq_consents_user_id_client_id")),
    )
    op.create_index(op.f("ix_consents_client_id"), "consents", ["client_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_consents_client_id"), table_name="consents")
    op.drop_table("consents")
    with op.batch_alter_table("oauth_clients") as batch:
        batch.drop_column("post_logout_redirect_uris")
