"""Events out and chat surfaces: an outbox of events (approval requested, decided, expired,
escalated; run finished) written in the transaction of what they report, webhook subscriptions
(per tenant, with their signing secret) and one delivery row per (subscription, event), written
in that same transaction, that a deliverer claims with a lease, retries with backoff and marks
delivered; chat accounts linked to
operators per tenant (a decision typed in Matrix or Slack is the linked operator's); and the
chat cards a bridge posted per approval request (so a restarted bridge never posts one twice).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "af_events",
        sa.Column("seq", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("subject", sa.String(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ux_af_events_id", "af_events", ["id"], unique=True)
    op.create_index("ix_af_events_tenant_seq", "af_events", ["tenant", "seq"])
    op.create_table(
        "af_webhooks",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("kinds", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("disabled", sa.Integer(), nullable=False),
    )
    op.create_index("ix_af_webhooks_tenant", "af_webhooks", ["tenant"])
    op.create_table(
        "af_deliveries",
        sa.Column("webhook_id", sa.String(), primary_key=True),
        sa.Column("event_id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("delivered_at", sa.Float(), nullable=True),
    )
    op.create_index("ix_af_deliveries_due", "af_deliveries", ["status", "next_at"])
    op.create_index("ix_af_deliveries_event", "af_deliveries", ["event_id"])
    op.create_table(
        "af_chat_links",
        sa.Column("tenant", sa.String(), primary_key=True),
        sa.Column("surface", sa.String(), primary_key=True),
        sa.Column("account", sa.String(), primary_key=True),
        sa.Column("principal_id", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_af_chat_links_principal", "af_chat_links", ["principal_id"])
    op.create_table(
        "af_chat_cards",
        sa.Column("surface", sa.String(), primary_key=True),
        sa.Column("approval_id", sa.String(), primary_key=True),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("room", sa.String(), nullable=False),
        sa.Column("message_id", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("rendered", sa.Text(), nullable=True),
        sa.Column("args_hash", sa.String(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_af_chat_cards_message", "af_chat_cards", ["surface", "message_id"])


def downgrade() -> None:
    op.drop_index("ix_af_chat_cards_message", table_name="af_chat_cards")
    op.drop_table("af_chat_cards")
    op.drop_index("ix_af_chat_links_principal", table_name="af_chat_links")
    op.drop_table("af_chat_links")
    op.drop_index("ix_af_deliveries_event", table_name="af_deliveries")
    op.drop_index("ix_af_deliveries_due", table_name="af_deliveries")
    op.drop_table("af_deliveries")
    op.drop_index("ix_af_webhooks_tenant", table_name="af_webhooks")
    op.drop_table("af_webhooks")
    op.drop_index("ix_af_events_tenant_seq", table_name="af_events")
    op.drop_index("ux_af_events_id", table_name="af_events")
    op.drop_table("af_events")
