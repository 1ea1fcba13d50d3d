"""The seed's closed loop as a coded workflow: no model, every step a recorded activity.

    optimization record (a ticket) -> pull KPIs -> detect anomalies -> rank root causes ->
    propose a change -> stage it (dry run) -> policy decision -> approval (a durable signal
    wait) -> wait for the maintenance window (a durable timer) -> re-stage and apply -> monitor
    the KPIs (durable sleeps between reads) -> commit, or roll back (the incident stays open)
    -> a note on the ticket

    import agentflow_noc as noc
    from agentflow import App
    from agentflow.testing import TestClock

    net = noc.configure("network.db")
    net.inject("CS-104", "mis_set_handover")
    app = App("sqlite:///runs.db", clock=TestClock())  # the window wait takes no real time
    loop = noc.register_closed_loop(app)
    result = app.run(loop, "CS-104", window_start_hour=2, auto_approve=True, run_id="loop-cs104")

Each step calls the NOC tool it is named after (`agentflow_noc.tools`) as an activity of its own,
`noc.closed_loop.<tool>`; effect tools take their idempotency key from the engine, so a resumed
run never pushes, rolls back or notes twice. The stage is a dry run through `model.normalize`,
so a value out of range ends the loop (`refused`) before anyone is asked to approve it; the
approval goes through `agentflow.agent.authorize`, the gate every agent tool call passes: an
approval request bound to the exact site, parameter and value, decided by the tenant's operators
through `Approvals.of(app)`.

Two clocks: the engine's (timers, `ctx.now()`) and the simulated network's (`Network.now`, used
by the tools' KPI reads and the ledger's timestamps). Every step is given the engine time it was
scheduled at and sets the network clock to it before touching the network; the monitoring reads
the window just before each check. So 45 minutes of monitoring on a time-skipping clock really
reads the KPIs of the 45 minutes after the change.

Limits: the network has one clock per file; two loops driven at the same moment against one
file may interleave one's clock set with the other's read (it is a simulator).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from langchain_core.tools import BaseTool
from pydantic import BaseModel, Field

from agentflow import Activity, ActivityError, App, RetryPolicy, Workflow, WorkflowContext
from agentflow.agent import Decision, Policies, authorize, default_policy
from agentflow.llm import ToolFacts, tool_facts
from agentflow_noc import model
from agentflow_noc.env import network
from agentflow_noc.tools import NOC_TOOLS, apply_change, rollback_change

CLOSED_LOOP = "noc.closed_loop"

Value = str | int | float | bool
Status = Literal["committed", "rolled_back", "rejected", "refused", "no_action"]
ToolStep = Activity[[dict[str, Any], float], dict[str, Any]]
CheckStep = Activity[[str, int, float], dict[str, Any]]

# A bad argument (unknown site, value out of range) raises ValueError: a retry cannot fix it.
STEP_RETRY = RetryPolicy(max_attempts=3, initial_interval=1.0, max_interval=30.0, non_retryable=(ValueError,))


# -- the typed result ---------------------------------------------------------------------------
class Change(BaseModel):
    """The configuration change the loop staged (and maybe applied)."""

    site: str
    param: str
    previous: Value
    value: Value
    change_id: str
    rationale: str = ""


class Approval(BaseModel):
    """An operator's verdict on the staged change (or the auto-approval)."""

    approved: bool
    by: str | None = None
    comment: str = ""


class KpiCheck(BaseModel):
    """One KPI read while monitoring: the mean of the minutes since the previous check."""

    at: datetime
    minutes_after_apply: int
    mean: dict[str, float]
    anomalies: list[str]
    healthy: bool


class Monitor(BaseModel):
    """The monitoring after the apply: healthy when every check was."""

    minutes: int
    checks: list[KpiCheck]
    healthy: bool
    summary: str


class ClosedLoopResult(BaseModel):
    """How a closed-loop run ended.

    Attributes:
        status: committed (change kept), rolled_back (the KPIs did not recover), rejected (by
            the approver, or the approval expired), refused (the stage or the policy said no, or
            the config changed after the approval), no_action (nothing anomalous).
        ticket_id: the optimization ticket; its last note says how the run ended.
        diagnosed_cause: the top cause the ranking found; `cause` is the one acted on (the
            override when given).
        detail: the ticket note's text.
    """

    status: Status
    site: str
    ticket_id: str
    kpis_before: dict[str, float] = Field(default_factory=dict)
    anomalies: list[str] = Field(default_factory=list)
    diagnosed_cause: str | None = None
    cause: str | None = None
    change: Change | None = None
    decision: Decision | None = None
    approval: Approval | None = None
    window_opens: datetime | None = None
    applied_at: datetime | None = None
    monitor: Monitor | None = None
    rolled_back: bool = False
    detail: str = ""


# -- parameters and the maintenance window ------------------------------------------------------
@dataclass(frozen=True, slots=True)
class _Params:
    site: str
    window_start_hour: int
    window_hours: int
    monitor_minutes: int
    check_every_minutes: int
    cause: str | None
    value: Value | None
    auto_approve: bool

    def check(self) -> None:
        """Refuse values the loop cannot honour, all at once, before any step is recorded."""
        rules = [
            (model.region_of(self.site) is not None, f"site must be CS-101..CS-124, not {self.site!r}"),
            (0 <= self.window_start_hour <= 23, f"window_start_hour must be 0..23, not {self.window_start_hour}"),
            (1 <= self.window_hours <= 24, f"window_hours must be 1..24, not {self.window_hours}"),
            (30 <= self.monitor_minutes <= 60, f"monitor_minutes must be 30..60, not {self.monitor_minutes}"),
            (5 <= self.check_every_minutes <= self.monitor_minutes,
             f"check_every_minutes must be 5..monitor_minutes, not {self.check_every_minutes}"),
            (self.cause is None or self.cause in model.SCENARIOS,
             f"cause must be one of {list(model.SCENARIOS)} or None, not {self.cause!r}"),
        ]  # fmt: skip
        problems = [message for ok, message in rules if not ok]
        if problems:
            raise ValueError(f"{CLOSED_LOOP}: " + "; ".join(problems))


def window_opens(now: datetime, start_hour: int, hours: int = 4) -> datetime:
    """When the maintenance window `now` is in opened, or else when the next one opens.

    Args:
        now: an aware datetime (the workflow's `ctx.now()`).
        start_hour: windows open every day at `start_hour`:00 UTC.
        hours: how long a window lasts.

    Returns:
        An opening at or before `now` when `now` is inside a window (apply at once), else the
        next opening.
    """
    now = now.astimezone(UTC)
    today = now.replace(hour=start_hour, minute=0, second=0, microsecond=0)
    for opens in (today - timedelta(days=1), today):
        if now < opens + timedelta(hours=hours):
            return opens
    return today + timedelta(days=1)


# -- activities ---------------------------------------------------------------------------------
def _tool_step(app: App, prefix: str, tool: BaseTool) -> ToolStep:
    """Register `tool` as the activity `<prefix>.<tool>`, run at the engine time it is given."""
    facts = tool_facts(tool)

    def call(args: dict[str, Any], at: float) -> dict[str, Any]:
        network().set_time(at)  # the tools read (and the ledger stamps) the network's clock
        result: dict[str, Any] = tool.invoke(args)
        return result

    return app.activity(
        name=f"{prefix}.{tool.name}", retry=STEP_RETRY, timeout=facts.timeout,
        side_effect=not facts.read_only, reconcile=facts.reconcile,
    )(call)  # fmt: skip


def _check_kpis(site: str, minutes: int, at: float) -> dict[str, Any]:
    """The KPI mean of `site` over the `minutes` before `at` (engine time) and the KPIs past
    their thresholds. Reads at `at` explicitly: it needs no clock set, so no race."""
    net = network()
    mean = net.kpis(site, window_minutes=minutes, at=at)["mean"]
    return {"mean": mean, "anomalies": [a["kpi"] for a in model.anomalies(net.seed, site, mean)]}


# -- the workflow -------------------------------------------------------------------------------
class _Halt(Exception):
    """Ends the loop early with a typed status (never escapes the workflow)."""

    def __init__(self, status: Status, note: str) -> None:
        super().__init__(note)
        self.status, self.note = status, note


class _Loop:
    """One run of the closed loop: its state between steps, rebuilt by replay."""

    def __init__(
        self, ctx: WorkflowContext, steps: dict[str, ToolStep], check: CheckStep, policy: Policies, params: _Params
    ) -> None:
        self.ctx, self.steps, self.check, self.policy, self.p = ctx, steps, check, policy, params
        self.out = ClosedLoopResult(status="no_action", site=params.site, ticket_id="")

    async def _call_at(self, tool: str, **args: Any) -> tuple[datetime, dict[str, Any]]:
        at = self.ctx.now()
        return at, await self.ctx.run(self.steps[tool], args, at.timestamp())

    async def _call(self, tool: str, **args: Any) -> dict[str, Any]:
        return (await self._call_at(tool, **args))[1]

    @property
    def change(self) -> Change:
        assert self.out.change is not None, "no change staged yet"
        return self.out.change

    async def run(self) -> ClosedLoopResult:
        summary = f"closed-loop optimization of {self.p.site} (run {self.ctx.run_id})"
        record = await self._call(
            "create_ticket", site=self.p.site, summary=summary, severity="info", ticket_type="optimization"
        )
        self.out.ticket_id = str(record["ticket_id"])
        try:
            status, note = await self._loop()
        except _Halt as halt:
            status, note = halt.status, halt.note
        except (asyncio.CancelledError, ActivityError) as exc:
            await self._abort(exc)
            raise
        self.out.status, self.out.detail = status, note
        await self._call("update_ticket", ticket_id=self.out.ticket_id, note=f"{status}: {note}")
        return self.out

    async def _loop(self) -> tuple[Status, str]:
        await self._diagnose()
        await self._stage()
        await self._authorize()
        await self._await_window()
        await self._apply()
        return await self._settle(await self._monitor())

    async def _diagnose(self) -> None:
        site = self.p.site
        self.out.kpis_before = (await self._call("get_kpis", site=site, window_minutes=60))["mean"]
        found = await self._call("detect_anomalies", site=site)
        self.out.anomalies = [a["kpi"] for a in found["anomalies"]]
        if found["healthy"]:
            raise _Halt("no_action", f"{site}: no KPI past its threshold over the last hour; nothing to change")
        ranked = await self._call("rank_root_causes", site=site)
        self.out.diagnosed_cause = str(ranked["top_cause"])
        self.out.cause = self.p.cause or self.out.diagnosed_cause

    async def _stage(self) -> None:
        site = self.p.site
        try:
            proposal = await self._call("propose_change", site=site, cause=self.out.cause)
            value = proposal["to"] if self.p.value is None else self.p.value
            staged = await self._call("stage_change", site=site, param=proposal["param"], value=value)
        except ActivityError as exc:
            raise _Halt("refused", f"no change could be staged on {site}: {exc.cause_message}") from None
        self.out.change = Change(
            site=site, param=staged["param"], previous=staged["from"], value=staged["to"],
            change_id=staged["change_id"], rationale=proposal["rationale"],
        )  # fmt: skip

    async def _authorize(self) -> None:
        """The gate every agent tool call passes (`agentflow.agent.authorize`): a recorded policy
        decision and, when it says so, an approval request bound to the exact change, decided by
        operators of the tenant through `Approvals.of(app)` (a signal alone approves nothing)."""
        c = self.change
        args = {"site": c.site, "param": c.param, "value": c.value}
        policy = _auto_approving(self.policy) if self.p.auto_approve else self.policy
        gated = await authorize(self.ctx, apply_change, args, call_id=c.change_id, policies=policy)
        self.out.decision = gated.decision
        if gated.approval is not None:
            votes = [v for v in gated.approval.votes if v.revision == gated.approval.revision]
            self.out.approval = Approval(
                approved=gated.status == "ok", by=", ".join(v.principal for v in votes) or None,
                comment="; ".join(v.comment for v in votes if v.comment) or gated.approval.status,
            )  # fmt: skip
        if gated.status == "denied":
            raise _Halt("refused", gated.refusal)
        if gated.status == "rejected":
            raise _Halt("rejected", f"{c.change_id} ({c.param} {c.previous} -> {c.value}) {gated.refusal}")
        if gated.args != args:
            raise _Halt("refused", f"the approver edited the change to {gated.args}: stage it again")

    async def _await_window(self) -> None:
        now = self.ctx.now()
        opens = self.out.window_opens = window_opens(now, self.p.window_start_hour, self.p.window_hours)
        if opens > now:
            await self.ctx.sleep_until(opens)

    async def _apply(self) -> None:
        """Push the approved change, unless the config moved since it was staged and approved."""
        c = self.change
        fresh = await self._call("stage_change", site=c.site, param=c.param, value=c.value)
        if fresh["from"] != c.previous:
            raise _Halt(
                "refused", f"{c.param} of {c.site} is now {fresh['from']!r}, not the {c.previous!r} that was "
                "approved: not applied"
            )  # fmt: skip
        self.out.applied_at, _ = await self._call_at("apply_change", site=c.site, param=c.param, value=c.value)

    async def _monitor(self) -> Monitor:
        checks: list[KpiCheck] = []
        elapsed, total = 0, self.p.monitor_minutes
        while elapsed < total:
            minutes = min(self.p.check_every_minutes, total - elapsed)
            await self.ctx.sleep(60 * minutes)
            elapsed += minutes
            at = self.ctx.now()
            read = await self.ctx.run(self.check, self.p.site, minutes, at.timestamp())
            checks.append(KpiCheck(at=at, minutes_after_apply=elapsed, mean=read["mean"],
                                   anomalies=read["anomalies"], healthy=not read["anomalies"]))  # fmt: skip
        healthy = all(check.healthy for check in checks)
        self.out.monitor = Monitor(minutes=total, checks=checks, healthy=healthy, summary=self._summary(checks))
        return self.out.monitor

    def _summary(self, checks: list[KpiCheck]) -> str:
        c, healthy = self.change, all(check.healthy for check in checks)
        seen = ", ".join(sorted({a for check in checks for a in check.anomalies})) or "none"
        return (
            f"{c.site}: {c.param} {c.previous} -> {c.value}; anomalies {len(self.out.anomalies)} -> "
            f"{len(checks[-1].anomalies)} after {self.p.monitor_minutes} min, {len(checks)} checks "
            f"(seen: {seen}); {'resolved' if healthy else 'not resolved'}"
        )

    async def _settle(self, monitor: Monitor) -> tuple[Status, str]:
        c = self.change
        if monitor.healthy:
            return "committed", f"{monitor.summary}; {c.change_id} kept"
        outcome = await self._undo()
        return "rolled_back", f"{monitor.summary}; {outcome}; the incident stays open"

    async def _undo(self) -> str:
        """Roll the change back, through the gate like any change: the pack's rollback rule
        decides (and may ask people); a denied or rejected rollback leaves the change, said so."""
        c = self.change
        args = {"site": c.site, "change_id": c.change_id}
        # Runs recorded before rollbacks were gated replay their ungated path.
        if self.ctx.patched("agentflow_noc.gated-rollback"):
            policy = _auto_approving(self.policy) if self.p.auto_approve else self.policy
            gated = await authorize(self.ctx, rollback_change, args, call_id=f"rollback:{c.change_id}",
                                    policies=policy)  # fmt: skip
            if gated.status != "ok":
                return f"{c.change_id} not rolled back: {gated.refusal}"
        undone = await self._call("rollback_change", **args)
        self.out.rolled_back = bool(undone["rolled_back"])
        if self.out.rolled_back:
            return f"{c.change_id} rolled back ({c.param} back to {undone['value']})"
        return f"{c.change_id} not rolled back: {undone.get('reason')}"

    async def _abort(self, exc: BaseException) -> None:
        """The run is cancelled or a step failed for good: an applied change is rolled back (an
        unmonitored change must not stay), and the ticket says so. Then the error goes on."""
        why = "cancelled" if isinstance(exc, asyncio.CancelledError) else f"failed: {exc}"
        if self.out.applied_at is not None and not self.out.rolled_back:
            why += f"; {await self._undo()}"
        await self._call("update_ticket", ticket_id=self.out.ticket_id, note=why)


def _auto_approving(policy: Policies) -> Policies:
    """The policy, with "require approval" turned into an allow (`auto_approve=True`); a deny
    still refuses. Policy functions only: a pack's limits need its own evaluation."""
    if not callable(policy):
        raise ValueError(f"{CLOSED_LOOP}: auto_approve works with a policy function, not a policy pack")

    def auto(ctx: WorkflowContext, tool: BaseTool, facts: ToolFacts, args: dict[str, Any]) -> Decision:
        decision = policy(ctx, tool, facts, args)
        if decision.effect != "require_approval":
            return decision
        return Decision(effect="allow", rule=f"{decision.rule} (auto-approved)", reason="auto_approve=True",
                        pack=decision.pack, pack_hash=decision.pack_hash)  # fmt: skip

    return auto


# -- registration -------------------------------------------------------------------------------
def register(
    app: App, *, name: str = CLOSED_LOOP, policy: Policies = default_policy
) -> Workflow[..., ClosedLoopResult]:
    """Register the closed loop on `app` as workflow `name`, with its activities `<name>.<tool>`.

    Args:
        app: the App to register on (once per name: pass another `name` for a second variant).
        name: the workflow's name; its activities are named after it.
        policy: decides about the apply: a policy pack, its path, or a policy function
            (default `agentflow.agent.default_policy`: side-effecting tools need an approval by an
            operator of the run's tenant, given through `Approvals.of(app)`; it expires per the
            policy). A "deny" ends the loop as `refused`; "allow" skips the approval.

    Returns:
        The workflow `loop(site, *, window_start_hour=2, window_hours=4, monitor_minutes=45,
        check_every_minutes=15, cause=None, value=None, auto_approve=False) -> ClosedLoopResult`.
        `cause` forces the diagnosis (right or wrong), `value` replaces the proposed value,
        `auto_approve` skips the approval (tests, demos). Out-of-range parameters fail the run
        before any step.
    """
    steps = {tool.name: _tool_step(app, name, tool) for tool in NOC_TOOLS}
    check: CheckStep = app.activity(name=f"{name}.check_kpis", retry=STEP_RETRY, side_effect=False)(_check_kpis)

    @app.workflow(name=name)
    async def closed_loop(
        ctx: WorkflowContext,
        site: str,
        *,
        window_start_hour: int = 2,
        window_hours: int = 4,
        monitor_minutes: int = 45,
        check_every_minutes: int = 15,
        cause: str | None = None,
        value: Value | None = None,
        auto_approve: bool = False,
    ) -> ClosedLoopResult:
        """The closed loop on one cell site (parameters: see `register`)."""
        params = _Params(
            site.strip().upper(), window_start_hour, window_hours, monitor_minutes, check_every_minutes,
            cause, value, auto_approve,
        )  # fmt: skip
        params.check()
        return await _Loop(ctx, steps, check, policy, params).run()

    return closed_loop
