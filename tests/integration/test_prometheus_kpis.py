"""KPIs from Prometheus (issue 19): the RAN simulator exporter (`python -m agentflow_noc.ransim`, a
real subprocess) scraped every second by Debian's `prometheus`, and the copilot's KPI tools of
`agentflow_noc.promql` reading them with PromQL over the HTTP API.

One exporter and one Prometheus serve the module: the simulated network's file has CS-101 with a
mis-set handover offset (8 dB) and CS-104 congested. The last test stops and restarts Prometheus.
"""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from langchain_core.messages import AIMessage
from prometheus_client.parser import text_string_to_metric_families
from support.prometheus import Prometheus, require_binary
from support.served import env, free_port, terminate

import agentflow_noc as noc
import agentflow_noc.promql as promql
import agentflow_noc.ransim as ransim
import agentflow_noc.tools as sim
from agentflow import App
from agentflow.agent import Agent
from agentflow.llm import LangChainChat
from agentflow.testing import ScriptedChatModel, assert_eventually
from agentflow_noc import model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(90)]

HOSTILE = 'CS-101"} or vector(1) or {site="x'


def start_exporter(root: Path, port: int, *flags: str, **environ: str) -> subprocess.Popen[bytes]:
    """`python -m agentflow_noc.ransim --port <port> <flags>` serving /metrics, its log in `root`."""
    cmd = [sys.executable, "-m", "agentflow_noc.ransim", "--port", str(port), *flags]
    with (root / "ransim.log").open("ab") as out:
        proc = subprocess.Popen(cmd, env=env(**environ), stdout=out, stderr=subprocess.STDOUT)

    def serves() -> bool:
        assert proc.poll() is None, (root / "ransim.log").read_text()
        try:
            return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
        except httpx.TransportError:
            return False

    try:
        assert_eventually(serves, timeout=30, interval=0.1, message="the exporter did not serve /metrics")
    except BaseException:
        terminate(proc)
        raise
    return proc


class World:
    """The network file (CS-101 with a mis-set handover offset, CS-104 congested), the exporter
    serving it and Prometheus scraping the exporter."""

    def __init__(self, root: Path) -> None:
        self.root, self.net, self.exporter_port = root, noc.Network(root / "noc.db"), free_port()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[World, Prometheus]]:
    require_binary()
    made = World(tmp_path_factory.mktemp("kpis"))
    exporter = start_exporter(made.root, made.exporter_port, "--network-db", made.net.path,
                              "--incident", "CS-101:mis_set_handover", "--incident", "CS-104:congestion")  # fmt: skip
    prom = Prometheus(made.root / "prometheus", targets=[f"127.0.0.1:{made.exporter_port}"])
    with pytest.MonkeyPatch.context() as mp:
        for name in (promql.ENV_URL, promql.ENV_TIMEOUT, promql.ENV_RETRY_AFTER, promql.ENV_SEED, noc.ENV):
            mp.delenv(name, raising=False)
        try:
            prom.start()
            # retry_after 5 s: the engine's 3 attempts span 10 s, time enough to restart Prometheus.
            promql.configure(prom.url, timeout=3, retry_after=5, seed=made.net.seed)
            noc.configure(made.net.path)
            yield made, prom
        finally:
            prom.stop()
            terminate(exporter)


def eventually(read: Any, timeout: float = 20) -> Any:
    """`read()`'s answer once Prometheus has the samples it asks for."""
    found: list[Any] = []

    def answers() -> bool:
        try:
            found.append(read())
        except promql.PrometheusNoData:
            return False
        return True

    assert_eventually(answers, timeout=timeout, interval=0.2, message="Prometheus never had the samples")
    return found[-1]


def test_the_exporters_kpis_follow_a_config_change(world: tuple[World, Prometheus]) -> None:
    """A config change shows in the next scrapes: CS-101's handover offset set back from 8 to 3 dB
    in the network file, the latest KPIs through Prometheus are healthy within a few scrape
    intervals, and monitor_kpis sees the anomalies before the change gone after it. The exporter's
    numbers are the model's for the wall clock's bucket (the time base is honest)."""
    made, _ = world
    sick = eventually(lambda: promql.get_kpis.invoke({"site": "CS-101"}))
    last = sick["series"][-1]
    assert last["drop_rate_pct"] > 1.5 and last["handover_success_pct"] < 95, last
    buckets = {int(last["t"]) // model.BUCKET_SECONDS, int(last["t"] - 2) // model.BUCKET_SECONDS}
    config = made.net.config("CS-101")
    expected = [model.sample(made.net.seed, "CS-101", b, config, "mis_set_handover") for b in buckets]
    assert {k: last[k] for k in model.KPIS} in expected, (last, expected)
    assert not promql.detect_anomalies.invoke({"site": "CS-101"})["healthy"]

    made.net.apply("CS-101", "hoA3Offset", 3, key="test:1")
    changed = time.monotonic()

    def recovered() -> bool:
        point = promql.get_kpis.invoke({"site": "CS-101"})["series"][-1]
        return bool(point["drop_rate_pct"] < 1.5 and point["handover_success_pct"] > 95)

    assert_eventually(recovered, timeout=15, interval=0.2, message="the KPIs did not follow the config change")
    lag = time.monotonic() - changed
    assert lag < 8, f"the KPIs followed the change only after {lag:.1f} s (scrape interval 1 s)"

    report = eventually(lambda: promql.monitor_kpis.invoke({"site": "CS-101", "minutes": 30}))
    assert report["improved"] and report["healthy"], report
    assert "hoA3Offset 8 -> 3" in report["summary"] and "resolved" in report["summary"], report["summary"]
    assert report["before"]["drop_rate_pct"] > 1.5 > report["after"]["drop_rate_pct"], report


def test_get_kpis_through_prometheus_has_the_simulated_tools_shape(world: tuple[World, Prometheus]) -> None:
    """The Prometheus tools answer in the simulated tools' shapes, with close values: the latest
    point is the simulated series' latest (same bucket, same config), the means within 10%, and
    detect_anomalies / rank_root_causes agree on the congested CS-104."""
    made, _ = world
    made.net.set_time(time.time())  # the simulated clock in the wall clock's bucket, as the exporter
    real = eventually(lambda: promql.get_kpis.invoke({"site": "CS-104", "window_minutes": 60}))
    simulated = sim.get_kpis.invoke({"site": "CS-104", "window_minutes": 60})
    assert set(real) == set(simulated) and real["site"] == "CS-104" and real["region"] == simulated["region"]
    assert real["window_minutes"] == 60 and set(real["mean"]) == set(model.KPIS)
    assert all(set(p) == set(simulated["series"][0]) for p in real["series"]), real["series"]
    assert 1 <= len(real["series"]) <= len(simulated["series"]) == 12
    latest = {k: real["series"][-1][k] for k in model.KPIS}
    expected = [{k: p[k] for k in model.KPIS} for p in simulated["series"][-2:]]
    assert latest in expected or _close(latest, expected[-1], 0.01), (latest, expected)
    assert _close(real["mean"], simulated["mean"], 0.10), (real["mean"], simulated["mean"])

    found = promql.detect_anomalies.invoke({"site": "CS-104"})
    assert set(found) == set(sim.detect_anomalies.invoke({"site": "CS-104"}))
    assert {a["kpi"] for a in found["anomalies"]} == {"prb_util_pct", "throughput_mbps"}, found
    causes = promql.rank_root_causes.invoke({"site": "CS-104"})
    assert causes["top_cause"] == sim.rank_root_causes.invoke({"site": "CS-104"})["top_cause"] == "congestion"
    watched = eventually(lambda: promql.monitor_kpis.invoke({"site": "CS-104", "minutes": 30}))
    assert set(watched) == set(sim.monitor_kpis.invoke({"site": "CS-104", "minutes": 30}))
    assert "no change" in watched["summary"] and not watched["improved"], watched


def _close(a: dict[str, float], b: dict[str, float], rel: float) -> bool:
    return all(abs(a[k] - b[k]) <= rel * max(abs(b[k]), 1.0) for k in model.KPIS)


def test_a_hostile_site_argument_cannot_change_the_query(world: tuple[World, Prometheus]) -> None:
    """A site argument that is not a site id is refused before any query (non-retryable), and a
    label value is escaped: the hostile text sent escaped matches nothing, while the same text
    pasted into the query unescaped (the negative control) returns the injected series."""
    _, prom = world
    for hostile in (HOSTILE, "CS-101\\", "CS-1_01", "CS-101\nx", ".*"):
        with pytest.raises(promql.PrometheusQueryError, match="unknown site") as caught:
            promql.get_kpis.invoke({"site": hostile})
        assert caught.value.retryable is False and caught.value.query is None
    assert promql.query(f"ran_cell_drop_rate_pct{{site={promql.label_value(HOSTILE)}}}") == []
    assert promql.query(f"ran_cell_drop_rate_pct{{site={promql.label_value('CS-101' + chr(92))}}}") == []
    assert prom.query(f'ran_cell_drop_rate_pct{{site="{HOSTILE}"}}') != [], "the negative control injected nothing"

    with pytest.raises(promql.PrometheusQueryError, match="parse error") as bad:
        promql.query("sum(")
    assert bad.value.status == 400 and not bad.value.retryable


def test_prometheus_down_is_retryable_and_a_durable_run_resumes_when_it_is_back(
    world: tuple[World, Prometheus], tmp_path: Path
) -> None:
    """Prometheus stopped mid-run: an agent run has read CS-104's KPIs, then Prometheus goes down
    before its next read. That read raises the typed retryable error (recorded as a failed
    attempt, with the retry_after the engine waits), and the engine's activity retry completes it
    once Prometheus is started again: the run ends completed, its reads answered."""
    _, prom = world

    def respond(messages: list[Any]) -> Any:
        turn = sum(1 for m in messages if isinstance(m, AIMessage))
        if turn == 0:
            return {"tool_calls": [{"name": "get_kpis", "args": {"site": "CS-104", "window_minutes": 60}}]}
        if turn == 1:
            prom.stop()  # between the run's two reads
            return {"tool_calls": [{"name": "detect_anomalies", "args": {"site": "CS-104"}}]}
        return "CS-104 is congested."

    app = App(f"sqlite:///{tmp_path / 'wf.db'}")
    try:
        chat = LangChainChat(ScriptedChatModel(respond=respond))
        agent = Agent(name="kpi-reader", model=chat, tools=promql.with_prometheus(noc.NOC_TOOLS))
        handle = agent.start(app, "How is CS-104 doing?", run_id="kpis")
        driver = threading.Thread(target=lambda: asyncio.run(app.worker().run_until_done(handle.run_id)), daemon=True)
        driver.start()

        def failed_attempts() -> list[dict[str, Any]]:
            return [json.loads(a[2]) for a in app.store.load_attempts(handle.run_id) if a[2]]

        assert_eventually(lambda: failed_attempts() != [], timeout=20, interval=0.1, message="no failed attempt")
        first = failed_attempts()[0]
        assert first["type"] == "PrometheusUnavailable" and first["retryable"] is True, first
        assert prom.proc is None, "the read failed while Prometheus was up"
        with pytest.raises(promql.PrometheusUnavailable) as down:
            promql.get_kpis.invoke({"site": "CS-104"})
        assert down.value.retryable and down.value.retry_after == 5 and down.value.status is None
        prom.start()
        driver.join(40)
        assert not driver.is_alive(), "the run did not finish after Prometheus came back"
        assert app.get_run(handle.run_id).status == "completed"
        reads = {s.name: s for s in app.history(handle.run_id) if s.kind == "tool"}
        assert reads["get_kpis"].attempt == 1 and reads["detect_anomalies"].attempt >= 2, reads
        assert reads["detect_anomalies"].status == "completed", reads
        result = reads["detect_anomalies"].result
        assert result is not None and json.loads(json.loads(result))["severity"] != "info", result
    finally:
        app.close()
        if prom.proc is None:
            prom.start()


def test_the_closed_loop_on_netconf_runs_on_prometheus_kpis(
    world: tuple[World, Prometheus], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole chain on real parts: a NETCONF device (netconfd behind sshd, CS-101's handover
    offset at 8 dB), the exporter reading it (`--netconf`), Prometheus scraping the exporter, and
    the closed loop on confirmed commit reading its KPIs from Prometheus (`promql.window_kpis`).
    The loop diagnoses from Prometheus' samples, commits 8 -> 3 on the device (one commit), sees
    the scraped KPIs recover in its window and confirms; the exporter follows the commit, and
    monitor_kpis reads it as the change that resolved CS-101."""
    from support.netconf import netconf_server

    from agentflow_noc.closed_loop_netconf import register

    with netconf_server() as server:
        for name, value in server.settings.environ().items():
            monkeypatch.setenv(name, value)
        port = free_port()
        exporter = start_exporter(tmp_path, port, "--netconf", "--incident", "CS-104:congestion",
                                  **server.settings.environ())  # fmt: skip
        # A scrape opens a NETCONF session (about 0.5 s here): 2 s between scrapes, not 1.
        prom = Prometheus(tmp_path / "prometheus", targets=[f"127.0.0.1:{port}"], interval=2)
        app = App(f"sqlite:///{tmp_path / 'runs.db'}")  # the real clock: Prometheus' samples are stamped with it
        try:
            prom.start()
            monkeypatch.setenv(promql.ENV_URL, prom.url)
            sick = eventually(lambda: promql.get_kpis.invoke({"site": "CS-101"}))["series"][-1]
            assert sick["drop_rate_pct"] > 1.5 and sick["handover_success_pct"] < 95, sick
            assert promql.config_at("CS-101")["hoA3Offset"] == 8

            loop = register(app, kpis=promql.window_kpis, seed=world[0].net.seed)
            result = app.run(loop, "CS-101", monitor_seconds=6, checks=1, confirm_timeout=60, auto_approve=True)
            assert result.status == "confirmed", result.detail
            assert result.change is not None and (result.change.previous, result.change.value) == (8, 3)
            assert result.checks and all(check.healthy for check in result.checks), result.checks
            assert server.device.config("CS-101")["hoA3Offset"] == 3 and len(server.cell_transactions("CS-101")) == 1

            def recovered() -> bool:
                point = promql.get_kpis.invoke({"site": "CS-101"})["series"][-1]
                return bool(point["drop_rate_pct"] < 1.5 and point["handover_success_pct"] > 95)

            assert_eventually(recovered, timeout=20, interval=0.3, message="the KPIs did not follow the commit")
            report = eventually(lambda: promql.monitor_kpis.invoke({"site": "CS-101", "minutes": 30}))
            assert report["improved"] and "hoA3Offset 8 -> 3" in report["summary"], report
            assert promql.detect_anomalies.invoke({"site": "CS-104"})["severity"] != "info"
        finally:
            app.close()
            prom.stop()
            terminate(exporter)


# -- without Prometheus: the exporter alone, and stand-ins for a failing Prometheus ------------
def test_the_exporter_reads_its_config_source_on_every_scrape() -> None:
    """The exporter takes any config source (a callable, as a NETCONF device's reader): its
    text values are the model's ("3" is 3 dB), and a change shows in the very next scrape, with
    the cell's change time moved to that scrape; a source that fails fails the scrape (500),
    so Prometheus marks the target down instead of keeping stale numbers."""
    configs: dict[str, dict[str, Any]] = {"CS-101": {"hoA3Offset": "8", "loadBalancing": "false"}}
    broken = threading.Event()

    def source() -> dict[str, dict[str, Any]]:
        if broken.is_set():
            raise ConnectionError("device unreachable")
        return configs

    clock = [1_800_000_000.0]
    collector = ransim.RanCollector(configs=source, clock=lambda: clock[0])
    port = free_port()
    stop = ransim.serve(collector, port=port)
    try:
        before = _scrape(port)
        assert before[("ran_cell_config_info", "CS-101", "hoA3Offset", "8")] == 1.0
        assert before[("ran_cell_drop_rate_pct", "CS-101")] > 1.5, before
        assert before[("ran_cell_config_changed_timestamp_seconds", "CS-101")] == clock[0]
        configs["CS-101"]["hoA3Offset"] = "3"
        clock[0] += 1
        after = _scrape(port)
        assert after[("ran_cell_drop_rate_pct", "CS-101")] < 1.5, after
        assert after[("ran_cell_config_changed_timestamp_seconds", "CS-101")] == clock[0]
        clock[0] += 1
        assert _scrape(port)[("ran_cell_config_changed_timestamp_seconds", "CS-101")] == clock[0] - 1
        broken.set()
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 500
    finally:
        stop()


def test_the_command_lines_incidents_and_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The command line's sources: a scenario's incidents and --incident flags are injected into
    the (scratch) network the exporter reads; with --netconf, an incident that is a config push
    is refused (change the device instead), and --netconf with --network-db is a usage error."""
    args = ransim.parser().parse_args(
        ["--port", "1", "--scenario", "congestion", "--incident", "CS-120:backhaul_fault"]
    )
    collector, source = ransim._collector(args, tmp_path)
    assert source == str(tmp_path / "noc.db")
    samples = {(m.name, s.labels["site"]): s.value for m in collector.collect() for s in m.samples}
    assert samples[("ran_cell_prb_util_pct", "CS-110")] > 85 and samples[("ran_cell_latency_ms", "CS-120")] > 40
    assert samples[("ran_cell_prb_util_pct", "CS-111")] < 85 and samples[("ran_cell_latency_ms", "CS-111")] < 40

    pushed = ransim.parser().parse_args(["--port", "1", "--netconf", "--incident", "CS-101:mis_set_handover"])
    with pytest.raises(ValueError, match="mis_set_handover is a configuration push"):
        ransim._collector(pushed, tmp_path)
    with pytest.raises(SystemExit):
        ransim.parser().parse_args(["--port", "1", "--netconf", "--network-db", str(tmp_path / "n.db")])
    assert "not allowed with argument" in capsys.readouterr().err


def _scrape(port: int) -> dict[tuple[str, ...], float]:
    """The exporter's samples by (name, site[, param, value])."""
    answer = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
    assert answer.status_code == 200, answer.text
    found: dict[tuple[str, ...], float] = {}
    for family in text_string_to_metric_families(answer.text):
        for s in family.samples:
            extra = (s.labels["param"], s.labels["value"]) if "param" in s.labels else ()
            found[(s.name, s.labels["site"], *extra)] = s.value
    return found


class _StandIn(BaseHTTPRequestHandler):
    """A server in Prometheus' place that fails the way `mode` says."""

    mode = "503"

    def do_GET(self) -> None:
        if self.mode == "slow":
            time.sleep(3)
        body, status, headers = b"not prometheus", 200, {}
        if self.mode == "503":
            body, status, headers = b"Service Unavailable", 503, {"Retry-After": "7"}
        elif self.mode == "400":
            body, status = b'{"status":"error","errorType":"bad_data","error":"1:5: parse error: unclosed"}', 400
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except BrokenPipeError:
            pass  # the slow answer's client gave up (its timeout): what the test wants

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("mode", "error", "retryable", "retry_after"),
    [("503", promql.PrometheusUnavailable, True, 7.0), ("slow", promql.PrometheusUnavailable, True, 4.0),
     ("400", promql.PrometheusQueryError, False, None), ("html", promql.PrometheusQueryError, False, None)],
)  # fmt: skip
def test_a_5xx_or_a_timeout_is_retryable_and_a_refusal_is_not(
    monkeypatch: pytest.MonkeyPatch, mode: str, error: type[promql.PrometheusError], retryable: bool,
    retry_after: float | None,
) -> None:  # fmt: skip
    """Prometheus answering 503 (its Retry-After honoured) or too slowly is PrometheusUnavailable,
    retryable; a 400 is PrometheusQueryError with Prometheus' own message, not retryable, and so
    is an answer that is not the Prometheus API (a wrong URL)."""
    handler = type("Handler", (_StandIn,), {"mode": mode})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True  # the slow answer's thread is not waited for at close
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv(promql.ENV_URL, f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setenv(promql.ENV_TIMEOUT, "1")
        monkeypatch.setenv(promql.ENV_RETRY_AFTER, "4")
        with pytest.raises(error) as caught:
            promql.get_kpis.invoke({"site": "CS-101"})
        assert caught.value.retryable is retryable and caught.value.retry_after == retry_after
        assert caught.value.to_dict()["system"].startswith("prometheus http://127.0.0.1:")
        if mode == "400":
            assert "parse error: unclosed" in str(caught.value) and caught.value.status == 400
    finally:
        server.shutdown()
        server.server_close()


def test_a_nan_or_infinite_sample_is_no_sample() -> None:
    """An exporter serving NaN (or +Inf) for a KPI: compared with a threshold, NaN is never
    anomalous, so it would read as a healthy cell and the closed loop would confirm on it. Such
    a sample is dropped, with the point it belongs to (a point needs every KPI)."""
    rows = [{"metric": {"__name__": f"{ransim.PREFIX}{kpi}"},
             "values": [[1, "NaN" if kpi == "drop_rate_pct" else "1"], [2, "+Inf" if kpi == "latency_ms" else "2"],
                        [3, "3"]]} for kpi in model.KPIS]  # fmt: skip
    points = promql._points(rows)
    assert [p["t"] for p in points] == [3.0]
    assert all(math.isfinite(v) for v in points[0].values())
