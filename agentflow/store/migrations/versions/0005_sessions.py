"""Web chat sessions: the hash of each browser session's secret, its operator and tenants.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "af_sessions",
        sa.Column("id_hash", sa.String(), primary_key=True),
        sa.Column("operator", sa.String(), nullable=False),
        sa.Column("principals", sa.Text(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("csrf", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("revoked", sa.Integer(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("af_sessions")
