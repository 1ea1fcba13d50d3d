"""Reading runs back: a recorded run as pandas tables, an HTML timeline, a replay against the
current code, a what-if under another policy pack, a fork, and exports.

    from agentflow import trace
    t = trace.load("sqlite:///agentflow.db", run_id)
    t.steps; t.messages; t.tool_calls; t.decisions; t.approvals; t.usage; t.effects(network)
    t.replay(app)                          # NonDeterminismError if the code diverges
    t.what_if("policies/stricter.yaml", tools=TOOLS)
    trace.runs("sqlite:///agentflow.db", tool="apply_change", approved_by="alice")

Needs the `trace` extra (`pip install agentflow[trace]`: pandas, matplotlib). Reads SQLite and
PostgreSQL stores alike.
"""

from agentflow.trace._replay import ReplayResult
from agentflow.trace._runs import runs
from agentflow.trace._trace import Ledger, Trace, load

__all__ = ["Ledger", "ReplayResult", "Trace", "load", "runs"]
