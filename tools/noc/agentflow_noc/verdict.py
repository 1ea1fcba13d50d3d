"""Honest outcomes: whether the copilot's incident is resolved, read from the network itself.

The agent's own outcome says how its loop ended (`answered`, `max_turns`, ...), not whether the
cell site is fixed: a model may answer "resolved" after reading one KPI series, or after rolling
its fix back. `assess` looks at the network after the run: the KPIs of every site the task names
or the run touched, under each site's *final* configuration (a rolled-back fix counts as no fix),
and the changes the network's audit ledger holds for the run.

    verdict         when
    resolved        every site is healthy now and the run changed the network
    healthy         every site is healthy now and the run changed nothing (e.g. a false alarm)
    incident_open   a site still shows anomalies (`incident_open: true`)

`copilot_result` runs the agent and then this check as a recorded (read-only) step of the same
workflow, so the verdict is part of the run's result and replays like any other step.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from agentflow import Activity, App, WorkflowContext, current_activity
from agentflow.agent import Agent
from agentflow_noc import model
from agentflow_noc.env import network

VERIFY_STEP = "noc.verify_incident"
_SITE = re.compile(r"\bCS-\d+\b", re.I)


def sites_of(task: str, tool_calls: Iterable[dict[str, Any]] = ()) -> list[str]:
    """The known sites the task names or the run's tool calls targeted, in first-seen order."""
    named = [m.group(0).upper() for m in _SITE.finditer(task)]
    named += [str(c.get("args", {}).get("site", "")).strip().upper() for c in tool_calls]
    return list(dict.fromkeys(s for s in named if model.region_of(s) is not None))


def assess(sites: list[str], run_id: str) -> dict[str, Any]:
    """The verdict on `sites` after run `run_id`, from the network's KPIs and ledger."""
    net = network()
    changes = [e for e in net.effects(run_prefix=f"{run_id}:") if e["kind"] in ("apply", "rollback")]
    changed = {str(e["site"]) for e in changes if e["detail"].get("applied") or e["detail"].get("rolled_back")}
    report = []
    for site in dict.fromkeys([*sites, *sorted(changed)]):
        found = model.anomalies(net.seed, site, net.kpis(site)["mean"])
        report.append({"site": site, "healthy": not found, "open": [a["kpi"] for a in found],
                       "changed": site in changed, "config": net.config(site)})  # fmt: skip
    still_open = [s["site"] for s in report if not s["healthy"]]
    verdict = "incident_open" if still_open else ("resolved" if changed else "healthy")
    return {"verdict": verdict, "incident_open": bool(still_open), "open_sites": still_open, "sites": report}


def verify_incident(sites: list[str]) -> dict[str, Any]:
    """The verification step: `assess` for the run the step belongs to."""
    return assess(sites, current_activity().run_id)


def register_verify(app: App) -> Activity[[list[str]], dict[str, Any]]:
    """The verification step on `app` (registering it again is a no-op): read-only, recorded."""
    return app.activity(name=VERIFY_STEP, side_effect=False)(verify_incident)


async def copilot_result(
    ctx: WorkflowContext, agent: Agent, verify: Activity[[list[str]], dict[str, Any]], task: str
) -> dict[str, Any]:
    """Run the copilot on `task`, then verify the incident: the agent's outcome with `verdict`,
    `incident_open`, `open_sites` and the per-site check (`verified`) added."""
    outcome = (await agent.run(ctx, task)).model_dump(mode="json")
    checked = await ctx.run(verify, sites_of(task, outcome.get("tool_calls", [])))
    return {**outcome, "verdict": checked["verdict"], "incident_open": checked["incident_open"],
            "open_sites": checked["open_sites"], "verified": checked["sites"]}  # fmt: skip
