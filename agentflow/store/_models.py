"""The tables of the event store, as SQLModel models.

These models are the schema's single description: the Alembic migrations create exactly these
tables (a test compares them), and the read side (`runs list`, traces) queries through them. The
engine's hot path writes with prepared DBAPI statements instead, because SQLAlchemy's per-statement
overhead (~100 µs) would be a third of a durable commit.

Times are REAL seconds since the epoch in the engine clock's timebase.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel

from agentflow.store._constants import RUN_STATUSES, SCHEMA_REVISION, TERMINAL_STATUSES

__all__ = [
    "RUN_STATUSES",
    "SCHEMA_REVISION",
    "TERMINAL_STATUSES",
    "ApprovalRequest",
    "ApprovalVote",
    "AuditRecord",
    "Blob",
    "ChatCard",
    "ChatLink",
    "Delivery",
    "Event",
    "OperatorToken",
    "PolicyUsage",
    "Principal",
    "Run",
    "Session",
    "Setting",
    "Signal",
    "Step",
    "StepAttempt",
    "Webhook",
    "Worker",
]


class Run(SQLModel, table=True):
    """One execution of a workflow."""

    __tablename__ = "af_runs"
    __table_args__ = (
        Index("ix_af_runs_claim", "status", "wake_at"),
        Index("ix_af_runs_root", "root_id"),
        Index("ix_af_runs_tenant_created", "tenant", "created_at"),
    )

    id: str = Field(primary_key=True)
    workflow: str
    tenant: str = Field(default="default")
    status: str = Field(default="pending")
    input: str = Field(sa_column=Column(Text, nullable=False))
    output: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    # The worker that owns the run while it is `running`, and the lease epoch: every write of a
    # step is conditional on the epoch, which each claim increments (fencing).
    owner: str | None = Field(default=None)
    epoch: int = Field(default=0)
    # A `waiting` run becomes runnable when wake_at <= now; NULL waits for an event only.
    wake_at: float | None = Field(default=None)
    waiting_on: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    parent_id: str | None = Field(default=None)
    parent_seq: int | None = Field(default=None)
    root_id: str
    cancel_requested: int = Field(default=0)
    meta: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: float
    updated_at: float
    completed_at: float | None = Field(default=None)


class Step(SQLModel, table=True):
    """One recorded step of a run's history: (run_id, seq) is recorded once.

    WITHOUT ROWID keeps a run's steps clustered by key, so a resume reads them in one range scan.
    """

    __tablename__ = "af_steps"
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    kind: str
    name: str
    digest: str
    # started (intent recorded, outcome unknown) | waiting | retrying | completed | failed
    status: str
    attempt: int = Field(default=1)
    args: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    result: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    started_at: float
    finished_at: float | None = Field(default=None)
    wake_at: float | None = Field(default=None)
    epoch: int = Field(default=0)
    # The n-th outcome delivered to the workflow code (1, 2, ...): replay delivers in this order,
    # so concurrent branches interleave exactly as they did. NULL for values the code got at once
    # (ctx.now(), patch markers) and for steps not finished.
    delivery: int | None = Field(default=None)


class StepAttempt(SQLModel, table=True):
    """A failed attempt of a step (the final outcome stays in `af_steps`)."""

    __tablename__ = "af_step_attempts"

    run_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    attempt: int = Field(primary_key=True)
    error: str = Field(sa_column=Column(Text, nullable=False))
    started_at: float
    finished_at: float
    retry_at: float | None = Field(default=None)


class Signal(SQLModel, table=True):
    """A signal sent to a run; consumed by the `wait_signal` step with seq `consumed_seq`."""

    __tablename__ = "af_signals"
    __table_args__ = (Index("ix_af_signals_run", "run_id", "name", "consumed_seq"),)

    id: int | None = Field(default=None, primary_key=True)
    run_id: str
    name: str
    payload: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float
    consumed_seq: int | None = Field(default=None)


class Worker(SQLModel, table=True):
    """A worker process; its heartbeat is the lease of every run it owns."""

    __tablename__ = "af_workers"

    id: str = Field(primary_key=True)
    host: str
    pid: int
    # The process start time (from /proc), so a recycled pid is not mistaken for a live owner.
    pid_start: str
    started_at: float
    heartbeat_at: float
    dead: int = Field(default=0)
    # What it serves (JSON {workflow name: code fingerprint}, names sorted) and its lease TTL in
    # seconds, for `agentflow doctor`; NULL on rows of workers older than schema 0007.
    workflows: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    lease_ttl: float | None = Field(default=None)


class Blob(SQLModel, table=True):
    """A content-addressed payload (an LLM message, a tool schema), stored once by its hash."""

    __tablename__ = "af_blobs"

    hash: str = Field(primary_key=True)
    data: str = Field(sa_column=Column(Text, nullable=False))
    size: int
    created_at: float


# -- policies and approvals ----------------------------------------------------------------------
class Principal(SQLModel, table=True):
    """An operator who may decide approvals in one tenant, with roles; `disabled` refuses every
    token of theirs until they are enabled again. Their API tokens are `af_operator_tokens`."""

    __tablename__ = "af_principals"
    __table_args__ = (Index("ux_af_principals_tenant_name", "tenant", "name", unique=True),)

    id: str = Field(primary_key=True)
    name: str
    tenant: str
    roles: str = Field(sa_column=Column(Text, nullable=False))  # JSON list
    created_at: float
    disabled: int = Field(default=0)


class OperatorToken(SQLModel, table=True):
    """An operator's API token, stored as its SHA-256 only (tokens are 256-bit random, so no
    salt or slow hash is needed). A revoked or expired token is kept, so that presenting it is
    refused as revoked or expired (and how to get a new one), not as unknown. Times are wall-clock
    time, whatever clock the workflows use."""

    __tablename__ = "af_operator_tokens"
    __table_args__ = (
        Index("ux_af_operator_tokens_hash", "token_hash", unique=True),
        Index("ix_af_operator_tokens_principal", "principal_id"),
    )

    id: str = Field(primary_key=True)  # `tok_...`: names the token in listings and sessions
    token_hash: str
    principal_id: str
    tenant: str
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None


class ApprovalRequest(SQLModel, table=True):
    """A staged tool call waiting for people: the exact arguments, their hash, the rule that
    asked for the approval, and where the decision stands."""

    __tablename__ = "af_approvals"
    __table_args__ = (
        Index("ix_af_approvals_tenant_status", "tenant", "status"),
        Index("ix_af_approvals_run", "run_id"),
    )

    id: str = Field(primary_key=True)
    run_id: str
    call_id: str
    tenant: str
    requested_by: str | None = Field(default=None)
    tool: str
    args: str = Field(sa_column=Column(Text, nullable=False))  # JSON, as the approvers see them
    args_hash: str
    diff: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    rule: str
    pack_hash: str
    spec: str = Field(sa_column=Column(Text, nullable=False))  # JSON ApprovalSpec
    # pending | approved | rejected | expired | escalated (pending again, wider roles) | withdrawn
    # (the run ended before a decision)
    status: str
    created_at: float
    expires_at: float | None = Field(default=None)
    decided_at: float | None = Field(default=None)
    revision: int = Field(default=1)  # bumped when an approver edits the arguments


class ApprovalVote(SQLModel, table=True):
    """One principal's decision on one request (a second vote by the same principal counts once)."""

    __tablename__ = "af_approval_votes"

    approval_id: str = Field(primary_key=True)
    principal_id: str = Field(primary_key=True)
    principal: str
    decision: str  # approve | reject
    comment: str = Field(default="", sa_column=Column(Text, nullable=False))
    revision: int
    at: float


class AuditRecord(SQLModel, table=True):
    """Every approval decision and every refusal, with its actor and reason."""

    __tablename__ = "af_audit"
    __table_args__ = (Index("ix_af_audit_approval", "approval_id"),)

    id: int | None = Field(default=None, primary_key=True)
    at: float
    tenant: str | None = Field(default=None)
    actor: str
    action: str
    approval_id: str | None = Field(default=None)
    run_id: str | None = Field(default=None)
    outcome: str  # done | refused
    reason: str = Field(default="", sa_column=Column(Text, nullable=False))


class PolicyUsage(SQLModel, table=True):
    """A tool call a policy let through, counted by rate and blast-radius limits across runs."""

    __tablename__ = "af_policy_usage"
    __table_args__ = (
        Index("ix_af_policy_usage_tool", "tenant", "tool", "at"),
        Index("ix_af_policy_usage_region", "tenant", "region", "at"),
        Index("ix_af_policy_usage_target", "target"),
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant: str
    tool: str
    target: str | None = Field(default=None)
    region: str | None = Field(default=None)
    run_id: str
    call_id: str
    side_effect: int
    at: float


class Session(SQLModel, table=True):
    """A signed-in browser of the web chat. Only a hash of the cookie's secret is stored; the
    session may hold one principal per tenant of the same operator (`principals`: JSON
    {tenant: principal id}), and `tenant` is the one it currently acts in."""

    __tablename__ = "af_sessions"

    id_hash: str = Field(primary_key=True)
    operator: str
    principals: str = Field(sa_column=Column(Text, nullable=False))
    tenant: str
    csrf: str
    created_at: float
    expires_at: float
    revoked: int = Field(default=0)
    # JSON {tenant: token id}: the token each tenant was signed in with (a revoked or expired
    # token ends the session). NULL for sessions made before tokens had ids.
    tokens: str | None = Field(default=None, sa_column=Column(Text, nullable=True))


class Setting(SQLModel, table=True):
    """A setting of the application on this store, shared by every process and surface."""

    __tablename__ = "af_settings"

    key: str = Field(primary_key=True)
    value: str = Field(sa_column=Column(Text, nullable=False))
    updated_at: float


class Event(SQLModel, table=True):
    """An event for the world outside (approval requested, decided, expired, escalated; run
    finished), written in the transaction of what it reports: the outbox webhooks deliver from.
    `seq` orders a tenant's events; `id` (`evt_...`) is the idempotency key a receiver sees."""

    __tablename__ = "af_events"
    __table_args__ = (
        Index("ux_af_events_id", "id", unique=True),
        Index("ix_af_events_tenant_seq", "tenant", "seq"),
    )

    seq: int | None = Field(default=None, primary_key=True)
    id: str
    tenant: str
    kind: str  # approval.requested | approval.decided | approval.expired | approval.escalated | run.finished
    subject: str  # the approval's or the run's id
    payload: str = Field(sa_column=Column(Text, nullable=False))  # JSON
    created_at: float


class Webhook(SQLModel, table=True):
    """A tenant's webhook subscription: where its events are POSTed (`url`), signed with `secret`
    (both sealed when the tenant is), which kinds it takes (JSON list; empty: all). An event's
    delivery rows are written with the event, in the transaction of what it reports (no fan-out
    cursor: on PostgreSQL, sequence values commit out of order, and a cursor would skip an event
    whose transaction committed after a later one's)."""

    __tablename__ = "af_webhooks"
    __table_args__ = (Index("ix_af_webhooks_tenant", "tenant"),)

    id: str = Field(primary_key=True)  # `wh_...`
    tenant: str
    url: str = Field(sa_column=Column(Text, nullable=False))
    secret: str = Field(sa_column=Column(Text, nullable=False))
    kinds: str = Field(sa_column=Column(Text, nullable=False))
    created_at: float
    disabled: int = Field(default=0)


class Delivery(SQLModel, table=True):
    """One event to one subscription: pending until a deliverer's POST is answered 2xx
    (`delivered`), retried with backoff (`next_at`) and given up after too many attempts
    (`failed`); a deliverer holds it while posting (`lease_until`), so a crashed one's is taken
    over, and the receiver deduplicates by the event id."""

    __tablename__ = "af_deliveries"
    __table_args__ = (
        Index("ix_af_deliveries_due", "status", "next_at"),
        Index("ix_af_deliveries_event", "event_id"),
    )

    webhook_id: str = Field(primary_key=True)
    event_id: str = Field(primary_key=True)
    tenant: str
    status: str  # pending | delivered | failed
    attempts: int = Field(default=0)
    next_at: float
    lease_until: float | None = Field(default=None)
    last_error: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    created_at: float
    delivered_at: float | None = Field(default=None)


class ChatLink(SQLModel, table=True):
    """A chat account (a Matrix user id, a Slack user id) linked to an operator of a tenant: a
    decision typed from that account is that operator's."""

    __tablename__ = "af_chat_links"
    __table_args__ = (Index("ix_af_chat_links_principal", "principal_id"),)

    tenant: str = Field(primary_key=True)
    surface: str = Field(primary_key=True)  # matrix | slack
    account: str = Field(primary_key=True)
    principal_id: str
    created_at: float


class ChatCard(SQLModel, table=True):
    """The card a chat bridge posted for an approval request: where (`room`, `message_id`), and
    `state` (`posting` is written before the post, so a bridge restarted mid-post looks for its
    message before posting again); `rendered` is the text last shown (updated as votes arrive)
    and `args_hash` the hash of the arguments it shows (a decision typed under it is bound to it)."""

    __tablename__ = "af_chat_cards"
    __table_args__ = (Index("ix_af_chat_cards_message", "surface", "message_id"),)

    surface: str = Field(primary_key=True)
    approval_id: str = Field(primary_key=True)
    tenant: str
    room: str
    message_id: str | None = Field(default=None)
    state: str  # posting | posted | final
    rendered: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    args_hash: str | None = Field(default=None)
    updated_at: float
