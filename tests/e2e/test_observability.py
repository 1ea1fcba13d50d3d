"""What an operator reads of real `agentflow worker` and `agentflow serve` processes: Prometheus
metrics that match what the runs recorded, JSON log lines of a crash and a resume, live spans whose
ids hold across the crash, and readiness probes that fail when the store goes away.

Every process is a real subprocess on a free port (tests/support/served.py); metrics are parsed
with `prometheus_client.parser`, as Prometheus reads them.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import obsapp
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.served import CLI, ROOT, Served, env, free_port

from agentflow.store import StepRecord, run_key
from agentflow.testing import assert_eventually

pytestmark = pytest.mark.slow

APP = "tests.e2e.obsapp:app"
TASK = "check CS-101"
#: Steps that are waits or local records, not executed work: no latency, no span.
NOT_EXECUTED = {"sleep", "signal", "child", "now", "uuid", "random", "patch", "cancel"}


# -- helpers ------------------------------------------------------------------------------------
def scrape(url: str, token: str | None = None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`GET url` (with `token` as a bearer token) parsed as Prometheus reads it:
    {(sample name, sorted labels): value}."""
    answer = httpx.get(url, timeout=10, headers={"Authorization": f"Bearer {token}"} if token else {})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(answer.text)
        for s in family.samples
    }


def values(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, key: str) -> dict[str, float]:
    """{label `key`'s value: sum of the samples of `name`} (other labels summed over)."""
    out: Counter[str] = Counter()
    for (sample, labels), value in samples.items():
        if sample == name:
            out[dict(labels)[key]] += value
    return dict(out)


def executed_kinds(steps: list[StepRecord]) -> Counter[str]:
    return Counter(s.kind for s in steps if s.kind not in NOT_EXECUTED and s.status in ("completed", "failed"))


def recorded_tokens(steps: list[StepRecord]) -> dict[str, int]:
    out: Counter[str] = Counter()
    for s in steps:
        if s.kind == "llm" and s.status == "completed":
            body = json.loads(s.result or "{}")
            out["input"] += body["usage"]["input_tokens"]
            out["output"] += body["usage"]["output_tokens"]
    return dict(out)


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every line of a `--log-format json` log, parsed (a line that is not JSON fails the test)."""
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    parsed = [json.loads(line) for line in lines]
    for record in parsed:
        assert {"ts", "level", "logger", "msg"} <= set(record), record
        assert record["ts"].endswith("Z") and "T" in record["ts"], record
    return parsed


def events(log: list[dict[str, Any]], msg: str, run_id: str | None = None) -> list[dict[str, Any]]:
    return [r for r in log if r["msg"] == msg and (run_id is None or r.get("run_id") == run_id)]


class Worker:
    """`agentflow --log-format json worker` as a subprocess, stderr (logs) and stdout to files."""

    def __init__(self, tmp: Path, name: str, db: str, *args: str, **extra_env: str) -> None:
        self.log, self.out = tmp / f"{name}.log", tmp / f"{name}.out"
        cmd = [*CLI, "--log-format", "json", "worker", "--app", APP, "--db", db, "--poll-interval", "0.02", *args]
        with self.log.open("wb") as err, self.out.open("wb") as out:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env(**extra_env), stdout=out, stderr=err)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def wait_http(url: str, proc: subprocess.Popen[bytes], status: int = 200, timeout: float = 60) -> httpx.Response:
    def answered() -> httpx.Response | None:
        assert proc.poll() is None, f"the process exited ({proc.returncode})"
        try:
            answer = httpx.get(url, timeout=3)
        except httpx.TransportError:
            return None
        return answer if answer.status_code == status else None

    found: httpx.Response = assert_eventually(answered, timeout=timeout, interval=0.05, message=f"{url} != {status}")
    return found


# -- the worker's metrics port ------------------------------------------------------------------
def test_worker_metrics_match_the_recorded_runs(tmp_path: Path) -> None:
    """`agentflow worker --metrics-port`: steps by kind, model tokens and runs by status scraped
    from the worker equal what its runs recorded; /healthz and /readyz answer 200; the JSON log
    has each run's claim and finish."""
    db = f"sqlite:///{tmp_path}/wf.db"
    app, agent = obsapp.build(db)
    port = free_port()
    worker = Worker(tmp_path, "w", db, "--metrics-port", str(port))
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_http(f"{base}/healthz", worker.proc).json() == {"status": "ok"}
        runs = [agent.start(app, TASK, run_id=f"obs-{i}").run_id for i in range(2)]
        runs.append(app.start(app.workflow_named("ticks"), 3, run_id="ticks-1").run_id)
        assert_eventually(lambda: all(app.get_run(r).status == "completed" for r in runs), timeout=60,
                          message="the runs did not complete")  # fmt: skip
        steps = [s for r in runs for s in app.history(r)]
        samples = scrape(f"{base}/metrics")
        assert values(samples, "agentflow_step_duration_seconds_count", "kind") == executed_kinds(steps)
        assert executed_kinds(steps)["llm"] == 4 and executed_kinds(steps)["activity"] == 3
        assert values(samples, "agentflow_model_tokens_total", "type") == recorded_tokens(steps)
        assert recorded_tokens(steps)["input"] > 0
        assert samples[("agentflow_runs", (("status", "completed"), ("tenant", "default")))] == 3
        assert samples[("agentflow_worker_runs_finished_total", (("status", "completed"),))] == 3
        assert samples[("agentflow_worker_runs_claimed_total", ())] == 3
        assert samples[("agentflow_store_up", ())] == 1
        assert samples[("agentflow_worker_runs_in_flight", ())] == 0
        assert httpx.get(f"{base}/readyz", timeout=5).json() == {"status": "ready"}
        assert httpx.get(f"{base}/nothing", timeout=5).status_code == 404
    finally:
        assert worker.stop() == 0, worker.tail()
    log = json_lines(worker.log)
    assert events(log, "worker started") and events(log, "worker stopped"), worker.tail()
    for run_id in runs:
        (claimed,) = events(log, "run claimed", run_id)
        assert claimed["tenant"] == "default" and claimed["epoch"] >= 1 and claimed["takeover"] is False
        (finished,) = events(log, "run finished", run_id)
        assert finished["status"] == "completed" and finished["duration_s"] >= 0 and finished["level"] == "info"


# -- serve ----------------------------------------------------------------------------------------
METRICS_TOKEN = "scrape-secret-7"


@pytest.fixture
def served(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Served, str]]:
    """A server and the id of the copilot's run, waiting for an approval; an indirect parameter
    is the server's AGENTFLOW_METRICS_TOKEN."""
    server = Served(tmp_path / "served")
    token = getattr(request, "param", None)
    if token:
        server.env["AGENTFLOW_METRICS_TOKEN"] = token
    server.add_operators({"alice": "noc-engineer"})
    server.start()
    try:
        server.wait_ready()
        run_id = server.start_run("alice", "CS-101 drop rate is high, investigate")
        assert_eventually(lambda: server.api("alice", "GET", f"/api/runs/{run_id}")["status"] == "waiting",
                          timeout=60, message="the run did not reach its approval")  # fmt: skip
        yield server, run_id
    finally:
        server.stop()


@pytest.mark.parametrize("served", [METRICS_TOKEN], indirect=True)
def test_serve_metrics_after_a_copilot_run_waits_for_approval(served: tuple[Served, str]) -> None:
    """`agentflow serve`'s /metrics with AGENTFLOW_METRICS_TOKEN: without the token, or with
    another, 401; with it, by tenant: the NOC copilot's run waits for an approval (one pending,
    its age), its steps by kind and its model tokens equal the recorded ones."""
    server, run_id = served
    for headers in ({}, {"Authorization": "Bearer scrape-secret-8"}, {"Authorization": METRICS_TOKEN}):
        answer = httpx.get(f"{server.url}/metrics", headers=headers, timeout=10)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer", answer.text
        assert answer.json()["error"]["code"] == "bad_metrics_token" and "noc-east" not in answer.text
    from agentflow.engine import Client

    client = Client(server.db)
    try:
        steps = client.history(run_key("noc-east", run_id))
    finally:
        client.close()
    samples = scrape(f"{server.url}/metrics", METRICS_TOKEN)
    assert values(samples, "agentflow_step_duration_seconds_count", "kind") == executed_kinds(steps)
    assert {"llm", "tool", "policy"} <= set(executed_kinds(steps))
    assert values(samples, "agentflow_model_tokens_total", "type") == recorded_tokens(steps)
    assert samples[("agentflow_approvals_pending", (("tenant", "noc-east"),))] == 1
    assert samples[("agentflow_approvals_oldest_pending_age_seconds", (("tenant", "noc-east"),))] >= 0
    assert samples[("agentflow_runs", (("status", "waiting"), ("tenant", "noc-east")))] == 1
    assert samples[("agentflow_worker_runs_parked_total", ())] >= 1
    assert httpx.get(f"{server.url}/healthz", timeout=5).json() == {"status": "ok"}
    assert httpx.get(f"{server.url}/readyz", timeout=5).json() == {"status": "ready"}


def test_serve_metrics_without_a_token_name_no_tenant(served: tuple[Served, str]) -> None:
    """`agentflow serve`'s /metrics with no AGENTFLOW_METRICS_TOKEN answers anyone, so it names
    no tenant: the store's figures are summed over tenants (the waiting run, its pending
    approval and the age of the oldest), and the tenant appears nowhere in the scrape."""
    server, _ = served
    answer = httpx.get(f"{server.url}/metrics", timeout=10)
    assert answer.status_code == 200 and "noc-east" not in answer.text and "tenant" not in answer.text
    samples = scrape(f"{server.url}/metrics")
    assert samples[("agentflow_runs", (("status", "waiting"),))] == 1
    assert samples[("agentflow_approvals_pending", ())] == 1
    assert samples[("agentflow_approvals_oldest_pending_age_seconds", ())] >= 0
    assert samples[("agentflow_store_up", ())] == 1


# -- a crash and a resume --------------------------------------------------------------------------
def test_crash_and_resume_log_lines_and_live_spans(tmp_path: Path) -> None:
    """A worker SIGKILLed in the middle of a run, then another: the JSON logs say the first
    claimed it, the second took it over with a new epoch and resumed at the first seq not
    recorded, and finished it; the live spans (AGENTFLOW_OTEL=console) of both are one trace,
    each step sent once, with the ids the after-the-fact export gives."""
    from agentflow.trace import load

    db = f"sqlite:///{tmp_path}/wf.db"
    app, _ = obsapp.build(db)
    n = 8
    run_id = app.start(app.workflow_named("ticks"), n, run_id="crash-1").run_id
    first = Worker(tmp_path, "a", db, AGENTFLOW_OTEL="console")
    assert_eventually(lambda: len(app.history(run_id)) >= 3, timeout=60, message="no progress")
    first.proc.kill()
    first.proc.wait(timeout=30)
    done = len(app.history(run_id))
    assert done < n, "the run ended before the kill: make the ticks slower"
    second = Worker(tmp_path, "b", db, "--until-idle", AGENTFLOW_OTEL="console")
    assert second.proc.wait(timeout=120) == 0, second.tail()
    assert app.get_run(run_id).status == "completed"

    log_a, log_b = json_lines(first.log), json_lines(second.log)
    (claimed_a,) = events(log_a, "run claimed", run_id)
    assert claimed_a["takeover"] is False and not events(log_a, "run finished", run_id)
    (claimed_b,) = events(log_b, "run claimed", run_id)
    assert claimed_b["takeover"] is True and claimed_b["epoch"] > claimed_a["epoch"]
    (resumed,) = events(log_b, "run resumed", run_id)
    assert resumed["seq"] == done + 1 and resumed["epoch"] == claimed_b["epoch"] and resumed["tenant"] == "default"
    (finished,) = events(log_b, "run finished", run_id)
    assert finished["status"] == "completed" and finished["seq"] == n

    def spans(worker: Worker) -> dict[int, dict[str, Any]]:
        found = [json.loads(line) for line in worker.out.read_text().splitlines() if line.strip()]
        by_seq = {s["attributes"].get("agentflow.seq", 0): s for s in found}
        assert len(by_seq) == len(found), "a span was sent twice"
        return by_seq

    spans_a, spans_b = spans(first), spans(second)
    assert set(range(1, done)) <= set(spans_a) <= set(range(1, done + 1)), sorted(spans_a)
    assert set(spans_b) == {0, *range(done + 1, n + 1)}, sorted(spans_b)
    exported = {s["span_id"]: s for s in load(db, run_id).to_otel_spans()}
    for span in [*spans_a.values(), *spans_b.values()]:
        ours = exported[span["context"]["span_id"].removeprefix("0x")]
        assert span["context"]["trace_id"] == "0x" + ours["trace_id"]
        assert span["name"] == ours["name"]
    assert spans_b[0]["parent_id"] is None and spans_b[0]["status"]["status_code"] == "OK"


# -- readiness when the store goes away -------------------------------------------------------------
class Proxy:
    """A TCP proxy to PostgreSQL: `close()` makes the database unreachable for its clients."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.closed = False
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                if self.closed:  # accepted while closing: refused like the ones after
                    client.close()
                    return
                server = socket.create_connection(self.upstream)
                self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        with self.lock:
            self.closed = True
        try:
            # Wakes the accept() blocked in the other thread: a plain close() would leave the
            # socket listening (Linux) until that accept returns, and let one more client in.
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass


@pytest.mark.parametrize("command", ["worker", "serve"])
def test_readyz_fails_when_the_store_goes_away(tmp_path: Path, pg_url: str, command: str) -> None:
    """/readyz answers 200 while PostgreSQL answers and 503 with a reason once it is unreachable
    (naming no host, port or database); /healthz stays 200; /metrics says `agentflow_store_up 0`."""
    proxy = Proxy(("127.0.0.1", 5432))
    assert ":5432/" in pg_url
    db = pg_url.replace(":5432/", f":{proxy.port}/")
    port = free_port()
    args = ["--metrics-port", str(port)] if command == "worker" else []
    if command == "worker":
        proc = Worker(tmp_path, "w", db, *args)
    else:
        cmd = [*CLI, "--log-format", "json", "serve", "--app", APP, "--db", db, "--port", str(port)]
        with (tmp_path / "s.log").open("wb") as log:
            proc = Worker.__new__(Worker)
            proc.log, proc.out = tmp_path / "s.log", tmp_path / "s.log"
            proc.proc = subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        assert wait_http(f"{base}/readyz", proc.proc).json() == {"status": "ready"}
        proxy.close()
        answer = wait_http(f"{base}/readyz", proc.proc, status=503, timeout=30)
        body = answer.json()
        assert body["status"] == "unavailable" and "store" in body["reason"]
        assert str(proxy.port) not in answer.text and "postgres" not in answer.text.lower()
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        assert scrape(f"{base}/metrics")[("agentflow_store_up", ())] == 0
    finally:
        proc.stop()
        proxy.close()


def test_a_hung_store_holds_up_no_other_apps_readyz(tmp_path: Path, pg_url: str) -> None:
    """Two Apps in one process: one's PostgreSQL accepts connections and never answers (a hung
    store). Its /readyz says 503 within the timeout, and says so at once while the probe hangs;
    the other App's probe, on its own store, still answers 200."""
    from agentflow import App
    from agentflow.engine import readiness

    hole = socket.create_server(("127.0.0.1", 0))  # the kernel accepts; nobody answers
    hung = App(pg_url.replace(":5432/", f":{hole.getsockname()[1]}/"))
    fine = App(f"sqlite:///{tmp_path}/wf.db")
    try:
        code, body = readiness(hung, timeout=0.3)
        assert (code, body["reason"]) == (503, "the store did not answer within 0.3 s")
        assert readiness(fine, timeout=5) == (200, {"status": "ready"})
        assert readiness(hung, timeout=0.3)[0] == 503
    finally:
        hole.close()
        fine.close()
