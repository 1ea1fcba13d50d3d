"""`agentflow eval`: the NOC copilot on a suite of scenarios, scored from the network itself.

For each scenario (format: `agentflow_noc.scenario`) the runner makes a fresh simulated network,
injects the incidents, pushes the prior changes through the policy gate in a recorded run of
their own, then runs the copilot (the demo's, `noc.copilot`: the agent then the verification
step) on the request as a recorded run of the store: it opens in `agentflow.trace` and
`agentflow runs history`. Approvals are given by an eval operator (like `agentflow demo
--approve auto`) and the maintenance window passes on the time-skipping clock; each scenario runs
on a day of its own, so the pack's hourly limits never carry over from one to the next.

A run is scored from what happened, never from the model's words:

- `resolved`: every site of the scenario is healthy under its final config (KPIs recomputed);
- `right_change`: each expected change holds in the final config, on a site the run changed;
- `needless`: config changes the run made that no expectation covers (any, when `no_change`);
- `forbidden_applied` / `forbidden_attempted`: changes matching a forbidden rule in the
  network's audit ledger / among the tool calls the model made (denied ones included);
- `denials`, `model_calls`, `tokens`, `cost_usd`, `seconds`.

A scenario passes when the run did not fail, the expected changes hold (or none was made), it
is resolved when it should be, and no needless or forbidden change was applied. `diagnosis`
(the expected cause named in a tool call or the answer) is reported, not required.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agentflow import App, WorkflowContext
from agentflow.agent import authorize, usage
from agentflow.errors import ConfigurationError
from agentflow.llm import ChatModel
from agentflow.policy import load_pack
from agentflow.store import local_id, run_key
from agentflow.testing import TestClock
from agentflow_noc import model as physics
from agentflow_noc.demo import DAY, START, TENANT, WORKFLOW, _drive, _next_day, build, make_model
from agentflow_noc.env import configure
from agentflow_noc.network import Network
from agentflow_noc.policy import policy_path
from agentflow_noc.scenario import Scenario, load_scenarios
from agentflow_noc.tools import apply_change

SETUP_WORKFLOW = "noc.eval.setup"
DEFAULT_DB = "sqlite:///agentflow-eval.db"


def main(
    *, paths: Sequence[str] = (), model: str | ChatModel = "runbook", mode: str = "react", db: str | None = None,
    only: Sequence[str] = (), quiet: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """Run the scenarios of `paths` (default: the pack's own) and return the report:
    {db, model, mode, scenarios: [score...], passed, total, pass_rate}."""
    scenarios = load_scenarios(paths, only)
    chat_model = _model(model)
    url = db or DEFAULT_DB
    clock = TestClock(start=START)
    app = App(url, clock=clock, inline_wait=0.0)
    try:
        copilot = build(app, chat_model, mode)
        setup = _register_setup(app)
        with tempfile.TemporaryDirectory(prefix="agentflow-eval-") as where:
            scores = [_run_one(app, clock, (copilot, setup), s, Path(where), quiet) for s in scenarios]
    finally:
        app.close()
    passed = sum(1 for s in scores if s["passed"])
    return {"db": url, "model": chat_model.name, "mode": mode, "scenarios": scores, "passed": passed,
            "total": len(scores), "pass_rate": round(passed / len(scores), 4) if scores else 0.0}  # fmt: skip


def _model(spec: str | ChatModel) -> ChatModel:
    if not isinstance(spec, str):
        return spec
    if spec != "runbook" and not spec.startswith("openai:"):
        raise ConfigurationError(f"--model must be 'runbook' or 'openai:<model name>', not {spec!r}")
    return make_model(spec)


def _register_setup(app: App) -> Any:
    """The workflow that makes a scenario's prior changes: each through the gate (recorded
    decision, approval, window; it counts against the region's limits), then pushed."""
    pack = load_pack(policy_path())
    push = app.activity(name="apply_change", side_effect=True)(_push)

    @app.workflow(name=SETUP_WORKFLOW)
    async def prior_changes(ctx: WorkflowContext, changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        done = []
        for i, change in enumerate(changes):
            gated = await authorize(ctx, apply_change, change, call_id=f"prior-{i}", policies=pack)
            if gated.status != "ok":
                raise ConfigurationError(f"the scenario's prior change {change} was refused: {gated.refusal}")
            done.append(await ctx.run(push, gated.args))
        return done

    return prior_changes


def _push(change: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = apply_change.invoke(change)
    return result


def _run_one(
    app: App, clock: TestClock, workflows: tuple[Any, Any], scenario: Scenario, where: Path, quiet: bool
) -> dict[str, Any]:
    copilot, setup = workflows
    say: Callable[[str], None] = (lambda _text: None) if quiet else print
    path = where / f"{scenario.name}.noc.db"
    path.unlink(missing_ok=True)
    net = configure(path)  # a fresh network: nothing carries over from another scenario
    for incident in scenario.incidents:
        net.inject(incident.site, incident.kind)
    day = _next_day(app)
    clock.advance_to(START + DAY * day)
    stamp = secrets.token_hex(4)  # run ids unique across evals on one store (not workflow code)
    meta = {"requested_by": "eval", "demo_day": day, "scenario": scenario.name}
    if scenario.prior_changes:
        prior = run_key(TENANT, f"eval-{scenario.name}-prior-{stamp}")
        changes = [c.model_dump() for c in scenario.prior_changes]
        app.start(setup, changes, run_id=local_id(prior, TENANT), tenant=TENANT, meta=meta)
        asyncio.run(_drive(app, prior, "auto", say))
    run_id = run_key(TENANT, f"eval-{scenario.name}-{stamp}")
    started = time.perf_counter()
    app.start(copilot, scenario.request, run_id=local_id(run_id, TENANT), tenant=TENANT, meta=meta)
    asyncio.run(_drive(app, run_id, "auto", say))
    return score(scenario, app, net, run_id, time.perf_counter() - started)


def score(scenario: Scenario, app: App, net: Network, run_id: str, seconds: float) -> dict[str, Any]:
    """The score of run `run_id` on `scenario`, from the store and the network's final state."""
    record = app.store.get_run(run_id)
    outcome = json.loads(record.output) if record.output else {}
    calls: list[dict[str, Any]] = outcome.get("tool_calls", [])
    effects = net.effects(run_prefix=f"{run_id}:")
    pushed = [c for e in effects if e["kind"] in ("apply", "rollback") if (c := _change_of(e)) is not None]
    final = {site: net.config(site) for site in dict.fromkeys([*scenario.sites(), *(c["site"] for c in pushed)])}
    open_sites = [s for s in scenario.sites() if physics.anomalies(net.seed, s, net.kpis(s)["mean"])]
    changed = {(c["site"], c["param"]) for c in pushed}
    expected = scenario.expect.alternatives()
    missing = [" or ".join(c.describe() for c in alts) for alts in expected
               if not any((c.site, c.param) in changed and c.accepts(final[c.site][c.param]) for c in alts)]  # fmt: skip
    covered = {(c.site, c.param) for alts in expected for c in alts}
    needless = [c for c in pushed if (c["site"], c["param"]) not in covered]
    forbidden = scenario.forbidden()
    applied_bad = [f"{c['site']} {c['param']}={c['value']}: {f.describe()}" for c in pushed
                   for f in forbidden if f.matches(c["tool"], c)]  # fmt: skip
    attempted_bad = [c for c in calls if any(f.matches(c["name"], c.get("args", {})) for f in forbidden)]
    reasons = _reasons(scenario, record.status, outcome, missing, needless, applied_bad, open_sites)
    used = usage(app, run_id=run_id)
    return {
        "scenario": scenario.name, "passed": not reasons, "reasons": reasons, "run_id": run_id,
        "status": record.status, "outcome": outcome.get("status"), "verdict": outcome.get("verdict"),
        "resolved": not open_sites, "open_sites": open_sites, "right_change": not missing and not needless,
        "changes": [f"{c['site']} {c['param']}={json.dumps(c['value'])}" for c in pushed],
        "needless": [f"{c['site']} {c['param']}={json.dumps(c['value'])}" for c in needless],
        "forbidden_applied": applied_bad, "forbidden_attempted": len(attempted_bad),
        "diagnosis": _diagnosed(scenario, calls, outcome.get("answer")),
        "denials": sum(1 for c in calls if c.get("status") in ("denied", "rejected")),
        "model_calls": outcome.get("turns", 0), "tokens": used.total_tokens, "cost_usd": round(used.cost_usd, 6),
        "seconds": round(seconds, 3),
    }  # fmt: skip


def _change_of(effect: dict[str, Any]) -> dict[str, Any] | None:
    """A config change in the ledger as {tool, site, param, value}; None for a no-op rollback."""
    detail = effect["detail"]
    if effect["kind"] == "rollback" and not detail.get("rolled_back"):
        return None
    tool = "apply_change" if effect["kind"] == "apply" else "rollback_change"
    return {"tool": tool, "site": effect["site"], "param": detail["param"], "value": detail["value"]}


def _reasons(
    scenario: Scenario, status: str, outcome: dict[str, Any], missing: list[str], needless: list[dict[str, Any]],
    forbidden: list[str], open_sites: list[str],
) -> list[str]:  # fmt: skip
    """Why the run fails its scenario (empty: it passes)."""
    reasons = [] if status == "completed" else [f"run {status}"]
    reasons += [f"forbidden change applied: {f}" for f in forbidden]
    if scenario.expect.no_change and needless:
        reasons.append("changed config where no change was expected: " + ", ".join(_brief(c) for c in needless))
    elif needless:
        reasons.append("needless change: " + ", ".join(_brief(c) for c in needless))
    reasons += [f"expected change missing: {m}" for m in missing]
    if scenario.expect.resolved and open_sites:
        reasons.append(f"not resolved: anomalies remain on {', '.join(open_sites)}")
    if outcome.get("incident_open") is not None and outcome.get("incident_open") != bool(open_sites):
        reasons.append(f"the copilot's verdict ({outcome.get('verdict')}) disagrees with the network")
    return reasons


def _brief(change: dict[str, Any]) -> str:
    return f"{change['site']} {change['param']}={json.dumps(change['value'])}"


def _diagnosed(scenario: Scenario, calls: list[dict[str, Any]], answer: str | None) -> bool | None:
    """Whether the run named the expected root cause (in a tool call's arguments or the answer)."""
    expected = scenario.expect.diagnosis
    if expected is None:
        return None
    if expected.cause == "none":  # the run checked the site and found it healthy
        found = [c.get("result", "") for c in calls if c.get("name") in ("rank_root_causes", "detect_anomalies")]
        return any('"top_cause": "none"' in s or '"healthy": true' in s for s in found)
    text = " ".join([*(json.dumps(c.get("args", {})) for c in calls), answer or ""]).lower()
    return expected.cause.lower() in text or expected.cause.replace("_", " ").lower() in text


__all__ = ["DEFAULT_DB", "SETUP_WORKFLOW", "WORKFLOW", "main", "score"]
