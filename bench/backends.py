"""Store backends benchmark: the per-step cost of a run on PostgreSQL against SQLite, same run.

Run: `.venv/bin/python bench/backends.py` (about 30 s; needs the `postgres` extra and a server,
default postgresql://postgres@127.0.0.1:5432/test, where a scratch database is created and
dropped). Prints ONE JSON object on stdout; progress goes to stderr.

Figures (medians of `--reps`; each rep runs SQLite and PostgreSQL back to back):

us_per_step.{FULL,NORMAL}.{sqlite,postgresql}
    Wall time per step of one run of `--steps` async no-op activities (side_effect=False: one
    commit per step) driven by `app.run`, divided by the steps. FULL is SQLite's
    synchronous=FULL and PostgreSQL's synchronous_commit=on (durable at commit); NORMAL is
    synchronous=NORMAL / synchronous_commit=off (survives a process crash, not power loss).
ratio_postgresql_to_sqlite.{FULL,NORMAL}
    The median of the per-rep ratios.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any, Literal

import psycopg

from agentflow import App, WorkflowContext


def log(*parts: Any) -> None:
    print(*parts, file=sys.stderr, flush=True)


def per_step(url: str, synchronous: Literal["FULL", "NORMAL"], steps: int) -> float:
    app = App(url, synchronous=synchronous, inline_wait=0.0)

    @app.activity(side_effect=False)
    async def noop(i: int) -> int:
        return i

    @app.workflow(name="bench")
    async def bench(ctx: WorkflowContext, n: int) -> int:
        for i in range(n):
            await ctx.run(noop, i)
        return n

    app.run(bench, 1, run_id=f"warm-{uuid.uuid4().hex[:8]}")  # schema, connections, imports
    start = time.perf_counter()
    app.run(bench, steps, run_id=f"bench-{uuid.uuid4().hex[:8]}")
    elapsed = time.perf_counter() - start
    app.close()
    return elapsed / steps * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/test")
    args = parser.parse_args()
    scratch = f"af_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {scratch}")
    pg_url = args.server.rsplit("/", 1)[0] + f"/{scratch}"
    out: dict[str, Any] = {"steps": args.steps, "reps": args.reps, "us_per_step": {}, "ratio_postgresql_to_sqlite": {}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for mode in ("FULL", "NORMAL"):
                samples: dict[str, list[float]] = {"sqlite": [], "postgresql": [], "ratio": []}
                for rep in range(args.reps):
                    log(f"{mode} rep {rep + 1}/{args.reps} ...")
                    lite = per_step(f"sqlite:///{tmp}/{mode}-{rep}.db", mode, args.steps)  # type: ignore[arg-type]
                    pg = per_step(pg_url, mode, args.steps)  # type: ignore[arg-type]
                    samples["sqlite"].append(lite)
                    samples["postgresql"].append(pg)
                    samples["ratio"].append(pg / lite)
                out["us_per_step"][mode] = {
                    k: round(statistics.median(samples[k]), 1) for k in ("sqlite", "postgresql")
                }
                out["ratio_postgresql_to_sqlite"][mode] = round(statistics.median(samples["ratio"]), 2)
    finally:
        with psycopg.connect(args.server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
