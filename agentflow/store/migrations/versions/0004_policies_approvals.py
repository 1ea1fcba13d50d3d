"""Policies and approvals: operators, approval requests and votes, the audit trail, and the
usage counters that rate and blast-radius limits read.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "af_principals",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("name", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("roles", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("disabled", sa.Integer(), nullable=False),
    )
    op.create_index("ux_af_principals_tenant_name", "af_principals", ["tenant", "name"], unique=True)
    op.create_index("ux_af_principals_token", "af_principals", ["token_hash"], unique=True)
    op.create_table(
        "af_approvals",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("requested_by", sa.String(), nullable=True),
        sa.Column("tool", sa.String(), nullable=False),
        sa.Column("args", sa.Text(), nullable=False),
        sa.Column("args_hash", sa.String(), nullable=False),
        sa.Column("diff", sa.Text(), nullable=True),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("pack_hash", sa.String(), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.Column("decided_at", sa.Float(), nullable=True),
        sa.Column("revision", sa.Integer(), nullable=False),
    )
    op.create_index("ix_af_approvals_tenant_status", "af_approvals", ["tenant", "status"])
    op.create_index("ix_af_approvals_run", "af_approvals", ["run_id"])
    op.create_table(
        "af_approval_votes",
        sa.Column("approval_id", sa.String(), primary_key=True),
        sa.Column("principal_id", sa.String(), primary_key=True),
        sa.Column("principal", sa.String(), nullable=False),
        sa.Column("decision", sa.String(), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_table(
        "af_audit",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=True),
        sa.Column("actor", sa.String(), nullable=False),
        sa.Column("action", sa.String(), nullable=False),
        sa.Column("approval_id", sa.String(), nullable=True),
        sa.Column("run_id", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    op.create_index("ix_af_audit_approval", "af_audit", ["approval_id"])
    op.create_table(
        "af_policy_usage",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("tool", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=True),
        sa.Column("region", sa.String(), nullable=True),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("call_id", sa.String(), nullable=False),
        sa.Column("side_effect", sa.Integer(), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
    )
    op.create_index("ix_af_policy_usage_tool", "af_policy_usage", ["tenant", "tool", "at"])
    op.create_index("ix_af_policy_usage_region", "af_policy_usage", ["tenant", "region", "at"])
    op.create_index("ix_af_policy_usage_target", "af_policy_usage", ["target"])


def downgrade() -> None:
    for table in ("af_policy_usage", "af_audit", "af_approval_votes", "af_approvals", "af_principals"):
        op.drop_table(table)
