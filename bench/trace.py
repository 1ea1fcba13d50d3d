"""Trace benchmark: a 1,000-step recorded run read back into pandas DataFrames.

Run: `.venv/bin/python bench/trace.py` (a few seconds). Prints ONE JSON object on stdout;
progress goes to stderr. Every figure is measured in the same run.

Figures (medians of `--reps` repetitions; samples under `samples`):

import_s
    `import agentflow.trace` in this process (pandas, the trace package), measured once.
record_s
    Recording the run: a workflow of `--steps` async activity calls (side_effect=False, so one
    commit per step) driven by `app.run` at synchronous=NORMAL. Context only.
load_s
    `trace.load(app, run_id)`: the run row, its steps, failed attempts, approvals, audit and the
    message blobs model calls refer to, each in one query.
tables_s
    Building every table of the loaded trace: steps, attempts, tool_calls, decisions, approvals,
    usage, messages (the steps table carries the run's 1,000 rows; the others are empty here).
load_and_tables_s
    load_s + tables_s measured together on a fresh Trace: what `trace.load(...).steps` etc. cost
    a notebook.
raw_select_s
    The baseline: a raw sqlite3 `SELECT <every af_steps column> WHERE run_id = ? ORDER BY seq`
    of the same rows with `fetchall()`, on a connection opened beforehand.
ratio_load_and_tables_to_raw_select
    load_and_tables_s / raw_select_s (each rep is a pair; the median of the ratios).
html_s, otel_s
    `_repr_html_()` (the escaped timeline) and `to_otel_spans()` of the loaded trace.
targets / pass / all_pass
    load_and_tables_s < 0.5 s for 1,000 steps ("well under a second").
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET_LOAD_AND_TABLES_S = 0.5


def log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def record(db: str, steps: int) -> tuple[Any, str, float]:
    from agentflow import App, WorkflowContext
    from agentflow.testing import TestClock

    app = App(db, clock=TestClock(start=1_767_225_600.0), synchronous="NORMAL")

    @app.activity(name="noop", side_effect=False)
    async def noop(i: int) -> int:
        return i

    @app.workflow(name="bench.many")
    async def many(ctx: WorkflowContext, n: int) -> int:
        total = 0
        for i in range(n):
            total += await ctx.run(noop, i)
        return total

    t0 = time.perf_counter()
    app.run(many, steps, run_id="bench-trace")
    return app, "bench-trace", time.perf_counter() - t0


def tables(t: Any) -> None:
    for name in ("steps", "attempts", "tool_calls", "decisions", "approvals", "usage", "messages"):
        getattr(t, name)


def raw_select(path: str, run_id: str, conn: sqlite3.Connection) -> float:
    t0 = time.perf_counter()
    rows = conn.execute(
        "SELECT seq, kind, name, digest, status, attempt, args, result, error, started_at, finished_at, wake_at, "
        "epoch, delivery FROM af_steps WHERE run_id = ? ORDER BY seq",
        (run_id,),
    ).fetchall()
    elapsed = time.perf_counter() - t0
    assert rows
    return elapsed


def measure(app: Any, run_id: str, reps: int) -> dict[str, list[float]]:
    from agentflow import trace

    conn = sqlite3.connect(app.store.backend.path)
    samples: dict[str, list[float]] = {k: [] for k in ("load_s", "tables_s", "load_and_tables_s", "raw_select_s",
                                                       "ratio", "html_s", "otel_s")}  # fmt: skip
    for _ in range(reps):
        raw = raw_select(app.store.backend.path, run_id, conn)
        t0 = time.perf_counter()
        t = trace.load(app, run_id)
        t1 = time.perf_counter()
        tables(t)
        t2 = time.perf_counter()
        assert len(t.steps) > 0
        samples["load_s"].append(t1 - t0)
        samples["tables_s"].append(t2 - t1)
        samples["load_and_tables_s"].append(t2 - t0)
        samples["raw_select_s"].append(raw)
        samples["ratio"].append((t2 - t0) / raw)
        t3 = time.perf_counter()
        t._repr_html_()
        t4 = time.perf_counter()
        t.to_otel_spans()
        samples["html_s"].append(t4 - t3)
        samples["otel_s"].append(time.perf_counter() - t4)
    conn.close()
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="where the temporary database goes (default: $TMPDIR)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    import agentflow.trace  # noqa: F401 - the import is what is measured

    import_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        log(f"recording a {args.steps}-step run ...")
        app, run_id, record_s = record(f"sqlite:///{Path(tmp) / 'trace.db'}", args.steps)
        log(f"loading it {args.reps} times ...")
        samples = measure(app, run_id, args.reps)
        app.close()
    med = {k: statistics.median(v) for k, v in samples.items()}
    out: dict[str, Any] = {
        "steps": args.steps,
        "import_s": round(import_s, 4),
        "record_s": round(record_s, 4),
        **{k: round(v, 6) for k, v in med.items() if k != "ratio"},
        "ratio_load_and_tables_to_raw_select": round(med["ratio"], 2),
        "samples": {k: [round(x, 6) for x in v] for k, v in samples.items()},
        "targets": {"load_and_tables_s": TARGET_LOAD_AND_TABLES_S},
    }
    out["pass"] = {"load_and_tables_s": med["load_and_tables_s"] < TARGET_LOAD_AND_TABLES_S}
    out["all_pass"] = all(out["pass"].values())
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
