"""Three worker processes racing for the runs of one SQLite file: each step is claimed, executed
and recorded by exactly one of them.

30 runs of the `race` workflow (see `crashapp`: sequential effects, a read, a gather of two effects,
and a child run that parks the parent until any worker has driven the child) are started before
three `agentflow worker --until-idle --concurrency 4` subprocesses are launched on the same file.
No worker dies, so no activity may run twice: the external ledger must hold exactly one execution
per activity step.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack, closing
from pathlib import Path

import crashapp
import pytest

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
RUNS = 30
WORKERS = 3
TIMEOUT = 90.0


def test_three_workers_one_file(tmp_path: Path) -> None:
    """Every run completes with its expected result; no (run, seq) is recorded twice in
    `af_steps` (its primary key is (run_id, seq)) nor executed twice in the ledger; every
    activity step ran exactly once, as its first attempt, under its idempotency key; every
    worker exits 0 once idle; the database passes `PRAGMA integrity_check`."""
    db = tmp_path / "wf.db"
    ledger = tmp_path / "ledger.db"
    crashapp.init_ledger(str(ledger))
    app = crashapp.make_app(f"sqlite:///{db}")
    try:
        race = app.workflow_named("race")
        run_ids = [f"run-{i:02d}" for i in range(RUNS)]
        for i, run_id in enumerate(run_ids):
            assert app.start(race, i, run_id=run_id).created

        env = {k: v for k, v in os.environ.items() if k != "AGENTFLOW_CRASH_AT"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env["AGENTFLOW_DB"] = f"sqlite:///{db}"
        env[crashapp.LEDGER_ENV] = str(ledger)
        cmd = [
            sys.executable,
            "-m",
            "agentflow.cli",
            "worker",
            "--app",
            "crashapp:app",
            "--until-idle",
            "--concurrency",
            "4",
        ]
        procs: list[subprocess.Popen[bytes]] = []
        with ExitStack() as stack:
            for i in range(WORKERS):
                # Output to files, not pipes: a chatty worker cannot block on a full pipe.
                out = stack.enter_context(open(tmp_path / f"worker{i}.log", "wb"))
                procs.append(subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + TIMEOUT
            try:
                for p in procs:
                    p.wait(timeout=max(0.1, deadline - time.monotonic()))
            finally:
                for p in procs:
                    if p.poll() is None:
                        p.kill()
                        p.wait(timeout=10)
        logs = "\n".join((tmp_path / f"worker{i}.log").read_text(errors="replace")[-2000:] for i in range(WORKERS))
        assert [p.returncode for p in procs] == [0] * WORKERS, logs

        # Every run, parent and child, completed; the parents with the expected result.
        runs = {r.run_id: r for r in app.list_runs(limit=1000)}
        children = [f"{run_id}/5" for run_id in run_ids]
        assert sorted(runs) == sorted(run_ids + children)
        assert {r.status for r in runs.values()} == {"completed"}, logs
        for i, run_id in enumerate(run_ids):
            assert app.result_of(app.store.get_run(run_id)) == crashapp.expected_race(i)

        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            pk = sorted((row[5], row[1]) for row in conn.execute("PRAGMA table_info(af_steps)") if row[5])
            assert [name for _, name in pk] == ["run_id", "seq"]
            dup = conn.execute(
                "SELECT run_id, seq, count(*) FROM af_steps GROUP BY run_id, seq HAVING count(*) > 1"
            ).fetchall()
            assert dup == []
            steps = conn.execute("SELECT run_id, seq, kind, name, status FROM af_steps ORDER BY run_id, seq").fetchall()
            # Every worker deregistered on its way out.
            workers = conn.execute("SELECT dead FROM af_workers").fetchall()
        assert workers == [(1,)] * WORKERS

        # Each run's history is exactly the workflow's steps, all completed, numbered 1..n.
        by_run: dict[str, list[tuple[int, str, str]]] = {}
        for run_id, seq, kind, name, status in steps:
            assert status == "completed", (run_id, seq, kind, name, status)
            by_run.setdefault(run_id, []).append((seq, kind, name))
        assert set(by_run) == set(run_ids + children)
        for run_id, shape in by_run.items():
            assert shape == (crashapp.RACE_CHILD_SHAPE if "/" in run_id else crashapp.RACE_SHAPE), run_id

        # The ledger: exactly one execution per activity step, none for anything else.
        rows = crashapp.ledger_rows(str(ledger))
        activity_steps = {(run_id, seq): name for run_id, seq, kind, name, _ in steps if kind == "activity"}
        counts = Counter((r[1], r[2]) for r in rows)
        twice = {k: n for k, n in counts.items() if n != 1}
        assert twice == {}, f"activities executed more than once: {twice}"
        assert set(counts) == set(activity_steps)
        for _, run_id, seq, name, key, attempt, _pid in rows:
            assert name == activity_steps[(run_id, seq)]
            assert key == f"{run_id}:{seq}"
            assert attempt == 1
        # The race happened: the work was shared by more than one process.
        assert len({r[6] for r in rows}) >= 2, "one worker did everything: no race was exercised"
    finally:
        app.close()
