"""The timeline of a run that crashed and resumed (`agentflow.trace.timeline`, what the web
console's timeline and the notebooks draw), read from the NOC demo killed with SIGKILL after its
12th recorded step and finished by another process: every step once, the kill and the resume
marked where they happened, the wakes after durable waits told apart from the crash, the two-hour
maintenance-window wait drawn shortened with its real length, reads folded, costs per call."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.crashed_demo import CRASH_AT, crashed_demo

from agentflow import trace
from agentflow.store import EventStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, dict[str, Any]]]:
    db, run_key = crashed_demo(tmp_path_factory.mktemp("crashed"))
    yield db, run_key, trace.timeline(db, run_key)


def test_every_step_once_in_order_and_the_kill_and_the_resume_marked(recorded: tuple[str, str, dict[str, Any]]) -> None:
    """One row per recorded step, in seq order; a crash marker after the last step of the killed
    lease and a resume marker before the first step of the next, nowhere else."""
    db, run_key, tl = recorded
    store = EventStore(db)
    try:
        steps = store.load_steps(run_key)
    finally:
        store.close()
    assert [r["seq"] for r in tl["rows"]] == [s.seq for s in steps]
    assert [r["epoch"] for r in tl["rows"]] == [s.epoch for s in steps]
    crash = [m for m in tl["markers"] if m["kind"] == "crash"]
    resume = [m for m in tl["markers"] if m["kind"] == "resume"]
    assert [(m["after_seq"], m["before_seq"], m["epoch_from"], m["epoch_to"]) for m in crash] == [(12, 13, 1, 2)]
    assert [(m["after_seq"], m["before_seq"]) for m in resume] == [(12, 13)]
    assert CRASH_AT == 12 and "worker lost after step 12" in crash[0]["text"]
    # The other two lease changes are wakes after durable waits (the approval, the window): not crashes.
    wakes = [
        (m["before_seq"], tl["rows"][m["before_seq"] - 1]["step_kind"]) for m in tl["markers"] if m["kind"] == "wake"
    ]
    assert [kind for _, kind in wakes] == ["signal", "sleep"]
    assert tl["totals"]["crashes"] == 1 and tl["totals"]["wakes"] == 2 and tl["totals"]["lease_changes"] == 3
    assert any("The worker was lost after step 12" in line for line in tl["story"])


def test_the_maintenance_window_wait_is_drawn_shortened_with_its_real_length(
    recorded: tuple[str, str, dict[str, Any]],
) -> None:
    """The two-hour wait takes a fixed stretch of the axis, labelled with its real length; the
    bars read left to right in step order though most steps took no time on the demo's clock."""
    _, _, tl = recorded
    (sleep,) = [r for r in tl["rows"] if r["step_kind"] == "sleep"]
    assert sleep["duration_s"] == pytest.approx(7200) and sleep["shortened"] is True
    assert [b["seconds"] for b in tl["axis"]["breaks"]] == [pytest.approx(7200)]
    assert 5 < sleep["x1"] - sleep["x0"] < 25  # shortened: not 99% of the axis, not invisible
    starts = [r["x0"] for r in tl["rows"]]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)
    assert tl["rows"][0]["x0"] == 0 and max(r["x1"] for r in tl["rows"]) == 100


def test_reads_are_folded_and_changes_are_not(recorded: tuple[str, str, dict[str, Any]]) -> None:
    """Groups hold read turns only (a model call, its allow decision, a read-only tool); the
    crash cuts the investigation in two; the push, the approval and the wait stay unfolded."""
    _, _, tl = recorded
    rows = {r["seq"]: r for r in tl["rows"]}
    assert [g["seqs"][0] for g in tl["groups"]] == [1, 13, 26]
    assert tl["groups"][0]["tools"] == ["get_kpis", "detect_anomalies", "rank_root_causes", "propose_change"]
    for group in tl["groups"]:
        members = [rows[s] for s in group["seqs"]]
        assert all(r["read"] for r in members if r["kind"] in ("tool", "policy"))
    folded = {s for g in tl["groups"] for s in g["seqs"]}
    for r in tl["rows"]:
        if r["kind"] in ("approval", "wait", "signal") or (r["kind"] == "tool" and not r["read"]):
            assert r["seq"] not in folded, r["title"]
    (push,) = [r for r in tl["rows"] if r["kind"] == "tool" and r["name"] == "apply_change"]
    assert push["detail"]["result"]["applied"] is True  # the tool's JSON output, decoded


def test_model_calls_carry_tokens_cost_and_the_approval_its_votes(recorded: tuple[str, str, dict[str, Any]]) -> None:
    """Each model call has its tokens and a cost (the demo's runbook model is priced); the
    approval says who approved, when and with what comment."""
    _, _, tl = recorded
    models = [r for r in tl["rows"] if r["kind"] == "model"]
    assert len(models) == 10 and all(r["usage"]["tokens_in"] > 0 and r["usage"]["cost_usd"] > 0 for r in models)
    assert tl["totals"]["cost_usd"] == pytest.approx(sum(r["usage"]["cost_usd"] for r in models))
    assert models[0]["detail"]["request"][1]["content"].startswith("CS-101 drop rate is high")
    (decided,) = [r for r in tl["rows"] if r["kind"] == "approval" and r["name"] == "read"]
    (vote,) = decided["approval"]["votes"]
    assert (vote["principal"], vote["decision"], vote["comment"]) == (
        "oncall-engineer",
        "approve",
        "demo --approve auto",
    )


def test_the_notebook_html_shows_the_same_timeline(recorded: tuple[str, str, dict[str, Any]]) -> None:
    """`Trace._repr_html_` draws the same rows and markers: the crash and the resume marked, the
    wait shortened with its length, every step once, and no recorded text as markup."""
    db, run_key, tl = recorded
    with trace.load(db, run_key) as t:
        html = t._repr_html_()
    assert "worker lost after step 12" in html and "resumed at step 13" in html
    assert "2 h 0 min" in html and "shortened" in html
    seqs = [int(s) for s in re.findall(r'data-seq="(\d+)"', html)]
    assert seqs == [r["seq"] for r in tl["rows"]]
    assert "<script" not in html.lower() and "onerror" not in html.lower()


def test_a_run_id_that_is_not_recorded_is_an_unknown_run(
    tmp_path: Path, recorded: tuple[str, str, dict[str, Any]]
) -> None:
    """Bad input gets the typed error, as `trace.load` gives it."""
    from agentflow.errors import UnknownRunError

    db, _, _ = recorded
    with pytest.raises(UnknownRunError):
        trace.timeline(db, "noc-east:no-such-run")
