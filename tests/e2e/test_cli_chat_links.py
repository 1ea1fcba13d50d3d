"""`agentflow operators link | unlink` and the accounts `operators list` shows, each a real
subprocess on a real SQLite file."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from support.served import CLI, ROOT, env

TENANT = "noc-east"


def cli(*args: str, db: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args, "--db", db], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)


def ok(*args: str, db: str) -> str:
    done = cli(*args, db=db)
    assert done.returncode == 0 and "Traceback" not in done.stderr, f"{args}: {done.stderr}"
    return done.stdout


def test_link_list_and_unlink_chat_accounts(tmp_path: Path) -> None:
    """`link` ties a Matrix and a Slack account to bob; linking bob's Matrix account to carol is
    refused with the `unlink` command; `list` (table and --json: a new `accounts` field) shows
    them; `unlink` frees the account; a display name is not an account (exit 2, the fix)."""
    db = f"sqlite:///{tmp_path / 'wf.db'}"
    for name in ("bob", "carol"):
        ok("operators", "add", name, "--tenant", TENANT, "--role", "noc-engineer", db=db)
    said = ok("operators", "link", "bob", "--matrix", "@bob:example.org", "--slack", "U0BOB1", db=db)
    assert "matrix account @bob:example.org linked to operator bob (noc-east)" in said
    taken = cli("operators", "link", "carol", "--matrix", "@bob:example.org", db=db)
    flat = " ".join(taken.stderr.split())
    assert taken.returncode == 2 and "already linked to operator bob" in flat
    assert "agentflow operators unlink --matrix @bob:example.org --tenant noc-east" in flat
    bad = cli("operators", "link", "carol", "--matrix", "Bob Smith", db=db)
    assert bad.returncode == 2 and "not a matrix user id" in " ".join(bad.stderr.split())
    listed = {o["name"]: o for o in json.loads(ok("operators", "list", "--json", db=db))}
    assert listed["bob"]["accounts"] == [{"surface": "matrix", "account": "@bob:example.org"},
                                         {"surface": "slack", "account": "U0BOB1"}]  # fmt: skip
    assert listed["carol"]["accounts"] == [] and listed["bob"]["tokens"]  # the old fields are all there
    assert "@bob:example.org" in ok("operators", "list", db=db)
    assert "unlinked from operator bob" in ok("operators", "unlink", "--matrix", "@bob:example.org", db=db)
    ok("operators", "link", "carol", "--matrix", "@bob:example.org", db=db)
    listed = {o["name"]: o for o in json.loads(ok("operators", "list", "--json", db=db))}
    assert [a["account"] for a in listed["carol"]["accounts"]] == ["@bob:example.org"]
    neither = cli("operators", "unlink", db=db)
    assert neither.returncode == 2 and "--matrix or --slack" in neither.stderr
