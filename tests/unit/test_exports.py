"""The public surface is pinned: adding or removing a public name is a deliberate diff here
(httpx `tests/test_exported_members.py`, Temporal `tests/test_workflow_exports.py`)."""

from __future__ import annotations

import importlib
import types

import pytest

import agentflow.errors

EXPORTS = {
    "agentflow": [
        "Activity",
        "ActivityError",
        "ActivityInfo",
        "Agent",
        "AgentflowError",
        "App",
        "Budget",
        "ChildWorkflowError",
        "Client",
        "CorruptRecordError",
        "NonDeterminismError",
        "Outcome",
        "RetryPolicy",
        "RunFailedError",
        "RunHandle",
        "RunInfo",
        "StoreBusyError",
        "WaitTimeout",
        "Worker",
        "Workflow",
        "WorkflowContext",
        "__version__",
        "current_activity",
        "tool",
    ],
    "agentflow.agent": [
        "MODEL_RETRY",
        "Agent",
        "Budget",
        "Decision",
        "Gated",
        "Limits",
        "Outcome",
        "Plan",
        "PlanStep",
        "PlanStepRecord",
        "Policies",
        "ToolCallRecord",
        "UsageSummary",
        "agent_workflow",
        "approval_signal",
        "authorize",
        "chat",
        "default_policy",
        "spent",
        "usage",
    ],
    "agentflow.approvals": [
        "ApprovalRequest",
        "Approvals",
        "AuditEntry",
        "Principal",
        "Vote",
        "approval_signal_name",
        "args_hash",
    ],
    "agentflow.chat": [
        "HELP",
        "TEXT_LIMIT",
        "Chat",
        "card",
        "card_rows",
        "compact",
        "diff_text",
        "events",
        "quorum_text",
        "reply",
        "run_cards",
        "run_summary",
        "safe_text",
        "status_text",
        "task_of",
        "time_left",
        "truncate",
        "utc",
        "waiting_text",
        "waiting_words",
        "when",
        "why_not_decide",
        "why_text",
    ],
    "agentflow.engine": [
        "Activity",
        "ActivityInfo",
        "App",
        "Client",
        "Clock",
        "RetryPolicy",
        "RunHandle",
        "RunInfo",
        "SystemClock",
        "TestClock",
        "Worker",
        "Workflow",
        "WorkflowContext",
        "configure_crash_point",
        "crash_point",
        "current_activity",
    ],
    "agentflow.errors": [
        "ActivityError",
        "AgentflowError",
        "ApprovalError",
        "ApprovalRefused",
        "AuthenticationError",
        "BudgetExceeded",
        "ChildWorkflowError",
        "ConfigurationError",
        "ContextWindowExceeded",
        "CorruptRecordError",
        "LeaseLostError",
        "ModelAuthError",
        "ModelBadRequest",
        "ModelBadResponse",
        "ModelConnectionError",
        "ModelError",
        "ModelRateLimited",
        "ModelRequestsForbidden",
        "ModelServerError",
        "ModelTimeout",
        "NonDeterminismError",
        "NotInActivityError",
        "NotRegisteredError",
        "PayloadError",
        "PolicyError",
        "ReplayRefused",
        "RunError",
        "RunFailedError",
        "RunStateError",
        "SchemaVersionError",
        "StoreBusyError",
        "StoreError",
        "UnknownRunError",
        "WaitTimeout",
        "WorkflowError",
    ],
    "agentflow.llm": [
        "DEFAULT_PRICES",
        "ChatModel",
        "LangChainChat",
        "ModelResponse",
        "OpenAIChat",
        "PriceTable",
        "RunbookChatModel",
        "ScriptedChatModel",
        "SideEffect",
        "TokenCount",
        "ToolFacts",
        "Usage",
        "blob_hash",
        "canonical_json",
        "count_messages",
        "count_text",
        "encoding_for",
        "message_blob",
        "message_from_blob",
        "model_requests_allowed",
        "recover_tool_calls",
        "tool",
        "tool_facts",
        "validate_tool_args",
    ],
    "agentflow.policy": [
        "DEFAULT_APPROVAL",
        "SCHEMA_VERSION",
        "ApprovalSpec",
        "BlastRadius",
        "CallFacts",
        "Conditions",
        "MaintenanceWindow",
        "Match",
        "NoUsage",
        "PolicyDecision",
        "PolicyPack",
        "RateLimit",
        "Rule",
        "Usage",
        "decide",
        "invalid_call",
        "load_pack",
        "parse_pack",
    ],
    "agentflow.server": [
        "create_app",
    ],
    "agentflow.store": [
        "DEFAULT_URL",
        "MASK",
        "RUN_STATUSES",
        "SCHEMA_REVISION",
        "TERMINAL_STATUSES",
        "ApprovalRow",
        "AuditRow",
        "Backend",
        "Blob",
        "Conn",
        "EventStore",
        "Op",
        "PolicyUsage",
        "PrincipalRow",
        "RedactingFilter",
        "Redaction",
        "Run",
        "RunRecord",
        "SessionRow",
        "Signal",
        "Step",
        "StepAttempt",
        "StepRecord",
        "Tx",
        "VoteRow",
        "Worker",
        "adapter_for",
        "decode",
        "digest",
        "encode",
        "param_adapters",
        "parse_url",
        "pinned_url",
        "redact_url",
        "resolve_url",
        "return_adapter",
        "same_database",
        "unrepresentable",
    ],
    "agentflow.testing": [
        "RunbookChatModel",
        "ScriptedChatModel",
        "TestClock",
        "assert_eventually",
        "configure_crash_point",
        "crash_point",
    ],
    "agentflow.trace": [
        "Ledger",
        "ReplayResult",
        "Trace",
        "load",
        "runs",
    ],
}


@pytest.mark.parametrize("module", sorted(EXPORTS))
def test_all_is_pinned(module: str) -> None:
    """Each public package exports exactly the pinned names."""
    assert importlib.import_module(module).__all__ == EXPORTS[module]


@pytest.mark.parametrize("module", sorted(EXPORTS))
def test_every_exported_name_exists(module: str) -> None:
    """Every name in `__all__` resolves (`from module import *` cannot fail)."""
    mod = importlib.import_module(module)
    missing = [name for name in mod.__all__ if not hasattr(mod, name)]
    assert missing == []


@pytest.mark.parametrize("module", sorted(EXPORTS))
def test_no_unlisted_public_members(module: str) -> None:
    """Every public class or function of agentflow reachable from a package is listed in its
    `__all__`: nothing is public by accident."""
    mod = importlib.import_module(module)
    unlisted = [
        name
        for name, value in vars(mod).items()
        if not name.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", "").startswith("agentflow")
        and name not in mod.__all__
    ]
    assert unlisted == []


def test_error_hierarchy_matches_the_documented_tree() -> None:
    """The errors form the tree drawn in `agentflow.errors`' docstring, under one root."""
    parents = {name: getattr(agentflow.errors, name).__mro__[1].__name__ for name in agentflow.errors.__all__}
    assert parents == {
        "AgentflowError": "Exception",
        "ConfigurationError": "AgentflowError",
        "NotRegisteredError": "ConfigurationError",
        "NotInActivityError": "ConfigurationError",
        "PayloadError": "AgentflowError",
        "RunError": "AgentflowError",
        "UnknownRunError": "RunError",
        "RunStateError": "RunError",
        "RunFailedError": "RunError",
        "WorkflowError": "AgentflowError",
        "NonDeterminismError": "WorkflowError",
        "ActivityError": "WorkflowError",
        "ChildWorkflowError": "WorkflowError",
        "WaitTimeout": "WorkflowError",
        "ReplayRefused": "WorkflowError",
        "StoreError": "AgentflowError",
        "StoreBusyError": "StoreError",
        "LeaseLostError": "StoreError",
        "CorruptRecordError": "StoreError",
        "SchemaVersionError": "StoreError",
        "BudgetExceeded": "WorkflowError",
        "ContextWindowExceeded": "WorkflowError",
        "ModelError": "AgentflowError",
        "ModelRateLimited": "ModelError",
        "ModelServerError": "ModelError",
        "ModelTimeout": "ModelError",
        "ModelConnectionError": "ModelError",
        "ModelBadResponse": "ModelError",
        "ModelBadRequest": "ModelError",
        "ModelAuthError": "ModelError",
        "ModelRequestsForbidden": "ModelError",
        "PolicyError": "ConfigurationError",
        "ApprovalError": "AgentflowError",
        "AuthenticationError": "ApprovalError",
        "ApprovalRefused": "ApprovalError",
    }
    assert all(name in (agentflow.errors.__doc__ or "") for name in parents)
    retryable = sorted(name for name in parents if getattr(agentflow.errors, name).retryable)
    assert retryable == [
        "LeaseLostError",
        "ModelBadResponse",
        "ModelConnectionError",
        "ModelError",
        "ModelRateLimited",
        "ModelServerError",
        "ModelTimeout",
        "StoreBusyError",
    ]
