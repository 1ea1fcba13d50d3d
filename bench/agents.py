"""Many agent runs on one worker: the drain time of N runs, each mostly waiting on a model.

Run: `.venv/bin/python bench/agents.py` (~1-3 min). Prints ONE JSON object on stdout.

Workload (issue 14): N runs (default 1,000), each 10 async "model calls" (an activity that
awaits `--model-ms` ms, default 200) interleaved with 10 fast tool steps (async no-ops), all
started before one in-process worker drains them (`Worker(app).run_forever` until every run is
completed, as `agentflow worker --until-idle` does).

Figures, per synchronous mode (FULL, NORMAL):
  drain_s            wall time from the worker's start to the last run completed
  floor_s            the same work with no durability: 10 x model-ms per run, all concurrent
  steps_per_s        recorded steps (20 per run) / drain_s
  rss_mb_peak        the process's peak resident memory while draining (ru_maxrss)
  concurrency        the worker's `concurrency` (`--concurrency`; default: the Worker default)
  commits            transactions the group commit made (None: inline writes, SQLite at NORMAL)
  writes_per_commit  the run writes (step intents and results, ends) each of them carried
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from agentflow import App, WorkflowContext
from agentflow.engine import Worker


def build(db: str, synchronous: str, model_s: float) -> tuple[App, Any]:
    app = App(db, synchronous=synchronous)

    @app.activity
    async def model_call(i: int) -> str:
        await asyncio.sleep(model_s)
        return f"thought {i}"

    @app.activity
    async def tool(i: int) -> int:
        return i

    @app.workflow(name="agent")
    async def agent(ctx: WorkflowContext, n: int) -> int:
        total = 0
        for i in range(10):
            await ctx.run(model_call, i)
            total += await ctx.run(tool, i)
        return total

    return app, agent


async def drain(app: App, worker: Worker, n: int) -> float:
    stop = asyncio.Event()
    started = time.perf_counter()
    task = asyncio.create_task(worker.run_forever(stop))
    while True:
        await asyncio.sleep(0.05)
        done = app.store.backend.query("SELECT count(*) FROM af_runs WHERE status = 'completed'")[0][0]
        if done >= n:
            break
    took = time.perf_counter() - started
    stop.set()
    await task
    return took


def measure(mode: str, n: int, model_s: float, concurrency: int | None, where: Path) -> dict[str, Any]:
    db = f"sqlite:///{where / f'agents-{mode}.db'}"
    app, agent = build(db, mode, model_s)
    try:
        for i in range(n):
            app.start(agent, i, run_id=f"a{i}")
        worker = Worker(app) if concurrency is None else Worker(app, concurrency=concurrency)
        took = asyncio.run(drain(app, worker, n))
        steps = app.store.backend.query("SELECT count(*) FROM af_steps")[0][0]
        group = app.store.group
        return {
            "drain_s": round(took, 2),
            "floor_s": round(10 * model_s, 2),
            "steps_per_s": round(steps / took, 1),
            "recorded_steps": steps,
            "rss_mb_peak": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "concurrency": worker.concurrency,
            # Group commit (FULL): transactions committed and the writes they carried.
            "commits": group.batches if group is not None else None,
            "writes_per_commit": round(group.writes / group.batches, 1)
            if group is not None and group.batches
            else None,
        }
    finally:
        app.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--model-ms", type=float, default=200.0)
    parser.add_argument("--concurrency", type=int, default=None)
    parser.add_argument("--modes", default="NORMAL,FULL")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    out: dict[str, Any] = {"runs": args.runs, "model_ms": args.model_ms}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        for mode in args.modes.split(","):
            print(f"{mode}: draining {args.runs} runs", file=sys.stderr)
            out[mode] = measure(mode, args.runs, args.model_ms / 1000, args.concurrency, Path(d))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
