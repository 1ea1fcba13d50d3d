"""`agentflow eval`: the NOC copilot on a suite of scenarios, scored from the network itself."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from agentflow.cli._common import JsonOption, console, fail
from agentflow.cli._demo import pack_entry
from agentflow.cli._exit import EXIT_FAILED, EXIT_OK
from agentflow.cli._json import emit
from agentflow.cli._runs import whole_ids_table
from agentflow.errors import AgentflowError


def eval_scenarios(
    scenarios: Annotated[
        list[str] | None,
        typer.Argument(
            help="Scenario files or directories of *.yaml (default: the NOC pack's own).", show_default=False
        ),
    ] = None,
    model: Annotated[
        str, typer.Option(help="runbook (offline, default) or openai:<model> (OPENAI_BASE_URL for a local server).")
    ] = "runbook",
    mode: Annotated[
        str, typer.Option(help="react (default), plan (plan-and-execute) or guided (the runbook's phases).")
    ] = "react",
    db: Annotated[
        str | None,
        typer.Option(
            help="The store the eval runs are recorded in (default sqlite:///agentflow-eval.db; $AGENTFLOW_DB is not used)."
        ),
    ] = None,
    only: Annotated[
        list[str] | None, typer.Option("--only", help="Run only the scenario of this name (repeatable).")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Run the NOC copilot on evaluation scenarios and score each run from the simulated
    network's final state and audit ledger (not the model's words): resolved, right change,
    needless or forbidden changes, denials, model calls, tokens, cost and time.

    Each run is recorded in --db (`agentflow runs history RUN`, `agentflow.trace`). Exit code: 0
    when every scenario passes, 1 when one fails, 2 on bad input (a malformed scenario file names
    its file, line and field)."""
    if mode not in ("react", "plan", "guided"):
        raise typer.BadParameter("--mode must be react, plan or guided")
    run_eval = pack_entry("agentflow.evals", "evaluation")
    try:
        report = run_eval(paths=scenarios or [], model=model, mode=mode, db=db, only=only or [], quiet=True)
    except AgentflowError as exc:
        fail(exc)
    if as_json:
        emit(report)
    else:
        _print_report(report)
    raise typer.Exit(code=EXIT_OK if report["passed"] == report["total"] else EXIT_FAILED)


def _print_report(report: dict[str, Any]) -> None:
    headers = ("scenario", "result", "verdict", "change", "forb", "den", "calls", "tokens", "USD", "s")
    rows = [
        (
            s["scenario"], "pass" if s["passed"] else "FAIL", str(s["verdict"]), ", ".join(s["changes"]) or "-",
            f"{len(s['forbidden_applied'])}/{s['forbidden_attempted']}", str(s["denials"]), str(s["model_calls"]),
            str(s["tokens"]), f"{s['cost_usd']:.4f}", f"{s['seconds']:.1f}",
        )
        for s in report["scenarios"]
    ]  # fmt: skip
    # Narrow terminal: cost, tokens, denials, forbidden, then the change give way (never the
    # scenario, its result or its verdict); why a scenario failed is listed under the table.
    table = whole_ids_table(*headers, rows=rows, ids=(0, 1, 2), optional=(8, 7, 5, 4, 3))
    table.title = f"agentflow eval: {report['model']} ({report['mode']})"
    table.caption = _CAPTION
    console.print(table, highlight=False)
    for s in report["scenarios"]:
        if not s["passed"]:
            console.print(f"FAIL {s['scenario']}: {'; '.join(s['reasons'])}", markup=False, highlight=False)
    console.print(
        f"passed {report['passed']}/{report['total']} ({report['pass_rate']:.0%}); runs recorded in {report['db']}",
        soft_wrap=True,
    )


_CAPTION = "forb: forbidden changes applied/tried · den: calls denied or rejected · calls: model calls"
