"""Fan-out: a parent run starts one child run per cell site and joins their outcomes; each
site's child runs exactly once, also when the worker is killed with SIGKILL mid-sweep."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import fanoutapp
import pytest

import agentflow_noc as noc
from agentflow import App

HERE = Path(__file__).resolve().parent


def check_sweep(app: App, net: noc.Network, run_id: str) -> None:
    """The invariants of a finished sweep over `fanoutapp.SITES`."""
    parent = app.get_run(run_id)
    assert parent.status == "completed", parent
    assert app.result_of(app.store.get_run(run_id)) == {site: "answered" for site in fanoutapp.SITES}
    children = [r for r in app.list_runs(limit=500) if r.parent_id == run_id]
    assert len(children) == len(fanoutapp.SITES)
    assert all(c.status == "completed" and c.workflow == "agent:site-check" for c in children)
    # The children carry the sites in key order: child i was asked about site i.
    by_seq = sorted(children, key=lambda c: int(c.run_id.rsplit("/", 1)[1]))
    for site, child in zip(fanoutapp.SITES, by_seq, strict=True):
        assert site in app.store.get_run(child.run_id).input
    tickets = [e for e in net.effects("ticket_create") if e["idempotency_key"].startswith(f"{run_id}/")]
    assert sorted(e["site"] for e in tickets) == sorted(fanoutapp.SITES)  # one ticket per site
    assert net.duplicate_keys() == []


def test_fan_out_over_20_sites_one_child_per_site(tmp_path: Path) -> None:
    """20 sites, 5 at a time: 20 child runs, each completed with its own site's ticket, joined
    by site in the parent's result; driving the parent again starts no child twice."""
    net = noc.configure(tmp_path / "net.db")
    app = fanoutapp.make_app(f"sqlite:///{tmp_path / 'wf.db'}")
    result = app.run(app.workflow_named("noc.sweep"), fanoutapp.SITES, run_id="sweep")
    assert set(result) == set(fanoutapp.SITES)
    check_sweep(app, net, "sweep")
    again = app.run(app.workflow_named("noc.sweep"), fanoutapp.SITES, run_id="sweep")
    assert again == result
    check_sweep(app, net, "sweep")


def worker(tmp_path: Path, crash: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "AGENTFLOW_CRASH_AT"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env["AGENTFLOW_DB"] = f"sqlite:///{tmp_path / 'wf.db'}"
    env[noc.ENV] = str(tmp_path / "net.db")
    if crash:
        env["AGENTFLOW_CRASH_AT"] = crash
    return subprocess.run(
        [sys.executable, "-m", "agentflow.cli", "worker", "--app", "fanoutapp:app", "--until-idle"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("crash", ["after_intent:9", "after_effect:13", "after_result:130"])
def test_fan_out_survives_a_killed_worker(tmp_path: Path, crash: str) -> None:
    """A worker killed mid-sweep (before, during and after children's ticket effects): the next
    worker finishes the sweep with exactly one child run and one ticket per site."""
    net = noc.configure(tmp_path / "net.db")
    app = fanoutapp.make_app(f"sqlite:///{tmp_path / 'wf.db'}")
    app.start(app.workflow_named("noc.sweep"), fanoutapp.SITES, run_id="sweep")
    killed = worker(tmp_path, crash)
    assert killed.returncode == -9, killed.stderr[-2000:]
    finished = worker(tmp_path, None)
    assert finished.returncode == 0, finished.stderr[-2000:]
    check_sweep(app, net, "sweep")
