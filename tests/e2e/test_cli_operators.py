"""`agentflow operators` (add, list, disable, enable, revoke, rotate, expiry) and what
`agentflow approvals` prints (--json, what happens next, the caller's queue), each a real
subprocess on a real SQLite file, at an 80-column terminal: ids are never cut.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from agentflow import App, WorkflowContext
from agentflow.approvals import ApprovalRequest, Approvals
from agentflow.engine import SystemClock
from agentflow.policy import ApprovalSpec, PolicyDecision

ROOT = Path(__file__).resolve().parents[2]
TENANT = "noc-east"
ARGS = {"site": "CS-101", "param": "hoA3Offset", "value": 2}
RUN = "copilot-1290-a-long-incident-name"  # with its tenant, longer than a column at 80


def env() -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    return {**clean, "COLUMNS": "80", "AGENTFLOW_ALLOW_MODEL_REQUESTS": "0"}


def cli(*args: str, db: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentflow.cli", *args, "--db", db], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=60)  # fmt: skip


def ok(*args: str, db: str) -> str:
    done = cli(*args, db=db)
    assert done.returncode == 0, f"{args}: {done.stderr}"
    assert "Traceback" not in done.stderr
    return done.stdout


def refused(args: tuple[str, ...], code: str, fix: str, *, db: str) -> None:
    done = cli(*args, db=db)
    assert done.returncode == 2, (args, done.stdout, done.stderr)
    flat = " ".join(done.stderr.split())  # the terminal may wrap the message
    assert f"error ({code}):" in flat and fix in flat, flat


def epoch(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_operators_lifecycle_through_the_cli(tmp_path: Path) -> None:
    """`add --expires-in 90d --json` prints the token once, in the JSON with its expiry; `list`
    shows status and expiry; `disable` refuses the operator's token (operator_disabled, with the
    `enable` command) until `enable`; `rotate` prints a new token that lives as long as the old,
    and the old one is refused (token_revoked, with the `rotate` command); `revoke` refuses every
    token; a token past its expiry is refused (token_expired). The token never shows again."""
    db = f"sqlite:///{tmp_path / 'wf.db'}"
    before = time.time()
    added = json.loads(ok("operators", "add", "bob", "--tenant", TENANT, "--role", "noc-engineer",
                          "--expires-in", "90d", "--json", db=db))  # fmt: skip
    bob = added["token"]
    assert bob.startswith("aft_") and added["token_id"] == added["tokens"][0]["id"]
    assert (added["name"], added["tenant"], added["roles"], added["status"]) == ("bob", TENANT, ["noc-engineer"],
                                                                                 "active")  # fmt: skip
    assert before + 90 * 86400 <= epoch(added["expires_at"]) <= time.time() + 90 * 86400
    alice = ok("operators", "add", "alice", "--tenant", TENANT, "--role", "noc-engineer", db=db).strip()
    assert alice.startswith("aft_")
    listed = ok("operators", "list", db=db)
    assert re.search(r"alice .*noc-east.*noc-engineer.*active.*never", listed)
    assert re.search(r"bob .*noc-east.*noc-engineer.*active.*UTC", listed) and "(in 89d 23h)" in listed
    works = ("approvals", "list", "--token")

    ok("operators", "disable", "alice", db=db)
    refused((*works, alice), "operator_disabled", "agentflow operators enable alice --tenant noc-east", db=db)
    assert json.loads(ok("operators", "list", "--json", db=db))[0]["status"] == "disabled"
    ok("operators", "enable", "alice", "--tenant", TENANT, db=db)
    ok(*works, alice, db=db)

    rotated = json.loads(ok("operators", "rotate", "bob", "--json", db=db))
    new = rotated["token"]
    assert new != bob and [t["status"] for t in rotated["tokens"]] == ["revoked", "active"]
    assert abs(epoch(rotated["expires_at"]) - epoch(rotated["tokens"][1]["created_at"]) - 90 * 86400) < 1e-3
    refused((*works, bob), "token_revoked", "agentflow operators rotate bob --tenant noc-east", db=db)
    ok(*works, new, db=db)
    ok("operators", "revoke", "bob", db=db)
    refused((*works, new), "token_revoked", "agentflow operators rotate bob --tenant noc-east", db=db)

    with sqlite3.connect(tmp_path / "wf.db") as conn:  # alice's token ran out a minute ago
        conn.execute("UPDATE af_operator_tokens SET expires_at = ? WHERE tenant = ? AND principal_id = "
                     "(SELECT id FROM af_principals WHERE name = 'alice')", (time.time() - 60, TENANT))  # fmt: skip
    refused((*works, alice), "token_expired", "agentflow operators rotate alice --tenant noc-east", db=db)
    final = {o["name"]: o for o in json.loads(ok("operators", "list", "--json", db=db))}
    assert {n: o["status"] for n, o in final.items()} == {"alice": "expired", "bob": "revoked"}
    assert all("token" not in o and all(set(t) == {"id", "status", "created_at", "expires_at", "revoked_at"}
                                        for t in o["tokens"]) for o in final.values())  # fmt: skip
    assert re.search(r"bob .*revoked │ - ", ok("operators", "list", db=db))
    stored = json.dumps(sqlite3.connect(tmp_path / "wf.db").execute("SELECT * FROM af_operator_tokens").fetchall())
    assert not any(t in stored for t in (alice, bob, new))


def test_bad_operator_input_exits_2_with_the_fix(tmp_path: Path) -> None:
    """A duration or a time that does not parse, an expiry in the past, both expiry options, an
    unknown operator: exit 2, a message that says what to give, no traceback, nothing made."""
    db = f"sqlite:///{tmp_path / 'wf.db'}"
    ok("operators", "add", "bob", "--tenant", TENANT, "--role", "noc-engineer", db=db)
    add = ("operators", "add", "eve", "--tenant", TENANT, "--role", "noc-engineer")
    cases = [((*add, "--expires-in", "9x"), "is not a duration: use e.g. 90d"),
             ((*add, "--expires-at", "next friday"), "is not an ISO-8601 time"),
             ((*add, "--expires-at", "2020-01-01"), "not in the future: give a later time"),
             ((*add, "--expires-in", "1d", "--expires-at", "2099-01-01"), "--expires-in or --expires-at, not both"),
             (("operators", "rotate", "zed"), "no operator 'zed': `agentflow operators list` shows them")]  # fmt: skip
    for args, said in cases:
        done = cli(*args, db=db)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (args, done.stderr)
        assert said in " ".join(done.stderr.replace("│", " ").split()), (args, done.stderr)
    assert [o["name"] for o in json.loads(ok("operators", "list", "--json", db=db))] == ["bob"]


def parked(make_app: Callable[..., App]) -> tuple[App, dict[str, ApprovalRequest]]:
    """A run `RUN` asked for by `req`, with requests: `pair` (quorum 2), `mgr` (noc-manager
    role), `own` (asked for by bob: four-eyes)."""
    app = make_app(clock=SystemClock())

    @app.workflow(name="parked")
    async def wait(ctx: WorkflowContext) -> None:
        await ctx.wait_signal("never")

    app.start(wait, run_id=RUN, tenant=TENANT, meta={"requested_by": "req"})

    def stage(call_id: str, spec: ApprovalSpec, by: str = "req") -> ApprovalRequest:
        decision = PolicyDecision(effect="require_approval", rule="change-approval", approval_rule="change-approval",
                                  approval=spec, pack="noc", pack_hash="0" * 16)  # fmt: skip
        return Approvals.of(app).request(run_id=f"{TENANT}:{RUN}", call_id=call_id, tenant=TENANT, requested_by=by,
                                         tool="apply_change", args=dict(ARGS), decision=decision)  # fmt: skip

    return app, {
        "pair": stage("c1", ApprovalSpec(roles=["noc-engineer"], quorum=2, expires_in=3 * 3600 + 12 * 60 + 30)),
        "mgr": stage("c2", ApprovalSpec(roles=["noc-manager"])),
        "own": stage("c3", ApprovalSpec(roles=["noc-engineer"]), by="bob"),
    }


def test_approvals_at_80_columns_json_and_what_happens_next(tmp_path: Path, make_app: Callable[..., App],
                                                          db_url: str) -> None:  # fmt: skip
    """At 80 columns `approvals list` prints every approval id and the run id whole; `--token`
    lists only what the caller may decide and counts the rest, `--all` marks them (your request,
    not your role); `show` has the expiry with the time left; `--json` decodes args, names
    `approval_id` and `run_id`, prints ISO times; `approve` says how many more approvals are
    needed, then that the run is runnable again and which command starts a worker."""
    app, reqs = parked(make_app)
    bob = Approvals.of(app).add_operator("bob", tenant=TENANT, roles=["noc-engineer"])[1]
    alice = Approvals.of(app).add_operator("alice", tenant=TENANT, roles=["noc-engineer"])[1]

    everything = ok("approvals", "list", db=db_url)
    assert all(r.id in everything for r in reqs.values()) and f"run {TENANT}:{RUN}\n" in everything
    assert max(len(line) for line in everything.splitlines()) <= 80
    mine = cli("approvals", "list", "--token", bob, db=db_url)
    assert mine.returncode == 0 and reqs["pair"].id in mine.stdout
    assert reqs["mgr"].id not in mine.stdout and reqs["own"].id not in mine.stdout
    assert "2 more open you cannot decide" in " ".join(mine.stderr.split())
    marked = ok("approvals", "list", "--token", bob, "--all", db=db_url)
    for key, you in (("pair", "can decide"), ("mgr", "not your role"), ("own", "your request")):
        assert re.search(rf"{reqs[key].id} .*{you}", marked), marked
    as_json = {r["approval_id"]: r for r in json.loads(ok("approvals", "list", "--token", bob, "--all", "--json",
                                                          db=db_url))}  # fmt: skip
    assert as_json[reqs["own"].id]["can_decide"] is False and "four-eyes" in as_json[reqs["own"].id]["why_not"]
    pair = as_json[reqs["pair"].id]
    assert (pair["run_id"], pair["args"], pair["quorum"], pair["can_decide"]) == (f"{TENANT}:{RUN}", ARGS, 2, True)
    assert abs(epoch(pair["expires_at"]) - (reqs["pair"].expires_at or 0)) < 1e-3 and pair["created_at"].endswith("Z")

    shown = ok("approvals", "show", reqs["pair"].id, db=db_url)
    assert re.search(r"expires +\d{4}-\d\d-\d\d \d\d:\d\d UTC \(in 3h 1[12]m\)", shown), shown
    assert reqs["pair"].args_hash in shown  # whole, on one line
    detail = json.loads(ok("approvals", "show", reqs["pair"].id, "--json", db=db_url))
    assert detail["audit"][0]["action"] == "requested" and detail["audit"][0]["at"].endswith("Z")

    first = ok("approvals", "approve", reqs["pair"].id, "--token", bob, db=db_url)
    assert f"{reqs['pair'].id}: pending (1/2 approvals)" in first
    assert f"needs 1 more approval (by noc-engineer, not the requester) before run {TENANT}:{RUN} goes on" in first
    second = json.loads(ok("approvals", "approve", reqs["pair"].id, "--token", alice, "--json", db=db_url))
    assert (second["status"], second["approvals"], [v["principal"] for v in second["votes"]]) == (
        "approved", 2, ["bob", "alice"])  # fmt: skip
    assert second["next"].startswith(f"approved: run {TENANT}:{RUN} is runnable again; no live worker serves parked")
    assert f"`agentflow worker --app MODULE:APP --db {db_url}`" in second["next"]
    rejected = ok("approvals", "reject", reqs["own"].id, "--token", alice, "--comment", "not tonight", db=db_url)
    assert "goes on without the call (the agent is told why)" in rejected and "agentflow worker" in rejected


def test_policy_check_json(tmp_path: Path) -> None:
    """`policy check --json` prints the pack as loaded (rules, defaults, durations in seconds)
    with its version hash; a broken pack exits 2 with nothing on stdout."""
    from agentflow.policy import load_pack

    done = subprocess.run([sys.executable, "-m", "agentflow.cli", "policy", "check", "policies/noc.yaml", "--json"],
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    data: dict[str, Any] = json.loads(done.stdout)
    pack = load_pack(ROOT / "policies" / "noc.yaml")
    assert (data["name"], data["version_hash"], len(data["rules"])) == ("noc", pack.version_hash, len(pack.rules))
    assert data["rules"][0]["id"] == pack.rules[0].id
    broken = tmp_path / "broken.yaml"
    broken.write_text("schema_version: 1\nname: x\nrules: [{id: a, effect: nope}]\n")
    bad = subprocess.run([sys.executable, "-m", "agentflow.cli", "policy", "check", str(broken), "--json"],
                         cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and bad.stdout == "" and "effect" in bad.stderr
