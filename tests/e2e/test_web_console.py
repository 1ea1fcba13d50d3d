"""The web console as an operator at 3 a.m. and an SRE the morning after use it, in Chromium
(Playwright) against a real `agentflow serve` on a real SQLite file: a run's timeline (the demo
killed with SIGKILL and resumed), the approval card's evidence and blast radius, the runs list's
filters, and every page on a phone (390 px) as on a laptop (1366 px), with screenshots of each.

Fixtures: tests/e2e/conftest.py; page helpers and the artifacts directory: tests/support/browser.py.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from support.browser import LAPTOP, PHONE, People, scroll_width
from support.crashed_demo import crashed_demo
from support.served import Served

pytestmark = pytest.mark.slow

SIZES = {"laptop": LAPTOP, "phone": PHONE}


def timeline_seqs(page: Page) -> list[int]:
    shown: list[str] = page.eval_on_selector_all("#tl-rows .tl-row[data-seq]", "els => els.map(e => e.dataset.seq)")
    return [int(s) for s in shown]


def order_of(page: Page) -> list[str]:
    """The timeline's rows and markers in page order: `#12`, `crash`, `reads-13`, ..."""
    found: list[str] = page.eval_on_selector_all(
        "#tl-rows > *",
        "els => els.map(e => e.dataset.seq ? '#' + e.dataset.seq : e.dataset.group || e.dataset.kind || e.className)",
    )
    return found


@pytest.mark.parametrize("size", ["laptop", "phone"])
def test_the_timeline_of_a_crashed_and_resumed_run(
    serve: Callable[..., Served], people: People, tmp_path: Path, size: str
) -> None:
    """The demo killed after step 12 and resumed by another process, opened from the run's
    `trace` link: every step once, in order; the kill and the resume marked between steps 12 and
    13 (and the two wakes after waits marked as wakes, not crashes); the reads folded until
    unfolded; the two-hour wait drawn shortened with its length; a click on a step shows what it
    carried, readably (the KPI series as a table with UTC times, not epoch seconds)."""
    demo_dir = tmp_path / "demo"
    demo_dir.mkdir()
    _, run_key = crashed_demo(demo_dir)
    run_id = run_key.split(":", 1)[1]
    server = serve(db_dir=demo_dir)
    alice = people.sign_in(server, "alice", f"#/runs/{run_id}", viewport=SIZES[size])
    expect(alice.locator("#run-status")).to_have_attribute("data-status", "completed")
    alice.locator("#run-trace").click()
    expect(alice).to_have_url(re.compile(f"#/runs/{run_id}/timeline$"))
    expect(alice.locator("#tl-status")).to_have_attribute("data-status", "completed")
    rows = alice.locator("#tl-rows .tl-row[data-seq]")
    expect(rows).to_have_count(36)
    assert timeline_seqs(alice) == list(range(1, 37))  # every step once, in order
    expect(alice.locator(".tl-marker[data-kind='crash']")).to_have_count(1)
    expect(alice.locator(".tl-marker[data-kind='resume']")).to_have_count(1)
    expect(alice.locator(".tl-marker[data-kind='wake']")).to_have_count(2)
    expect(alice.locator(".tl-marker[data-kind='crash']")).to_contain_text("worker lost after step 12")
    expect(alice.locator(".tl-marker[data-kind='crash']")).to_be_visible()
    order = order_of(alice)
    assert order[order.index("#12") + 1 : order.index("#13")] == ["crash", "resume", "reads-13"], order
    expect(alice.locator(".tl-stat[data-stat='crashes'] b")).to_have_text("1")
    expect(alice.locator("#tl-jsonl")).to_have_attribute("href", f"/api/runs/{run_id}/trace.jsonl")

    # the reads are folded; the change, the approval and the wait are not
    for seq in (3, 6, 9, 12):
        expect(alice.locator(f".tl-row[data-seq='{seq}']")).to_be_hidden()
    for seq in (17, 18, 21, 23, 25):
        expect(alice.locator(f".tl-row[data-seq='{seq}']")).to_be_visible()
    wait = alice.locator(".tl-row[data-seq='23']")
    expect(wait.locator(".tl-dur")).to_contain_text("2 h 0 min")
    expect(wait.locator(".tl-bar.shortened")).to_have_count(1)
    expect(alice.locator(".tl-row[data-seq='21']")).to_contain_text("approved by oncall-engineer")
    expect(alice.locator(".tl-row[data-seq='16'] .tl-chip.usage")).to_contain_text("$0.0002")
    assert scroll_width(alice) <= SIZES[size]["width"]
    people.shot(alice, f"1-timeline-{size}")

    alice.locator(".tl-group[data-group='reads-1']").click()
    expect(alice.locator(".tl-row[data-seq='3']")).to_be_visible()
    alice.locator(".tl-row[data-seq='3']").click()
    detail = alice.locator(".tl-detail[data-seq='3']")
    expect(detail.locator(".v-table th").first).to_have_text("t")
    expect(detail.locator(".v-table")).to_contain_text("drop_rate_pct")
    expect(detail.locator(".v-table")).to_contain_text("2025-12-31 23:05:00Z")
    expect(detail).not_to_contain_text("1767222300")  # epoch seconds are shown as times
    expect(detail.locator(".untrusted-label")).to_have_text("tool output (untrusted)")
    assert scroll_width(alice) <= SIZES[size]["width"]
    detail.scroll_into_view_if_needed()
    people.shot(alice, f"2-timeline-kpis-{size}")

    alice.locator(".tl-row[data-seq='25']").click()
    push = alice.locator(".tl-detail[data-seq='25']")
    expect(push).to_contain_text(f"{run_key}:25")  # the idempotency key the push was made with
    expect(push).to_contain_text("applied")
    assert timeline_seqs(alice) == list(range(1, 37))  # opening details added no step
    people.assert_clean()
