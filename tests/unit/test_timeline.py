"""`agentflow.trace`'s timeline on hand-made records: where each bar goes on the recorded clock
(concurrent steps side by side, long waits and idle gaps shortened, long work not), how lease
changes are read (a wake after a wait is not a crash), failed attempts and open steps."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agentflow.store import RunRecord, StepRecord
from agentflow.trace._records import Attempt, Recorded
from agentflow.trace._timeline import COMPRESS_S, build_timeline

T0 = 1_767_225_600.0


def run(status: str = "completed", epoch: int = 1) -> RunRecord:
    return RunRecord(id="noc-east:r1", workflow="wf", tenant="noc-east", status=status, input='[["fix CS-101"], {}]',
                     output=None, error=None, owner=None, epoch=epoch, wake_at=None, waiting_on=None, parent_id=None,
                     parent_seq=None, root_id="noc-east:r1", cancel_requested=0, meta='{"requested_by": "alice"}',
                     created_at=T0, updated_at=T0, completed_at=None)  # fmt: skip


def step(seq: int, kind: str, start: float, end: float | None, *, epoch: int = 1, status: str = "completed",
         name: str = "x", args: Any = None, result: Any = None, attempt: int = 1) -> StepRecord:  # fmt: skip
    return StepRecord(seq=seq, kind=kind, name=name, digest="", status=status, attempt=attempt,
                      args=None if args is None else json.dumps(args), result=None if result is None else json.dumps(result),
                      error=None, started_at=T0 + start, finished_at=None if end is None else T0 + end, wake_at=None,
                      epoch=epoch)  # fmt: skip


def build(steps: list[StepRecord], attempts: list[Attempt] = (), **kw: Any) -> dict[str, Any]:  # type: ignore[assignment]
    return build_timeline(Recorded(run=run(**kw), steps=steps, attempts=list(attempts), approvals=[], audit=[]))


def test_a_long_wait_is_shortened_and_long_work_is_not() -> None:
    """A 2 h sleep takes a fixed stretch (labelled 7200 s); a 60 s tool call keeps its length:
    three times the 20 s call before it, and wider than the shortened two hours."""
    tl = build([step(1, "tool", 0, 20), step(2, "tool", 20, 80), step(3, "sleep", 80, 7280, args="2026-01-01T02:01:20+00:00"),
                step(4, "tool", 7280, 7281)])  # fmt: skip
    rows = {r["seq"]: r for r in tl["rows"]}
    assert rows[3]["shortened"] and not rows[2]["shortened"]
    assert [b["seconds"] for b in tl["axis"]["breaks"]] == [pytest.approx(7200)]
    assert rows[2]["x1"] - rows[2]["x0"] == pytest.approx(3 * (rows[1]["x1"] - rows[1]["x0"]), rel=0.01)
    assert rows[2]["x1"] - rows[2]["x0"] > rows[3]["x1"] - rows[3]["x0"]
    assert rows[1]["x1"] == rows[2]["x0"] and rows[3]["x1"] == rows[4]["x0"]  # one after the other, no gap
    assert tl["totals"]["waited_s"] == pytest.approx(7200)


def test_an_idle_gap_is_shortened_and_concurrent_steps_overlap() -> None:
    """Nothing recorded for 10 minutes (a dead worker's lease running out): a shortened gap.
    Two tools started together (a gather) start at the same place on the axis."""
    tl = build([step(1, "tool", 0, 2), step(2, "tool", 0, 1), step(3, "tool", 600, 601, epoch=2)])
    rows = {r["seq"]: r for r in tl["rows"]}
    assert rows[1]["x0"] == rows[2]["x0"] == 0
    (gap,) = tl["axis"]["breaks"]
    assert gap["kind"] == "idle" and gap["seconds"] == pytest.approx(598) and gap["before_seq"] == 3
    assert COMPRESS_S < 598


def test_a_lease_change_at_a_wait_is_a_wake_and_elsewhere_a_crash() -> None:
    """The first step of a new lease completing a signal: the run was parked and woken. A tool
    step completed under a new lease at attempt 2 (intent recorded, worker gone): a crash, then a
    resume, and the step's row says it ran again."""
    tl = build([step(1, "tool", 0, 1), step(2, "signal", 1, 50, epoch=2, name="go"), step(3, "tool", 50, 51, epoch=2),
                step(4, "tool", 51, 80, epoch=4, attempt=2)])  # fmt: skip
    assert [(m["kind"], m["before_seq"]) for m in tl["markers"]] == [("wake", 2), ("crash", 4), ("resume", 4)]
    assert "1 claim in between recorded nothing" in tl["markers"][2]["text"]
    assert tl["rows"][3]["attempt"] == 2


def test_failed_attempts_and_open_steps() -> None:
    """Failed attempts of a step are on its row with their errors; a step still waiting ends
    at `now` and says so."""
    attempts = [Attempt(seq=1, attempt=1, error=json.dumps({"type": "ModelTimeout", "message": "slow"}),
                        started_at=T0, finished_at=T0 + 5, retry_at=T0 + 6)]  # fmt: skip
    tl = build([step(1, "tool", 6, 7, attempt=2), step(2, "signal", 7, None, status="waiting", name="approval:apr_1")],
               attempts, status="waiting")  # fmt: skip
    rows = tl["rows"]
    assert rows[0]["retries"][0]["error"] == "ModelTimeout: slow" and tl["totals"]["retries"] == 1
    assert rows[1]["open"] and rows[1]["title"].endswith("(waiting)")
    assert rows[1]["duration_s"] == pytest.approx(0)  # now = the latest time recorded
    later = build_timeline(Recorded(run=run("waiting"), steps=[rows and step(1, "tool", 0, 1)], attempts=[],
                                    approvals=[], audit=[]), now=T0 + 100)  # fmt: skip
    assert later["axis"]["seconds"] == pytest.approx(1)
    assert (
        "is waiting"
        in build([step(1, "sleep", 0, None, status="waiting", args="2026-01-01T09:00:00+00:00")], status="waiting")[
            "story"
        ][-1]
    )


def test_recorded_text_stays_text() -> None:
    """Tool output that looks like markup is passed on as the value it is (the surfaces show it
    as text); JSON inside the recorded string is decoded for a readable table."""
    payload = '<img src=x onerror="alert(1)">'
    tl = build([step(1, "tool", 0, 1, name="lookup", args={"tool": "lookup", "args": {}, "call": "c1"},
                     result=json.dumps({"notes": payload, "series": [{"t": T0, "v": 1}]}))])  # fmt: skip
    result = tl["rows"][0]["detail"]["result"]
    assert result["notes"] == payload and result["series"] == [{"t": T0, "v": 1}]
    from agentflow.trace._html import timeline_html

    html = timeline_html(tl)
    assert payload not in html and "&lt;img src=x onerror=" in html


def test_a_crash_amid_reads_run_together_is_one_crash() -> None:
    """Reads of one turn run together: tool 5 finished under lease 1, tool 4 was still running
    when the worker died and ran again under lease 2. Read in seq order the epochs go 1, 2, 1, 2;
    the run was claimed again once: one crash (after step 5, the last the lost lease recorded)
    and one resume (at step 4), nothing else, and no lease that goes backwards."""
    tl = build([step(1, "llm", 0, 1), step(2, "policy", 1, 1), step(3, "policy", 1, 1),
                step(4, "tool", 1, 40, epoch=2), step(5, "tool", 1, 2), step(6, "llm", 40, 41, epoch=2)])  # fmt: skip
    assert [(m["kind"], m["after_seq"], m["before_seq"], m["epoch_from"], m["epoch_to"]) for m in tl["markers"]] == [
        ("crash", 5, 4, 1, 2),
        ("resume", 5, 4, 1, 2),
    ]
    assert "worker lost after step 5" in tl["markers"][0]["text"]
    assert tl["totals"]["crashes"] == 1 and tl["totals"]["lease_changes"] == 1
    assert sum("The worker was lost" in line for line in tl["story"]) == 1


def test_children_that_finish_out_of_order_are_two_wakes() -> None:
    """Two child runs started together; the second (step 3) ends first and wakes the parent
    under lease 2, the first (step 2) wakes it under lease 3: two wakes, no crash."""
    tl = build([step(1, "tool", 0, 1), step(2, "child", 1, 90, epoch=3), step(3, "child", 1, 60, epoch=2),
                step(4, "tool", 90, 91, epoch=3)])  # fmt: skip
    assert [(m["kind"], m["before_seq"], m["epoch_to"]) for m in tl["markers"]] == [("wake", 3, 2), ("wake", 2, 3)]
    assert tl["totals"]["crashes"] == 0 and tl["totals"]["wakes"] == 2


def test_a_step_whose_outcome_the_crash_left_unknown_is_said_to_have_run_again() -> None:
    """A side-effecting call records its intent before it runs: killed then, its outcome is
    unknown and the next lease runs it again (attempt 2, no failed attempt recorded) under the
    same idempotency key. The resume and the story say so instead of 'no recorded step ran
    again'; a step at attempt 2 after a recorded failure is a retry, not a re-run."""
    rerun = build([step(1, "tool", 0, 1), step(2, "tool", 1, 30, epoch=2, attempt=2)])
    resume = rerun["markers"][1]
    assert resume["kind"] == "resume" and resume["rerun"] == [2]
    assert "no recorded step ran again" not in resume["text"]
    said = "step 2 had begun before (intent recorded, outcome unknown) and ran again with the same idempotency key"
    assert said in resume["text"] and any(said in line for line in rerun["story"])
    failure = Attempt(seq=2, attempt=1, error=json.dumps({"type": "Timeout", "message": "slow"}), started_at=T0 + 1,
                      finished_at=T0 + 2, retry_at=T0 + 3)  # fmt: skip
    retried = build([step(1, "tool", 0, 1), step(2, "tool", 1, 30, epoch=2, attempt=2)], [failure])
    assert retried["markers"][1]["rerun"] == [] and "no recorded step ran again" in retried["markers"][1]["text"]


def test_a_long_run_of_steps_run_together_is_laid_out_in_order() -> None:
    """2,000 steps in pairs started together (reads of one turn): each pair shares its start on
    the axis, the pairs read left to right, and every bar is inside the axis. (Laid out in about
    50 ms; placing each step used to re-sort and walk every earlier point: 1.4 s for 3,000.)"""
    steps = [step(i + 1, "tool", (i // 2) * 0.5, (i // 2) * 0.5 + 0.4 + (i % 2) * 0.01) for i in range(2000)]
    rows = build(steps)["rows"]
    starts = [r["x0"] for r in rows]
    assert all(starts[i] == starts[i + 1] for i in range(0, 2000, 2))
    assert starts[::2] == sorted(starts[::2]) and len(set(starts[::2])) == 1000
    assert all(0 <= r["x0"] < r["x1"] <= 100 for r in rows)


def test_the_notebook_html_escapes_every_recorded_text() -> None:
    """The task, who asked, the answer, a tool's arguments and output, a policy's rule and reason
    and a signal's name (recorded from callers, models, devices) appear in `Trace._repr_html_`'s
    markup only as text: parsed, the HTML has only the timeline's own elements and attributes,
    and its text holds the hostile string literally, wherever the timeline quotes it (titles,
    story, previews, tooltips)."""
    import dataclasses
    from html.parser import HTMLParser

    from agentflow.trace._html import timeline_html

    bad = '"><img src=x onerror=alert(1)><script>alert(2)</script>&amp;'
    recorded = dataclasses.replace(
        run(), input=json.dumps([[f"fix {bad}"], {}]), meta=json.dumps({"requested_by": bad}),
        output=json.dumps({"status": "answered", "answer": bad}), completed_at=T0 + 9,
    )  # fmt: skip
    call = {"tool": "lookup", "call": "c1", "args": {"note": bad}}
    steps = [
        step(1, "policy", 0, 1, name="lookup", args=call,
             result={"effect": "deny", "rule": bad, "reason": bad, "call": {"side_effect": True}}),
        step(2, "tool", 1, 2, name="lookup", args=call, result=json.dumps({"out": bad}), epoch=2),
        step(3, "signal", 2, 3, name=bad, result={"x": bad}, epoch=3),
    ]  # fmt: skip
    html = timeline_html(build_timeline(Recorded(run=recorded, steps=steps, attempts=[], approvals=[], audit=[])))

    class Seen(HTMLParser):
        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.tags: set[str] = set()
            self.attrs: set[str] = set()
            self.text: list[str] = []
            self.titles: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.tags.add(tag)
            self.attrs |= {name for name, _ in attrs}
            self.titles += [value or "" for name, value in attrs if name == "title"]

        def handle_data(self, data: str) -> None:
            self.text.append(data)

    seen = Seen()
    seen.feed(html)
    assert seen.tags <= {"div", "span", "b", "p", "details", "summary", "ol", "li"}, seen.tags
    assert seen.attrs <= {"class", "style", "title", "data-seq", "data-kind", "data-marker", "data-group", "open"}
    text = "".join(seen.text)
    assert text.count(bad) >= 3 and any(bad in t for t in seen.titles)  # story (task, who, answer), tooltips


def test_a_record_the_timeline_cannot_read_is_one_unreadable_row_not_a_failed_page() -> None:
    """A wait whose recorded deadline is not a time, a model call whose message blob does not
    decode, a deferral to a time out of range: each is a row saying it is unreadable (and why);
    the other steps, the markers and the story are drawn as usual."""
    tl = build_timeline(Recorded(
        run=run(), attempts=[], approvals=[], audit=[], blobs={"m1": "{not json"},
        steps=[step(1, "tool", 0, 1, name="lookup", args={"tool": "lookup", "call": "c1", "args": {}}, result='"ok"'),
               step(2, "sleep", 1, 2, args="soon"),
               step(3, "llm", 2, 3, name="m", args={"messages": []}, result={"message": "m1", "usage": {}}),
               step(4, "policy", 3, 4, name="push", args={"tool": "push", "call": "c2", "args": {}},
                    result={"effect": "defer", "rule": "window", "defer_until": 1e300}),
               step(5, "tool", 4, 5, name="lookup", args={"tool": "lookup", "call": "c3", "args": {}}, result='"ok"',
                    epoch=2)],
    ))  # fmt: skip
    rows = {r["seq"]: r for r in tl["rows"]}
    assert [r["seq"] for r in tl["rows"]] == [1, 2, 3, 4, 5]
    for seq, why in ((2, "ValueError"), (3, "CorruptRecordError"), (4, "")):
        assert "unreadable" in rows[seq]["title"] and why in rows[seq]["title"], rows[seq]["title"]
        assert rows[seq]["detail"]["unreadable"]
    assert rows[5]["title"] == "lookup()" and [m["kind"] for m in tl["markers"]] == ["crash", "resume"]
    assert tl["story"][-1].startswith("It completed")
