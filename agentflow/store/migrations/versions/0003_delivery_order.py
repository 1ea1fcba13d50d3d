"""The order in which step outcomes reached the workflow, so a replay delivers them alike.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("af_steps", sa.Column("delivery", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("af_steps") as batch:
        batch.drop_column("delivery")
