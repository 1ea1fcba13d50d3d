"""Reading runs back: a recorded run as pandas tables, an HTML timeline, a replay against the
current code, a what-if under another policy pack, a fork, and exports; and live spans.

    from agentflow import trace
    t = trace.load("sqlite:///agentflow.db", run_id)
    t.steps; t.messages; t.tool_calls; t.decisions; t.approvals; t.usage; t.effects(network)
    t.replay(app)                          # NonDeterminismError if the code diverges
    t.what_if("policies/stricter.yaml", tools=TOOLS)
    trace.runs("sqlite:///agentflow.db", tool="apply_change", approved_by="alice")
    trace.timeline(client, run_key)         # the run as JSON: steps, lease changes, what happened
    trace.live_spans(tracer_provider)      # each step as an OpenTelemetry span when it finishes

Reading needs the `trace` extra (`pip install agentflow[trace]`: pandas, matplotlib); live spans
need the `otel` extra only, and `timeline` needs neither, so their names load without pandas
(each name is imported on first use). Reads SQLite and PostgreSQL stores alike.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentflow.trace._live import LiveSpans, live_spans, live_spans_from_env
    from agentflow.trace._replay import ReplayResult
    from agentflow.trace._runs import runs
    from agentflow.trace._timeline import timeline
    from agentflow.trace._trace import Ledger, Trace, load

# Public name -> the private module that defines it.
_LAZY = {
    **dict.fromkeys(("LiveSpans", "live_spans", "live_spans_from_env"), "_live"),
    "ReplayResult": "_replay",
    "runs": "_runs",
    "timeline": "_timeline",
    **dict.fromkeys(("Ledger", "Trace", "load"), "_trace"),
}

__all__ = [
    "Ledger",
    "LiveSpans",
    "ReplayResult",
    "Trace",
    "live_spans",
    "live_spans_from_env",
    "load",
    "runs",
    "timeline",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"agentflow.trace.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'agentflow.trace' has no attribute {name!r}")
