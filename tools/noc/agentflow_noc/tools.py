"""The NOC copilot's tools over the simulated network, declared with `agentflow.llm.tool`.

Read tools (`side_effect="none"`) investigate and diagnose; effect tools (`"idempotent"`) take
the step's idempotency key from `agentflow.current_activity()` — never from an argument the
model could see or invent — and hand it to the network, which applies each key at most once.
Tickets and notifications are also deduplicated per run, so a model that asks twice opens one
ticket. Docstrings are what the model reads to choose a tool: they say when to use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

from agentflow import current_activity
from agentflow.llm import tool
from agentflow_noc import model
from agentflow_noc.env import network

Value = str | int | float | bool
#: The parameters a change may set (`model.PARAMS`), in the tools' schema: a model sees them, and
#: a call naming another is an invalid call sent back to it, before any policy or approval.
Param = Literal["hoA3Offset", "hoHysteresis", "txPower", "prbCap", "loadBalancing", "backhaul_link"]
if set(get_args(Param)) != set(model.PARAMS):  # pragma: no cover - a pack edited in one place only
    raise RuntimeError(f"tools.Param {get_args(Param)} and model.PARAMS {sorted(model.PARAMS)} differ")


def _site(value: Any) -> str:
    """A site id as the network names it ("cs-101 " is CS-101): limits and cards compare these."""
    return str(value).strip().upper()


def _region(args: Mapping[str, Any]) -> str | None:
    return model.region_of(_site(args.get("site", "")))


def _reconcile(key: str) -> dict[str, Any] | None:
    """Whether the effect of `key` happened before a crash: its recorded result, or None."""
    return network().result_for_key(key)


# -- investigate and diagnose ---------------------------------------------------------------
@tool(side_effect="none", target="site", canonical=_site, region=_region, tags=["read"])
def get_kpis(site: str, window_minutes: int = 60) -> dict[str, Any]:
    """Read a cell site's KPIs: drop_rate_pct, throughput_mbps, prb_util_pct,
    handover_success_pct and latency_ms, as a 5-minute series over the last `window_minutes`
    and their mean. Use it first, to see how a site (e.g. "CS-104") is doing."""
    return network().kpis(site, window_minutes=window_minutes)


@tool(side_effect="none", target="site", canonical=_site, region=_region, tags=["read"])
def detect_anomalies(site: str) -> dict[str, Any]:
    """List the KPIs of a cell site whose last-hour mean crosses its threshold (high drop rate,
    low handover success, PRB utilisation above 85%, high latency, throughput far below the
    site's nominal level), with a severity for the incident: critical, major, minor or info."""
    net = network()
    site = net.check_site(site)
    return model.anomaly_report(net.seed, site, net.kpis(site)["mean"])


@tool(side_effect="none", target="site", canonical=_site, region=_region, tags=["read"])
def rank_root_causes(site: str) -> dict[str, Any]:
    """Rank the likely root causes of a cell site's anomalies (mis_set_handover, congestion,
    backhaul_fault, mis_set_tx_power) from its KPIs and configuration, each with a confidence and its evidence.
    `top_cause` is the best candidate, or "none" when the site is healthy."""
    net = network()
    site = net.check_site(site)
    return model.diagnosis(net.seed, site, net.kpis(site)["mean"], net.config(site))


@tool(side_effect="none", target="site", canonical=_site, region=_region, tags=["read"])
def propose_change(site: str, cause: str) -> dict[str, Any]:
    """Propose the configuration change that fixes `cause` (a cause from rank_root_causes) on a
    cell site: the parameter, its current value (`from`), the new value (`to`), a change_id and
    the rationale. Nothing is changed; stage_change then apply_change do that."""
    net = network()
    site = net.check_site(site)
    if cause == "none":
        raise ValueError(f"{site} has no root cause to fix: propose no change")
    config = net.config(site)
    param, to, why = model.proposal(cause, config)
    return {"site": site, "cause": cause, "param": param, "from": config[param], "to": to,
            "change_id": model.change_id(site, param, to), "rationale": why}  # fmt: skip


@tool(side_effect="none", target="site", canonical=_site, region=_region, tags=["read"])
def stage_change(site: str, param: Param, value: Value) -> dict[str, Any]:
    """Dry-run a configuration change on a cell site: validate `param` and `value` and return the
    diff (`from`, `to`) and its change_id without touching the network. Stage before applying."""
    net = network()
    site = net.check_site(site)
    to = model.normalize(param, value)
    return {"site": site, "param": param, "from": net.config(site)[param], "to": to,
            "change_id": model.change_id(site, param, to), "dry_run": True}  # fmt: skip


@tool(side_effect="none", target="site", canonical=_site, region=_region, tags=["read"])
def monitor_kpis(site: str, minutes: int = 30) -> dict[str, Any]:
    """Watch a cell site's KPIs for `minutes` after its latest configuration change and compare
    them with what the previous configuration gives over the same window. `improved` is true
    when the anomalies are gone; `summary` is a one-line account for a ticket."""
    net = network()
    site = net.check_site(site)
    previous, current = net.previous_config(site), net.config(site)
    at = net.now() + 60 * int(minutes)
    before = net.kpis(site, window_minutes=minutes, at=at, config=previous)["mean"]
    after = net.kpis(site, window_minutes=minutes, at=at, config=current)["mean"]
    return model.monitor_report(net.seed, site, minutes, (previous, current), (before, after))


def _diff(args: Mapping[str, Any]) -> dict[str, Any]:
    """What apply_change would change (shown to its approvers): the dry-run stage of the call."""
    net = network()
    site = net.check_site(str(args.get("site", "")))
    param, to = str(args.get("param", "")), model.normalize(str(args.get("param", "")), args.get("value"))
    return {"site": site, "param": param, "from": net.config(site)[param], "to": to}


# -- act ------------------------------------------------------------------------------------
@tool(side_effect="idempotent", target="site", canonical=_site, region=_region, reconcile=_reconcile,
      compensate="rollback_change", tags=["config"], preview=_diff)  # fmt: skip
def apply_change(site: str, param: Param, value: Value) -> dict[str, Any]:
    """Push a configuration change to a live cell site (e.g. hoA3Offset, prbCap, loadBalancing,
    backhaul_link, txPower). Stage it first. Returns `applied`, the `previous` value and the
    change_id to pass to rollback_change if the KPIs do not improve."""
    return network().apply(site, param, value, key=current_activity().idempotency_key)


@tool(side_effect="idempotent", target="site", canonical=_site, region=_region, reconcile=_reconcile, tags=["config"])
def rollback_change(site: str, change_id: str) -> dict[str, Any]:
    """Undo an applied configuration change (by the change_id apply_change returned): restore the
    value it replaced. Use it when monitor_kpis shows the change did not help."""
    return network().rollback(site, change_id, key=current_activity().idempotency_key)


@tool(side_effect="idempotent", target="site", canonical=_site, region=_region, reconcile=_reconcile, tags=["ticket"])
def create_ticket(site: str, summary: str, severity: str, ticket_type: str = "incident") -> dict[str, Any]:
    """Open a trouble ticket for a cell site with a one-line summary and a severity (critical,
    major, minor, warning or info). A run opens one ticket per ticket_type: asking again returns
    the ticket already open. Returns its ticket_id."""
    info = current_activity()
    return network().create_ticket(
        site, summary, severity, key=info.idempotency_key, dedupe=f"{info.run_id}:ticket:{ticket_type}"
    )


@tool(side_effect="idempotent", reconcile=_reconcile, tags=["ticket"])
def update_ticket(ticket_id: str, note: str) -> dict[str, Any]:
    """Add a note to an open ticket (e.g. the KPIs after a change, or a rollback)."""
    return network().update_ticket(ticket_id, note, key=current_activity().idempotency_key)


@tool(side_effect="idempotent", reconcile=_reconcile, tags=["notify"])
def notify(channel: str, message: str, notification_type: str) -> dict[str, Any]:
    """Post a message to an operations channel (e.g. "noc-oncall"). A run sends one notification
    per notification_type (e.g. "change_applied", "escalation"); repeats are not delivered."""
    info = current_activity()
    return network().notify(
        channel,
        message,
        notification_type,
        key=info.idempotency_key,
        dedupe=f"{info.run_id}:notify:{notification_type}",
    )


NOC_TOOLS = [
    get_kpis,
    detect_anomalies,
    rank_root_causes,
    propose_change,
    stage_change,
    apply_change,
    monitor_kpis,
    rollback_change,
    create_ticket,
    update_ticket,
    notify,
]


def runbook() -> list[dict[str, Any]]:
    """The NOC runbook for `agentflow.testing.RunbookChatModel`: investigate, diagnose, stage, apply,
    monitor, ticket and notify, for each site named in the task; a healthy site stops at the
    diagnosis (no change)."""
    return [
        {"tool": "get_kpis", "args": {"site": "{site}", "window_minutes": 60}, "say": "Reading the site's KPIs."},
        {"tool": "detect_anomalies", "args": {"site": "{site}"}},
        # A healthy site (no cause found) gets no change: its pass ends here.
        {"tool": "rank_root_causes", "args": {"site": "{site}"}, "stop_if": {"top_cause": "none"},
         "stop_say": "{site}: healthy (no anomalies): no change made."},
        {"tool": "propose_change", "args": {"site": "{site}", "cause": "{result.rank_root_causes.top_cause}"}},
        {"tool": "stage_change",
         "args": {"site": "{site}", "param": "{result.propose_change.param}", "value": "{result.propose_change.to}"}},
        {"tool": "apply_change",
         "args": {"site": "{site}", "param": "{result.stage_change.param}", "value": "{result.stage_change.to}"},
         "because": "{site}'s likely cause is {result.rank_root_causes.top_cause} "
                    "({result.rank_root_causes.confidence} confidence); setting {result.stage_change.param} "
                    "{result.stage_change.from} -> {result.stage_change.to} should "
                    "{result.propose_change.rationale}."},
        {"tool": "monitor_kpis", "args": {"site": "{site}", "minutes": 30}},
        {"tool": "create_ticket",
         "args": {"site": "{site}", "summary": "{result.monitor_kpis.summary}",
                  "severity": "{result.detect_anomalies.severity}"}},
        {"tool": "notify",
         "args": {"channel": "noc-oncall", "message": "{result.monitor_kpis.summary}",
                  "notification_type": "change_applied"}},
    ]  # fmt: skip
