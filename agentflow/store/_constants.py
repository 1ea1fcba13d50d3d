"""Schema facts the hot path needs without importing SQLModel (~0.4 s of import time)."""

#: Head revision of the migrations in `agentflow/store/migrations/versions`; a test pins it.
SCHEMA_REVISION = "0010"

#: The table where Alembic records the schema revision (agentflow's tables are all `af_`).
VERSION_TABLE = "af_alembic_version"

RUN_STATUSES = ("pending", "running", "waiting", "completed", "failed", "cancelled")
TERMINAL_STATUSES = ("completed", "failed", "cancelled")
#: `TERMINAL_STATUSES` as an SQL list, for `status IN ...` / `NOT IN ...`.
TERMINAL_SQL = "(" + ", ".join(f"'{s}'" for s in TERMINAL_STATUSES) + ")"
#: Approval requests that still wait for a decision.
OPEN_STATUSES = ("pending", "escalated")
