"""Framework comparison: agentflow, DBOS and LangGraph on the same workloads, in one run.

Run: `.venv/bin/python bench/compare.py > compare.json` (~10 min on 2 cores; needs the `bench`
extra, `pip install -e ".[bench]"`, and for the PostgreSQL figures a server at
`--server`, default postgresql://postgres@127.0.0.1:5432/test, where scratch databases are created
and dropped). `--quick` is a ~2 min smoke run with small sizes. Prints ONE JSON object on
stdout; progress goes to stderr.

Every measurement runs in a fresh child process (`compare.py --child TASK FRAMEWORK ARGS`), so
the frameworks never share an interpreter, a DBOS singleton or imported modules. Repetitions are
interleaved: for each rep every workload runs agentflow, DBOS, LangGraph back to back (A, B, C,
A, B, C, ...), so machine noise (fsync latency drifts 2x within seconds on a shared disk) hits
all three alike. Medians of `--reps` (2) reps are reported (recovery: `--recovery-reps`, 1;
agents and pg_workers: one run each); the individual values are under `samples`.
Only public APIs of DBOS and LangGraph are used; agentflow's side reuses bench/engine.py
(`build_app`, `Dirs`, `record_waiting_run`, `measure_resume_engine`, `measure_raw_commit`,
`APP_SRC` and `CHILD_COLD`) and bench/agents.py (`build`, `drain`).

What "a step" and "durable" mean for each framework:
  agentflow  an activity (`ctx.run(act, i)`, async no-op, side_effect=False): one commit per
             step; the step's result reaches the workflow once committed. SQLite store (WAL),
             `App(db, synchronous=MODE)`.
  DBOS       a `@DBOS.step()` (sync no-op) called from a `@DBOS.workflow()`: the step's output is
             committed before the workflow goes on. DBOS 3.x has a SQLite system database, so
             the SQLite figures use it (`system_database_url=sqlite:///...`), with DBOS's own
             engine and pool; a SQLAlchemy `connect` listener (public SQLAlchemy API) adds
             `journal_mode=WAL` and `synchronous=MODE`, the settings the other two use (DBOS
             itself sets no journal mode: rollback journal, synchronous=FULL).
             `application_version` is fixed ("bench") so a recovering process matches.
  LangGraph  a graph super-step: a `StateGraph` node that loops back to itself through a
             conditional edge (`recursion_limit` raised), invoked with `durability="sync"`, so
             each step's checkpoint is saved before the next step starts (the default, "async",
             saves it while the next step runs). `SqliteSaver` (sync) / `AsyncSqliteSaver`
             (agents) on a connection with `synchronous=MODE`; the saver sets WAL itself. The
             functional API (`@entrypoint`/`@task`) is not used: its task results are saved in
             a background thread and reach the caller before they are durable.

Figures (per framework unless said; `null` plus a reason under `why_null` when a framework
cannot do a workload or a run failed or timed out: no number is ever estimated):

cpu_us_per_step_NORMAL / wall_us_per_step_NORMAL
    One workflow of `--steps` (1,000) no-op steps at synchronous=NORMAL on a fresh database, in
    a child that first ran a 1-step workflow (warm-up: imports, connections, statements).
    `time.process_time()` (all threads, user+sys) and wall time of the call / steps. Includes
    the workflow's fixed cost (start, finish). The step count is checked afterwards.
wall_us_per_step_FULL, raw_commit_us_FULL, ratio_to_raw_commit_FULL
    The same workflow at synchronous=FULL. `raw_commit_us_FULL`: raw sqlite3, 1,000
    transactions `BEGIN IMMEDIATE; INSERT INTO af_steps ...; COMMIT` with WAL and
    synchronous=FULL (engine.py's `measure_raw_commit`, in its own child). Each rep runs raw,
    agentflow, DBOS, LangGraph, raw; a framework's ratio is its per-step wall / the mean of
    the two raw measurements around it; the figure is the median over reps. 1.0 = one fsync
    per step and nothing else; LangGraph and DBOS may write more than one row per step.
seq_3step_wf_per_s_NORMAL
    `--seq` (200) workflows of 3 no-op steps, each started and awaited to completion before the
    next (agentflow `app.run(wf, ...)`, DBOS calling the workflow function, LangGraph `invoke`
    on a new thread id), at NORMAL, after one warm-up workflow: workflows / wall s.
recovery_10k
    A workflow with `--recovery-steps` (10,000) recorded no-op steps and one step left, at FULL.
    Recorded once (at NORMAL, to record faster; the file is the same) and copied for each
    resume.
      agentflow  the run waits on a signal, which has been sent; `resume_s` is
                 `app.run_async(wf, n, run_id=...)` in a process that has opened the App
                 (engine.py's `measure_resume_engine`): claim, load and replay the 10,000
                 recorded steps, run the last one, finish.
      DBOS       the workflow waits in `DBOS.recv`; the recording process is killed
                 (`os._exit`) there, and a message is then sent (`DBOS.send` from another
                 executor). `resume_s` is `DBOS.launch()` (whose startup recovery re-runs the
                 pending workflow of its executor id: replay 10,000 recorded step outputs, then
                 `recv` gets the message) until `retrieve_workflow(id).get_result()` returns
                 (polled every 5 ms). `launch_s`, part of it, is the `launch()` call. Calling
                 the workflow again with the same id (`SetWorkflowID`) does NOT resume a
                 PENDING workflow in DBOS 3.x: it waits for the dead owner, so startup recovery
                 is DBOS's public way to resume.
      LangGraph  the graph ran 10,000 super-steps and stopped at an `interrupt()` node;
                 `resume_s` is `invoke(Command(resume=...))` on the thread: it loads the last
                 checkpoint (a snapshot of the state) and replays nothing, so it does not grow
                 with the history. This is LangGraph's design, not a shortcut of this bench.
bytes_per_step
    Growth of the database file (after `PRAGMA wal_checkpoint(TRUNCATE)`, from a separate
    sqlite3 connection) / steps, over the `--steps`-step workflow at NORMAL: `noop` (a step
    returning its int argument; from the cpu_us_per_step runs) and `payload_1kb` (a step
    returning {"text": "x" * 1000}; once per framework). LangGraph stores the whole state in
    every checkpoint (here: the step's output and two ints).
cold_start
    Wall time of a child `python -c ...` from spawn to exit: import the framework, open the
    database (an existing, migrated one: a copy of a template), run a 1-step workflow at FULL,
    shut down as the framework needs (DBOS: `DBOS.destroy()`); agentflow's child is engine.py's
    CHILD_COLD. `python_startup_s` is a bare `python -c pass`, measured in the same reps;
    `beyond_python_s` = wall_s - python_startup_s. `import_s` / `open_s` / `run_s` are measured
    in the child. `wall_bytecode_cached_s`: the same child with every module's bytecode cached
    in a PYTHONPYCACHEPREFIX written by a first run. Where PYTHONDONTWRITEBYTECODE is set (shown
    as `PYTHONDONTWRITEBYTECODE`), `wall_s` compiles every module of an editable install
    (agentflow here) whose .pyc is missing or stale on every start, while DBOS and LangGraph
    come with the .pyc files pip wrote; `wall_bytecode_cached_s` puts all three on the same
    footing. The cold-start target is checked against `wall_s`.
agents
    N runs (`--agents`, default 1,000) of 10 async "model calls" (`asyncio.sleep(--model-ms)`,
    200 ms) interleaved with 10 fast async tool steps, all concurrent, at FULL and NORMAL, in
    one process. Floor (no durability, all concurrent): 10 x model-ms.
      agentflow  bench/agents.py: N `app.start` (`start_s`), then one in-process `Worker(app)`
                 at its default settings drains them (`drain_s`, the figure the issue's target
                 is about); `total_s` = start_s + drain_s.
      DBOS       `await DBOS.start_workflow_async(agent, i)` N times (`start_s`; the first
                 ones already run meanwhile), then all results awaited: `total_s`.
      LangGraph  N concurrent `ainvoke` (asyncio.gather) on a 20-super-step graph with an
                 `AsyncSqliteSaver` (one aiosqlite connection): `total_s`.
    `rss_mb_peak` is the child's ru_maxrss. A run longer than `--agents-timeout` is killed and
    reported as null.
pg_workers
    PostgreSQL, `synchronous_commit=on` (set on the scratch database before the workers
    connect, and by agentflow's FULL): `--pg-workflows` (500) three-step no-op workflows are
    enqueued first, unmeasured and at synchronous_commit=off (agentflow `app.start`; DBOS
    `queue.enqueue` on a queue registered with `polling_interval_sec=0.05`, from a process
    that listens to no queue), then K worker processes (1, 2, 4), each ready
    (imports done, App/DBOS configured), are told to go at once; `drain_s` runs from "go" to
    the parent seeing every workflow completed (a `count(*)` every 10 ms); `wf_per_s` =
    workflows / drain_s. agentflow workers: `Worker(app, concurrency=C).run_forever`; DBOS
    workers: `DBOS.launch()` after "go" (so `drain_s` includes the launch; `launch_s` is its
    slowest worker's), each with its own executor id and `sys_db_pool_size=10` (4 x DBOS's
    default 20 would near the server's 100 connections). C = `--pg-concurrency` (50) runs per
    worker for both (agentflow `concurrency`, DBOS `worker_concurrency`): with either
    framework's unlimited default the first worker to poll takes every workflow and more
    workers cannot help. A fresh scratch database per measurement. LangGraph has no worker or
    queue model (a graph runs in the process that invokes it), so its entry is null.
targets / pass
    The issue's targets for agentflow, informational: `pass` says whether this run met each
    (null: not measured in this run, e.g. `--agents` other than 1,000).

Caveats:
  * The workloads are the same work, not the same code path: a LangGraph super-step saves a
    checkpoint (full state) plus the node's writes; a DBOS step writes one output row; an
    agentflow step writes one row (plus, for both, the workflow's rows at start and end). Each framework gets the settings
    that make its step durable before the workflow proceeds (LangGraph durability="sync").
  * DBOS's steps are sync functions (its usual style) except in the agents workload (async,
    like the others). agentflow's no-op steps are async activities.
  * Recovery measures different mechanisms (replay for agentflow and DBOS, snapshot for
    LangGraph), and DBOS's includes `launch()`; see recovery_10k.
  * Numbers at FULL depend on fsync latency; compare ratios within one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, TypedDict

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
# bench/ has no __init__: its modules are imported by name, as the other benches do.
for _p in (REPO, BENCH):
    if _p not in sys.path:
        sys.path.insert(0, _p)

FRAMEWORKS = ("agentflow", "dbos", "langgraph")
PAYLOAD_1KB = {"text": "x" * 1000}
TARGETS = {
    "agents_1000_FULL_drain_s_max": 4.0,
    "pg_4_workers_over_1_min": 2.5,
    "seq_3step_wf_per_s_min": 500.0,
    "cold_start_s_max": 0.3,
    "cpu_us_per_step_NORMAL_max": 100.0,
}


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[compare {time.perf_counter() - _T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ==========================================================================================
# Child side: one measurement per process. Each `<framework>_<task>` returns a JSON-able dict.
# ==========================================================================================
def checkpointed_size(path: str) -> int | None:
    """The database file's size once its WAL is folded in (None if a reader blocked that)."""
    import sqlite3

    for _ in range(50):
        conn = sqlite3.connect(path)
        try:
            busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
        finally:
            conn.close()
        if not busy:
            return os.path.getsize(path)
        time.sleep(0.02)
    return None


def _timed(fn: Any) -> tuple[Any, float, float]:
    import gc

    gc.collect()
    t0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return result, time.perf_counter() - t0, time.process_time() - c0


def _steps_result(
    n: int, wall: float, cpu: float, size0: int | None, size1: int | None, recorded: int
) -> dict[str, Any]:
    if recorded != n:
        raise RuntimeError(f"{recorded} steps recorded, expected {n}")
    return {
        "wall_us_per_step": wall / n * 1e6,
        "cpu_us_per_step": cpu / n * 1e6,
        "bytes_per_step": None if size0 is None or size1 is None else (size1 - size0) / n,
        "recorded_steps": recorded,
    }


# -- agentflow -----------------------------------------------------------------------------
def agentflow_steps(db: str, mode: str, n: int, payload: bool) -> dict[str, Any]:
    from engine import build_app

    app = build_app(f"sqlite:///{db}", synchronous=mode)
    wf = app.bench_workflows["steps"]
    assert app.run(wf, "async_noop", 1, run_id="warm") == 1
    size0 = checkpointed_size(db)
    variant = "payload_1kb" if payload else "async_noop"
    result, wall, cpu = _timed(lambda: app.run(wf, variant, n, run_id="r"))
    assert result == n
    recorded = len(app.store.load_steps("r"))
    app.close()
    return _steps_result(n, wall, cpu, size0, checkpointed_size(db), recorded)


def agentflow_seq(db: str, mode: str, count: int) -> dict[str, Any]:
    from engine import build_app

    app = build_app(f"sqlite:///{db}", synchronous=mode)
    wf = app.bench_workflows["steps"]
    assert app.run(wf, "async_noop", 3, run_id="warm") == 3

    def go() -> None:
        for k in range(count):
            assert app.run(wf, "async_noop", 3, run_id=f"s{k}") == 3

    _, wall, cpu = _timed(go)
    done = app.store.backend.query("SELECT count(*) FROM af_runs WHERE status = 'completed'")[0][0]
    app.close()
    assert done == count + 1, done
    return {"wf_per_s": count / wall, "cpu_ms_per_wf": cpu / count * 1e3}


def agentflow_raw(root: str, mode: str, n: int) -> dict[str, Any]:
    import engine

    dirs = engine.Dirs(root)
    wall, cpu = engine.measure_raw_commit(dirs, mode, n)
    return {"wall_us": wall / n * 1e6, "cpu_us": cpu / n * 1e6}


def agentflow_template(root: str) -> dict[str, Any]:
    import engine

    return {"template": engine.Dirs(root).template}


def agentflow_record(root: str, n: int) -> dict[str, Any]:
    import engine

    path, run_id = engine.record_waiting_run(engine.Dirs(root), n)
    return {"snapshot": path, "run_id": run_id}


def agentflow_resume(root: str, snapshot: str, n: int, run_id: str) -> dict[str, Any]:
    import engine

    wall, load = engine.measure_resume_engine(engine.Dirs(root), snapshot, n, run_id)
    return {"resume_s": wall, "load_steps_s": load}


def agentflow_agents(db: str, mode: str, n: int, model_ms: float) -> dict[str, Any]:
    import asyncio
    import resource

    import agents

    from agentflow.engine import Worker

    app, agent = agents.build(f"sqlite:///{db}", mode, model_ms / 1000)
    try:
        t0 = time.perf_counter()
        for i in range(n):
            app.start(agent, i, run_id=f"a{i}")
        start_s = time.perf_counter() - t0
        worker = Worker(app)
        drain_s = asyncio.run(agents.drain(app, worker, n))
        steps = app.store.backend.query("SELECT count(*) FROM af_steps")[0][0]
        assert steps == 20 * n, steps
        return {
            "total_s": start_s + drain_s,
            "start_s": start_s,
            "drain_s": drain_s,
            "recorded_steps": steps,
            "rss_mb_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "concurrency": worker.concurrency,
        }
    finally:
        app.close()


def agentflow_pgsetup(url: str, count: int, concurrency: int) -> dict[str, Any]:
    from engine import build_app

    app = build_app(url, synchronous="NORMAL")  # enqueueing is not measured
    wf = app.bench_workflows["steps"]
    t0 = time.perf_counter()
    for i in range(count):
        app.start(wf, "async_noop", 3, run_id=f"p{i}")
    took = time.perf_counter() - t0
    app.close()
    return {"enqueue_s": took}


def agentflow_pgworker(url: str, concurrency: int) -> dict[str, Any]:
    import asyncio
    import threading

    from engine import build_app

    from agentflow.engine import Worker

    app = build_app(url, synchronous="FULL")
    _ = app.store
    worker = Worker(app, concurrency=concurrency)
    print("ready", flush=True)
    sys.stdin.readline()  # go
    cpu0 = time.process_time()

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wait_stop() -> None:
            sys.stdin.readline()
            loop.call_soon_threadsafe(stop.set)

        threading.Thread(target=wait_stop, daemon=True).start()
        await worker.run_forever(stop)

    asyncio.run(serve())
    cpu = time.process_time() - cpu0
    app.close()
    return {"cpu_s": cpu}


# -- DBOS ----------------------------------------------------------------------------------
_DBOS: dict[str, Any] = {}


def _dbos_defs(sqlite_sync: str | None = None) -> dict[str, Any]:
    """Register the bench's DBOS workflows once per process (same names in every process, so a
    recovering process finds them). `sqlite_sync`: synchronous= for SQLite connections."""
    if _DBOS:
        _DBOS["sync"][0] = sqlite_sync
        return _DBOS
    import asyncio
    import sqlite3
    import threading

    from dbos import DBOS
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    sync = [sqlite_sync]

    # DBOS creates its SQLite engine itself (pool, IMMEDIATE transactions, busy timeout) and sets
    # no journal mode; this adds the WAL and synchronous settings every framework here runs with.
    @event.listens_for(Engine, "connect")
    def _pragmas(dbapi_conn: Any, _record: Any) -> None:
        if isinstance(dbapi_conn, sqlite3.Connection) and sync[0]:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            dbapi_conn.execute(f"PRAGMA synchronous={sync[0]}")

    at_recv = threading.Event()

    @DBOS.step(name="noop")
    def noop(i: int) -> int:
        return i

    @DBOS.step(name="payload_1kb")
    def payload_1kb(i: int) -> dict[str, str]:
        return PAYLOAD_1KB

    @DBOS.workflow(name="steps")
    def steps(n: int, payload: bool = False) -> int:
        for i in range(n):
            (payload_1kb if payload else noop)(i)
        return n

    @DBOS.workflow(name="steps_then_recv")
    def steps_then_recv(n: int) -> int:
        for i in range(n):
            noop(i)
        at_recv.set()
        message = DBOS.recv("go", timeout_seconds=3600)
        assert message == "go", message
        return n

    model_s = [0.2]

    @DBOS.step(name="model_call")
    async def model_call(i: int) -> str:
        await asyncio.sleep(model_s[0])
        return f"thought {i}"

    @DBOS.step(name="tool")
    async def tool(i: int) -> int:
        return i

    @DBOS.workflow(name="agent")
    async def agent(n: int) -> int:
        total = 0
        for i in range(10):
            await model_call(i)
            total += await tool(i)
        return total

    _DBOS.update(
        DBOS=DBOS, steps=steps, steps_then_recv=steps_then_recv, agent=agent, at_recv=at_recv,
        model_s=model_s, sync=sync,
    )  # fmt: skip
    return _DBOS


def _dbos_config(url: str, **extra: Any) -> dict[str, Any]:
    config = {"name": "bench", "system_database_url": url, "log_level": "WARNING", "application_version": "bench"}
    config.update(extra)
    return config


def _dbos_open(db: str, mode: str, **extra: Any) -> dict[str, Any]:
    d = _dbos_defs(mode)
    d["DBOS"](config=_dbos_config(f"sqlite:///{db}", **extra))
    d["DBOS"].launch()
    return d


def dbos_steps(db: str, mode: str, n: int, payload: bool) -> dict[str, Any]:
    from dbos import SetWorkflowID

    d = _dbos_open(db, mode)
    DBOS, steps = d["DBOS"], d["steps"]
    with SetWorkflowID("warm"):
        assert steps(1) == 1
    size0 = checkpointed_size(db)

    def go() -> int:
        with SetWorkflowID("r"):
            return int(steps(n, payload))

    result, wall, cpu = _timed(go)
    assert result == n
    recorded = len(DBOS.list_workflow_steps("r"))
    DBOS.destroy()
    return _steps_result(n, wall, cpu, size0, checkpointed_size(db), recorded)


def dbos_seq(db: str, mode: str, count: int) -> dict[str, Any]:
    d = _dbos_open(db, mode)
    DBOS, steps = d["DBOS"], d["steps"]
    assert steps(3) == 3

    def go() -> None:
        for _ in range(count):
            assert steps(3) == 3

    _, wall, cpu = _timed(go)
    done = len(DBOS.list_workflows(status="SUCCESS", load_input=False, load_output=False))
    DBOS.destroy()
    assert done == count + 1, done
    return {"wf_per_s": count / wall, "cpu_ms_per_wf": cpu / count * 1e3}


def dbos_template(db: str) -> dict[str, Any]:
    d = _dbos_open(db, "FULL")
    d["DBOS"].destroy()
    return {"template": db}


def dbos_record(db: str, n: int) -> dict[str, Any]:
    """Run `steps_then_recv` until it waits in recv, then die there (no shutdown)."""
    from dbos import SetWorkflowID

    d = _dbos_open(db, "NORMAL")
    with SetWorkflowID("resume"):
        d["DBOS"].start_workflow(d["steps_then_recv"], n)
    d["at_recv"].wait()
    time.sleep(0.5)  # recv has read its (empty) mailbox and waits
    print(json.dumps({"snapshot": db, "run_id": "resume"}), flush=True)
    os._exit(0)


def dbos_send(db: str) -> dict[str, Any]:
    """Send the recorded workflow its message, from another executor (which recovers nothing)."""
    d = _dbos_open(db, "NORMAL", executor_id="sender")
    d["DBOS"].send("resume", "go", topic="go")
    d["DBOS"].destroy()
    return {}


def dbos_resume(db: str, n: int) -> dict[str, Any]:
    d = _dbos_defs("FULL")
    DBOS = d["DBOS"]
    DBOS(config=_dbos_config(f"sqlite:///{db}"))  # executor "local": the recorded workflow's
    t0 = time.perf_counter()
    DBOS.launch()  # startup recovery re-runs the pending workflow in the background
    launch_s = time.perf_counter() - t0
    result = DBOS.retrieve_workflow("resume").get_result(polling_interval_sec=0.005)
    resume_s = time.perf_counter() - t0
    assert result == n, result
    recorded = len(DBOS.list_workflow_steps("resume"))
    DBOS.destroy()
    return {"resume_s": resume_s, "launch_s": launch_s, "recorded_steps": recorded}


def dbos_agents(db: str, mode: str, n: int, model_ms: float) -> dict[str, Any]:
    import asyncio
    import resource

    d = _dbos_open(db, mode)
    DBOS, agent = d["DBOS"], d["agent"]
    d["model_s"][0] = model_ms / 1000

    async def go() -> tuple[float, float]:
        t0 = time.perf_counter()
        handles = [await DBOS.start_workflow_async(agent, i) for i in range(n)]
        start_s = time.perf_counter() - t0
        results = await asyncio.gather(*(h.get_result() for h in handles))
        assert all(r == 45 for r in results)
        return start_s, time.perf_counter() - t0

    start_s, total_s = asyncio.run(go())
    DBOS.destroy()
    return {
        "total_s": total_s,
        "start_s": start_s,
        "rss_mb_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def dbos_pgsetup(url: str, count: int, concurrency: int) -> dict[str, Any]:
    d = _dbos_defs(None)
    DBOS = d["DBOS"]
    DBOS(config=_dbos_config(url, executor_id="enqueuer", sys_db_pool_size=10))
    DBOS.listen_queues(["__none__"])  # enqueue only: this process runs nothing
    DBOS.launch()
    queue = DBOS.register_queue("bench", polling_interval_sec=0.05, worker_concurrency=concurrency)
    t0 = time.perf_counter()
    for _ in range(count):
        queue.enqueue(d["steps"], 3)
    took = time.perf_counter() - t0
    DBOS.destroy()
    return {"enqueue_s": took}


def dbos_pgworker(url: str, concurrency: int) -> dict[str, Any]:
    import uuid

    d = _dbos_defs(None)
    DBOS = d["DBOS"]
    DBOS(config=_dbos_config(url, executor_id=f"worker-{uuid.uuid4().hex[:8]}", sys_db_pool_size=10))
    print("ready", flush=True)
    sys.stdin.readline()  # go
    t0 = time.perf_counter()
    DBOS.launch()
    launch_s = time.perf_counter() - t0
    sys.stdin.readline()  # stop
    DBOS.destroy()
    return {"launch_s": launch_s}


# -- LangGraph -----------------------------------------------------------------------------
class LGSteps(TypedDict):
    i: int
    n: int
    payload: bool
    out: Any


class LGAgent(TypedDict):
    i: int
    total: int
    thought: str


def _lg_steps_graph(saver: Any, *, wait_at_end: bool = False) -> Any:
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import interrupt

    def step(s: LGSteps) -> dict[str, Any]:
        return {"i": s["i"] + 1, "out": PAYLOAD_1KB if s["payload"] else s["i"]}

    def wait(s: LGSteps) -> dict[str, Any]:
        return {"out": interrupt("go?")}

    b = StateGraph(LGSteps)
    b.add_node("step", step)
    b.add_edge(START, "step")
    done = "wait" if wait_at_end else END
    b.add_conditional_edges("step", lambda s: "step" if s["i"] < s["n"] else done, ["step", done])
    if wait_at_end:
        b.add_node("wait", wait)
        b.add_edge("wait", END)
    return b.compile(checkpointer=saver)


def _lg_saver(db: str, mode: str) -> Any:
    import sqlite3

    from langgraph.checkpoint.sqlite import SqliteSaver

    conn = sqlite3.connect(db, check_same_thread=False)  # as SqliteSaver.from_conn_string does
    conn.execute(f"PRAGMA synchronous={mode}")
    saver = SqliteSaver(conn)
    saver.setup()  # sets journal_mode=WAL
    return saver


def _lg_config(thread: str, n: int) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}, "recursion_limit": n + 10}


def _lg_state(n: int, payload: bool = False) -> dict[str, Any]:
    return {"i": 0, "n": n, "payload": payload, "out": None}


def langgraph_steps(db: str, mode: str, n: int, payload: bool) -> dict[str, Any]:
    saver = _lg_saver(db, mode)
    g = _lg_steps_graph(saver)
    assert g.invoke(_lg_state(1), _lg_config("warm", 1), durability="sync")["i"] == 1
    size0 = checkpointed_size(db)
    result, wall, cpu = _timed(lambda: g.invoke(_lg_state(n, payload), _lg_config("r", n), durability="sync"))
    assert result["i"] == n
    # one checkpoint per super-step; steps -1 (input) and 0 (START) ran no node of ours
    recorded = sum(1 for st in g.get_state_history(_lg_config("r", n)) if st.metadata["step"] >= 1)
    saver.conn.close()
    return _steps_result(n, wall, cpu, size0, checkpointed_size(db), recorded)


def langgraph_seq(db: str, mode: str, count: int) -> dict[str, Any]:
    saver = _lg_saver(db, mode)
    g = _lg_steps_graph(saver)
    assert g.invoke(_lg_state(3), _lg_config("warm", 3), durability="sync")["i"] == 3

    def go() -> None:
        for k in range(count):
            assert g.invoke(_lg_state(3), _lg_config(f"s{k}", 3), durability="sync")["i"] == 3

    _, wall, cpu = _timed(go)
    saver.conn.close()
    return {"wf_per_s": count / wall, "cpu_ms_per_wf": cpu / count * 1e3}


def langgraph_template(db: str) -> dict[str, Any]:
    _lg_saver(db, "FULL").conn.close()
    return {"template": db}


def langgraph_record(db: str, n: int) -> dict[str, Any]:
    saver = _lg_saver(db, "NORMAL")
    g = _lg_steps_graph(saver, wait_at_end=True)
    out = g.invoke(_lg_state(n), _lg_config("resume", n), durability="sync")
    assert out["i"] == n and "__interrupt__" in out, out.keys()
    saver.conn.close()
    return {"snapshot": db, "run_id": "resume"}


def langgraph_resume(db: str, n: int) -> dict[str, Any]:
    from langgraph.types import Command

    saver = _lg_saver(db, "FULL")
    g = _lg_steps_graph(saver, wait_at_end=True)
    t0 = time.perf_counter()
    out = g.invoke(Command(resume="go"), _lg_config("resume", n), durability="sync")
    resume_s = time.perf_counter() - t0
    assert out["i"] == n and out["out"] == "go", out
    saver.conn.close()
    return {"resume_s": resume_s}


def langgraph_agents(db: str, mode: str, n: int, model_ms: float) -> dict[str, Any]:
    import asyncio
    import resource

    import aiosqlite
    from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
    from langgraph.graph import END, START, StateGraph

    model_s = model_ms / 1000

    async def model_call(s: LGAgent) -> dict[str, Any]:
        await asyncio.sleep(model_s)
        return {"thought": f"thought {s['i']}"}

    async def tool(s: LGAgent) -> dict[str, Any]:
        return {"total": s["total"] + s["i"], "i": s["i"] + 1}

    b = StateGraph(LGAgent)
    b.add_node("model_call", model_call)
    b.add_node("tool", tool)
    b.add_edge(START, "model_call")
    b.add_edge("model_call", "tool")
    b.add_conditional_edges("tool", lambda s: "model_call" if s["i"] < 10 else END, ["model_call", END])

    async def go() -> float:
        async with aiosqlite.connect(db) as conn:
            await conn.execute(f"PRAGMA synchronous={mode}")
            saver = AsyncSqliteSaver(conn)
            await saver.setup()
            g = b.compile(checkpointer=saver)
            t0 = time.perf_counter()
            results = await asyncio.gather(
                *(
                    g.ainvoke(
                        {"i": 0, "total": 0, "thought": ""}, {"configurable": {"thread_id": f"a{k}"}}, durability="sync"
                    )
                    for k in range(n)
                )
            )
            took = time.perf_counter() - t0
            assert all(r["total"] == 45 for r in results)
            return took

    total_s = asyncio.run(go())
    return {
        "total_s": total_s,
        "start_s": None,
        "rss_mb_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def child_main(task: str, fw: str, args: dict[str, Any]) -> None:
    result = globals()[f"{fw}_{task}"](**args)
    print(json.dumps(result), flush=True)


# -- cold start children (`python -c`, timed from spawn to exit by the parent) ---------------
COLD_DBOS = r"""
import json, sys, time
t0 = time.perf_counter()
import sqlite3
from dbos import DBOS
from sqlalchemy import event
from sqlalchemy.engine import Engine
t1 = time.perf_counter()

@event.listens_for(Engine, "connect")
def _pragmas(dbapi_conn, _record):
    if isinstance(dbapi_conn, sqlite3.Connection):
        dbapi_conn.execute("PRAGMA journal_mode=WAL")
        dbapi_conn.execute("PRAGMA synchronous=FULL")

@DBOS.step(name="noop")
def noop(i: int) -> int:
    return i

@DBOS.workflow(name="steps")
def steps(n: int) -> int:
    for i in range(n):
        noop(i)
    return n

DBOS(config={"name": "bench", "system_database_url": "sqlite:///" + sys.argv[1], "log_level": "WARNING",
             "application_version": "bench"})
DBOS.launch()
t2 = time.perf_counter()
assert steps(1) == 1
t3 = time.perf_counter()
DBOS.destroy()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "run_s": t3 - t2}))
"""

COLD_LANGGRAPH = r"""
import json, sys, time
t0 = time.perf_counter()
import sqlite3
from typing import TypedDict
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.graph import END, START, StateGraph
t1 = time.perf_counter()

class S(TypedDict):
    i: int
    n: int

def step(s):
    return {"i": s["i"] + 1}

conn = sqlite3.connect(sys.argv[1], check_same_thread=False)
conn.execute("PRAGMA synchronous=FULL")
b = StateGraph(S)
b.add_node("step", step)
b.add_edge(START, "step")
b.add_conditional_edges("step", lambda s: "step" if s["i"] < s["n"] else END, ["step", END])
g = b.compile(checkpointer=SqliteSaver(conn))
t2 = time.perf_counter()
assert g.invoke({"i": 0, "n": 1}, {"configurable": {"thread_id": "cold"}}, durability="sync")["i"] == 1
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "open_s": t2 - t1, "run_s": t3 - t2}))
"""


# ==========================================================================================
# Parent side
# ==========================================================================================
class ChildFailed(Exception):
    pass


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("AGENTFLOW_CRASH_AT", "AGENTFLOW_DB")}
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def run_task(task: str, fw: str, timeout: float | None = None, **args: Any) -> dict[str, Any]:
    """Run one measurement in a fresh child; its result is the last line of its stdout."""
    import subprocess

    cmd = [sys.executable, os.path.abspath(__file__), "--child", task, fw, json.dumps(args)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), cwd=REPO, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ChildFailed(f"did not finish within {timeout:.0f} s (killed)") from exc
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ChildFailed(f"{fw} {task} failed (exit {proc.returncode}): {tail}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def run_cold(code: str, *args: str, pycache: str | None = None) -> dict[str, Any]:
    """Wall time of `python -c code args` from spawn to exit, plus what the child printed.

    `pycache`: run with bytecode cached in that PYTHONPYCACHEPREFIX (written by a first run),
    also where PYTHONDONTWRITEBYTECODE is set: then an editable install (agentflow here) is not
    compiled again on every start, as DBOS and LangGraph, whose .pyc pip wrote, are not."""
    import subprocess

    env = child_env()
    if pycache is not None:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = pycache
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise ChildFailed(f"cold start child failed: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    lines = proc.stdout.strip().splitlines()
    return {"wall_s": wall, **(json.loads(lines[-1]) if lines else {})}


def med(xs: list[float]) -> float | None:
    import statistics

    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rnd(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


class Results:
    """Samples per (figure, framework), and why a figure is null."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[str, list[Any]]] = {}
        self.why: dict[str, dict[str, str]] = {}

    def add(self, figure: str, fw: str, value: Any) -> None:
        self.samples.setdefault(figure, {}).setdefault(fw, []).append(value)

    def fail(self, figure: str, fw: str, reason: str) -> None:
        self.why.setdefault(figure, {}).setdefault(fw, reason)
        self.samples.setdefault(figure, {}).setdefault(fw, [])

    def attempt(self, figure: str, fw: str, fn: Any) -> Any:
        try:
            return fn()
        except ChildFailed as exc:
            log(f"  {figure} {fw}: {exc}")
            self.fail(figure, fw, str(exc))
            return None

    def figure(self, figure: str, nd: int = 1, key: str | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for fw, xs in sorted(self.samples.get(figure, {}).items(), key=lambda kv: _order(kv[0])):
            vals = [x[key] if key else x for x in xs if x is not None]
            out[fw] = rnd(med(vals), nd) if vals else None
        if figure in self.why:
            out["why_null"] = {fw: r for fw, r in self.why[figure].items() if out.get(fw) is None}
            if not out["why_null"]:
                del out["why_null"]
        return out


class Paths:
    def __init__(self, base: str | None) -> None:
        import tempfile

        self.root = tempfile.mkdtemp(prefix="agentflow-compare-", dir=base)
        self.n = 0

    def new(self, stem: str) -> str:
        self.n += 1
        return os.path.join(self.root, f"{stem}-{self.n}.db")

    def copy(self, src: str, stem: str) -> str:
        import shutil

        dst = self.new(stem)
        shutil.copyfile(src, dst)
        return dst

    def cleanup(self) -> None:
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)


# -- PostgreSQL ------------------------------------------------------------------------------
PG_DONE = {
    "agentflow": (
        "SELECT count(*) FILTER (WHERE status = 'completed'), count(*) FILTER (WHERE status = 'failed') FROM af_runs"
    ),
    "dbos": (
        "SELECT count(*) FILTER (WHERE status = 'SUCCESS'), count(*) FILTER (WHERE status IN ('ERROR', 'CANCELLED'))"
        " FROM dbos.workflow_status WHERE queue_name = 'bench'"
    ),
}
PG_STEPS = {"agentflow": "SELECT count(*) FROM af_steps", "dbos": "SELECT count(*) FROM dbos.operation_outputs"}


def postgres_cpu_s() -> float:
    """User + system CPU seconds of every `postgres` process on this machine (-1 if /proc cannot
    tell: another OS, or the server runs elsewhere)."""
    total, tick, found = 0.0, os.sysconf("SC_CLK_TCK"), False
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return -1.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue  # ended meanwhile
        name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
        if name.startswith("postgres"):
            found = True
            total += (int(rest[11]) + int(rest[12])) / tick  # utime, stime
    return total if found else -1.0


def pg_throughput(fw: str, k: int, count: int, concurrency: int, server: str, timeout: float) -> dict[str, Any]:
    import subprocess
    import uuid

    import psycopg

    scratch = f"af_compare_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {scratch}")
        # enqueueing is not measured: its sessions commit without waiting for the flush
        admin.execute(f"ALTER DATABASE {scratch} SET synchronous_commit = off")
    url = server.rsplit("/", 1)[0] + f"/{scratch}"
    procs: list[subprocess.Popen[str]] = []
    try:
        setup = run_task("pgsetup", fw, timeout=timeout, url=url, count=count, concurrency=concurrency)
        with psycopg.connect(server, autocommit=True) as admin:  # the workers' sessions: durable
            admin.execute(f"ALTER DATABASE {scratch} SET synchronous_commit = on")
        cmd = [sys.executable, os.path.abspath(__file__), "--child", "pgworker", fw]
        args = json.dumps({"url": url, "concurrency": concurrency})
        for _ in range(k):
            procs.append(
                subprocess.Popen(
                    [*cmd, args],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    env=child_env(),
                    cwd=REPO,
                )
            )
        for p in procs:
            assert p.stdout is not None
            if p.stdout.readline().strip() != "ready":
                raise ChildFailed(f"{fw} worker did not start: {(p.communicate()[1] or '').strip()[-300:]}")
        with psycopg.connect(url, autocommit=True) as conn:
            server_cpu0 = postgres_cpu_s()
            t0 = time.perf_counter()
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            while True:
                done, failed = conn.execute(PG_DONE[fw]).fetchone()  # type: ignore[misc]
                if done + failed >= count:
                    break
                if time.perf_counter() - t0 > timeout:
                    raise ChildFailed(f"{done} of {count} workflows done after {timeout:.0f} s")
                if any(p.poll() is not None for p in procs):
                    raise ChildFailed(f"a {fw} worker exited early")
                time.sleep(0.01)
            drain = time.perf_counter() - t0
            server_cpu = postgres_cpu_s() - server_cpu0
            steps = conn.execute(PG_STEPS[fw]).fetchone()[0]  # type: ignore[index]
        if failed:
            raise ChildFailed(f"{failed} workflows failed")
        outs = []
        for p in procs:
            out, err = p.communicate("stop\n", timeout=60)
            if p.returncode != 0:
                raise ChildFailed(f"{fw} worker failed: {err.strip().splitlines()[-1:]}")
            outs.append(json.loads(out.strip().splitlines()[-1]))
        launch = [o["launch_s"] for o in outs if "launch_s" in o]
        workers_cpu = [o["cpu_s"] for o in outs if "cpu_s" in o]
        return {
            "wf_per_s": count / drain,
            "drain_s": drain,
            "enqueue_s": setup["enqueue_s"],
            "recorded_steps": steps,
            "launch_s": max(launch) if launch else None,
            # CPU seconds the database server (every postgres process on the machine) and the
            # workers spent while the drain ran, as cores kept busy: on a machine whose cores
            # the server shares, cpu_count / cores_busy of one worker bounds what K workers
            # can add (the "scaling_bound" field).
            "server_cpu_s": server_cpu,
            "workers_cpu_s": sum(workers_cpu) if workers_cpu else None,
            "cores_busy": (server_cpu + sum(workers_cpu)) / drain if workers_cpu and server_cpu >= 0 else None,
        }
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {scratch} WITH (FORCE)")


# -- main ------------------------------------------------------------------------------------
def versions() -> dict[str, Any]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("agentflow", "dbos", "langgraph", "langgraph-checkpoint-sqlite", "sqlalchemy", "aiosqlite", "psycopg"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run with small sizes (~1-2 min)")
    ap.add_argument("--reps", type=int, default=None, help="reps of the per-step, seq, cold figures (2)")
    ap.add_argument("--steps", type=int, default=None, help="steps per measured workflow (1000)")
    ap.add_argument("--seq", type=int, default=None, help="sequential 3-step workflows per sample (200)")
    ap.add_argument("--recovery-steps", type=int, default=None, help="recorded steps before the resume (10000)")
    ap.add_argument("--recovery-reps", type=int, default=None, help="resumes per framework (1; in the first reps)")
    ap.add_argument("--agents", type=int, default=None, help="concurrent agent runs (1000)")
    ap.add_argument("--model-ms", type=float, default=200.0)
    ap.add_argument("--agents-timeout", type=float, default=240.0, help="seconds before an agents run is killed")
    ap.add_argument("--pg-workflows", type=int, default=None, help="3-step workflows per PostgreSQL drain (500)")
    ap.add_argument("--pg-workers", default="1,2,4")
    ap.add_argument("--pg-concurrency", type=int, default=50, help="runs per worker process, both frameworks")
    ap.add_argument("--pg-timeout", type=float, default=180.0)
    ap.add_argument("--server", default="postgresql://postgres@127.0.0.1:5432/test", help="'' skips PostgreSQL")
    ap.add_argument("--frameworks", default=",".join(FRAMEWORKS))
    ap.add_argument(
        "--skip", default="", help="workloads to leave out: steps,seq,recovery,bytes,cold,agents,pg (comma-separated)"
    )
    ap.add_argument("--dir", default=None, help="where the temporary databases go (default: $TMPDIR)")
    opts = ap.parse_args()
    quick = opts.quick
    reps = opts.reps or (1 if quick else 2)
    n = opts.steps or (200 if quick else 1000)
    seq = opts.seq or (30 if quick else 200)
    rec_n = opts.recovery_steps or (500 if quick else 10000)
    rec_reps = min(reps, opts.recovery_reps or 1)
    n_agents = opts.agents or (50 if quick else 1000)
    pg_count = opts.pg_workflows or (60 if quick else 500)
    pg_workers = [int(x) for x in opts.pg_workers.split(",") if x]
    fws = [f for f in opts.frameworks.split(",") if f]
    skip = {s for s in opts.skip.split(",") if s}
    unknown = set(fws) - set(FRAMEWORKS)
    if unknown:
        ap.error(f"unknown frameworks: {sorted(unknown)}")

    import platform
    import re
    import sqlite3

    import engine  # bench/engine.py: agentflow's cold-start child

    t_start = time.perf_counter()
    paths = Paths(opts.dir)
    res = Results()
    out: dict[str, Any] = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "sqlite": sqlite3.sqlite_version,
            "platform": platform.platform(),
            "versions": versions(),
            "db_dir": paths.root,
            "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        },
        "config": {
            "quick": quick,
            "reps": reps,
            "steps": n,
            "seq": seq,
            "recovery_steps": rec_n,
            "recovery_reps": rec_reps,
            "agents": n_agents,
            "model_ms": opts.model_ms,
            "pg_workflows": pg_count,
            "pg_workers": pg_workers,
            "pg_concurrency": opts.pg_concurrency,
            "frameworks": fws,
            "skipped": sorted(skip),
            "stat": "median",
            "order": "interleaved per rep: " + ", ".join(fws),
        },
        "durability": {
            "agentflow": "SQLite store, WAL, synchronous=FULL|NORMAL (App(db, synchronous=...)); PostgreSQL "
            "synchronous_commit=on",
            "dbos": "SQLite system database (supported by this dbos version), DBOS's own engine plus WAL and "
            "synchronous=FULL|NORMAL; PostgreSQL system database for pg_workers, synchronous_commit=on",
            "langgraph": "SqliteSaver / AsyncSqliteSaver, WAL (set by the saver), synchronous=FULL|NORMAL on its "
            'connection, durability="sync"',
        },
    }
    try:
        # -- one-time preparation: templates (cold start) and recorded histories (recovery) ---
        codes = {
            "agentflow": f"APP_SRC = {engine.APP_SRC!r}\n" + engine.CHILD_COLD,
            "dbos": COLD_DBOS,
            "langgraph": COLD_LANGGRAPH,
        }
        pycache = os.path.join(paths.root, "pycache")

        def cold_arg(fw: str, db: str) -> str:
            return f"sqlite:///{db}" if fw == "agentflow" else db

        templates: dict[str, str] = {}
        snapshots: dict[str, dict[str, Any]] = {}
        for fw in fws:
            if "cold" not in skip:
                log(f"template database: {fw}")
                r = res.attempt(
                    "cold_start", fw,
                    lambda fw=fw: run_task("template", fw, **({"root": paths.root} if fw == "agentflow" else {"db": paths.new(f"{fw}-template")})),
                )  # fmt: skip
                if r:
                    templates[fw] = r["template"]
                    prime = paths.copy(r["template"], f"{fw}-prime")  # writes the bytecode cache
                    res.attempt(
                        "cold_start", fw,
                        lambda fw=fw, db=prime: run_cold(codes[fw], cold_arg(fw, db), pycache=pycache),
                    )  # fmt: skip
            if "recovery" not in skip:
                log(f"recovery: recording {rec_n} steps with {fw}")
                t = time.perf_counter()
                if fw == "agentflow":
                    r = res.attempt("recovery", fw, lambda: run_task("record", "agentflow", root=paths.root, n=rec_n))
                elif fw == "dbos":
                    db = paths.new("dbos-recorded")

                    def record_dbos(db: str = db) -> dict[str, Any]:
                        rec = run_task("record", "dbos", db=db, n=rec_n)
                        run_task("send", "dbos", db=db)
                        checkpointed_size(db)
                        return rec

                    r = res.attempt("recovery", fw, record_dbos)
                else:
                    r = res.attempt(
                        "recovery", fw, lambda: run_task("record", "langgraph", db=paths.new("lg-recorded"), n=rec_n)
                    )
                if r:
                    r["record_s"] = round(time.perf_counter() - t, 2)
                    snapshots[fw] = r

        # -- interleaved reps ----------------------------------------------------------------
        for rep in range(reps):
            if "steps" not in skip:
                log(f"rep {rep + 1}/{reps}: {n} steps at FULL (raw commits around)")
                raw = [
                    res.attempt(
                        "raw_commit_us_FULL",
                        "raw",
                        lambda: run_task("raw", "agentflow", root=paths.root, mode="FULL", n=1000),
                    )
                ]
                full = {}
                for fw in fws:
                    full[fw] = res.attempt(
                        "steps_FULL",
                        fw,
                        lambda fw=fw: run_task("steps", fw, db=paths.new(fw), mode="FULL", n=n, payload=False),
                    )
                raw.append(
                    res.attempt(
                        "raw_commit_us_FULL",
                        "raw",
                        lambda: run_task("raw", "agentflow", root=paths.root, mode="FULL", n=1000),
                    )
                )
                for r in raw:
                    res.add("raw_commit_us_FULL", "raw", r["wall_us"] if r else None)
                around = [r["wall_us"] for r in raw if r]
                for fw, r in full.items():
                    res.add("steps_FULL", fw, r)
                    if r and around:
                        res.add("ratio_FULL", fw, r["wall_us_per_step"] / (sum(around) / len(around)))
                    elif r:
                        res.fail("ratio_FULL", fw, "no raw commit measurement")
                    else:
                        res.fail("ratio_FULL", fw, res.why["steps_FULL"][fw])
                log(f"rep {rep + 1}/{reps}: {n} steps at NORMAL")
                for fw in fws:
                    r = res.attempt(
                        "steps_NORMAL",
                        fw,
                        lambda fw=fw: run_task("steps", fw, db=paths.new(fw), mode="NORMAL", n=n, payload=False),
                    )
                    res.add("steps_NORMAL", fw, r)
            if "seq" not in skip:
                log(f"rep {rep + 1}/{reps}: {seq} sequential 3-step workflows at NORMAL")
                for fw in fws:
                    r = res.attempt(
                        "seq", fw, lambda fw=fw: run_task("seq", fw, db=paths.new(fw), mode="NORMAL", count=seq)
                    )
                    res.add("seq", fw, r)
            if "recovery" not in skip and rep < rec_reps:
                log(f"rep {rep + 1}/{reps}: resume after {rec_n} recorded steps")
                for fw in fws:
                    snap = snapshots.get(fw)
                    if snap is None:
                        continue

                    def resume(fw: str = fw, s: dict[str, Any] = snap) -> dict[str, Any]:
                        if fw == "agentflow":  # measure_resume_engine copies the snapshot itself
                            return run_task(
                                "resume", fw, root=paths.root, snapshot=s["snapshot"], n=rec_n, run_id=s["run_id"]
                            )
                        return run_task("resume", fw, db=paths.copy(s["snapshot"], fw), n=rec_n)

                    res.add("recovery", fw, res.attempt("recovery", fw, resume))
            if "cold" not in skip:
                log(f"rep {rep + 1}/{reps}: cold start")
                res.add("python_startup_s", "python", run_cold("pass")["wall_s"])
                for fw in fws:
                    if fw not in templates:
                        continue

                    def cold(fw: str = fw) -> dict[str, Any]:
                        as_is = run_cold(codes[fw], cold_arg(fw, paths.copy(templates[fw], f"{fw}-cold")))
                        cached = run_cold(
                            codes[fw], cold_arg(fw, paths.copy(templates[fw], f"{fw}-cold")), pycache=pycache
                        )
                        return {**as_is, "wall_bytecode_cached_s": cached["wall_s"]}

                    res.add("cold_start", fw, res.attempt("cold_start", fw, cold))

        if "bytes" not in skip:
            log(f"{n} steps of a 1 KB payload at NORMAL (bytes per step)")
            for fw in fws:
                r = res.attempt(
                    "payload",
                    fw,
                    lambda fw=fw: run_task("steps", fw, db=paths.new(fw), mode="NORMAL", n=n, payload=True),
                )
                res.add("payload", fw, r)

        if "agents" not in skip:
            for mode in ("FULL", "NORMAL"):
                for fw in fws:
                    log(f"agents: {n_agents} runs at {mode}: {fw}")
                    r = res.attempt(
                        f"agents_{mode}", fw,
                        lambda fw=fw, mode=mode: run_task(
                            "agents", fw, timeout=opts.agents_timeout, db=paths.new(f"{fw}-agents"), mode=mode,
                            n=n_agents, model_ms=opts.model_ms,
                        ),
                    )  # fmt: skip
                    res.add(f"agents_{mode}", fw, r)

        pg: dict[str, Any] = {}
        if "pg" not in skip:
            if not opts.server:
                pg["skipped"] = "no --server"
            for k in pg_workers if opts.server else []:
                for fw in [f for f in fws if f != "langgraph"]:
                    log(f"PostgreSQL: {pg_count} workflows, {k} worker process(es): {fw}")
                    r = res.attempt(
                        f"pg_{k}", fw,
                        lambda fw=fw, k=k: pg_throughput(fw, k, pg_count, opts.pg_concurrency, opts.server, opts.pg_timeout),
                    )  # fmt: skip
                    res.add(f"pg_{k}", fw, r)

        # -- assemble ------------------------------------------------------------------------
        results: dict[str, Any] = {}
        if "steps" not in skip:
            results["cpu_us_per_step_NORMAL"] = res.figure("steps_NORMAL", key="cpu_us_per_step")
            results["wall_us_per_step_NORMAL"] = res.figure("steps_NORMAL", key="wall_us_per_step")
            results["wall_us_per_step_FULL"] = res.figure("steps_FULL", key="wall_us_per_step")
            results["cpu_us_per_step_FULL"] = res.figure("steps_FULL", key="cpu_us_per_step")
            results["raw_commit_us_FULL"] = res.figure("raw_commit_us_FULL").get("raw")
            results["ratio_to_raw_commit_FULL"] = res.figure("ratio_FULL", nd=2)
        if "seq" not in skip:
            results["seq_3step_wf_per_s_NORMAL"] = res.figure("seq", key="wf_per_s")
            results["seq_3step_cpu_ms_per_wf_NORMAL"] = res.figure("seq", nd=3, key="cpu_ms_per_wf")
        if "recovery" not in skip:
            rec: dict[str, Any] = {"recorded_steps": rec_n}
            for fw in fws:
                xs = [x for x in res.samples.get("recovery", {}).get(fw, []) if x]
                if not xs:
                    rec[fw] = None
                    rec.setdefault("why_null", {})[fw] = res.why.get("recovery", {}).get(fw, "not measured")
                    continue
                rec[fw] = {"resume_s": rnd(med([x["resume_s"] for x in xs]), 4)}
                for extra in ("launch_s", "load_steps_s"):
                    if extra in xs[0]:
                        rec[fw][extra] = rnd(med([x[extra] for x in xs]), 4)
                rec[fw]["record_s"] = snapshots[fw]["record_s"]
            results["recovery_10k" if rec_n == 10000 else f"recovery_{rec_n}"] = rec
        if "steps" not in skip or "bytes" not in skip:
            results["bytes_per_step"] = {
                "noop": res.figure("steps_NORMAL", key="bytes_per_step"),
                "payload_1kb": res.figure("payload", key="bytes_per_step"),
            }
        if "cold" not in skip:
            base = med(res.samples.get("python_startup_s", {}).get("python", []))
            cold_out: dict[str, Any] = {
                "python_startup_s": rnd(base, 4),
                "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
            }
            for fw in fws:
                xs = [x for x in res.samples.get("cold_start", {}).get(fw, []) if x]
                if not xs:
                    cold_out[fw] = None
                    cold_out.setdefault("why_null", {})[fw] = res.why.get("cold_start", {}).get(fw, "not measured")
                    continue
                wall = med([x["wall_s"] for x in xs])
                cached = med([x["wall_bytecode_cached_s"] for x in xs])
                cold_out[fw] = {
                    "wall_s": rnd(wall, 4),
                    "beyond_python_s": rnd(None if wall is None or base is None else wall - base, 4),
                    "wall_bytecode_cached_s": rnd(cached, 4),
                    "beyond_python_bytecode_cached_s": rnd(
                        None if cached is None or base is None else cached - base, 4
                    ),
                    **{k: rnd(med([x[k] for x in xs]), 4) for k in ("import_s", "open_s", "run_s")},
                }
            results["cold_start"] = cold_out
        if "agents" not in skip:
            ag: dict[str, Any] = {
                "runs": n_agents,
                "model_ms": opts.model_ms,
                "floor_s": round(10 * opts.model_ms / 1000, 2),
            }
            for mode in ("FULL", "NORMAL"):
                ag[mode] = {}
                for fw in fws:
                    xs = [x for x in res.samples.get(f"agents_{mode}", {}).get(fw, []) if x]
                    if not xs:
                        ag[mode][fw] = None
                        ag[mode].setdefault("why_null", {})[fw] = res.why.get(f"agents_{mode}", {}).get(
                            fw, "not measured"
                        )
                        continue
                    x = xs[0]
                    ag[mode][fw] = {k: (round(v, 2) if isinstance(v, float) else v) for k, v in x.items()}
                    ag[mode][fw]["steps_per_s"] = round(20 * n_agents / x["total_s"], 1)
            results["agents"] = ag
        if "pg" not in skip:
            pg["workflows"] = pg_count
            pg["concurrency_per_worker"] = opts.pg_concurrency
            for fw in fws:
                if fw == "langgraph":
                    pg[fw] = None
                    pg.setdefault("why_null", {})[fw] = (
                        "LangGraph has no worker or queue model: a graph runs in the process that invokes it, "
                        "so there is nothing for K worker processes to drain"
                    )
                    continue
                per_k: dict[str, Any] = {}
                for k in pg_workers:
                    xs = [x for x in res.samples.get(f"pg_{k}", {}).get(fw, []) if x]
                    if not xs:
                        per_k[str(k)] = None
                        per_k.setdefault("why_null", {})[str(k)] = res.why.get(f"pg_{k}", {}).get(fw, "not measured")
                        continue
                    x = xs[0]
                    per_k[str(k)] = {key: (round(v, 3) if isinstance(v, float) else v) for key, v in x.items()}
                if per_k.get("1") and per_k.get(str(max(pg_workers))) and max(pg_workers) > 1:
                    per_k[f"scaling_{max(pg_workers)}_over_1"] = round(
                        per_k[str(max(pg_workers))]["wf_per_s"] / per_k["1"]["wf_per_s"], 2
                    )
                    one_busy = per_k["1"].get("cores_busy")
                    if one_busy:  # the most any number of workers could add on these cores
                        per_k["scaling_bound"] = round((os.cpu_count() or 1) / one_busy, 2)
                pg[fw] = per_k
            results["pg_workers"] = pg
        out["results"] = results

        # -- targets (agentflow, informational) ----------------------------------------------
        def get(*keys: Any) -> Any:
            node: Any = results
            for key in keys:
                if not isinstance(node, dict) or node.get(key) is None:
                    return None
                node = node[key]
            return node

        def check(value: Any, limit: float, at_most: bool) -> bool | None:
            if value is None:
                return None
            return bool(value <= limit) if at_most else bool(value >= limit)

        drain = get("agents", "FULL", "agentflow", "drain_s") if n_agents == 1000 else None
        out["targets"] = TARGETS
        out["pass"] = {
            "agents_1000_FULL_drain_s": check(drain, TARGETS["agents_1000_FULL_drain_s_max"], True),
            "pg_4_workers_over_1": check(
                get("pg_workers", "agentflow", "scaling_4_over_1"), TARGETS["pg_4_workers_over_1_min"], False
            ),
            "seq_3step_wf_per_s": check(
                get("seq_3step_wf_per_s_NORMAL", "agentflow"), TARGETS["seq_3step_wf_per_s_min"], False
            ),
            "cold_start_s": check(get("cold_start", "agentflow", "wall_s"), TARGETS["cold_start_s_max"], True),
            "cpu_us_per_step_NORMAL": check(
                get("cpu_us_per_step_NORMAL", "agentflow"), TARGETS["cpu_us_per_step_NORMAL_max"], True
            ),
        }
        out["samples"] = {
            fig: {fw: _compact(xs) for fw, xs in sorted(per.items(), key=lambda kv: _order(kv[0]))}
            for fig, per in res.samples.items()
        }
        out["machine"]["loadavg_1m_at_end"] = round(os.getloadavg()[0], 2)
        out["bench_wall_s"] = round(time.perf_counter() - t_start, 1)
    finally:
        paths.cleanup()
    text = json.dumps(out, indent=1)
    # keep lists of numbers (samples) on one line
    text = re.sub(r"\[\s+([-0-9.eEnul,\s]+?)\s+\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    print(text)


def _order(fw: str) -> int:
    return FRAMEWORKS.index(fw) if fw in FRAMEWORKS else -1


def _compact(xs: list[Any]) -> Any:
    """A framework's samples: a list of numbers, or {field: [one value per sample]}."""

    def r(v: Any) -> Any:
        return round(v, 4) if isinstance(v, float) else v

    if not any(isinstance(x, dict) for x in xs):
        return [r(x) for x in xs]
    keys = [k for x in xs if isinstance(x, dict) for k in x]
    return {k: [r(x.get(k)) if isinstance(x, dict) else None for x in xs] for k in dict.fromkeys(keys)}


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child_main(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))
    else:
        main()
