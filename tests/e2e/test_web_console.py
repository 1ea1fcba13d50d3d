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
from support.browser import LAPTOP, PHONE, RUN, TASK, People, in_viewport, pending_card, scroll_width, sideways
from support.crashed_demo import crashed_demo
from support.served import Served

pytestmark = pytest.mark.slow

SIZES = {"laptop": LAPTOP, "phone": PHONE}
INJECTION_APP = "tests.e2e.webapp:app"  # tests/e2e/webapp.py: hostile tool output and answer


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
    expect(alice.locator(".tl-row[data-seq='16'] .tl-chip.usage")).to_have_text(
        re.compile(r"^1,441 in · \d+ out · \$0\.000[1-9]$")
    )
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


BIG_LIMIT = """() => {
  const li = renderLimit({ rule: "big-rate", kind: "rate", scope: "tenant noc-east", used: 120, limit: 500, after: 121,
    window_s: 3600, text: "apply_change ran 120 of at most 500 times in the last 1 h" });
  document.querySelector("#inbox .ev-limit-list").append(li);
  return { cells: li.querySelectorAll(".ev-cell").length, bars: li.querySelectorAll(".ev-bar").length };
}"""


def test_the_approval_card_shows_evidence_and_blast_radius_and_approve_works_on_a_phone(
    serve: Callable[..., Served], people: People
) -> None:
    """alice's run parks on its change; bob, on a 390 px phone, opens the inbox: the card says
    what changes, the agent's reason and diagnosis, the blast radius (0 of 3 sites of the region
    used; approving makes it 1), the rule in words, and, unfolded, the KPI series it read as a
    table with UTC times. The page needs no sideways scroll; Approve is within reach and works:
    the run completes and the change is pushed once. alice, on a laptop, reads why she may not
    approve in words."""
    server = serve()
    run_id = server.start_run("alice", TASK)
    bob = people.sign_in(server, "bob", "#/inbox", viewport=PHONE)
    card, approval_id = pending_card(bob, "#inbox")
    expect(card.locator(".card-diff .diff-to")).to_have_text("3")
    expect(card.locator(".ev-reason")).to_contain_text("mis_set_handover")
    expect(card.locator(".ev-reason .untrusted")).to_contain_text("hoA3Offset 8 -> 3")
    expect(card.locator(".ev-diagnosis")).to_contain_text("top cause")
    expect(card.locator(".ev-diagnosis")).to_contain_text("restore the A3 offset")
    radius = card.locator(".ev-limit[data-rule='region-blast-radius']")
    expect(radius).to_have_attribute("data-used", "0")
    expect(radius).to_have_attribute("data-limit", "3")
    expect(radius).to_contain_text("0 of at most 3 sites in region north changed in the last 1 h; approving makes it 1")
    expect(radius.locator(".ev-cell[data-state='this']")).to_have_count(1)
    expect(card.locator(".ev-limit[data-rule='apply-rate']")).to_contain_text("ran 0 of at most 10 times")
    expect(card.locator(".card-rule-text")).to_contain_text("four-eyes")
    card.locator(".ev-reads summary").click()
    kpis = card.locator(".ev-read[data-tool='get_kpis'] .v-table")
    expect(kpis).to_contain_text("drop_rate_pct")
    expect(kpis.locator("time").first).to_have_text(
        re.compile(r"^20\d\d-\d\d-\d\d \d\d:\d\d:\d\dZ$")
    )  # not epoch seconds
    assert scroll_width(bob) <= PHONE["width"] and sideways(bob) == []
    people.shot(bob, "1-card-evidence-phone")
    # A pack may allow hundreds of calls an hour: its meter is one bar, not a cell per call.
    big = bob.evaluate(BIG_LIMIT)
    assert big == {"cells": 0, "bars": 1}, big
    assert scroll_width(bob) <= PHONE["width"] and sideways(bob) == []
    bob.evaluate("document.querySelector('.ev-limit[data-rule=\"big-rate\"]').remove()")
    approve = card.locator(".card-approve")
    approve.scroll_into_view_if_needed()
    assert in_viewport(bob, f'#inbox .card[data-approval-id="{approval_id}"] .card-approve')
    people.shot(bob, "2-card-actions-phone")
    approve.click()
    expect(card).to_have_attribute("data-status", "approved", timeout=RUN)

    alice = people.sign_in(server, "alice", f"#/runs/{run_id}", viewport=LAPTOP)
    mine = alice.locator(f'#messages .card[data-approval-id="{approval_id}"]')
    expect(mine.locator(".card-votes")).to_contain_text("bob")
    expect(alice.locator("#run-status")).to_have_attribute("data-status", "completed", timeout=RUN)
    server.assert_one_apply()
    people.assert_clean()


def test_the_requester_reads_why_she_may_not_approve_in_words(serve: Callable[..., Served], people: People) -> None:
    """No machine code on the card: four-eyes in a sentence."""
    server = serve()
    server.start_run("alice", TASK)
    alice = people.sign_in(server, "alice", "#/inbox", viewport=LAPTOP)
    card, _ = pending_card(alice, "#inbox")
    expect(card.locator(".card-why-not")).to_have_text(
        "You asked for this run: four-eyes means another engineer has to approve it."
    )
    expect(alice.locator("#inbox")).not_to_contain_text("self_approval")
    people.shot(alice, "1-why-not-laptop")
    people.assert_clean()


def runs_shown(page: Page) -> list[str]:
    shown: list[str] = page.eval_on_selector_all(
        "#runs-table tbody tr[data-run-id]", "els => els.map(e => e.dataset.runId)"
    )
    return shown


def test_filters_narrow_the_runs_list(serve: Callable[..., Served], people: People) -> None:
    """Three runs (alice: CS-101 waiting on its change, CS-104 healthy and done; bob: CS-102
    waiting): the status chips count them live; status, site, tool, who asked and the search
    each narrow the list to the runs that match; a column sorts; Clear brings them all back."""
    server = serve(incidents="CS-101:mis_set_handover,CS-102:mis_set_handover")
    a1 = server.api("alice", "POST", "/api/runs", json={"task": TASK, "run_id": "a1"})["id"]
    b1 = server.api("bob", "POST", "/api/runs", json={"task": "CS-102 drop rate is high, investigate", "run_id": "b1"})[
        "id"
    ]
    a2 = server.api("alice", "POST", "/api/runs", json={"task": "CS-104 looks slow, check it", "run_id": "a2"})["id"]
    alice = people.sign_in(server, "alice", "#/runs", viewport=LAPTOP)
    expect(alice.locator("#runs-counts [data-status='waiting'] .chip-count")).to_have_text("2", timeout=RUN)
    expect(alice.locator("#runs-counts [data-status='completed'] .chip-count")).to_have_text("1", timeout=RUN)
    expect(alice.locator("#runs-table tbody tr[data-run-id]")).to_have_count(3)
    people.shot(alice, "1-runs-laptop")

    alice.locator("#runs-counts [data-status='waiting']").click()
    expect(alice.locator("#runs-table tbody tr[data-run-id]")).to_have_count(2)
    assert sorted(runs_shown(alice)) == sorted([a1, b1])
    alice.locator("#runs-requester").select_option("bob")
    expect(alice.locator("#runs-table tbody tr[data-run-id]")).to_have_count(1)
    assert runs_shown(alice) == [b1]
    alice.locator("#runs-clear").click()
    expect(alice.locator("#runs-table tbody tr[data-run-id]")).to_have_count(3)
    alice.locator("#runs-target").select_option("CS-104")
    expect(alice.locator("#runs-table tbody tr[data-run-id]")).to_have_count(1)
    assert runs_shown(alice) == [a2]
    expect(alice.locator(f"#runs-table tr[data-run-id='{a2}'] .run-outcome")).to_have_text("answered")
    alice.locator("#runs-clear").click()
    alice.locator("#runs-tool").select_option("apply_change")
    expect(alice.locator("#runs-table tbody tr[data-run-id]")).to_have_count(2)
    alice.locator("#runs-clear").click()
    alice.locator("#runs-q").fill("CS-102 drop")
    expect(alice.locator("#runs-table tbody tr[data-run-id]")).to_have_count(1)
    assert runs_shown(alice) == [b1]
    people.shot(alice, "2-runs-searched-laptop")
    alice.locator("#runs-q").fill("")
    expect(alice.locator("#runs-table tbody tr[data-run-id]")).to_have_count(3)
    alice.locator("#runs-table th[data-sort='steps']").click()  # fewest steps first: the healthy site
    expect(alice.locator("#runs-table th[data-sort='steps']")).to_have_attribute("aria-sort", "ascending")
    assert runs_shown(alice)[0] == a2
    alice.locator("#runs-table th[data-sort='steps']").press("Enter")  # from the keyboard: most steps first
    expect(alice.locator("#runs-table th[data-sort='steps']")).to_have_attribute("aria-sort", "descending")
    assert runs_shown(alice)[-1] == a2
    people.assert_clean()


PAGES = {
    "new-request": "#/",
    "runs": "#/runs",
    "run": "#/runs/{run}",
    "timeline": "#/runs/{run}/timeline",
    "inbox": "#/inbox",
}


@pytest.mark.parametrize("size", ["laptop", "phone"])
def test_every_page_fits_the_screen(serve: Callable[..., Served], people: People, size: str) -> None:
    """At 1366 and at 390 px wide, every page (new request, runs, a run with its approval card,
    its timeline, the inbox and its decided history) needs no sideways scroll: the document is
    no wider than the screen and no box scrolls sideways (wide KPI tables scroll in their own
    box); the nav's Approvals and Sign out are on screen. A screenshot of each."""
    server = serve()
    run_id = server.start_run("alice", TASK)
    bob = people.sign_in(server, "bob", "#/inbox", viewport=SIZES[size])
    pending_card(bob, "#inbox")
    width = SIZES[size]["width"]
    for name, route in PAGES.items():
        bob.goto(f"{server.url}/{route.format(run=run_id)}")
        view = {"new-request": "#chat-view", "run": "#chat-view", "runs": "#runs-view", "timeline": "#timeline-view",
                "inbox": "#inbox-view"}[name]  # fmt: skip
        expect(bob.locator(view)).to_be_visible()
        ready = {"runs": "#runs-table tbody tr[data-run-id]", "run": "#messages .card[data-approval-id]",
                 "timeline": "#tl-rows .tl-row", "inbox": "#inbox .card"}.get(name)  # fmt: skip
        if ready:
            expect(bob.locator(ready).first).to_be_visible(timeout=RUN)
        assert scroll_width(bob) <= width, name
        assert sideways(bob) == [], name
        shown = bob.locator(view).inner_text()
        assert not re.search(r"\b(null|undefined|NaN)\b", shown), (name, shown[:2000])
        for control in ("#nav-inbox", "#nav-runs", "#signout"):
            assert in_viewport(bob, control), (name, control)
        people.shot(bob, f"{name}-{size}")
    bob.locator("#nav-inbox").click()
    expect(bob.locator("#inbox-view")).to_be_visible()
    card, approval_id = pending_card(bob, "#inbox")
    card.locator(".card-comment").fill("checked the KPIs")
    card.locator(".card-approve").click()
    expect(card).to_have_attribute("data-status", "approved", timeout=RUN)
    bob.locator("#inbox-tabs [data-tab='decided']").click()
    decided = bob.locator(f'#inbox .card[data-approval-id="{approval_id}"]')
    expect(decided).to_be_visible()
    expect(decided.locator(".card-votes")).to_contain_text("checked the KPIs")
    expect(decided.locator(".card-decided")).to_contain_text("UTC")
    expect(decided.locator(".card-expiry, .card-why-not, .card-approve")).to_have_count(0)  # decided: nothing to do
    assert not re.search(r"\b(null|undefined|NaN)\b", bob.locator("#inbox").inner_text())
    assert scroll_width(bob) <= width and sideways(bob) == []
    people.shot(bob, f"inbox-decided-{size}")
    people.assert_clean()


def test_hostile_tool_and_model_text_stays_inert_in_the_timeline(serve: Callable[..., Served], people: People) -> None:
    """The injection app's tool output and answer (an img with onerror, a script, a javascript:
    link, an iframe) opened in the timeline's details: shown literally, no element made of them,
    nothing run or loaded."""
    server = serve(INJECTION_APP, {"alice": "noc-engineer"})
    run_id = server.start_run("alice", "CS-101 notes? <img src=x onerror=window.__pwned=4>")
    alice = people.sign_in(server, "alice", f"#/runs/{run_id}/timeline", viewport=LAPTOP)
    requests: list[str] = []
    alice.on("request", lambda r: requests.append(r.url))
    expect(alice.locator("#tl-status")).to_have_attribute("data-status", "completed", timeout=RUN)
    alice.locator("#tl-unfold").check()
    for row in alice.locator("#tl-rows .tl-row[data-seq]").all():
        row.click()
    rows = alice.locator("#tl-rows")
    expect(rows.locator(".tl-detail").first).to_be_visible()
    expect(rows).to_contain_text('<img src=x onerror="window.__pwned=1">')
    expect(rows).to_contain_text("<script>window.__pwned=2</script>")
    expect(rows).to_contain_text("<img src=x onerror=window.__pwned=1> done")
    expect(alice.locator("#tl-task")).to_contain_text("<img src=x onerror=window.__pwned=4>")
    people.shot(alice, "1-inert-timeline")
    view = alice.locator("#timeline-view")
    assert view.locator("img, iframe, script, object, embed, svg, frame").count() == 0
    hrefs: list[str | None] = alice.eval_on_selector_all(
        "#timeline-view a", "els => els.map(e => e.getAttribute('href'))"
    )
    assert not [h for h in hrefs if h and ("javascript" in h.lower() or "evil" in h)], hrefs
    assert alice.evaluate("typeof window.__pwned") == "undefined"
    assert [u for u in requests if "evil.example" in u or u.startswith(f"{server.url}/x")] == []
    people.assert_clean()


def test_the_timeline_follows_a_live_run(serve: Callable[..., Served], people: People) -> None:
    """A run waiting for its approval: the timeline shows the wait as open ('waiting now'); once
    bob approves (through the API), the open timeline catches up by itself (no reload): the
    approval with who and when, the push, the completed run, every step once."""
    server = serve()
    run_id = server.start_run("alice", TASK)
    alice = people.sign_in(server, "alice", "#/inbox", viewport=LAPTOP)
    _, approval_id = pending_card(alice, "#inbox")
    alice.goto(f"{server.url}/#/runs/{run_id}/timeline")
    expect(alice.locator("#tl-status")).to_have_attribute("data-status", "waiting")
    waiting = alice.locator(".tl-row[data-kind='signal'][data-status='waiting']")
    expect(waiting.locator(".tl-chip.open")).to_have_text("waiting now")
    server.api("bob", "POST", f"/api/approvals/{approval_id}/approve", json={"comment": "ok"})
    expect(alice.locator("#tl-status")).to_have_attribute("data-status", "completed", timeout=RUN)
    expect(alice.locator(".tl-row[data-kind='approval']").last).to_contain_text("approved by bob")
    expect(alice.locator(".tl-row[data-kind='tool'][data-status='completed']").last).to_contain_text("notify(")
    seqs = timeline_seqs(alice)
    assert seqs == list(range(1, len(seqs) + 1))
    assert seqs == [e["seq"] for e in server.api("alice", "GET", f"/api/runs/{run_id}/timeline")["rows"]]
    people.assert_clean()
