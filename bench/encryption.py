"""Encryption-at-rest benchmark: what sealing payloads (AES-GCM, `agentflow.store.Sealing`) costs
per step on SQLite, against the same run with sealing off, measured in the same process.

Run: `.venv/bin/python bench/encryption.py` (about 20 s). Prints ONE JSON object on stdout;
progress goes to stderr. `--steps`, `--reps`, `--dir` as in `engine.py`.

Figures (medians of `--reps`; each rep measures sealing off and on back to back, on fresh copies
of one migrated database, so disk drift hits both alike; samples under `samples`):

us_per_step[MODE][payload][off|on]
    One run of `--steps` async activities (side_effect=False: one commit per step) driven by
    `app.run` at synchronous=MODE. `wall_us` / `cpu_us` as in `engine.py` (whole run / steps;
    CPU of all threads). `payload` is `noop` (an int in, an int out) or `1kb` (an int in, a
    ~1 KB JSON object out).
ratio_on_to_off[MODE][payload]
    `wall` and `cpu`: the median of the per-rep ratios sealed / clear. `extra_cpu_us`: sealed CPU
    minus clear CPU per step (paired median): what sealing adds to a step.
resume_1000
    Reading a 1,000-step history (`store.load_steps`, one query) and the whole resume of that
    run (`app.run_async` on a run waiting for a signal that has arrived: replay 1,000 steps,
    one new step, finish), sealing off and on: what opening costs on the read path.
seal_open_us
    The primitive alone: sealing and opening one ~1 KB value (`Sealer.seal` / `Sealer.open`).
targets / pass / all_pass
    Budgets, not promises: sealing adds at most 25 us of CPU to a NORMAL no-op step (most of it
    is SQLite writing the larger envelope, the rest AES-GCM, the nonce and base64); a durable
    (FULL) no-op step takes at most 1.2x its clear wall time; a sealed resume of 1,000 steps
    takes at most 1.75x the clear one (each step's payloads are opened).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import engine  # noqa: E402 - bench/engine.py: the app under test, shared

from agentflow import App  # noqa: E402
from agentflow.store import Sealing  # noqa: E402

KEYS_ENV = "AGENTFLOW_ENCRYPTION_KEYS"
PAYLOADS = {"noop": "async_noop", "1kb": "payload_1kb"}  # engine.py's variants
KEY = base64.b64encode(bytes(range(32))).decode()
TARGETS = {"extra_cpu_us_NORMAL_noop_max": 25.0, "wall_ratio_FULL_noop_max": 1.2, "resume_ratio_max": 1.75}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def build_app(db: str, synchronous: str, sealed: bool) -> App:
    """`engine.py`'s app (the same workflows and activities), its store opened with the keys in
    the environment when `sealed` (how a deployment turns encryption on), without them if not."""
    if sealed:
        os.environ[KEYS_ENV] = f"k1:{KEY}"
    else:
        os.environ.pop(KEYS_ENV, None)
    app: App = engine.build_app(db, synchronous)
    _ = app.store  # the store reads the keys when it opens
    return app


class Dirs:
    def __init__(self, base: str | None) -> None:
        self.root = tempfile.mkdtemp(prefix="agentflow-bench-enc-", dir=base)
        self.n = 0
        self.template = os.path.join(self.root, "template.db")
        app = build_app(f"sqlite:///{self.template}", "NORMAL", False)
        app.store.backend.query("PRAGMA wal_checkpoint(TRUNCATE)")
        app.close()

    def fresh(self) -> str:
        self.n += 1
        path = os.path.join(self.root, f"db{self.n}.db")
        shutil.copyfile(self.template, path)
        return f"sqlite:///{path}"


def measure_steps(dirs: Dirs, mode: str, payload: str, n: int, sealed: bool) -> tuple[float, float]:
    """(wall s, cpu s) of one `app.run` of `n` steps on a fresh database."""
    app = build_app(dirs.fresh(), mode, sealed)
    _ = app.store
    wf = app.workflow_named("steps")
    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    assert app.run(wf, PAYLOADS[payload], n, run_id="r") == n
    t1, c1 = time.perf_counter(), time.process_time()
    stored = app.store.backend.query("SELECT result FROM af_steps WHERE run_id = 'r' AND seq = 1")[0][0]
    assert stored.startswith("af:enc:1:k1:") is sealed, stored[:40]
    app.close()
    return t1 - t0, c1 - c0


def measure_resume(dirs: Dirs, n: int, sealed: bool) -> tuple[float, float]:
    """(load_steps s, run_async s) of a run of `n` steps resumed after its signal arrived."""
    db = dirs.fresh()
    app = build_app(db, "NORMAL", sealed)
    wf = app.workflow_named("steps_then_signal")
    app.start(wf, n, run_id="resume")
    worker = app.worker()
    asyncio.run(worker.run_until_blocked("resume"))
    app.signal("resume", "go")
    app.close()
    app = build_app(db, "NORMAL", sealed)  # a new process's view: nothing cached
    t0 = time.perf_counter()
    assert len(app.store.load_steps("resume")) == n + 1
    load = time.perf_counter() - t0
    app.close()
    app = build_app(db, "NORMAL", sealed)
    gc.collect()
    t0 = time.perf_counter()
    assert asyncio.run(app.run_async(app.workflow_named("steps_then_signal"), n, run_id="resume")) == n
    wall = time.perf_counter() - t0
    app.close()
    return load, wall


def measure_primitive(reps: int = 20_000) -> dict[str, float]:
    from agentflow.store._seal import Sealer

    sealer = Sealer(Sealing(keys={"k1": KEY}))
    text = json.dumps({"text": "x" * 1000})
    t0 = time.perf_counter()
    for i in range(reps):
        sealed = sealer.seal(text, "t", "af_steps.result", "r", i)
    t1 = time.perf_counter()
    for _ in range(reps):
        sealer.open(sealed, "t", "af_steps.result", "r", reps - 1)
    t2 = time.perf_counter()
    return {"seal_1kb": round((t1 - t0) / reps * 1e6, 2), "open_1kb": round((t2 - t1) / reps * 1e6, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--resume-steps", type=int, default=1000)
    ap.add_argument("--dir", default=None, help="where the temporary databases go (default: $TMPDIR)")
    opts = ap.parse_args()
    n, reps = opts.steps, opts.reps
    dirs = Dirs(opts.dir)
    try:
        modes, payloads = ("NORMAL", "FULL"), ("noop", "1kb")
        runs: dict[str, dict[str, dict[bool, list[tuple[float, float]]]]] = {
            m: {p: {False: [], True: []} for p in payloads} for m in modes
        }
        measure_steps(dirs, "NORMAL", "noop", 50, True)  # warm-up: imports, first-use costs
        for rep in range(reps):
            for mode in modes:
                log(f"per-step rep {rep + 1}/{reps} {mode}")
                for payload in payloads:
                    # Alternate which goes first, so neither always runs on a warmer cache.
                    for sealed in (False, True) if rep % 2 == 0 else (True, False):
                        runs[mode][payload][sealed].append(measure_steps(dirs, mode, payload, n, sealed))
        us: dict[str, Any] = {}
        ratio: dict[str, Any] = {}
        samples: dict[str, Any] = {}
        for mode in modes:
            us[mode], ratio[mode], samples[mode] = {}, {}, {}
            for payload in payloads:
                off, on = runs[mode][payload][False], runs[mode][payload][True]
                us[mode][payload] = {
                    name: {"wall_us": round(med([w / n * 1e6 for w, _ in xs]), 1),
                           "cpu_us": round(med([c / n * 1e6 for _, c in xs]), 1)}
                    for name, xs in (("off", off), ("on", on))
                }  # fmt: skip
                ratio[mode][payload] = {
                    "wall": round(med([b[0] / a[0] for a, b in zip(off, on, strict=True)]), 3),
                    "cpu": round(med([b[1] / a[1] for a, b in zip(off, on, strict=True)]), 3),
                    "extra_cpu_us": round(med([(b[1] - a[1]) / n * 1e6 for a, b in zip(off, on, strict=True)]), 1),
                }
                samples[mode][payload] = {
                    name: [round(w / n * 1e6, 1) for w, _ in xs]
                    for name, xs in (("off_wall_us", off), ("on_wall_us", on))
                }
        log("resume")
        loads: dict[bool, list[float]] = {False: [], True: []}
        walls: dict[bool, list[float]] = {False: [], True: []}
        for rep in range(reps):
            for sealed in (False, True) if rep % 2 == 0 else (True, False):
                load, wall = measure_resume(dirs, opts.resume_steps, sealed)
                loads[sealed].append(load)
                walls[sealed].append(wall)
        resume = {
            "load_steps_ms": {"off": round(med(loads[False]) * 1e3, 2), "on": round(med(loads[True]) * 1e3, 2)},
            "resume_ms": {"off": round(med(walls[False]) * 1e3, 2), "on": round(med(walls[True]) * 1e3, 2)},
            "ratio_on_to_off": round(med([b / a for a, b in zip(walls[False], walls[True], strict=True)]), 3),
        }
        passed = {
            "extra_cpu_us_NORMAL_noop": ratio["NORMAL"]["noop"]["extra_cpu_us"]
            <= TARGETS["extra_cpu_us_NORMAL_noop_max"],
            "wall_ratio_FULL_noop": ratio["FULL"]["noop"]["wall"] <= TARGETS["wall_ratio_FULL_noop_max"],
            "resume_ratio": resume["ratio_on_to_off"] <= TARGETS["resume_ratio_max"],
        }
        out = {
            "config": {"steps": n, "reps": reps, "resume_steps": opts.resume_steps, "stat": "median"},
            "us_per_step": us,
            "ratio_on_to_off": ratio,
            f"resume_{opts.resume_steps}": resume,
            "seal_open_us": measure_primitive(),
            "targets": TARGETS,
            "pass": passed,
            "all_pass": all(passed.values()),
            "samples": samples,
        }
        print(json.dumps(out, indent=2))
    finally:
        shutil.rmtree(dirs.root, ignore_errors=True)


if __name__ == "__main__":
    main()
