"""A CLI that never surprises, each command a real subprocess: exit codes that tell how a run
stands (`agentflow/cli/_exit.py`) for `run`, `demo`, `runs show --wait` and `runs watch` (driven
by a real worker process); read commands that never create a database; a PostgreSQL database or
user the server refuses is a configuration error (2), not "busy" (75); ids never cut at 80
columns; `--json` in the one schema (`agentflow/cli/_json.py`)."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from support.pg import admin_url, unavailable

APP_MODULE = textwrap.dedent(
    '''
    from typing import Any

    import agentflow.llm as llm
    from agentflow import Agent, App
    from agentflow.llm import LangChainChat
    from agentflow.testing import ScriptedChatModel

    app = App()  # the store: AGENTFLOW_DB, set by --db


    @llm.tool(side_effect="none", target="site")
    def get_kpis(site: str) -> dict[str, float]:
        """Read the KPIs of a cell site."""
        return {"drop_rate_pct": 2.9}


    @llm.tool(side_effect="idempotent", target="site")
    def restart_site(site: str) -> dict[str, str]:
        """Restart a cell site (side-effecting: without a policy it needs an operator's approval)."""
        return {"restarted": site}


    class BadRequest(Exception):
        status_code = 400  # not retryable: the run fails at once


    def refuse(messages: Any) -> Any:
        raise BadRequest("the model endpoint refused the request")


    def agent(name: str, responses: list[Any] | None = None, **kwargs: Any) -> None:
        model = ScriptedChatModel(responses=responses or [], respond=None if responses else refuse)
        Agent(name=name, model=LangChainChat(model, name="scripted"), **kwargs).register(app)


    KPIS = {"tool_calls": [{"name": "get_kpis", "args": {"site": "CS-101"}}]}
    RESTART = {"tool_calls": [{"name": "restart_site", "args": {"site": "CS-101"}}]}
    agent("answers", ["CS-101 is fine"], tools=[])
    agent("loops", [KPIS], tools=[get_kpis], max_turns=2)
    agent("fails", tools=[])
    agent("asks", [RESTART, "restarted"], tools=[restart_site])
    '''
)

# agent -> (exit code, a line the output must have)
OUTCOMES = {
    "answers": (0, "outcome: answered"),
    "loops": (4, "outcome: max_turns"),
    "fails": (1, "the model endpoint refused the request"),
    "asks": (5, "waiting for approval apr_"),
}
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    clean.update({"COLUMNS": "200", "PYTHONPATH": str(cwd), "AGENTFLOW_ALLOW_MODEL_REQUESTS": "0", **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "agentflow.cli", *args], cwd=cwd, env=clean, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "exit_app.py").write_text(APP_MODULE)
    return tmp_path


def start(project: Path, db: str, agent: str, run_id: str, *more: str) -> subprocess.CompletedProcess[str]:
    return cli("run", "CS-101?", "--app", "exit_app:app", "--agent", agent, "--db", db, "--run-id", run_id, *more,
               cwd=project)  # fmt: skip


@pytest.mark.parametrize("agent", list(OUTCOMES))
def test_run_exits_with_how_the_run_stands(project: Path, agent: str) -> None:
    """`agentflow run` drives the run here and exits 0 answered, 1 failed (the error's type and
    message printed), 4 max_turns, 5 waiting for an approval."""
    code, says = OUTCOMES[agent]
    out = start(project, f"sqlite:///{project / 'wf.db'}", agent, f"r-{agent}")
    assert out.returncode == code, out.stdout + out.stderr
    assert says in out.stdout
    if agent == "fails":
        assert "error: ActivityError:" in one_line(out.stdout)


def test_run_of_a_cancelled_run_exits_3_and_no_wait_exits_0(project: Path) -> None:
    """A run cancelled while it waited for an approval: `agentflow run` attached to it again
    drives the cancellation and exits 3. `--no-wait` exits 0 once the run is recorded."""
    db = f"sqlite:///{project / 'wf.db'}"
    assert start(project, db, "asks", "r1").returncode == 5
    cancelled = cli("runs", "cancel", "r1", "--db", db, "--json", cwd=project)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["cancel_requested"] == 1
    again = start(project, db, "asks", "r1")
    assert again.returncode == 3, again.stdout + again.stderr
    assert "cancelled" in again.stdout
    queued = start(project, db, "answers", "r2", "--no-wait", "--json")
    assert queued.returncode == 0, queued.stderr
    assert json.loads(queued.stdout)["status"] == "pending"


def test_show_wait_and_watch_follow_a_run_driven_by_another_process(project: Path) -> None:
    """`runs show --wait` and `runs watch` follow runs a worker process drives, and exit with
    the table's code: 0, 1, 4, 5, then 3 for a waiting run cancelled; a run nobody drives is 6
    once --timeout passes. `watch` prints each step as recorded."""
    db = f"sqlite:///{project / 'wf.db'}"
    for agent in OUTCOMES:
        assert start(project, db, agent, f"w-{agent}", "--no-wait").returncode == 0
    stuck = cli("runs", "show", "w-answers", "--wait", "--timeout", "0.5", "--db", db, cwd=project)
    assert stuck.returncode == 6, stuck.stdout + stuck.stderr  # no worker yet: still queued
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    env.update({"PYTHONPATH": str(project), "AGENTFLOW_ALLOW_MODEL_REQUESTS": "0"})
    proc = subprocess.Popen(
        [sys.executable, "-m", "agentflow.cli", "worker", "--app", "exit_app:app", "--db", db],
        cwd=project, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for agent, (code, says) in OUTCOMES.items():
            watched = cli("runs", "watch", f"w-{agent}", "--db", db, "--timeout", "60", cwd=project)
            assert watched.returncode == code, (agent, watched.stdout + watched.stderr)
            assert says in watched.stdout
            assert re.search(r"^\s+1 llm\s+scripted (completed|failed)", watched.stdout, re.M), watched.stdout
            waited = cli("runs", "show", f"w-{agent}", "--wait", "--timeout", "60", "--db", db, cwd=project)
            assert waited.returncode == code, (agent, waited.stdout + waited.stderr)
        lines = cli("runs", "watch", "w-loops", "--db", db, "--json", cwd=project).stdout.splitlines()
        events = [json.loads(line) for line in lines]
        assert [e["event"] for e in events][-1] == "run" and events[-1]["output"]["status"] == "max_turns"
        assert {e["kind"] for e in events[:-1]} >= {"llm", "policy", "tool"}
        assert all(ISO.match(e["started_at"]) for e in events[:-1])
        assert cli("runs", "cancel", "w-asks", "--db", db, cwd=project).returncode == 0
        cancelled = cli("runs", "watch", "w-asks", "--db", db, "--timeout", "60", cwd=project)
        assert cancelled.returncode == 3, cancelled.stdout + cancelled.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_demo_against_a_dead_endpoint_fails_with_exit_1_and_recalls_nothing(tmp_path: Path) -> None:
    """The demo on an OpenAI-compatible endpoint that does not answer: the run fails after its
    retries, the demo exits 1 and prints the error; each retry is a failed attempt, not a
    re-called model step (`recalled_model_steps` 0)."""
    env = {"OPENAI_API_KEY": "sk-test", "OPENAI_BASE_URL": "http://127.0.0.1:9/v1"}
    db = f"sqlite:///{tmp_path / 'd.db'}"
    out = cli("demo", "--db", db, "--model", "openai:gpt-4o-mini", "--json", cwd=tmp_path, env=env)
    assert out.returncode == 1, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["status"] == "failed" and summary["error"]["type"] == "ActivityError"
    assert summary["model_calls"] == summary["failed_model_attempts"] == 5
    assert summary["model_steps_recorded"] == 0 and summary["recalled_model_steps"] == 0
    shown = cli("demo", "--db", f"sqlite:///{tmp_path / 'e.db'}", "--model", "openai:gpt-4o-mini", cwd=tmp_path,
                env=env)  # fmt: skip
    assert shown.returncode == 1
    assert "error: ActivityError:" in one_line(shown.stderr) and "cannot reach the endpoint" in shown.stderr


READ_COMMANDS = [
    ["runs", "list"], ["runs", "show", "r1"], ["runs", "show", "r1", "--wait"], ["runs", "history", "r1"],
    ["runs", "usage"], ["runs", "watch", "r1"], ["runs", "cancel", "r1"], ["runs", "signal", "r1", "go"],
    ["approvals", "list"], ["approvals", "show", "apr_1"], ["operators", "list"], ["db", "rotate-key"],
]  # fmt: skip


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_read_commands_never_create_a_database(tmp_path: Path, command: list[str]) -> None:
    """A mistyped `--db sqlite:///typo.db`: a ConfigurationError that says how to create the
    database (exit 2), and no file appears."""
    out = cli(*command, "--db", "sqlite:///typo.db", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    said = one_line(out.stderr)
    assert "ConfigurationError" in said and "does not exist" in said and str(tmp_path / "typo.db") in said
    assert "agentflow db upgrade --db sqlite:///typo.db" in said and "Traceback" not in said
    assert not (tmp_path / "typo.db").exists()


def test_a_file_without_the_schema_is_not_migrated_by_a_look_and_db_upgrade_creates_it(tmp_path: Path) -> None:
    """An existing file with no agentflow schema is refused by a read command (not migrated);
    `db upgrade` (a command that creates) makes the store, and then the look works."""
    sqlite3.connect(tmp_path / "empty.db").close()
    db = f"sqlite:///{tmp_path / 'empty.db'}"
    out = cli("runs", "list", "--db", db, cwd=tmp_path)
    assert out.returncode == 2 and "has no agentflow schema" in one_line(out.stderr)
    with sqlite3.connect(tmp_path / "empty.db") as conn:
        assert conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0
    assert cli("db", "upgrade", "--db", "sqlite:///new.db", cwd=tmp_path).returncode == 0
    listed = cli("runs", "list", "--db", "sqlite:///new.db", "--json", cwd=tmp_path)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_postgresql_refusals_are_configuration_errors_not_busy(tmp_path: Path) -> None:
    """On the real server: a database that does not exist and a user that does not exist are
    ConfigurationErrors naming them and the fix (exit 2); a server that does not answer is
    StoreBusyError, retry later (exit 75)."""
    if reason := unavailable():
        pytest.skip(reason)
    parts = urlsplit(admin_url())
    host = f"{parts.hostname}:{parts.port or 5432}"
    no_db = cli("runs", "list", "--db", f"postgresql://{parts.username}@{host}/agentflow_no_such_db", cwd=tmp_path)
    assert no_db.returncode == 2, no_db.stdout + no_db.stderr
    said = one_line(no_db.stderr)
    assert 'ConfigurationError: the PostgreSQL database "agentflow_no_such_db" does not exist' in said
    assert "CREATE DATABASE" in said and "busy" not in said
    no_user = cli("runs", "list", "--db", f"postgresql://agentflow_no_such_user@{host}/{parts.path[1:]}", cwd=tmp_path)
    assert no_user.returncode == 2, no_user.stdout + no_user.stderr
    said = one_line(no_user.stderr)
    assert 'refused user "agentflow_no_such_user"' in said and "CREATE ROLE" in said and "busy" not in said
    down = cli("runs", "list", "--db", f"postgresql://{parts.username}@127.0.0.1:9/x", cwd=tmp_path)
    assert down.returncode == 75 and "StoreBusyError" in down.stderr and "retry later" in one_line(down.stderr)


def test_ids_are_whole_at_80_columns_and_json_is_the_one_schema(project: Path) -> None:
    """At 80 columns a long run id is printed whole on one line (`runs list`, `runs show`), so it
    can be copied; `--json` gives `run_id` (never `id`), decoded objects and ISO-8601 times."""
    db = f"sqlite:///{project / 'wf.db'}"
    long_id = "copilot-incident-2026-01-01-CS-101-drop-rate-" + "x" * 12
    assert start(project, db, "answers", long_id).returncode == 0
    narrow = {"COLUMNS": "80"}
    for command in (["runs", "list"], ["runs", "show", long_id]):
        out = cli(*command, "--db", db, cwd=project, env=narrow)
        assert out.returncode == 0, out.stderr
        assert any(long_id in line for line in out.stdout.splitlines()), out.stdout
        assert max(len(line) for line in out.stdout.splitlines()) <= 80
    (listed,) = json.loads(cli("runs", "list", "--db", db, "--json", cwd=project).stdout)
    shown = json.loads(cli("runs", "show", long_id, "--db", db, "--json", cwd=project).stdout)
    for run in (listed, shown):
        assert run["run_id"] == long_id and "id" not in run
        assert run["input"] == [["CS-101?"], {}] and run["output"]["status"] == "answered"
        assert run["meta"] == {"agent": "answers", "requested_by": run["meta"]["requested_by"]}
        assert all(ISO.match(run[k]) for k in ("created_at", "updated_at", "completed_at"))
    history = json.loads(cli("runs", "history", long_id, "--db", db, "--json", cwd=project).stdout)
    assert history["run_id"] == long_id and isinstance(history["steps"][0]["result"], dict)
