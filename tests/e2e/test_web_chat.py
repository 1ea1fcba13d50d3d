"""The web chat of `agentflow serve` in a real browser (Debian's Chromium, driven by Playwright).

Each test starts a real server (`agentflow serve --app agentflow_noc.app:app` on a fresh SQLite
file and a free port, CS-101 in trouble, the clock inside the maintenance window so an approved
change applies at once) and operators made with `agentflow operators add`; then people sign in
with their tokens in browser contexts of their own and use the page the way an operator would.
Nothing is reloaded unless the test says so: the page must follow the run live.

Screenshots of the key points land in test-artifacts/browser/ (gitignored; $AGENTFLOW_ARTIFACTS
moves them). The fixtures are tests/e2e/conftest.py's, the page helpers tests/support/browser.py's.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest
from playwright.sync_api import expect
from support.browser import ENGINEERS, RUN, TASK, People, card_by_id, page_fetch, pending_card, say, seqs, start_in_chat
from support.served import Served

pytestmark = pytest.mark.slow

INJECTION_APP = "tests.e2e.webapp:app"  # tests/e2e/webapp.py


# -- the tests ----------------------------------------------------------------------------------
def test_a_run_is_followed_live_and_approved_by_a_second_engineer(serve: Callable[..., Served], people: People) -> None:
    """alice asks in the chat; the steps and the approval card arrive live; she may not approve
    her own run's change (four-eyes); bob approves from his inbox, and alice's page, never
    reloaded, shows the card approved, the run completed and its answer. The change was pushed
    once."""
    server = serve()
    alice = people.sign_in(server, "alice")
    expect(alice.locator("#operator-roles")).to_have_text("noc-engineer")
    run_id = start_in_chat(alice)
    expect(alice.locator("#messages .event[data-seq]").first).to_be_visible(timeout=RUN)
    card, approval_id = pending_card(alice)
    shown = seqs(alice)
    assert len(shown) >= 3 and shown == sorted(set(shown)), shown  # each step once, in order
    expect(card.locator(".card-diff .diff-from")).to_have_text("8")
    expect(card.locator(".card-diff .diff-to")).to_have_text("3")
    expect(card.locator(".card-diff")).to_contain_text("hoA3Offset")
    expect(card.locator(".card-rule")).to_have_text("config-change-approval")
    expect(card.locator(".card-requested-by")).to_have_text("alice")
    expect(card.locator(".card-quorum")).to_contain_text("0/1")
    expect(card.locator(".card-approve")).to_have_count(0)  # four-eyes: not for the requester
    expect(card.locator(".card-why-not")).to_contain_text("four-eyes")
    expect(alice.locator("#run-status")).to_have_attribute("data-status", "waiting")
    expect(alice.locator("#stream-state")).to_have_attribute("data-state", "live")
    people.shot(alice, "1-alice-pending")

    bob = people.sign_in(server, "bob")
    bob.locator("#nav-inbox").click()
    expect(bob.locator("#inbox-view")).to_be_visible()
    inbox_card = card_by_id(bob, approval_id, "#inbox")
    expect(inbox_card).to_have_attribute("data-status", "pending")
    expect(inbox_card.locator(".card-requested-by")).to_have_text("alice")
    expect(inbox_card.locator(".card-why-not")).to_have_count(0)
    expect(bob.locator("#inbox-count")).to_have_text("1")
    people.shot(bob, "2-bob-inbox")
    inbox_card.locator(".card-approve").click()
    expect(bob.locator(f'#inbox .card[data-approval-id="{approval_id}"][data-status="pending"]')).to_have_count(0)
    expect(bob.locator("#page-error")).to_be_hidden()

    # alice's page was left alone: the stream brings the decision, the rest of the run, the answer
    expect(card).to_have_attribute("data-status", "approved", timeout=RUN)
    expect(card.locator(".card-votes")).to_contain_text("bob")
    expect(alice.locator("#run-status")).to_have_attribute("data-status", "completed", timeout=RUN)
    answer = alice.locator("#run-answer")
    expect(answer).to_be_visible()
    expect(answer).to_have_attribute("data-outcome", "answered")
    expect(answer.locator("pre.untrusted")).not_to_be_empty()
    expect(alice.locator("#stream-state")).to_have_attribute("data-state", "ended")
    card.scroll_into_view_if_needed()
    people.shot(alice, "3-alice-completed")
    shown = seqs(alice)
    assert shown == sorted(set(shown)), shown
    assert shown == [e["seq"] for e in server.api("alice", "GET", f"/api/runs/{run_id}")["events"]]
    server.assert_one_apply()
    people.assert_clean()


def test_a_viewer_sees_the_card_but_cannot_decide_it(serve: Callable[..., Served], people: People) -> None:
    """carol (role viewer) sees alice's pending card, without an approve button and with the
    reason (the missing role, in words); approving anyway, straight through the API with her session's
    CSRF value or as a chat command, is refused (403 missing_role) and the card stays pending."""
    server = serve(operators={**ENGINEERS, "carol": "viewer"})
    run_id = server.start_run("alice", TASK)
    carol = people.sign_in(server, "carol", "#/inbox")
    expect(carol.locator("#operator-roles")).to_have_text("viewer")
    card, approval_id = pending_card(carol, "#inbox")
    expect(card.locator(".card-rule")).to_have_text("config-change-approval")
    expect(card.locator(".card-requested-by")).to_have_text("alice")
    expect(card.locator(".card-approve")).to_have_count(0)
    expect(card.locator(".card-reject")).to_have_count(0)
    # in words: the role it needs and the one she has, never the machine code
    expect(card.locator(".card-why-not")).to_have_text(
        "Deciding needs the role noc-engineer; you have viewer in noc-east."
    )
    expect(carol.locator("#inbox-count")).to_have_text("0")  # nothing she can decide
    people.shot(carol, "1-carol-inbox")

    refused = page_fetch(carol, "POST", f"/api/approvals/{approval_id}/approve", {"comment": "let me"})
    assert refused["status"] == 403, refused
    assert refused["json"]["error"]["code"] == "missing_role", refused
    assert page_fetch(carol, "GET", f"/api/approvals/{approval_id}")["json"]["status"] == "pending"

    # the run's conversation: the same card, the same refusal for the chat command
    card.locator(".card-run-link").click()
    expect(carol).to_have_url(re.compile(f"#/runs/{run_id}$"))
    card = card_by_id(carol, approval_id)
    expect(card).to_have_attribute("data-status", "pending")
    expect(card.locator(".card-approve")).to_have_count(0)
    expect(card.locator(".card-why-not")).to_contain_text("noc-engineer")
    say(carol, "approve let me")
    expect(carol.locator(".chat-reply.error .reply-text")).to_contain_text("noc-engineer")
    expect(card).to_have_attribute("data-status", "pending")
    people.shot(carol, "2-carol-refused")
    assert server.api("bob", "GET", f"/api/approvals/{approval_id}")["status"] == "pending"
    assert server.net.effects("apply") == []
    people.assert_clean()


def test_chat_commands_explain_and_approve(serve: Callable[..., Served], people: People) -> None:
    """bob, in the conversation of alice's waiting run, asks `status` and `why?` (answers naming
    the approval and its rule), then types `approve looks right`: the card turns approved with
    his comment and the run completes."""
    server = serve()
    run_id = server.start_run("alice", TASK)
    bob = people.sign_in(server, "bob", f"#/runs/{run_id}")
    card, approval_id = pending_card(bob)
    expect(card.locator(".card-approve")).to_be_visible()  # bob may decide; he uses the chat instead

    say(bob, "status")
    status = bob.locator('.chat-reply[data-kind="status"] .reply-text')
    expect(status).to_contain_text(approval_id)
    expect(status).to_contain_text("config-change-approval")
    expect(status).to_contain_text("waiting")
    say(bob, "why?")
    why = bob.locator('.chat-reply[data-kind="why"] .reply-text')
    expect(why).to_contain_text("require_approval")
    expect(why).to_contain_text("config-change-approval")
    expect(card).to_have_attribute("data-status", "pending")
    people.shot(bob, "1-status-why")

    say(bob, "approve looks right")
    expect(bob.locator('.chat-reply[data-kind="approval"] .reply-text')).to_contain_text("approved")
    expect(card).to_have_attribute("data-status", "approved")
    expect(card.locator(".card-votes")).to_contain_text("looks right")
    expect(bob.locator(".chat-reply.error")).to_have_count(0)
    expect(bob.locator("#run-status")).to_have_attribute("data-status", "completed", timeout=RUN)
    people.shot(bob, "2-approved")
    assert [m.text_content() for m in bob.locator(".chat-user .bubble-text").all()] == [
        TASK, "status", "why?", "approve looks right",
    ]  # fmt: skip
    server.assert_one_apply()
    people.assert_clean()


def test_a_bare_help_on_the_new_request_page_is_help(serve: Callable[..., Served], people: People) -> None:
    """Issue 15: `help` typed on the new-request page is answered with the help (a reply, not an
    error) and starts no run; `help me fix CS-101 ...` starts one."""
    server = serve()
    bob = people.sign_in(server, "bob")
    bob.locator("#nav-chat").click()
    say(bob, "help")
    reply = bob.locator('.chat-reply[data-kind="help"] .reply-text')
    expect(reply).to_contain_text("is a chat command, not a task")
    expect(reply).to_contain_text("Type a task for the copilot")
    expect(bob.locator(".chat-reply.error")).to_have_count(0)
    assert "#/runs/" not in bob.url and server.api("bob", "GET", "/api/runs")["runs"] == []
    run_id = start_in_chat(bob, f"help me fix {TASK}")
    assert server.api("bob", "GET", f"/api/runs/{run_id}")["status"] in ("pending", "running", "waiting", "completed")
    people.assert_clean()


def test_hostile_tool_and_model_text_renders_inert(serve: Callable[..., Served], people: People) -> None:
    """A tool's output and the model's answer full of markup (an img with onerror, a script, a
    javascript: link, a markdown link, an iframe) are shown literally as untrusted text: no
    element is made of them, nothing runs, nothing is loaded, and clicking the text goes nowhere."""
    server = serve(INJECTION_APP, {"alice": "noc-engineer"})
    alice = people.sign_in(server, "alice")
    requests: list[str] = []
    alice.on("request", lambda r: requests.append(r.url))
    start_in_chat(alice, "CS-101 notes? <img src=x onerror=window.__pwned=4>")
    expect(alice.locator("#run-status")).to_have_attribute("data-status", "completed", timeout=RUN)
    tool_text = alice.locator('#messages .event[data-kind="tool"] pre.untrusted')
    expect(tool_text).to_have_count(1)
    for literal in ('<img src=x onerror="window.__pwned=1">', "<script>window.__pwned=2</script>",
                    '<a href="javascript:window.__pwned=3">click</a>', "[link](http://evil.example)",
                    '<iframe src="http://evil.example">'):  # fmt: skip
        expect(tool_text).to_contain_text(literal)
    expect(alice.locator("#run-answer pre.untrusted")).to_have_text("<img src=x onerror=window.__pwned=1> done")
    expect(alice.locator("#messages .chat-user .bubble-text")).to_have_text(
        "CS-101 notes? <img src=x onerror=window.__pwned=4>"
    )
    people.shot(alice, "1-inert")

    assert alice.locator("#messages img, #messages iframe, #messages script, #messages object").count() == 0
    assert alice.locator("#messages embed, #messages svg, #messages frame").count() == 0
    hrefs: list[str | None] = alice.eval_on_selector_all("#messages a", "els => els.map(e => e.getAttribute('href'))")
    assert not [h for h in hrefs if h and ("javascript" in h.lower() or "evil" in h)], hrefs
    assert alice.evaluate("typeof window.__pwned") == "undefined"

    before = alice.url
    tool_text.click()
    alice.get_by_text("[link](http://evil.example)").click()
    alice.locator("#run-answer pre.untrusted").click()
    expect(alice).to_have_url(before)
    assert len(alice.context.pages) == 1
    assert alice.evaluate("typeof window.__pwned") == "undefined"
    loaded = [u for u in requests if "evil.example" in u or u.startswith(f"{server.url}/x")]
    assert loaded == [], loaded
    people.assert_clean()


def test_the_page_survives_a_server_crash_and_restart(serve: Callable[..., Served], people: People) -> None:
    """The server is SIGKILLed while alice's run waits for bob: her page says it is
    reconnecting, and once a new server runs on the same port and store it reconnects by itself
    (no reload, same session cookie); bob, signed in before the crash, approves from the page he
    had open; alice's page catches up to the end with every step shown once. One push."""
    server = serve()
    alice = people.sign_in(server, "alice")
    run_id = start_in_chat(alice)
    card, approval_id = pending_card(alice)
    expect(alice.locator("#stream-state")).to_have_attribute("data-state", "live")
    bob = people.sign_in(server, "bob", "#/inbox")
    inbox_card = card_by_id(bob, approval_id, "#inbox")
    expect(inbox_card.locator(".card-approve")).to_be_visible()
    before_crash = seqs(alice)

    server.kill()
    expect(alice.locator("#stream-state")).to_have_attribute("data-state", "reconnecting")
    people.shot(alice, "1-alice-reconnecting")
    server.start()
    server.wait_ready()
    expect(alice.locator("#stream-state")).to_have_attribute("data-state", "live", timeout=RUN)
    expect(alice.locator("#signin-view")).to_be_hidden()
    session = page_fetch(alice, "GET", "/api/session")
    assert session["status"] == 200 and session["json"]["operator"] == "alice", session
    people.shot(alice, "2-alice-live-again")

    inbox_card.locator(".card-approve").click()
    expect(bob.locator(f'#inbox .card[data-approval-id="{approval_id}"][data-status="pending"]')).to_have_count(0)
    expect(bob.locator("#signin-view")).to_be_hidden()
    expect(bob.locator(f'#inbox .card[data-approval-id="{approval_id}"] .card-error')).to_have_count(0)

    expect(card).to_have_attribute("data-status", "approved", timeout=RUN)
    expect(alice.locator("#run-status")).to_have_attribute("data-status", "completed", timeout=RUN)
    expect(alice.locator("#run-answer")).to_be_visible()
    expect(alice.locator("#stream-state")).to_have_attribute("data-state", "ended")
    alice.locator("#run-answer").scroll_into_view_if_needed()
    people.shot(alice, "3-alice-completed")
    shown = seqs(alice)
    assert len(shown) == len(set(shown)), f"steps shown twice: {shown}"
    assert shown[: len(before_crash)] == before_crash and shown == sorted(shown), shown
    assert shown == [e["seq"] for e in server.api("alice", "GET", f"/api/runs/{run_id}")["events"]]
    server.assert_one_apply()
    people.assert_clean()


def test_the_conversation_follows_the_live_run_to_its_answer(serve: Callable[..., Served], people: People) -> None:
    """alice, who never scrolls, sees what the run brings as it comes: the approval card (down to
    why she may not approve it), then, once bob approved, the final answer."""
    server = serve()
    alice = people.sign_in(server, "alice")
    start_in_chat(alice)
    card, approval_id = pending_card(alice)
    people.shot(alice, "1-card-arrived")
    expect(card.locator(".card-why-not")).to_be_in_viewport(ratio=1, timeout=3_000)
    server.api("bob", "POST", f"/api/approvals/{approval_id}/approve", json={"comment": ""})
    expect(alice.locator("#run-status")).to_have_attribute("data-status", "completed", timeout=RUN)
    people.shot(alice, "2-completed")
    expect(alice.locator("#run-answer")).to_be_in_viewport()
    people.assert_clean()
