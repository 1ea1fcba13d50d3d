"""Operator tokens get a life of their own: each token is a row of `af_operator_tokens` (its
SHA-256, when it was issued, when it expires, when it was revoked), so an operator can have a
token rotated or revoked, and a token can expire; a revoked or expired token is kept to be
refused as such. The hash moves out of `af_principals` (existing tokens keep working, with no
expiry). A web session records the token each tenant was signed in with (`af_sessions.tokens`),
so revoking or rotating a token ends the sessions it opened; the sessions open at the upgrade get
the ids of the tokens their principals had (the only token each had then), so they end that way too.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-20
"""

import json
import time

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "af_operator_tokens",
        sa.Column("id", sa.String(), primary_key=True),
        sa.Column("token_hash", sa.String(), nullable=False),
        sa.Column("principal_id", sa.String(), nullable=False),
        sa.Column("tenant", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
    )
    op.create_index("ux_af_operator_tokens_hash", "af_operator_tokens", ["token_hash"], unique=True)
    op.create_index("ix_af_operator_tokens_principal", "af_operator_tokens", ["principal_id"])
    # The token's id is derived from its principal (one token per principal so far): unique,
    # and the same on every backend.
    op.execute(
        "INSERT INTO af_operator_tokens (id, token_hash, principal_id, tenant, created_at, expires_at, revoked_at) "
        "SELECT 'tok_' || id, token_hash, id, tenant, created_at, NULL, NULL FROM af_principals"
    )
    op.drop_index("ux_af_principals_token", table_name="af_principals")
    with op.batch_alter_table("af_principals") as batch:
        batch.drop_column("token_hash")
    op.add_column("af_sessions", sa.Column("tokens", sa.Text(), nullable=True))
    _fill_session_tokens()


def _fill_session_tokens() -> None:
    """Each live session's {tenant: token id} from its {tenant: principal id}: a principal's
    token is 'tok_' || principal id, as inserted above (a session left without one is refused)."""
    conn = op.get_bind()
    rows = conn.execute(sa.text("SELECT id_hash, principals FROM af_sessions WHERE revoked = 0")).fetchall()
    for id_hash, principals in rows:
        try:
            tokens = {tenant: f"tok_{pid}" for tenant, pid in json.loads(principals).items()}
        except (ValueError, AttributeError):
            continue  # unreadable: left without tokens, so refused (signed out)
        conn.execute(sa.text("UPDATE af_sessions SET tokens = :tokens WHERE id_hash = :id"),
                     {"tokens": json.dumps(tokens), "id": id_hash})  # fmt: skip


def downgrade() -> None:
    with op.batch_alter_table("af_sessions") as batch:
        batch.drop_column("tokens")
    with op.batch_alter_table("af_principals") as batch:
        batch.add_column(sa.Column("token_hash", sa.String(), nullable=True))
    # A principal's newest live token (an older agentflow knows one token per operator, and no
    # expiry: an expired token must not come back to life). Token times are wall-clock seconds.
    op.execute(
        sa.text(
            "UPDATE af_principals SET token_hash = (SELECT t.token_hash FROM af_operator_tokens t "
            "WHERE t.principal_id = af_principals.id AND t.revoked_at IS NULL "
            "AND (t.expires_at IS NULL OR t.expires_at > :now) ORDER BY t.created_at DESC LIMIT 1)"
        ).bindparams(now=time.time())
    )
    # No live token: a value no token hashes to (the operator is kept, with no way to sign in).
    op.execute("UPDATE af_principals SET token_hash = 'revoked:' || id WHERE token_hash IS NULL")
    with op.batch_alter_table("af_principals") as batch:
        batch.alter_column("token_hash", existing_type=sa.String(), nullable=False)
    op.create_index("ux_af_principals_token", "af_principals", ["token_hash"], unique=True)
    op.drop_index("ix_af_operator_tokens_principal", table_name="af_operator_tokens")
    op.drop_index("ux_af_operator_tokens_hash", table_name="af_operator_tokens")
    op.drop_table("af_operator_tokens")
