"""A real `agentflow serve` for end-to-end tests: a subprocess on a free port and a fresh store.

`Served` serves the NOC copilot (or another app) with the simulated network in a file of its own
(`NOC_DB`), incidents injected at start (`NOC_INCIDENTS`, CS-101 in trouble by default) and the
clock inside the maintenance window (`NOC_CLOCK_START`), so an approved change applies at once.
Operators are made with `agentflow operators add`; `kill()` is a crash (SIGKILL), `stop()` a
shutdown, `restart()` a stop and a start on the same port and files. `api()` calls the server as
an operator (for set-up and cross-checks), `assert_one_apply()` reads the network's ledger.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

import agentflow_noc as noc
from agentflow.testing import assert_eventually

ROOT = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "agentflow.cli"]
NOC_APP = "agentflow_noc.app:app"
INCIDENTS = "CS-101:mis_set_handover"
# Inside the NOC pack's 02:00-06:00 UTC maintenance window: an approved change applies at once.
IN_WINDOW = "2026-01-01T02:30:00+00:00"


def env(**extra: str) -> dict[str, str]:
    """The environment of CLI subprocesses: no inherited agentflow or NOC configuration, no
    model requests, a 200-column terminal; `extra` on top."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("AGENTFLOW_", "NOC_"))}
    return {**clean, "PYTHONPATH": str(ROOT), "COLUMNS": "200", "AGENTFLOW_ALLOW_MODEL_REQUESTS": "0", **extra}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served:
    """`agentflow serve --app <app_ref>` on a free port, its store and network under `tmp`, its
    output appended to `tmp/server.log`. Nothing runs until `start()`."""

    def __init__(
        self, tmp: Path, app_ref: str = NOC_APP, *, incidents: str = INCIDENTS, clock_start: str = IN_WINDOW
    ) -> None:
        tmp.mkdir(parents=True, exist_ok=True)
        self.tmp, self.app_ref, self.incidents, self.clock_start = tmp, app_ref, incidents, clock_start
        self.db = f"sqlite:///{tmp / 'wf.db'}"
        self.net_path = tmp / "net.db"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tokens: dict[str, str] = {}
        #: More environment variables for the server (e.g. AGENTFLOW_METRICS_TOKEN).
        self.env: dict[str, str] = {}
        self.log_path = tmp / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def add_operators(self, roles: dict[str, str], tenant: str = "noc-east") -> None:
        """`agentflow operators add` each name with its role, keeping the tokens in `tokens`
        (the first creates the schema; the others run together)."""

        def add(name: str) -> subprocess.Popen[str]:
            cmd = [*CLI, "operators", "add", name, "--tenant", tenant, "--role", roles[name], "--db", self.db]
            return subprocess.Popen(cmd, cwd=ROOT, env=env(), text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def token(name: str, proc: subprocess.Popen[str]) -> None:
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 0, f"operators add {name}: {err}"
            self.tokens[name] = out.strip()
            assert self.tokens[name].startswith("aft_"), out

        first, *rest = roles
        token(first, add(first))
        for name, proc in [(name, add(name)) for name in rest]:
            token(name, proc)

    def start(self) -> None:
        """Start the server (without waiting for it: see `wait_ready`)."""
        cmd = [*CLI, "serve", "--app", self.app_ref, "--db", self.db, "--port", str(self.port)]
        server_env = env(NOC_DB=str(self.net_path), NOC_INCIDENTS=self.incidents, NOC_CLOCK_START=self.clock_start,
                         **self.env)  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=server_env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        """Poll GET /api/session until it answers 401 (the server is up, nobody signed in)."""

        def answers() -> bool:
            assert self.proc is not None, "the server was not started"
            code = self.proc.poll()
            assert code is None, f"the server exited ({code})"
            try:
                return httpx.get(f"{self.url}/api/session", timeout=2).status_code == 401
            except httpx.TransportError:
                return False

        try:
            assert_eventually(answers, timeout=timeout, interval=0.05, message=f"no answer within {timeout:.0f}s")
        except AssertionError as failed:
            raise AssertionError(f"the server at {self.url}: {failed}; its log:\n{self.log_tail()}") from None

    def kill(self) -> None:
        """SIGKILL: no shutdown of any kind, like a crashed host."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=30)
            self.proc = None

    def stop(self) -> None:
        """Terminate (a clean shutdown), killed if it takes more than 15 s."""
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def restart(self) -> None:
        """Stop, start on the same port and files, wait until it answers."""
        self.stop()
        self.start()
        self.wait_ready()

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def api(self, who: str, method: str, path: str, **kwargs: Any) -> Any:
        """A call as `who` with their bearer token (set-up and cross-checks, not what is tested)."""
        headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        answer = httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kwargs)
        assert answer.is_success, f"{method} {path}: {answer.status_code} {answer.text}"
        return answer.json()

    def start_run(self, who: str, task: str) -> str:
        run_id: str = self.api(who, "POST", "/api/runs", json={"task": task})["id"]
        return run_id

    @property
    def net(self) -> noc.Network:
        """The served network, opened from the test's process (its ledger of effects)."""
        return noc.Network(self.net_path)

    def assert_one_apply(self, site: str = "CS-101") -> None:
        """The network's ledger: the change was pushed exactly once, nothing twice."""
        net = self.net
        applies = net.effects("apply")
        assert [e["site"] for e in applies] == [site], applies
        assert net.duplicate_keys() == []


def terminate(proc: subprocess.Popen[Any]) -> None:
    """Terminate a process (a clean shutdown), killed if it takes more than 15 s."""
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)
