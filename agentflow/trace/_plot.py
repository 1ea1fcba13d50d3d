"""A run's timeline and its model costs, as a matplotlib Figure.

Two panels: the steps on the run's recorded clock as the timeline draws them (long waits
shortened to a hatched stretch labelled with their real length, lease changes marked: a crash and
its resume in red, a wake after a wait in blue), and per model call its cost in USD (bars), the
run's running total (line) and its tokens in and out (right axis).

The figure is built with the object-oriented API on an Agg canvas: no pyplot state, no GUI
backend, no window, whatever backend the process has configured. Jupyter shows the returned
Figure inline; scripts call `fig.savefig(path)`.
"""

from __future__ import annotations

from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from agentflow.trace._story import duration_words

_KIND_COLORS = {"model": "#6f86a8", "tool": "#2f7d5b", "policy": "#c58a12", "approval": "#b5541c", "wait": "#5b6fd6",
                "signal": "#5b6fd6", "child": "#5b6fd6", "plan": "#3a9fb0", "bookkeeping": "#b8c0c9"}  # fmt: skip


def plot_figure(timeline: dict[str, Any], *, width: float = 10.0) -> Figure:
    """The two panels (see the module docstring) of a timeline (`agentflow.trace.timeline`)."""
    rows = timeline["rows"]
    fig = Figure(figsize=(width, 3.0 + 0.12 * len(rows)), layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=[max(2.0, 0.12 * len(rows)), 2.2])
    _steps(top, timeline)
    _costs(bottom, timeline)
    return fig


def _steps(ax: Any, timeline: dict[str, Any]) -> None:
    rows, axis = timeline["rows"], timeline["axis"]
    for i, r in enumerate(rows):
        color = "#b3261e" if r["status"] == "failed" else _KIND_COLORS.get(r["kind"], "#8a97a6")
        ax.barh(i, max(r["x1"] - r["x0"], 0.4), left=r["x0"], height=0.7, color=color,
                hatch="//" if r["shortened"] else None, edgecolor="white" if r["shortened"] else color)  # fmt: skip
    for b in axis["breaks"]:
        ax.axvspan(b["x0"], b["x1"], color="#5b6fd6", alpha=0.08)
        ax.text((b["x0"] + b["x1"]) / 2, -1.1, f"{duration_words(b['seconds'])} (shortened)", ha="center",
                va="center", fontsize=8, color="#3c4fb8")  # fmt: skip
    seqs = [r["seq"] for r in rows]
    for m in timeline["markers"]:
        if m["kind"] == "resume":
            continue
        y = seqs.index(m["before_seq"]) - 0.5
        color = "#b3261e" if m["kind"] == "crash" else "#4c5a99"
        label = (f"crash after #{m['after_seq']}, resumed at #{m['before_seq']} (lease {m['epoch_from']}→{m['epoch_to']})"
                 if m["kind"] == "crash" else f"woken: lease {m['epoch_to']}")  # fmt: skip
        ax.axhline(
            y,
            color=color,
            linewidth=1.6 if m["kind"] == "crash" else 0.8,
            linestyle="-" if m["kind"] == "crash" else ":",
        )
        ax.text(100, y, f" {label}", color=color, fontsize=8, va="center", ha="left", clip_on=False)
    ax.set_yticks(range(len(rows)), [f"#{r['seq']} {r['kind']} {r['name'][:18]}" for r in rows], fontsize=7)
    ax.set_ylim(len(rows) - 0.5, -1.8)
    ax.set_xlim(0, 100)
    ax.set_xticks([0, 100], ["+0 s", f"+{duration_words(axis['seconds'])}"])
    run = timeline["run"]
    ax.set_title(f"run {run['id']}: {len(rows)} steps on the recorded clock (long waits shortened)", fontsize=10)
    _legend(ax, sorted({r["kind"] for r in rows}))


def _costs(ax: Any, timeline: dict[str, Any]) -> None:
    calls = [(r["seq"], r["usage"]) for r in timeline["rows"] if r["kind"] == "model"]
    seqs = [seq for seq, _ in calls]
    costs = [float(u.get("cost_usd") or 0.0) for _, u in calls]
    ax.bar([str(s) for s in seqs], costs, color="#6f86a8", label="cost per call")
    total = [sum(costs[: i + 1]) for i in range(len(costs))]
    ax.plot([str(s) for s in seqs], total, color="#b5541c", marker="o", label="running total")
    ax.set_ylabel("USD")
    ax.set_xlabel("model call (step seq)")
    ax.set_ylim(bottom=0)
    tokens = ax.twinx()
    tokens.plot([str(s) for s in seqs], [int(u.get("tokens_in") or 0) for _, u in calls], color="#2f7d5b",
                linestyle="--", marker=".", label="tokens in")  # fmt: skip
    tokens.plot([str(s) for s in seqs], [int(u.get("tokens_out") or 0) for _, u in calls], color="#c58a12",
                linestyle=":", marker=".", label="tokens out")  # fmt: skip
    tokens.set_ylabel("tokens")
    tokens.set_ylim(bottom=0)
    spent = timeline["totals"]
    ax.set_title(f"model calls: ${spent['cost_usd']:.4f} in all, {spent['tokens_in'] + spent['tokens_out']:,} tokens",
                 fontsize=10)  # fmt: skip
    handles = ax.get_legend_handles_labels()[0] + tokens.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize="small", ncols=4)


def _legend(ax: Any, kinds: list[str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(color=_KIND_COLORS.get(k, "#8a97a6"), label=k) for k in kinds]
    if handles:
        ax.legend(handles=handles, loc="lower left", fontsize="small", ncols=2)
