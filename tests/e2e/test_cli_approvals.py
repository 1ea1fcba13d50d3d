"""`agentflow operators`, `agentflow approvals` and `agentflow policy check`, each a real subprocess.

Commands that do not depend on each other run at the same time (one SQLite file, several
processes: what the store supports) to keep the suite quick.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from agentflow import App, WorkflowContext
from agentflow.approvals import ApprovalRequest, Approvals
from agentflow.engine import SystemClock
from agentflow.policy import ApprovalSpec, PolicyDecision, load_pack

ROOT = Path(__file__).resolve().parents[2]
TENANT = "noc-east"
ARGS = {"site": "CS-101", "param": "hoA3Offset", "value": 2}


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    return {**clean, "COLUMNS": "200", "AGENTFLOW_ALLOW_MODEL_REQUESTS": "0"}


def agentflow(*commands: list[str], cwd: Path) -> list[subprocess.CompletedProcess[str]]:
    """Run `agentflow <command>` for each command, all at once; their results in order."""
    procs = [
        subprocess.Popen([sys.executable, "-m", "agentflow.cli", *c], cwd=cwd, env=env(), text=True,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for c in commands
    ]  # fmt: skip
    done = []
    for command, proc in zip(commands, procs, strict=True):
        out, err = proc.communicate(timeout=60)
        done.append(subprocess.CompletedProcess([*command], proc.returncode, out, err))
    return done


def test_policy_check_shows_the_hash_and_names_the_broken_line(tmp_path: Path) -> None:
    """`policy check` of the shipped pack exits 0 and prints its version hash; a broken pack
    exits 2 with `file:line: reason` pointing at the offending field."""
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "schema_version: 1\nname: broken\nrules:\n  - id: change-approval\n    match: {tools: [apply_change]}\n"
        "    effect: require_approval\n    approval:\n      roles: [noc-engineer]\n      quorum: 0\n"
    )
    good, bad = agentflow(["policy", "check", "policies/noc.yaml"], ["policy", "check", str(broken)], cwd=ROOT)
    assert good.returncode == 0, good.stderr
    pack = load_pack(ROOT / "policies" / "noc.yaml")
    assert f"pack 'noc', version {pack.version_hash}, {len(pack.rules)} rules" in good.stdout
    assert "config-change-a" in good.stdout
    assert bad.returncode == 2 and bad.stdout == ""
    assert f"{broken}:9: rules.0.approval.quorum: Input should be greater than or equal to 1" in bad.stderr


def staged_requests(make_app: Callable[..., App]) -> tuple[App, ApprovalRequest, ApprovalRequest]:
    """A run asked for by `req` with two staged calls: c1 (quorum 2, `value` editable), c2."""
    app = make_app(clock=SystemClock())  # the CLI decides on the real clock: expiries are real

    @app.workflow(name="parked")
    async def parked(ctx: WorkflowContext) -> None:
        await ctx.wait_signal("never")

    app.start(parked, run_id="inc-1", tenant=TENANT, meta={"requested_by": "req"})

    def stage(call_id: str, spec: ApprovalSpec) -> ApprovalRequest:
        decision = PolicyDecision(effect="require_approval", rule="change-approval", approval_rule="change-approval",
                                  approval=spec, pack="noc", pack_hash="0" * 16)  # fmt: skip
        return Approvals.of(app).request(run_id=f"{TENANT}:inc-1", call_id=call_id, tenant=TENANT, requested_by="req",
                                     tool="apply_change", args=dict(ARGS), decision=decision)  # fmt: skip

    c1 = stage("c1", ApprovalSpec(roles=["noc-engineer"], quorum=2, editable_args=["value"]))
    c2 = stage("c2", ApprovalSpec(roles=["noc-engineer"]))
    return app, c1, c2


def test_operators_and_approvals_through_the_cli(tmp_path: Path, make_app: Callable[..., App], db_url: str) -> None:
    """`operators add` prints the new token on stdout, once, and nowhere else; with it the
    operator lists the requests they may decide, shows one (arguments, hash, rule, quorum) and
    approves it with an edit (`--set value=5`: a new revision, one approval of two); a second
    operator completes the quorum bound to the edited hash, and rejects the other request with a
    comment. A bad token exits 2 naming the error code and changes nothing."""
    app, c1, c2 = staged_requests(make_app)
    bob = Approvals.of(app).add_operator("bob", tenant=TENANT, roles=["noc-engineer"])[1]
    db = ["--db", db_url]
    added, shown, forged = agentflow(
        ["operators", "add", "alice", "--tenant", TENANT, "--role", "noc-engineer", *db],
        ["approvals", "show", c1.id, *db],
        ["approvals", "approve", c1.id, "--token", "aft_forged", "--comment", "trust me", *db],
        cwd=tmp_path,
    )
    assert added.returncode == 0, added.stderr
    alice = added.stdout.strip()
    assert added.stdout == alice + "\n" and alice.startswith("aft_")
    assert alice not in added.stderr and "shown once" in added.stderr
    assert Approvals.of(app).authenticate(alice).name == "alice"
    assert shown.returncode == 0, shown.stderr
    for fact in (c1.id, c1.args_hash, json.dumps(ARGS), "change-approval", "2 of roles ['noc-engineer'], four-eyes"):
        assert fact in shown.stdout
    assert forged.returncode == 2 and "error (bad_token)" in forged.stderr
    assert Approvals.of(app).get(c1.id).votes == []

    listed, edited = agentflow(
        ["approvals", "list", "--token", alice, "--json", *db],
        ["approvals", "approve", c1.id, "--token", alice, "--set", "value=5", "--comment", "smaller step", *db],
        cwd=tmp_path,
    )
    assert listed.returncode == 0, listed.stderr
    assert sorted(r["approval_id"] for r in json.loads(listed.stdout)) == sorted([c1.id, c2.id])
    assert alice not in listed.stdout
    assert edited.returncode == 0, edited.stderr
    assert f"{c1.id}: pending (1/2 approvals)" in edited.stdout
    now = Approvals.of(app).get(c1.id)
    assert (now.args, now.revision, now.status) == ({**ARGS, "value": 5}, 2, "pending")
    assert [(v.principal, v.comment, v.revision) for v in now.votes] == [("alice", "smaller step", 2)]

    approved, rejected = agentflow(
        ["approvals", "approve", c1.id, "--token", bob, "--seen-hash", now.args_hash, *db],
        ["approvals", "reject", c2.id, "--token", bob, "--comment", "not tonight", *db],
        cwd=tmp_path,
    )
    assert approved.returncode == 0, approved.stderr
    assert f"{c1.id}: approved (2/2 approvals)" in approved.stdout
    assert rejected.returncode == 0 and f"{c2.id}: rejected" in rejected.stdout, rejected.stderr
    final = Approvals.of(app).get(c1.id)
    assert (final.status, final.args["value"], final.approvals) == ("approved", 5, 2)
    assert [(v.principal, v.decision, v.comment) for v in Approvals.of(app).get(c2.id).votes] == [
        ("bob", "reject", "not tonight")
    ]
    woken = app.store.backend.query("SELECT name FROM af_signals WHERE run_id = 'noc-east:inc-1'")
    assert sorted(woken) == sorted([(f"approval:{c1.id}",), (f"approval:{c2.id}",)])


def test_the_cli_decides_on_the_clock_of_the_stores_workers(tmp_path: Path) -> None:
    """Issue 13 hole 5: a served app whose clock is shifted (a demo inside tonight's maintenance
    window, 30 days back) has its workers record that clock in the store; `agentflow approvals
    approve` (no App, only --db) then decides on the same time. Before, the CLI used the system
    clock and answered `expired` for a request the API approved a second later."""
    import asyncio

    from agentflow import Client

    db = f"sqlite:///{tmp_path / 'wf.db'}"
    shifted = SystemClock(offset=-30 * 86400)
    app = App(db, clock=shifted)

    @app.workflow(name="waits")
    async def waits(ctx: WorkflowContext) -> str:
        return str(await ctx.wait_signal("never"))

    app.start(waits, run_id="r", tenant=TENANT)
    key = f"{TENANT}:r"  # the store's key of run "r" of TENANT
    asyncio.run(app.worker(root_id=key).run_until_blocked(key))  # a worker ran: its clock is recorded
    approvals = Approvals.of(app)
    _, token = approvals.add_operator("bob", tenant=TENANT, roles=["noc-engineer"])
    decision = PolicyDecision(effect="require_approval", rule="r", approval=ApprovalSpec(roles=["noc-engineer"],
                              expires_in=3600), approval_rule="r")  # fmt: skip
    req = approvals.request(run_id=key, call_id="c", tenant=TENANT, requested_by="alice", tool="apply_change",
                            args=ARGS, decision=decision)  # fmt: skip
    app.close()
    with Client(db) as client:
        assert abs(client.clock.now() - shifted.now()) < 5  # the recorded clock, not the system's
    (approved,) = agentflow(["approvals", "approve", req.id, "--token", token, "--db", db], cwd=tmp_path)
    assert approved.returncode == 0, approved.stderr
    assert f"{req.id}: approved" in approved.stdout
