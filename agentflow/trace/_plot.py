"""Time and cost per step, as a matplotlib Figure.

The figure is built with the object-oriented API on an Agg canvas: no pyplot state, no GUI
backend, no window, whatever backend the process has configured. Jupyter shows the returned
Figure inline; scripts call `fig.savefig(path)`.
"""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from agentflow.trace._records import Recorded, response_of

_KIND_COLORS = {"llm": "tab:blue", "tool": "tab:green", "policy": "tab:orange", "approval": "tab:red",
                "signal": "tab:purple", "sleep": "tab:gray", "plan": "tab:cyan"}  # fmt: skip


def plot_figure(recorded: Recorded, *, width: float = 10.0) -> Figure:
    """Two panels sharing the step axis: seconds per step (by kind), and per model call its
    cost in USD (bars) and tokens (line, right axis)."""
    fig = Figure(figsize=(width, 6.0), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, sharex=True)
    steps = [s for s in recorded.steps if s.finished_at is not None]
    seqs = [s.seq for s in steps]
    top.bar(seqs, [s.finished_at - s.started_at for s in steps if s.finished_at is not None],
            color=[_KIND_COLORS.get(s.kind, "tab:olive") for s in steps])  # fmt: skip
    top.set_ylabel("seconds")
    top.set_title(f"run {recorded.run_id}: time per step (recorded clock)")
    _legend(top, {s.kind for s in steps})
    calls = [(s.seq, response_of(s).get("usage") or {}) for s in recorded.steps if s.kind == "llm"]
    bottom.bar([seq for seq, _ in calls], [float(u.get("cost_usd", 0.0)) for _, u in calls], color="tab:blue")
    bottom.set_ylabel("cost (USD)")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("step (seq)")
    tokens = bottom.twinx()
    tokens.plot([seq for seq, _ in calls], [_tokens(u) for _, u in calls], color="tab:red", marker="o")
    tokens.set_ylabel("tokens", color="tab:red")
    bottom.set_title("model calls: cost (bars) and tokens (line)")
    return fig


def _tokens(used: dict[str, Any]) -> int:
    return int(used.get("input_tokens", 0)) + int(used.get("output_tokens", 0))


def _legend(ax: Any, kinds: set[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=_KIND_COLORS.get(k, "tab:olive"), label=k) for k in sorted(kinds)]
    if handles:
        ax.legend(handles=handles, loc="upper right", fontsize="small", ncols=min(len(handles), 7))
