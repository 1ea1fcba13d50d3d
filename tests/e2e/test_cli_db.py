"""Which database `agentflow worker | run | serve --app module:app --db URL` uses, each command a
real subprocess: `--db`, else `$AGENTFLOW_DB`, else sqlite:///agentflow.db, and an App whose code
names another database is refused instead of silently ignoring `--db`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentflow.store import EventStore

# {db} is the App's argument: nothing (follow --db / AGENTFLOW_DB) or a URL written in the code.
APP_MODULE = """
from agentflow import Agent, App
from agentflow.llm import LangChainChat
from agentflow.testing import ScriptedChatModel

app = App({db})
app.store  # module-level code that opens the store, as a real app's set-up often does
Agent(name="echo", model=LangChainChat(ScriptedChatModel(responses=["done"])), tools=[]).register(app)
"""


def write_app(where: Path, db: str = "") -> str:
    """A module `echo_app` in `where` whose App is built as `App(<db>)`; its reference."""
    (where / "echo_app.py").write_text(APP_MODULE.format(db=db))
    return "echo_app:app"


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFLOW_")}
    clean.update({"COLUMNS": "200", "PYTHONPATH": str(cwd), **(env or {})})
    return subprocess.run(
        [sys.executable, "-m", "agentflow.cli", *args], cwd=cwd, env=clean, capture_output=True, text=True, timeout=60
    )


def run_ids(path: Path) -> list[str]:
    """The runs recorded in a SQLite file ([] when the file was never created)."""
    if not path.exists():
        return []
    store = EventStore(f"sqlite:///{path}")
    try:
        return [r.id for r in store.list_runs()]
    finally:
        store.close()


def one_line(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize(
    "command",
    [["run", "hi", "--run-id", "r1"], ["worker", "--until-idle"], ["serve", "--port", "9"]],
    ids=lambda c: c[0],
)
def test_db_flag_against_a_url_in_the_code_is_refused(tmp_path: Path, command: list[str]) -> None:
    """An App built with an explicit URL and a different `--db`: exit 2 where the App is built,
    before the module's next line opens its store, naming both databases and the fix; nothing
    is written to either."""
    ref = write_app(tmp_path, db=f'"sqlite:///{tmp_path / "code.db"}"')
    flag = f"sqlite:///{tmp_path / 'flag.db'}"
    out = cli(*command, "--app", ref, "--db", flag, cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    message = one_line(out.stderr)
    assert (
        f"error: echo_app:app: --db is {flag}, but the code passes sqlite:///{tmp_path / 'code.db'} "
        "to App(...) (or Client(...)), so --db would be ignored. Drop the URL from App(...) so the app "
        "follows --db and $AGENTFLOW_DB, or pass that same URL as --db." in message
    ), message
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "flag.db").exists() and not (tmp_path / "code.db").exists()


def test_the_refusal_redacts_passwords(tmp_path: Path) -> None:
    """The URLs in the refusal are shown without their passwords."""
    ref = write_app(tmp_path, db='"postgresql://noc:s3cret@db.example:5432/runs"')
    out = cli("run", "hi", "--app", ref, "--db", "postgresql://noc:hunter2@other.example/runs", cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    message = one_line(out.stderr)
    assert "--db is postgresql://noc:***@other.example/runs" in message
    assert "passes postgresql://noc:***@db.example:5432/runs to App(...)" in message
    assert "s3cret" not in out.stderr and "hunter2" not in out.stderr


def test_the_same_database_spelled_differently_is_accepted(tmp_path: Path) -> None:
    """An App naming `sqlite:///wf.db` (relative) and `--db` naming that file by its absolute
    path are one database: the run proceeds and lands there."""
    ref = write_app(tmp_path, db='"sqlite:///wf.db"')
    out = cli("run", "hi", "--app", ref, "--db", f"sqlite:///{tmp_path / 'wf.db'}", "--run-id", "r1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert run_ids(tmp_path / "wf.db") == ["r1"]


def test_an_app_without_a_url_follows_the_db_flag(tmp_path: Path) -> None:
    """`App()` and `--db`: the run is recorded in the `--db` database, not the default file."""
    ref = write_app(tmp_path)
    out = cli("run", "hi", "--app", ref, "--db", f"sqlite:///{tmp_path / 'flag.db'}", "--run-id", "r1", "--json",
              cwd=tmp_path)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["status"] == "completed"
    assert run_ids(tmp_path / "flag.db") == ["r1"]
    assert not (tmp_path / "agentflow.db").exists()


def test_the_db_flag_wins_over_the_environment(tmp_path: Path) -> None:
    """`AGENTFLOW_DB` names one file and `--db` another: the run lands in the `--db` one; without
    the flag, the environment is followed."""
    ref = write_app(tmp_path)
    env = {"AGENTFLOW_DB": f"sqlite:///{tmp_path / 'env.db'}"}
    flagged = cli("run", "hi", "--app", ref, "--db", f"sqlite:///{tmp_path / 'flag.db'}", "--run-id", "r1",
                  cwd=tmp_path, env=env)  # fmt: skip
    assert flagged.returncode == 0, flagged.stderr
    assert run_ids(tmp_path / "flag.db") == ["r1"] and run_ids(tmp_path / "env.db") == []
    unflagged = cli("run", "hi", "--app", ref, "--run-id", "r2", cwd=tmp_path, env=env)
    assert unflagged.returncode == 0, unflagged.stderr
    assert run_ids(tmp_path / "env.db") == ["r2"] and run_ids(tmp_path / "flag.db") == ["r1"]


def test_the_same_postgresql_database_through_either_driver_name_is_accepted() -> None:
    """`postgresql+psycopg://` and `postgresql://` name the same database: not a mismatch."""
    from agentflow.store import same_database

    assert same_database("postgresql+psycopg://noc@db:5432/runs", "postgresql://noc@db:5432/runs")
    assert not same_database("postgresql://noc@db:5432/runs", "postgresql://noc@db:5432/other")


@pytest.mark.parametrize(
    "command",
    [["worker", "--app", "echo_app:app", "--until-idle"], ["serve", "--app", "echo_app:app", "--port", "9"],
     ["run", "hi", "--app", "echo_app:app"], ["runs", "list"], ["db", "upgrade"]],
    ids=lambda c: c[0] if c[0] != "runs" else "runs-list",
)  # fmt: skip
def test_an_unreachable_database_is_one_clear_line_without_its_password(tmp_path: Path, command: list[str]) -> None:
    """Issue 13 hole 9: a database that does not answer at start is `error: ...unreachable...`
    and exit 75 (busy or unreachable: retry later), not a traceback; the URL's password never
    appears (nor in any other output)."""
    write_app(tmp_path)
    out = cli(*command, "--db", "postgresql://noc:s3cret-pw@127.0.0.1:1/runs", cwd=tmp_path)
    assert out.returncode == 75, out.stdout + out.stderr
    assert "Traceback" not in out.stderr + out.stdout and "s3cret-pw" not in out.stderr + out.stdout
    assert "unreachable" in one_line(out.stderr) and "postgresql://noc:***@127.0.0.1:1/runs" in one_line(out.stderr)


@pytest.mark.backends("postgresql")
def test_db_upgrade_shows_the_database_without_its_password(pg_url: str, tmp_path: Path) -> None:
    """`db upgrade` names the database it migrated with the password masked."""
    scheme, rest = pg_url.split("://", 1)
    user, at_host = rest.split("@", 1)
    with_password = f"{scheme}://{user.split(':')[0]}:hunter2@{at_host}"  # trust auth: the password is not checked
    out = cli("db", "upgrade", "--db", with_password, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "hunter2" not in out.stdout + out.stderr and ":***@" in out.stdout
