"""The event store: the only owner of SQL. Tables, migrations, the SQLite and PostgreSQL
backends chosen by URL, the payload codec, encryption at rest (`Sealing`), runs/steps/signals/
workers, governance records (principals, approvals, audit, policy usage, sessions) and the read
side's queries.

Some names are imported on first use (`_LAZY`), so that a process that only runs workflows
starts fast: the SQLModel table classes (importing SQLModel costs ~0.4 s of start-up), the
health reads of `agentflow doctor`, and the governance records (approvals, sessions, policy usage).
"""

from typing import TYPE_CHECKING, Any

from agentflow.store._backend import Backend, Conn, Op
from agentflow.store._codec import (
    adapter_for,
    decode,
    digest,
    encode,
    param_adapters,
    return_adapter,
    unrepresentable,
)
from agentflow.store._constants import RUN_STATUSES, SCHEMA_REVISION, TERMINAL_STATUSES
from agentflow.store._group import Chain, GroupCommit
from agentflow.store._records import RunRecord, StepRecord
from agentflow.store._redact import MASK, RedactingFilter, Redaction
from agentflow.store._seal import Sealing
from agentflow.store._store import EventStore
from agentflow.store._tenants import DEFAULT_TENANT, check_run_id, check_tenant, local_id, run_key, scoped_key
from agentflow.store._tx import Tx
from agentflow.store._urls import DEFAULT_URL, parse_url, pinned_url, redact_url, resolve_url, same_database

if TYPE_CHECKING:
    from agentflow.store._chat import ChatCardRow, ChatLinkRow
    from agentflow.store._events import EVENT_KINDS, DeliveryRow, DueDelivery, EventRow, WebhookRow
    from agentflow.store._gauges import OpenApprovals, StoreGauges, WebhookBacklog
    from agentflow.store._governance import ApprovalRow, AuditRow, PrincipalRow, TokenRow, VoteRow
    from agentflow.store._health import Checkup, ExpiredApprovalRow, OpenRunRow, SchemaState, WorkerRow
    from agentflow.store._sessions import SessionRow
    from agentflow.store._usage import PolicyUsage

# Public name -> the private module that defines it, imported on first use.
_LAZY = {
    **dict.fromkeys(("Blob", "Run", "Signal", "Step", "StepAttempt", "Worker"), "_models"),
    **dict.fromkeys(("Checkup", "ExpiredApprovalRow", "OpenRunRow", "SchemaState", "WorkerRow"), "_health"),
    **dict.fromkeys(("ApprovalRow", "AuditRow", "PrincipalRow", "TokenRow", "VoteRow"), "_governance"),
    **dict.fromkeys(("OpenApprovals", "StoreGauges", "WebhookBacklog"), "_gauges"),
    **dict.fromkeys(("EVENT_KINDS", "DeliveryRow", "DueDelivery", "EventRow", "WebhookRow"), "_events"),
    **dict.fromkeys(("ChatCardRow", "ChatLinkRow"), "_chat"),
    "SessionRow": "_sessions",
    "PolicyUsage": "_usage",
}

__all__ = [
    "DEFAULT_TENANT",
    "DEFAULT_URL",
    "EVENT_KINDS",
    "MASK",
    "RUN_STATUSES",
    "SCHEMA_REVISION",
    "TERMINAL_STATUSES",
    "ApprovalRow",
    "AuditRow",
    "Backend",
    "Blob",
    "Chain",
    "ChatCardRow",
    "ChatLinkRow",
    "Checkup",
    "Conn",
    "DeliveryRow",
    "DueDelivery",
    "EventRow",
    "EventStore",
    "ExpiredApprovalRow",
    "GroupCommit",
    "Op",
    "OpenApprovals",
    "OpenRunRow",
    "PolicyUsage",
    "PrincipalRow",
    "RedactingFilter",
    "Redaction",
    "Run",
    "RunRecord",
    "SchemaState",
    "Sealing",
    "SessionRow",
    "Signal",
    "Step",
    "StepAttempt",
    "StepRecord",
    "StoreGauges",
    "TokenRow",
    "Tx",
    "VoteRow",
    "WebhookBacklog",
    "WebhookRow",
    "Worker",
    "WorkerRow",
    "adapter_for",
    "check_run_id",
    "check_tenant",
    "decode",
    "digest",
    "encode",
    "local_id",
    "param_adapters",
    "parse_url",
    "pinned_url",
    "redact_url",
    "resolve_url",
    "return_adapter",
    "run_key",
    "same_database",
    "scoped_key",
    "unrepresentable",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"agentflow.store.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'agentflow.store' has no attribute {name!r}")
