"""The gate every tool call passes before it runs: policy decision, approval, maintenance window.

    decision (recorded `policy` step)
      deny              -> the reason goes back to the model; nothing runs
      defer             -> durable sleep until the maintenance window opens, then decide again
      require_approval  -> an approval request (recorded `approval` step: the exact arguments,
                           their hash, the preview diff), a durable wait for its decision, the
                           request re-read from the store (the signal only wakes the run: a
                           forged signal approves nothing), then decide again on the approved
                           (possibly edited) arguments right before running
      allow             -> run; rate and blast-radius usage is counted in the same transaction

The model never sees the approval machinery and cannot reach it: the call's id and arguments are
all it controls, and an approval is bound to a hash of the exact arguments.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from langchain_core.tools import BaseTool
from pydantic import BaseModel

from agentflow.approvals import ApprovalRequest, Approvals, approval_signal_name, args_hash
from agentflow.engine import Activity, RetryPolicy, WorkflowContext, current_activity
from agentflow.errors import ConfigurationError, WaitTimeout
from agentflow.llm import ToolFacts, canonical_json, tool_facts
from agentflow.policy import (
    DEFAULT_APPROVAL,
    CallFacts,
    Conditions,
    PolicyDecision,
    PolicyPack,
    decide,
    invalid_call,
    load_pack,
)
from agentflow.store import MASK, PolicyUsage, Tx, unrepresentable

if TYPE_CHECKING:
    from agentflow.engine import App

M = TypeVar("M", bound=BaseModel)
Policy = Callable[[WorkflowContext, BaseTool, ToolFacts, dict[str, Any]], PolicyDecision]
Policies = PolicyPack | Policy | str | Path
MAX_GATES = 8  # decisions per call: defer/approve/re-decide cycles before the call is given up


def default_policy(ctx: WorkflowContext, tool: BaseTool, facts: ToolFacts, args: dict[str, Any]) -> PolicyDecision:
    """Read-only tools run; side-effecting ones (and undeclared ones) need an approval."""
    if facts.read_only:
        return PolicyDecision(effect="allow", rule="default:read-only", pack="default")
    return PolicyDecision(effect="require_approval", rule="default:side-effect", pack="default", approval_rule="default:side-effect",
                          approval=DEFAULT_APPROVAL, reason=f"{tool.name} has side effects")  # fmt: skip


def resolve_policies(policies: Policies) -> PolicyPack | Policy:
    """A pack file path is loaded (and validated) when the agent is built, not at the first call."""
    if isinstance(policies, str | Path):
        return load_pack(policies)
    if isinstance(policies, PolicyPack) or callable(policies):
        return policies
    raise ConfigurationError(f"policies must be a PolicyPack, a pack file path or a policy function, not {policies!r}")


@dataclass
class Gated:
    """The gate's verdict on one call: run it with `args`, or not (`refusal` says why)."""

    decision: PolicyDecision
    args: dict[str, Any]
    approval: ApprovalRequest | None = None
    status: str = "ok"  # ok | denied | rejected
    refusal: str = ""

    @property
    def approvers(self) -> str | None:
        if self.approval is None:
            return None
        names = [
            v.principal for v in self.approval.votes if v.decision == "approve" and v.revision == self.approval.revision
        ]
        return ", ".join(names) or None


async def authorize(
    ctx: WorkflowContext, tool: BaseTool, args: dict[str, Any], *, call_id: str, policies: Policies = default_policy
) -> Gated:
    """Pass one tool call through the gate from any workflow (the agent does this for every call
    the model makes): decision, approval, maintenance window, re-decision, all recorded.

    Args:
        ctx: the workflow's context.
        tool: the tool about to be called (its `agentflow.llm.tool` facts are what policies see).
        args: the exact arguments.
        call_id: what the approval request is tied to (with the run and the argument hash).
        policies: a pack, a pack path or a policy function.

    Returns:
        The verdict: `status` "ok" (run it, with `args`, which an approver may have edited),
        "denied" or "rejected" (with `refusal`).
    """
    return await gate(ctx, resolve_policies(policies), tool, tool_facts(tool), call_id, args)


async def gate(
    ctx: WorkflowContext, policies: PolicyPack | Policy, tool: BaseTool, facts: ToolFacts, call_id: str,
    args: dict[str, Any],
) -> Gated:  # fmt: skip
    """Decide, wait for the window or the approvers as the policy says, decide again; return
    whether (and with which arguments) the call runs. Every step is recorded."""
    verdict = Gated(decision=await _decide(ctx, policies, tool, facts, call_id, args, None, ""), args=args)
    key = verdict.decision.key  # the first decision step's idempotency key: this call's identity
    for _ in range(MAX_GATES):
        decision = verdict.decision
        if decision.effect == "deny":
            verdict.status, verdict.refusal = "denied", f"denied by policy ({decision.rule}): {decision.reason}"
            return verdict
        held = verdict.approval
        # An approval covers these exact arguments under the rule that asked for it: an edit that
        # moves the call under a stricter rule needs that rule's approvers too.
        # Bound to the arguments as approvers saw them (secrets masked: see `Approvals.request`).
        shown = ctx.redaction.data(verdict.args)
        unapproved = held is None or held.args_hash != args_hash(shown) or held.rule != _approval_rule(decision)
        # People first, then the window: an approval given during the day is applied at night.
        needs_people = decision.effect == "require_approval" or (decision.effect == "defer" and decision.approval)
        if needs_people and unapproved:
            held = verdict.approval = await _approval(ctx, tool, facts, call_id, verdict.args, decision)
            if held.status != "approved":
                verdict.status, verdict.refusal = "rejected", _why_not(held)
                return verdict
            verdict.args = _as_approved(verdict.args, held)
        elif decision.effect == "defer" and decision.defer_until is not None:
            await ctx.sleep_until(datetime.fromtimestamp(decision.defer_until, UTC))
        else:
            return verdict  # allowed, or approved for exactly these arguments
        approved = held.id if held is not None else None
        verdict.decision = await _decide(ctx, policies, tool, facts, call_id, verdict.args, approved, key)
    verdict.status, verdict.refusal = "denied", f"no decision after {MAX_GATES} policy evaluations"
    return verdict


def _as_approved(args: dict[str, Any], held: ApprovalRequest) -> dict[str, Any]:
    """The call's arguments with the edits approvers made to the fields their rule lets them
    edit. Everything else is the call's own: the request shows secrets masked, never to run."""
    edits = {k: held.args[k] for k in held.spec.editable_args if k in held.args and held.args[k] != MASK}
    return {**args, **edits}


def _approval_rule(decision: PolicyDecision) -> str:
    return decision.approval_rule or decision.rule


def _why_not(req: ApprovalRequest) -> str:
    if req.status == "expired":
        return f"not approved: the approval request expired ({req.rule})"
    notes = "; ".join(f"{v.principal}: {v.comment}" for v in req.votes if v.decision == "reject") or "no reason given"
    return f"rejected by an operator ({notes})"


def call_facts(ctx: WorkflowContext, tool: BaseTool, facts: ToolFacts, call_id: str, args: dict[str, Any]) -> CallFacts:
    # Arguments holding an unrepresentable number are denied (`invalid_call`) before anything
    # reads them: not even the target is derived from them.
    target = region = None
    problem = ""
    if unrepresentable(args) is None:
        try:
            target, region = facts.target_of(args), facts.region_of(args)
        except Exception as exc:  # noqa: BLE001 - the tool's own naming failed: denied, said why
            problem = f"{type(exc).__name__}: {exc}"[:300]
    return CallFacts(
        tool=tool.name, args=args, tags=list(facts.tags), side_effect=not facts.read_only,
        target=None if target is None else str(target), region=None if region is None else str(region),
        tenant=ctx.tenant, requester=ctx.meta.get("requested_by"), run_id=ctx.run_id, call_id=call_id,
        target_error=problem, server=facts.server or "", annotations=facts.hints(),
    )  # fmt: skip


async def _decide(
    ctx: WorkflowContext, policies: PolicyPack | Policy, tool: BaseTool, facts: ToolFacts, call_id: str,
    args: dict[str, Any], approved: str | None, key: str,
) -> PolicyDecision:  # fmt: skip
    """One recorded decision. A pack is evaluated inside a store transaction that also counts
    the call for rate and blast-radius limits when it is let through (allowed, or approved).
    `key` is the call's identity (empty for its first decision, which takes its own step's
    idempotency key, recorded in the decision)."""

    def evaluate() -> PolicyDecision:
        own = key or current_activity().idempotency_key
        about = call_facts(ctx, tool, facts, call_id, args).model_copy(update={"key": own})
        refused = invalid_call(about)
        if refused is not None:  # before any policy function or pack: nothing judges a NaN
            return refused.model_copy(update={"key": own, "call": about})
        if not isinstance(policies, PolicyPack):
            return policies(ctx, tool, facts, args).model_copy(update={"key": own, "call": about})
        app: App = current_activity().app
        now = app.clock.now()

        held_rule = Approvals.of(app).get(approved).rule if approved is not None else None
        deciding = (about.run_id, about.usage_key)
        # Conditions are evaluated here, outside the write transaction (CEL may take up to its
        # budget); inside it, the usage counts are read again and an unchanged activation reuses
        # these results: the store's write lock is never held while CEL runs, unless a concurrent
        # run changed the counts in between.
        conditions: Conditions = {}
        app.store.read(lambda tx: decide(policies, about, now, tx.usage(deciding=deciding), conditions))

        def body(tx: Tx) -> PolicyDecision:
            usage = tx.usage(deciding=deciding)
            decision = decide(policies, about, now, usage, conditions)
            covered = decision.effect == "require_approval" and held_rule == _approval_rule(decision)
            if decision.effect == "allow" or covered:
                _reserve(usage, about, now)
            return decision.model_copy(update={"key": own, "call": about})

        # What the limits read across runs: the tenant's usage counts, and (one change per
        # target) other runs' changes of the target, whatever their tenant.
        locks = [f"tenant:{about.tenant}"] + ([f"target:{about.target}"] if about.target is not None else [])
        return app.store.transaction(body, what="recording a policy decision", locks=locks)

    request = {"tool": tool.name, "call": call_id, "args": args, "approved": approved}
    return await _local(ctx, "policy", tool.name, evaluate, PolicyDecision, request)


def _reserve(usage: PolicyUsage, facts: CallFacts, now: float) -> None:
    """Count a call rate and blast-radius limits let through (once per gated call)."""
    usage.reserve(tenant=facts.tenant, tool=facts.tool, target=facts.target, region=facts.region,
                  run_id=facts.run_id, call_key=facts.usage_key, side_effect=facts.side_effect, at=now)  # fmt: skip


async def _approval(
    ctx: WorkflowContext, tool: BaseTool, facts: ToolFacts, call_id: str, args: dict[str, Any],
    decision: PolicyDecision,
) -> ApprovalRequest:  # fmt: skip
    """Request an approval and wait (durably) until it is decided or expires."""

    def make() -> ApprovalRequest:
        app: App = current_activity().app
        return Approvals.of(app).request(
            run_id=ctx.run_id, call_id=call_id, tenant=ctx.tenant, requested_by=ctx.meta.get("requested_by"),
            tool=tool.name, args=args, decision=decision, diff=_preview(facts, args), step=decision.key,
        )  # fmt: skip

    request = {"tool": tool.name, "call": call_id, "args": args, "rule": decision.rule}
    req = await _local(ctx, "approval", f"request:{tool.name}", make, ApprovalRequest, request)
    while req.open:
        left = None if req.expires_at is None else req.expires_at - ctx.now().timestamp()
        try:
            if left is not None and left <= 0:
                raise WaitTimeout(f"approval {req.id} expired", run_id=ctx.run_id)
            await ctx.wait_signal(approval_signal_name(req.id), timeout=left)
            req = await _local(ctx, "approval", "read", _reader("get", req.id), ApprovalRequest, {"id": req.id})
        except WaitTimeout:
            req = await _local(ctx, "approval", "expire", _reader("expire", req.id), ApprovalRequest, {"id": req.id})
    return req


def _reader(method: str, approval_id: str) -> Callable[[], ApprovalRequest]:
    def read() -> ApprovalRequest:
        app: App = current_activity().app
        found: ApprovalRequest = getattr(Approvals.of(app), method)(approval_id)
        return found

    return read


def _preview(facts: ToolFacts, args: Mapping[str, Any]) -> Any:
    if facts.preview is None:
        return None
    try:
        return facts.preview(args)
    except Exception as exc:  # noqa: BLE001 - a preview that fails is shown as such, not fatal
        return {"preview_error": f"{type(exc).__name__}: {exc}"}


async def _local(
    ctx: WorkflowContext, kind: str, name: str, fn: Callable[[], M | Awaitable[M]], model: type[M],
    request: dict[str, Any],
) -> M:  # fmt: skip
    """A recorded, not retried, store-side step (policy decisions, approval bookkeeping)."""

    async def run() -> M:
        value = fn()
        if inspect.isawaitable(value):
            value = await value
        return model.model_validate(value)

    run.__annotations__["return"] = model
    step: Activity[[], M] = Activity(
        run, name=name, retry=RetryPolicy(max_attempts=1), timeout=None, side_effect=False, reconcile=None, kind=kind,
    )  # fmt: skip
    return await ctx.run_step(step, request=canonical_json(request))
