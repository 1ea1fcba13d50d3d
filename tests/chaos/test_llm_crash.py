"""A worker process killed with SIGKILL in the middle of a run of model calls: a new worker
resumes it, recorded responses are never requested again, and the run ends with the result an
uncrashed run gets.

The model is the real `openai` client (`OpenAIChat`) against a local OpenAI-compatible server in
the test process, which counts every request it receives. Model calls are steps of kind "llm"
without an intent record (side_effect=False), so they reach `after_effect` (the response is in
hand, not recorded) and `after_result` (recorded) but never `after_intent`.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import ExitStack, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llmapp
import pytest
from support.openai_server import OpenAIServer, Reply, completion

from agentflow import App
from agentflow.agent import usage

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
WORKER_TIMEOUT = 60.0
SITE = "CS-1042"


def script(body: dict[str, Any]) -> Reply:
    """The server's answers, a function of the conversation only (so every server running this
    script answers a crashed run and an uncrashed one alike): a tool call first, then text."""
    messages = body["messages"]
    n = len(messages)
    if not any(m["role"] == "tool" for m in messages):
        return completion(tool_calls=[("get_kpis", {"site": SITE})], prompt_tokens=10 * n, completion_tokens=9)
    last = messages[-1]
    return completion(
        f"Answer {n}: after {str(last.get('content'))[:40]!r}, cell 3 of {SITE} is the outlier.",
        prompt_tokens=10 * n,
        completion_tokens=5 + n,
    )


def integrity(path: Path) -> list[tuple[Any, ...]]:
    with closing(sqlite3.connect(path)) as conn:
        return conn.execute("PRAGMA integrity_check").fetchall()


@dataclass
class Phase:
    """One worker process: how it ended, the run's steps as it left them, requests so far."""

    returncode: int
    stderr: str
    steps: dict[int, tuple[str, str]]  # seq -> (kind, status)
    requests: int


@dataclass
class Scenario:
    """A workflow store, a server of its own, and the worker processes that ran on them."""

    name: str
    spec: str
    db: Path
    app: App
    server: OpenAIServer
    phases: list[Phase] = field(default_factory=list)

    @property
    def run_id(self) -> str:
        return f"crash-{self.name}"

    def spawn(self, crash: str | None) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if k != "AGENTFLOW_CRASH_AT"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env["AGENTFLOW_DB"] = f"sqlite:///{self.db}"
        env[llmapp.URL_ENV] = self.server.url
        if crash is not None:
            env["AGENTFLOW_CRASH_AT"] = crash
        return subprocess.Popen(
            [sys.executable, "-m", "agentflow.cli", "worker", "--app", "llmapp:app", "--until-idle"],
            cwd=self.db.parent, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip

    def finished(self, proc: subprocess.Popen[str]) -> None:
        _, stderr = proc.communicate(timeout=WORKER_TIMEOUT)
        steps = {s.seq: (s.kind, s.status) for s in self.app.history(self.run_id)}
        self.phases.append(Phase(proc.returncode, stderr[-3000:], steps, self.server.calls))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The workflow run without a crash (in this process), on its own server and run id."""
    db = tmp_path_factory.mktemp("llm-reference") / "wf.db"
    app = llmapp.make_app(f"sqlite:///{db}")
    try:
        with OpenAIServer(respond=script) as server, pytest.MonkeyPatch.context() as mp:
            mp.setenv(llmapp.URL_ENV, server.url)
            result = app.run(app.workflow_named("llm_chaos"), SITE, run_id="reference")
            assert server.calls == llmapp.CALLS
        assert len(result["tool_calls"]) == 1 and len(result["answers"]) == llmapp.CALLS - 1
        yield {
            "result": result,
            "shape": [(s.seq, s.kind, s.name, s.status) for s in app.history("reference")],
            "usage": usage(app, run_id="reference").to_dict(),
            "requests": server.requests,
        }
    finally:
        app.close()


# name -> (crash spec, requests the server must receive in total, llm steps recorded at the kill)
SCENARIOS = {
    # The 3rd response is recorded, then the process dies: nothing is asked twice.
    "after_result": ("after_result:3", 5, 3),
    # The 3rd response arrived but was not recorded: the 3rd request is sent again, once.
    "after_effect": ("after_effect:3", 6, 2),
}


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Scenario]]:
    """Every scenario at once (worker processes start slowly: they run side by side): a worker
    killed at the crash point, then a new worker that resumes the run to its end."""
    with ExitStack() as stack:
        out: dict[str, Scenario] = {}
        for name, (spec, _, _) in SCENARIOS.items():
            db = tmp_path_factory.mktemp(f"llm-{name}") / "wf.db"
            app = llmapp.make_app(f"sqlite:///{db}")
            stack.callback(app.close)
            server = stack.enter_context(OpenAIServer(respond=script))
            out[name] = Scenario(name, spec, db, app, server)
            app.start(app.workflow_named("llm_chaos"), SITE, run_id=out[name].run_id)
        for crash in (True, False):
            procs = {name: sc.spawn(sc.spec if crash else None) for name, sc in out.items()}
            for name, proc in procs.items():
                out[name].finished(proc)
        yield out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_killed_worker_resumes_model_calls(
    name: str, scenarios: dict[str, Scenario], reference: dict[str, Any]
) -> None:
    spec, expected_requests, recorded_at_kill = SCENARIOS[name]
    sc = scenarios[name]
    killed, resumed = sc.phases
    assert killed.returncode == -9, (
        f"the worker with AGENTFLOW_CRASH_AT={spec} exited {killed.returncode} instead of being "
        f"killed at the crash point; stderr:\n{killed.stderr}"
    )
    # The kill came where the crash point says: only llm steps, this many recorded, three sent.
    assert set(killed.steps.values()) <= {("llm", "completed")}, killed.steps
    assert len(killed.steps) == recorded_at_kill, killed.steps
    assert killed.requests == 3
    assert resumed.returncode == 0, resumed.stderr

    run = sc.app.get_run(sc.run_id)
    assert run.status == "completed", run.error
    requests = sc.server.requests
    assert len(requests) == expected_requests, f"{len(requests)} requests for {spec}"
    if name == "after_effect":
        # The unrecorded third request went out again, identical; the others once each.
        assert requests == [*reference["requests"][:3], *reference["requests"][2:]]
    else:
        assert requests == reference["requests"]
    assert sc.app.result_of(sc.app.store.get_run(sc.run_id)) == reference["result"]
    assert [(s.seq, s.kind, s.name, s.status) for s in sc.app.history(sc.run_id)] == reference["shape"]
    # Usage counts recorded calls only: the lost response is not counted twice.
    assert usage(sc.app, run_id=sc.run_id).to_dict() == reference["usage"]
    assert integrity(sc.db) == [("ok",)]
