"""`agentflow doctor`, a real subprocess on a real database: exit 0 on a healthy store; exit 1
naming (by full id) a run left `running` by a SIGKILLed worker, an approval request past its
expiry on the app's clock, a run of a workflow no worker registered, and a schema behind this
agentflow's, each with the command that fixes it; exit 2, and no file created, for a database
that does not exist. A look changes nothing: a schema that is behind stays behind."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import create_engine
from support.pg import sqlalchemy_url

from agentflow import App, Client, WorkflowContext, current_activity
from agentflow.approvals import Approvals, approval_signal_name
from agentflow.engine import SystemClock
from agentflow.engine._client import CLOCK_OFFSET
from agentflow.policy import ApprovalSpec, PolicyDecision
from agentflow.store import EventStore
from agentflow.store._constants import VERSION_TABLE
from agentflow.store._schema import alembic_config
from agentflow.testing import assert_eventually

# A worker's app whose one activity hangs once it has said so (the worker is killed there).
HANG_APP = """
import pathlib
import time

from agentflow import App, WorkflowContext

app = App(lease_ttl=2.0)


@app.activity(side_effect=False)
def hang(marker: str) -> str:
    pathlib.Path(marker).write_text("started")
    time.sleep(600)
    return "never"


@app.workflow(name="hangs")
async def hangs(ctx: WorkflowContext, marker: str) -> str:
    return await ctx.run(hang, marker)
"""


def doctor(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    clean.update({"COLUMNS": "200", "PYTHONPATH": str(cwd)})
    return subprocess.run(
        [sys.executable, "-m", "agentflow.cli", "doctor", *args], cwd=cwd, env=clean, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


def as_json(db_url: str, cwd: Path, *more: str) -> tuple[int, dict[str, Any]]:
    out = doctor("--db", db_url, "--json", *more, cwd=cwd)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


def one(found: dict[str, Any], **match: Any) -> dict[str, Any]:
    """The one finding with these fields."""
    hits = [f for f in found["findings"] if all(f[k] == v for k, v in match.items())]
    assert len(hits) == 1, (match, found["findings"])
    return hits[0]


def quick_app(db_url: str) -> App:
    app = App(db_url)

    @app.workflow(name="quick")
    async def quick(ctx: WorkflowContext) -> str:
        return "ok"

    return app


@pytest.mark.backends("sqlite", "postgresql")
def test_a_healthy_store_exits_0(db_url: str, tmp_path: Path) -> None:
    """Finished runs and a stopped worker are no problem: exit 0, `healthy`, and the JSON says
    the same with the schema current and no findings."""
    app = quick_app(db_url)
    try:
        assert app.run(app.workflow_named("quick"), run_id="done-1") == "ok"
    finally:
        app.close()
    out = doctor("--db", db_url, cwd=tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "healthy" in out.stdout
    code, found = as_json(db_url, tmp_path)
    assert code == 0 and found["healthy"] is True and found["findings"] == []
    assert found["schema"]["status"] == "current" and found["workers"] == {"live": 0, "seen": 1,
                                                                          "seen_within_s": 86400.0}  # fmt: skip
    datetime.fromisoformat(found["now"])


@pytest.mark.slow
@pytest.mark.backends("sqlite", "postgresql")
def test_a_run_left_running_by_a_killed_worker_is_reported(db_url: str, tmp_path: Path) -> None:
    """A worker SIGKILLed inside an activity leaves its run `running`: doctor names the run by
    its full id as `lease_expired` (its worker is dead, no live worker serves the workflow), says
    how long it has been stuck, and gives the worker command with the same `--db`; exit 1."""
    (tmp_path / "hangapp.py").write_text(HANG_APP)
    marker = tmp_path / "started"
    run_id = "stuck-run-with-a-rather-long-id-0123456789abcdef"
    client = Client(db_url)
    worker = None
    try:
        client.start("hangs", str(marker), run_id=run_id)
        clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
        worker = subprocess.Popen([sys.executable, "-m", "agentflow.cli", "worker", "--app", "hangapp:app", "--db",
                                   db_url], cwd=tmp_path, env={**clean, "PYTHONPATH": str(tmp_path)})  # fmt: skip
        assert_eventually(marker.exists, timeout=60, message="the worker never started the activity")
        assert client.get(run_id).status == "running"
        worker.kill()
        worker.wait(timeout=30)

        out = doctor("--db", db_url, cwd=tmp_path)
        assert out.returncode == 1, out.stdout + out.stderr
        assert f"lease_expired  run {run_id} tenant default workflow hangs" in out.stdout
        assert "is dead" in out.stdout and "stuck for" in out.stdout
        assert f"fix: agentflow worker --app MODULE:APP --db {db_url}" in out.stdout

        code, found = as_json(db_url, tmp_path)
        assert code == 1 and found["healthy"] is False and found["errors"] == 1
        stuck = one(found, run_id=run_id)
        assert stuck["kind"] == "lease_expired" and stuck["severity"] == "error" and stuck["workflow"] == "hangs"
        assert stuck["fix"] == f"agentflow worker --app MODULE:APP --db {db_url}" and stuck["for_s"] >= 0
        assert set(stuck) == {"kind", "severity", "run_id", "approval_id", "tenant", "workflow", "since", "for_s",
                              "run_ids", "message", "fix"}  # fmt: skip
        datetime.fromisoformat(stuck["since"])
        assert found["workers"]["live"] == 0 and found["schema"] == {"revision": found["schema"]["head"],
                                                                     "head": found["schema"]["head"],
                                                                     "status": "current"}  # fmt: skip
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
        client.close()


def gated_app(db_url: str) -> App:
    """A workflow that stages one call for approval (expiring in an hour) and waits on it."""
    app = App(db_url, clock=SystemClock())

    @app.activity(side_effect=False)
    def stage() -> str:
        info = current_activity()
        decision = PolicyDecision(effect="require_approval", rule="change", approval_rule="change",
                                  approval=ApprovalSpec(roles=["*"], expires_in=3600), pack="t", pack_hash="0" * 16)  # fmt: skip
        return Approvals.of(info.app).request(run_id=info.run_id, call_id="c1", tenant=info.tenant, requested_by="req",
                                              tool="apply_change", args={"site": "CS-101"}, decision=decision).id  # fmt: skip

    @app.workflow(name="gated")
    async def gated(ctx: WorkflowContext) -> None:
        approval_id = await ctx.run(stage)
        await ctx.wait_signal(approval_signal_name(approval_id), timeout=3600)

    return app


@pytest.mark.backends("sqlite", "postgresql")
def test_an_expired_pending_approval_is_reported_on_the_apps_clock(db_url: str, tmp_path: Path) -> None:
    """A run parked on a request that expires in an hour is healthy. Once the app's clock (the
    offset its workers declared in the store) is two hours on, the request is past its expiry
    while still pending: doctor names it and its run, says the run still waits on it, and the
    fix is a worker (which wakes the run and expires the request); `--tenant` keeps it to its
    tenant."""
    app = gated_app(db_url)
    try:
        handle = app.start(app.workflow_named("gated"), run_id="inc-1", tenant="noc-east")
        asyncio.run(app.worker().run_until_blocked(handle.run_id, until_signal_wait=True))
        (request,) = Approvals.of(app).list(tenant="noc-east")
        assert doctor("--db", db_url, cwd=tmp_path).returncode == 0

        app.store.set_setting(CLOCK_OFFSET, "7200.0", app.clock.now())  # the app's clock is 2 h on
    finally:
        app.close()
    out = doctor("--db", db_url, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"approval_expired  run {handle.run_id} approval {request.id} tenant noc-east" in out.stdout
    assert "its run still waits on it" in out.stdout

    code, found = as_json(db_url, tmp_path, "--tenant", "noc-east")
    assert code == 1 and found["tenant"] == "noc-east"
    expired = one(found, kind="approval_expired")
    assert expired["approval_id"] == request.id and expired["run_id"] == handle.run_id
    assert expired["severity"] == "error" and expired["fix"].startswith("agentflow worker --app MODULE:APP")
    assert 3500 < expired["for_s"] < 3700  # it expired an hour ago on the app's clock
    # Its run's wake-up (the request's timeout) is due too, and no worker is live.
    assert one(found, kind="no_worker")["run_id"] == handle.run_id
    code, west = as_json(db_url, tmp_path, "--tenant", "noc-west")
    assert code == 0 and west["tenant"] == "noc-west" and west["findings"] == []


def test_a_run_of_a_workflow_no_worker_registered_is_reported(tmp_path: Path) -> None:
    """A worker that registered `quick` was seen lately; a run of `ghost` is pending: nothing can
    drive or replay it. Doctor names the run, its workflow and what the workers serve; exit 1."""
    db_url = f"sqlite:///{tmp_path / 'wf.db'}"
    app = quick_app(db_url)
    try:
        app.run(app.workflow_named("quick"), run_id="done-1")
        key = app.client.start("ghost", run_id="g-1", tenant="noc-east").run_id
    finally:
        app.close()
    out = doctor("--db", db_url, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert f"unregistered_workflow  run {key} tenant noc-east workflow ghost" in out.stdout
    assert "(they serve: quick)" in out.stdout and "registers 'ghost'" in out.stdout
    code, found = as_json(db_url, tmp_path)
    assert code == 1 and [f["kind"] for f in found["findings"]] == ["unregistered_workflow"]


def test_live_workers_on_different_code_of_a_workflow_are_a_warning(tmp_path: Path) -> None:
    """Two live workers registered `fix` with different code (a rolling deploy half done) while
    a run of `fix` is unfinished: a `code_mismatch` warning naming both versions and the run.
    The fingerprint is of the compiled code: the same function gives the same one, another body
    another one."""

    async def v1(ctx: WorkflowContext) -> str:
        return "one"

    async def v2(ctx: WorkflowContext) -> str:
        return "two"

    one_app, two_app = App(f"sqlite:///{tmp_path / 'a.db'}"), App(f"sqlite:///{tmp_path / 'b.db'}")
    first, again, second = (one_app.workflow(name="fix")(v1), two_app.workflow(name="fix")(v1),
                            App(f"sqlite:///{tmp_path / 'c.db'}").workflow(name="fix")(v2))  # fmt: skip
    assert first.fingerprint == again.fingerprint != second.fingerprint

    db_url = f"sqlite:///{tmp_path / 'wf.db'}"
    store = EventStore(db_url)
    try:
        # Registered from this (live) process, as each worker registers itself when it starts.
        store.register_worker("w-old", workflows={"fix": first.fingerprint}, lease_ttl=60.0)
        store.register_worker("w-new", workflows={"fix": second.fingerprint}, lease_ttl=60.0)
        store.create_run(run_id="fix-1", workflow="fix", tenant="default", input="[[],{}]", now=1.0)
    finally:
        store.close()
    code, found = as_json(db_url, tmp_path)
    assert code == 1 and found["workers"]["live"] == 2
    (mixed,) = found["findings"]  # the run itself is served: nothing else is wrong
    assert mixed["kind"] == "code_mismatch" and mixed["severity"] == "warning" and mixed["run_ids"] == ["fix-1"]
    assert f"{first.fingerprint} on w-old" in mixed["message"] and f"{second.fingerprint} on w-new" in mixed["message"]


@pytest.mark.backends("sqlite", "postgresql")
def test_a_schema_behind_is_reported_and_left_as_it_is(empty_db_url: str, tmp_path: Path) -> None:
    """A database at revision 0006 (before workers said what they serve): doctor reports
    `schema_behind` with `agentflow db upgrade`, still checks what that schema has (a pending
    run with no worker), and migrates nothing; after `db upgrade` the schema finding is gone."""
    alembic_url = sqlalchemy_url(empty_db_url) if empty_db_url.startswith("postgresql") else empty_db_url
    engine = create_engine(alembic_url)
    try:
        with engine.begin() as conn:
            command.upgrade(alembic_config(alembic_url, conn), "0006")
    finally:
        engine.dispose()
    old = EventStore(empty_db_url, migrate=False)
    try:
        old.create_run(run_id="waits-1", workflow="wf", tenant="default", input="[[],{}]", now=1.0)
    finally:
        old.close()

    out = doctor("--db", empty_db_url, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "schema 0006 (behind)" in out.stdout and "schema_behind" in out.stdout
    assert f"fix: agentflow db upgrade --db {empty_db_url}" in out.stdout
    code, found = as_json(empty_db_url, tmp_path)
    assert code == 1 and found["complete"] is False
    assert found["schema"]["revision"] == "0006" and found["schema"]["status"] == "behind"
    assert one(found, kind="schema_behind")["fix"] == f"agentflow db upgrade --db {empty_db_url}"
    assert one(found, kind="no_worker")["run_id"] == "waits-1"
    check = EventStore(empty_db_url, migrate=False)
    try:
        assert check.backend.schema_revision() == "0006"  # looking did not migrate
    finally:
        check.close()

    upgraded = subprocess.run([sys.executable, "-m", "agentflow.cli", "db", "upgrade", "--db", empty_db_url],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stderr
    code, found = as_json(empty_db_url, tmp_path)
    assert (
        code == 1 and found["schema"]["status"] == "current" and [f["kind"] for f in found["findings"]] == ["no_worker"]
    )


def test_a_schema_from_a_newer_agentflow_is_reported_not_refused(tmp_path: Path) -> None:
    """A database another agentflow upgraded past this one's head: doctor does not fail on it
    (as opening the store would); it says so, checks nothing else, and says how to fix it."""
    db_url = f"sqlite:///{tmp_path / 'wf.db'}"
    store = EventStore(db_url)
    store.backend.write([(f"UPDATE {VERSION_TABLE} SET version_num = '9999'", (), False)])
    store.close()
    out = doctor("--db", db_url, cwd=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "schema 9999 (newer)" in out.stdout and "fix: pip install -U agentflow" in out.stdout
    code, found = as_json(db_url, tmp_path)
    assert code == 1 and [f["kind"] for f in found["findings"]] == ["schema_newer"] and found["complete"] is False


def test_a_database_that_does_not_exist_is_exit_2_and_not_created(tmp_path: Path) -> None:
    """`--db sqlite:///typo.db`: one error line saying the database does not exist, exit 2, and
    no file is created by looking (the JSON mode too)."""
    for extra in ((), ("--json",)):
        out = doctor("--db", f"sqlite:///{tmp_path / 'typo.db'}", *extra, cwd=tmp_path)
        assert out.returncode == 2, out.stdout + out.stderr
        assert out.stdout == "" and "Traceback" not in out.stderr
        assert "does not exist" in " ".join(out.stderr.split())
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_unreachable_database_is_one_line_without_its_password(tmp_path: Path) -> None:
    """As for every command: exit 75 (busy or unreachable: retry later), `unreachable`, the
    password masked, no traceback."""
    out = doctor("--db", "postgresql://noc:s3cret-pw@127.0.0.1:1/runs", cwd=tmp_path)
    assert out.returncode == 75, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and "s3cret-pw" not in out.stdout + out.stderr
    assert "unreachable" in out.stderr and "postgresql://noc:***@127.0.0.1:1/runs" in " ".join(out.stderr.split())
