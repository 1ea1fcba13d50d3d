"""`agentflow eval`: the NOC scenario suite on the offline model, the scorer against deliberately
wrong runs, the copilot's honest verdict, and the scenario format's typed errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentflow import trace
from agentflow.errors import ConfigurationError
from agentflow.llm import LangChainChat
from agentflow.testing import ScriptedChatModel
from agentflow_noc import model as physics
from agentflow_noc.evals import main
from agentflow_noc.scenario import ScenarioError, builtin_dir, load_scenario, load_scenarios

pytestmark = pytest.mark.timeout(120)


def _db(tmp_path: Path, name: str = "eval") -> str:
    return f"sqlite:///{tmp_path / f'{name}.db'}"


def _scripted(*replies: Any) -> LangChainChat:
    """A model that makes the given replies in order (tool calls as dicts, then an answer)."""
    return LangChainChat(ScriptedChatModel(responses=list(replies)), name="scripted")


def _apply(site: str, param: str, value: Any) -> dict[str, Any]:
    return {"tool_calls": [{"name": "apply_change", "args": {"site": site, "param": param, "value": value}}]}


def _one(tmp_path: Path, scenario: str, *replies: Any) -> dict[str, Any]:
    report = main(paths=[str(builtin_dir() / f"{scenario}.yaml")], model=_scripted(*replies), db=_db(tmp_path))
    assert report["total"] == 1
    return dict(report["scenarios"][0])


def test_the_suite_passes_on_the_offline_model(tmp_path: Path) -> None:
    """Every shipped scenario (>= 12) passes on the runbook model: the expected changes hold in the
    final config, no needless or forbidden change, the copilot's verdict agrees with the network;
    each run is a recorded run that opens in agentflow.trace."""
    report = main(db=_db(tmp_path))
    assert report["total"] >= 12 and report["pass_rate"] == 1.0, [
        (s["scenario"], s["reasons"]) for s in report["scenarios"] if not s["passed"]
    ]
    by_name = {s["scenario"]: s for s in report["scenarios"]}
    assert by_name["false-alarm"]["changes"] == [] and by_name["false-alarm"]["verdict"] == "healthy"
    assert by_name["two-sites"]["changes"] == ["CS-103 hoA3Offset=3", "CS-104 prbCap=100"]
    # At the region's blast-radius limit the push is denied: no change, and the copilot says open.
    blast = by_name["blast-radius"]
    assert blast["denials"] == 1 and blast["changes"] == [] and blast["verdict"] == "incident_open"
    assert by_name["tx-power"]["changes"] == ["CS-105 txPower=40"]
    assert all(s["model_calls"] > 0 and s["tokens"] > 0 for s in report["scenarios"])
    run = trace.load(report["db"], by_name["demo-handover"]["run_id"])
    assert "apply_change" in set(run.tool_calls["tool"])


def test_a_change_on_the_wrong_site_fails(tmp_path: Path) -> None:
    """The fix pushed to CS-102 instead of CS-101: needless change, expected change missing, not
    resolved; the copilot's verdict says the incident is open."""
    s = _one(tmp_path, "demo-handover", _apply("CS-102", "hoA3Offset", 3), "Fixed CS-101.")
    assert not s["passed"] and s["verdict"] == "incident_open" and not s["resolved"]
    reasons = " | ".join(s["reasons"])
    assert "needless change: CS-102 hoA3Offset=3" in reasons
    assert "expected change missing: CS-101 hoA3Offset in [2, 4]" in reasons
    assert "not resolved: anomalies remain on CS-101" in reasons


def test_a_forbidden_value_fails_and_denied_attempts_are_counted(tmp_path: Path) -> None:
    """txPower 46 (denied by the pack) then 33 (allowed by the pack, forbidden by the scenario:
    a coverage hole): the incident is resolved, but a forbidden change was applied."""
    s = _one(tmp_path, "tx-power", _apply("CS-105", "txPower", 46), _apply("CS-105", "txPower", 33), "Power fixed.")
    assert not s["passed"] and s["resolved"]
    assert s["denials"] == 1 and s["forbidden_attempted"] == 2
    assert s["forbidden_applied"] == [
        "CS-105 txPower=33: apply_change(param txPower, below 36): below 36 dBm leaves a coverage hole"
    ]
    assert any(r.startswith("forbidden change applied") for r in s["reasons"])
    assert any(r.startswith("expected change missing: CS-105 txPower") for r in s["reasons"])


def test_an_answer_without_a_fix_fails(tmp_path: Path) -> None:
    """The model reads one series and answers "resolved": scored from the network, not its words."""
    s = _one(
        tmp_path, "demo-handover",
        {"tool_calls": [{"name": "get_kpis", "args": {"site": "CS-101"}}]}, "The drop rate is fine now: resolved.",
    )  # fmt: skip
    assert not s["passed"] and s["outcome"] == "answered" and s["verdict"] == "incident_open"
    assert s["changes"] == [] and s["diagnosis"] is False
    assert "not resolved: anomalies remain on CS-101" in s["reasons"]


def test_a_needless_change_on_a_false_alarm_fails(tmp_path: Path) -> None:
    s = _one(tmp_path, "false-alarm", _apply("CS-107", "hoA3Offset", 2), "Tuned CS-107.")
    assert not s["passed"] and s["resolved"] and s["changes"] == ["CS-107 hoA3Offset=2"]
    assert s["reasons"] == ["changed config where no change was expected: CS-107 hoA3Offset=2"]


def test_the_verdict_after_a_rollback_is_the_final_value(tmp_path: Path) -> None:
    """The fix applied, then rolled back: the faulty 8 is back, so the copilot's verdict is
    incident_open (not 'resolved', whatever monitoring said in between)."""
    change = physics.change_id("CS-101", "hoA3Offset", 3)
    s = _one(
        tmp_path, "demo-handover", _apply("CS-101", "hoA3Offset", 3),
        {"tool_calls": [{"name": "monitor_kpis", "args": {"site": "CS-101"}}]},
        {"tool_calls": [{"name": "rollback_change", "args": {"site": "CS-101", "change_id": change}}]},
        "Resolved.",
    )  # fmt: skip
    assert s["changes"] == ["CS-101 hoA3Offset=3", "CS-101 hoA3Offset=8"]
    assert s["verdict"] == "incident_open" and not s["resolved"] and not s["passed"]
    assert "expected change missing: CS-101 hoA3Offset in [2, 4]" in s["reasons"]


def test_a_malformed_scenario_names_the_file_line_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nrequest: fix CS-101\nexpect:\n  changes:\n    - {site: CS-999, param: hoA3Offset, value: 3}\n"
    )
    with pytest.raises(ScenarioError) as caught:
        load_scenario(bad)
    err = caught.value
    assert (err.file, err.line, err.field) == (str(bad), 5, "expect.changes.0.site")
    assert "unknown site 'CS-999'" in err.message and f"{bad}, line 5, field expect.changes.0.site" in err.message

    both = tmp_path / "both.yaml"
    both.write_text(
        "request: fix CS-101\nexpect:\n  no_change: true\n  changes: [{site: CS-101, param: txPower, max: 43}]\n"
    )
    with pytest.raises(ScenarioError, match=r"both.yaml, line 2, field expect: .*exactly one of them"):
        load_scenario(both)
    broken = tmp_path / "broken.yaml"
    broken.write_text("request: [fix\nexpect: {}\n")
    with pytest.raises(ScenarioError, match=r"broken.yaml, line 2: not valid YAML"):
        load_scenario(broken)
    with pytest.raises(ConfigurationError, match="no scenario named typo; known: backhaul-alarm"):
        load_scenarios([str(builtin_dir())], only=["typo"])


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agentflow.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=100)  # fmt: skip


def test_agentflow_eval_json_exits_0_and_its_runs_open_in_history(tmp_path: Path) -> None:
    """`agentflow eval --json` on three scenarios from another directory: exit 0, one JSON
    document; `agentflow runs history` opens a run of it. A malformed file exits 2 naming it."""
    out = _cli("eval", "--only", "terse", "--only", "false-alarm", "--only", "out-of-policy", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    report = json.loads(out.stdout)
    assert report["passed"] == report["total"] == 3 and report["db"] == "sqlite:///agentflow-eval.db"
    assert (tmp_path / "agentflow-eval.db").exists()
    run_id = report["scenarios"][0]["run_id"]
    db = f"sqlite:///{tmp_path / 'agentflow-eval.db'}"
    history = _cli("runs", "history", run_id, "--db", db, "--json", cwd=tmp_path)
    assert history.returncode == 0, history.stderr[-2000:]
    assert "noc.verify_incident" in {step["name"] for step in json.loads(history.stdout)["steps"]}

    bad = tmp_path / "bad.yaml"
    bad.write_text("request: fix CS-101\nexpect:\n  no_change: maybe\n")
    out = _cli("eval", str(bad), "--db", _db(tmp_path, "other"), cwd=tmp_path)
    assert out.returncode == 2 and "bad.yaml, line 3, field expect.no_change" in out.stderr, out.stderr
