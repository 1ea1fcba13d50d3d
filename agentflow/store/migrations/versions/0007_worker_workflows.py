"""What each worker serves: the workflows it registered (with a fingerprint of their code) and its
lease TTL, so `agentflow doctor` can tell a run nobody can drive from one a live worker will
take, and judge a heartbeat by the lease its worker actually runs with.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-14
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: rows written by an older agentflow say nothing about what they served.
    op.add_column("af_workers", sa.Column("workflows", sa.Text(), nullable=True))
    op.add_column("af_workers", sa.Column("lease_ttl", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("af_workers") as batch:
        batch.drop_column("lease_ttl")
        batch.drop_column("workflows")
