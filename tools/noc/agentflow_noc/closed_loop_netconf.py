"""The closed loop on a NETCONF device's confirmed commit: the network-native rollback.

    diagnose (the device's config, the KPIs) -> propose -> stage (the device validates the edit
    in its candidate) -> policy decision -> approval (a durable wait) -> apply as a confirmed
    commit that the device reverts by itself after `confirm_timeout` seconds -> monitor the KPIs
    through the window (durable timers) -> read the device -> confirm when the KPIs recovered,
    cancel-commit when not

    from agentflow import App
    from agentflow_noc.closed_loop_netconf import register, simulated_kpis

    app = App("sqlite:///runs.db")                        # a real clock: the device's is real
    loop = register(app, kpis=simulated_kpis())           # or kpis=promql.window_kpis (Prometheus)
    app.run(loop, "CS-101", monitor_seconds=1800, checks=3, auto_approve=True)

Why confirmed commit: the change's safety does not depend on any worker being alive. If every
worker dies during the monitoring window and none comes back in time, the device reverts the
change at its timeout. A worker that resumes the run later reads the device before it acts: the
change is gone (the device's `/ran/last-change` no longer names it), so the run ends
`reverted_by_device` and says so; it never confirms a change that no longer exists. A confirm
that loses the race with the device's timer is reported the same way.

Each device operation is an activity calling `agentflow_noc.netconf.Device` (the code the tools
of `netconf_tools` call too); the apply's idempotency key is recorded on the device in the same
commit, so a worker killed between the commit and its record does not commit twice: the engine
asks the device (`reconcile`) before executing the step again.

KPIs come from a `KpiReader` given at registration: `simulated_kpis()` (the default, offline)
computes them with `model.sample` from the device's running config; `promql.window_kpis` reads
what Prometheus scraped from the RAN exporter (`ransim`, which reads the device's config).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from agentflow import ActivityError, App, Workflow, WorkflowContext, current_activity
from agentflow.agent import Decision, Policies, authorize, default_policy
from agentflow_noc import model
from agentflow_noc.closed_loop import STEP_RETRY, Approval, Change, _auto_approving
from agentflow_noc.netconf import Device, DeviceSettings
from agentflow_noc.netconf_tools import apply_change, push_once
from agentflow_noc.network import DEFAULT_SEED

NETCONF_LOOP = "noc.closed_loop_netconf"
Value = str | int | float | bool
Status = Literal["confirmed", "cancelled", "reverted_by_device", "rejected", "refused", "no_action"]
#: (site, window in seconds, engine time at the window's end) -> the KPIs' means over the window.
KpiReader = Callable[[str, float, float], Mapping[str, float]]


def simulated_kpis(*, seed: int = DEFAULT_SEED, settings: DeviceSettings | None = None,
                   incidents: Mapping[str, str] | None = None) -> KpiReader:  # fmt: skip
    """KPIs computed by the simulator's physics (`model.sample`) from the cell's running config
    on the device (`settings`, default the `NOC_NETCONF_*` environment) and `incidents`
    ({site: scenario}; a mis-set parameter needs none: the config says it all)."""

    def read(site: str, seconds: float, at: float) -> dict[str, float]:
        config = Device(settings or DeviceSettings.from_env()).config(site)
        last = int(at // model.BUCKET_SECONDS)
        count = max(1, int(seconds) // model.BUCKET_SECONDS)
        incident = (incidents or {}).get(site)
        series = [model.sample(seed, site, b, config, incident) for b in range(last - count + 1, last + 1)]
        return model.summarize(series)

    return read


# -- the typed result ---------------------------------------------------------------------------
class DeviceCheck(BaseModel):
    """One KPI read in the monitoring window."""

    at: datetime
    seconds_after_apply: float
    mean: dict[str, float]
    anomalies: list[str]
    healthy: bool


class NetconfLoopResult(BaseModel):
    """How a closed loop on a NETCONF device ended.

    Attributes:
        status: confirmed (KPIs recovered, the confirming commit made), cancelled (KPIs did not
            recover: cancel-commit), reverted_by_device (the device reverted the change at its
            confirm timeout before the run could decide: no worker was alive in time), rejected
            (by the approver), refused (the device, the policy or a pending change said no),
            no_action (nothing anomalous).
        device_state: the change's state on the device when the run looked after the window.
        detail: one line for a ticket.
    """

    status: Status
    site: str
    kpis_before: dict[str, float] = Field(default_factory=dict)
    anomalies: list[str] = Field(default_factory=list)
    cause: str | None = None
    change: Change | None = None
    decision: Decision | None = None
    approval: Approval | None = None
    applied_at: datetime | None = None
    confirm_timeout: int | None = None
    checks: list[DeviceCheck] = Field(default_factory=list)
    device_state: str | None = None
    detail: str = ""


# -- activities ---------------------------------------------------------------------------------
def _device() -> Device:
    return Device(DeviceSettings.from_env())


def _activities(app: App, name: str, kpis: KpiReader, seed: int) -> dict[str, Any]:
    def diagnose(site: str, at: float) -> dict[str, Any]:
        config = _device().config(site)
        mean = dict(kpis(site, 3600.0, at))
        found = model.anomalies(seed, site, mean)
        causes = model.root_causes(seed, site, mean, config) if found else []
        return {"config": config, "mean": mean, "anomalies": [a["kpi"] for a in found], "causes": causes}

    def read_kpis(site: str, seconds: float, at: float) -> dict[str, Any]:
        mean = dict(kpis(site, seconds, at))
        return {"mean": mean, "anomalies": [a["kpi"] for a in model.anomalies(seed, site, mean)]}

    def stage(site: str, param: str, value: Value) -> dict[str, Any]:
        return _device().stage(site, param, value)

    def apply(site: str, param: str, value: Value, timeout: int) -> dict[str, Any]:
        return push_once(_device(), site, param, value, timeout=timeout)  # never again past the timeout

    def status(site: str, change_id: str) -> dict[str, Any]:
        return _device().status(site, change_id)

    def confirm(site: str, change_id: str) -> dict[str, Any]:
        return _device().confirm(site, change_id)

    def rollback(site: str, change_id: str) -> dict[str, Any]:
        return _device().rollback(site, change_id, key=current_activity().idempotency_key)

    def reconcile(key: str) -> dict[str, Any] | None:
        return _device().result_for_key(key)

    reads: dict[str, Callable[..., dict[str, Any]]] = {
        "diagnose": diagnose, "read_kpis": read_kpis, "stage": stage, "status": status,
    }  # fmt: skip
    acts: dict[str, Any] = {
        op: app.activity(name=f"{name}.{op}", retry=STEP_RETRY, side_effect=False)(fn) for op, fn in reads.items()
    }
    acts["apply"] = app.activity(name=f"{name}.apply", retry=STEP_RETRY, reconcile=reconcile)(apply)
    acts["confirm"] = app.activity(name=f"{name}.confirm", retry=STEP_RETRY)(confirm)
    acts["rollback"] = app.activity(name=f"{name}.rollback", retry=STEP_RETRY)(rollback)
    return acts


# -- the workflow -------------------------------------------------------------------------------
class _Halt(Exception):
    def __init__(self, status: Status, note: str) -> None:
        super().__init__(note)
        self.status, self.note = status, note


class _Loop:
    """One run: its state between steps, rebuilt by replay."""

    def __init__(self, ctx: WorkflowContext, acts: dict[str, Any], policy: Policies, site: str,
                 opts: dict[str, Any]) -> None:  # fmt: skip
        self.ctx, self.acts, self.policy, self.site, self.o = ctx, acts, policy, site, opts
        self.out = NetconfLoopResult(status="no_action", site=site, confirm_timeout=opts["confirm_timeout"])

    async def run(self) -> NetconfLoopResult:
        try:
            await self._diagnose_and_stage()
            await self._authorize()
            await self._apply()
            await self._monitor()
            self.out.status, self.out.detail = await self._settle()
        except _Halt as halt:
            self.out.status, self.out.detail = halt.status, halt.note
        return self.out

    @property
    def change(self) -> Change:
        assert self.out.change is not None, "no change staged yet"
        return self.out.change

    async def _diagnose_and_stage(self) -> None:
        found = await self.ctx.run(self.acts["diagnose"], self.site, self.ctx.now().timestamp())
        self.out.kpis_before, self.out.anomalies = found["mean"], found["anomalies"]
        if not found["anomalies"] and self.o["cause"] is None:
            raise _Halt("no_action", f"{self.site}: no KPI past its threshold over the last hour; nothing to change")
        cause = self.out.cause = self.o["cause"] or (found["causes"][0]["cause"] if found["causes"] else None)
        if cause is None:
            raise _Halt("no_action", f"{self.site}: anomalies {found['anomalies']} but no cause to act on")
        param, to, why = model.proposal(cause, found["config"])
        value = to if self.o["value"] is None else self.o["value"]
        try:
            staged = await self.ctx.run(self.acts["stage"], self.site, param, value)
        except ActivityError as exc:
            raise _Halt("refused", f"{param} = {value!r} on {self.site} not staged: {exc.cause_message}") from None
        self.out.change = Change(site=self.site, param=param, previous=staged["from"], value=staged["to"],
                                 change_id=staged["change_id"], rationale=why)  # fmt: skip

    async def _authorize(self) -> None:
        c = self.change
        args = {"site": c.site, "param": c.param, "value": c.value}
        policy = _auto_approving(self.policy) if self.o["auto_approve"] else self.policy
        gated = await authorize(self.ctx, apply_change, args, call_id=c.change_id, policies=policy)
        self.out.decision = gated.decision
        if gated.approval is not None:
            votes = [v for v in gated.approval.votes if v.revision == gated.approval.revision]
            self.out.approval = Approval(approved=gated.status == "ok", by=", ".join(v.principal for v in votes) or None,
                                         comment="; ".join(v.comment for v in votes if v.comment))  # fmt: skip
        if gated.status in ("denied", "rejected"):
            raise _Halt("refused" if gated.status == "denied" else "rejected", gated.refusal)
        if gated.args != args:
            raise _Halt("refused", f"the approver edited the change to {gated.args}: stage it again")

    async def _apply(self) -> None:
        c, timeout = self.change, self.o["confirm_timeout"]
        try:
            await self.ctx.run(self.acts["apply"], c.site, c.param, c.value, timeout)
        except ActivityError as exc:
            raise _Halt("refused", f"{c.change_id} not applied: {exc.cause_message}") from None
        self.out.applied_at = self.ctx.now()

    async def _monitor(self) -> None:
        step = self.o["monitor_seconds"] / self.o["checks"]
        assert self.out.applied_at is not None
        for _ in range(self.o["checks"]):
            await self.ctx.sleep(step)
            at = self.ctx.now()
            try:
                read = await self.ctx.run(self.acts["read_kpis"], self.site, step, at.timestamp())
            except ActivityError as exc:  # KPIs that cannot be read (after retries) prove nothing: cancel
                read = {"mean": {}, "anomalies": [f"unreadable ({exc.cause_type}: {exc.cause_message})"]}
            self.out.checks.append(DeviceCheck(
                at=at, seconds_after_apply=round((at - self.out.applied_at).total_seconds(), 3), mean=read["mean"],
                anomalies=read["anomalies"], healthy=not read["anomalies"],
            ))  # fmt: skip

    async def _settle(self) -> tuple[Status, str]:
        """Read the device first: a change it already reverted is reported, not confirmed."""
        c = self.change
        state = await self.ctx.run(self.acts["status"], c.site, c.change_id)
        self.out.device_state = state["state"]
        if state["state"] == "gone":
            return "reverted_by_device", self._reverted(state["config"].get(c.param))
        healthy = all(check.healthy for check in self.out.checks)
        seen = ", ".join(sorted({a for check in self.out.checks for a in check.anomalies})) or "none"
        what = f"{c.site}: {c.param} {c.previous} -> {c.value}; anomalies {len(self.out.anomalies)} -> {seen}"
        if healthy:
            done = await self.ctx.run(self.acts["confirm"], c.site, c.change_id)
            if not done["confirmed"]:
                return "reverted_by_device", self._reverted(c.previous)
            self.out.device_state = "confirmed"
            return "confirmed", f"{what}; KPIs recovered: {c.change_id} confirmed on the device"
        # Not gated (the simulated loop asks the policy about its rollback): cancelling a pending
        # confirmed commit only does now what the device does by itself at the timeout.
        undone = await self.ctx.run(self.acts["rollback"], c.site, c.change_id)
        if undone.get("how") in (None, "device"):
            return "reverted_by_device", self._reverted(c.previous)
        self.out.device_state = "cancelled"
        return (
            "cancelled",
            f"{what}; KPIs did not recover: {c.change_id} undone ({undone['how']}), the incident stays open",
        )

    def _reverted(self, now: Any) -> str:
        c = self.change
        return (f"{c.change_id} ({c.param} {c.previous} -> {c.value}) was reverted by the device at its "
                f"{self.o['confirm_timeout']} s confirm timeout before it could be confirmed; {c.param} is "
                f"{now} on the device; nothing was confirmed")  # fmt: skip


# -- registration -------------------------------------------------------------------------------
def register(
    app: App, *, name: str = NETCONF_LOOP, kpis: KpiReader | None = None, policy: Policies = default_policy,
    seed: int = DEFAULT_SEED,
) -> Workflow[..., NetconfLoopResult]:  # fmt: skip
    """Register the loop on `app` as workflow `name`, with its activities `<name>.<op>`.

    Args:
        kpis: reads a site's KPI means (default `simulated_kpis(seed=seed)`).
        policy: decides about the apply, as in `closed_loop.register`.
        seed: the simulator's seed, for the thresholds relative to a site's nominal levels.

    Returns:
        The workflow `loop(site, *, cause=None, value=None, monitor_seconds=1800, checks=3,
        confirm_timeout=None, auto_approve=False) -> NetconfLoopResult`. `confirm_timeout`
        (default: the window plus 10 minutes) must outlast the monitoring window.
    """
    acts = _activities(app, name, kpis or simulated_kpis(seed=seed), seed)

    @app.workflow(name=name)
    async def closed_loop_netconf(
        ctx: WorkflowContext, site: str, *, cause: str | None = None, value: Value | None = None,
        monitor_seconds: float = 1800.0, checks: int = 3, confirm_timeout: int | None = None,
        auto_approve: bool = False,
    ) -> NetconfLoopResult:  # fmt: skip
        """The closed loop on one cell site of a NETCONF device (parameters: see `register`)."""
        timeout = int(confirm_timeout if confirm_timeout is not None else monitor_seconds + 600)
        problems = [text for ok, text in [
            (monitor_seconds > 0, f"monitor_seconds must be > 0, not {monitor_seconds}"),
            (checks >= 1, f"checks must be >= 1, not {checks}"),
            (timeout > monitor_seconds, f"confirm_timeout ({timeout} s) must outlast the monitoring window"),
            (cause is None or cause in model.SCENARIOS, f"cause must be one of {list(model.SCENARIOS)} or None"),
        ] if not ok]  # fmt: skip
        if problems:
            raise ValueError(f"{name}: " + "; ".join(problems))
        opts = {"cause": cause, "value": value, "monitor_seconds": float(monitor_seconds), "checks": int(checks),
                "confirm_timeout": timeout, "auto_approve": auto_approve}  # fmt: skip
        return await _Loop(ctx, acts, policy, site.strip().upper(), opts).run()

    return closed_loop_netconf
