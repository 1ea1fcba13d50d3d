"""PostgreSQL: a run that becomes runnable (created, handed back, woken by a signal, an approval,
a child's end or a cancel request) notifies the `agentflow_runs` channel, with its id as the
payload. Idle workers LISTEN instead of polling the table (see `PostgresStore.listen`). Nothing
on SQLite: its workers poll a local file, which costs microseconds.

A row trigger, on af_runs only (PostgreSQL folds a transaction's identical notifications into
one): step writes never notify (every transaction that notifies takes a cluster-wide lock at
commit, which the hot path must not pay).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

CHANNEL = "agentflow_runs"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE OR REPLACE FUNCTION af_notify_runnable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', NEW.id);
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER af_runs_runnable AFTER INSERT OR UPDATE OF status, wake_at ON af_runs
        FOR EACH ROW WHEN (NEW.status = 'pending' OR (NEW.status = 'waiting' AND NEW.wake_at <= 0))
        EXECUTE FUNCTION af_notify_runnable()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER IF EXISTS af_runs_runnable ON af_runs")
    op.execute("DROP FUNCTION IF EXISTS af_notify_runnable()")
