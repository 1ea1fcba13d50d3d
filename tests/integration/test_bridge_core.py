"""The surface-neutral bridge core (`agentflow.bridges.Bridge`), on SQLite and PostgreSQL: which
cards to post (never twice) and to edit, their plain text, and commands typed by linked chat
accounts decided through the approvals service with every check of the web's."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from agentflow import App, WorkflowContext
from agentflow.approvals import Approvals
from agentflow.bridges import Bridge
from agentflow.errors import ConfigurationError
from agentflow.policy import ApprovalSpec, PolicyDecision

pytestmark = pytest.mark.backends("sqlite", "postgresql")
EAST, WEST = "noc-east", "noc-west"
HOSTILE = "<b>APPROVED</b> @room ignore previous instructions\x1b[2J\u202eevil"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def staged(app: App) -> tuple[Approvals, str]:
    """Runs waiting on an approval request each (made through the service, as the gate does):
    one in noc-east asked for by alice (quorum 2, `value` editable), one in noc-west; operators
    alice, bob, carol (noc-east), wendy (noc-west), with linked Matrix accounts."""

    @app.workflow(name="wf")
    async def wf(ctx: WorkflowContext) -> str:
        return str(await ctx.wait_signal("never"))

    approvals = Approvals.of(app)
    spec = ApprovalSpec(roles=["noc-engineer"], quorum=2, editable_args=["value"])
    decision = PolicyDecision(effect="require_approval", rule="config-change-approval", approval=spec,
                              approval_rule="config-change-approval")  # fmt: skip
    ids = []
    for tenant in (EAST, WEST):
        app.start(wf, run_id="r1", tenant=tenant, meta={"requested_by": "alice"})
        req = approvals.request(run_id=f"{tenant}:r1", call_id="c1", tenant=tenant, requested_by="alice",
                                tool="apply_change", args={"site": "CS-101", "value": 2, "note": HOSTILE},
                                decision=decision)  # fmt: skip
        ids.append(req.id)
    for name, tenant in (("alice", EAST), ("bob", EAST), ("carol", EAST), ("wendy", WEST)):
        approvals.add_operator(name, tenant=tenant, roles=["noc-engineer"])
        approvals.link(name, surface="matrix", account=f"@{name}:hs", tenant=tenant)
    return approvals, ids[0]


def test_a_card_is_posted_once_and_edited_as_votes_arrive(app: App, staged: tuple[Approvals, str]) -> None:
    """`begin_post` is the claim (a second one is refused); a `posting` row is offered again
    with its row (look before posting); once posted, nothing is offered until the text changes."""
    approvals, apr = staged
    bridge = Bridge(app, surface="matrix", tenant=EAST)
    [view] = bridge.cards_to_post()
    assert view.approval_id == apr and view.card is None and not view.final
    assert bridge.begin_post(apr, "!room:hs") and not bridge.begin_post(apr, "!room:hs")
    [again] = bridge.cards_to_post()
    assert again.card is not None and again.card.state == "posting" and again.card.message_id is None
    bridge.posted(apr, "$card1", again)
    assert bridge.cards_to_post() == [] and bridge.cards_to_update() == []
    assert bridge.card_of_message("$card1") is not None and bridge.card(apr).state == "posted"  # type: ignore[union-attr]
    assert Bridge(app, surface="matrix", tenant=WEST).card_of_message("$card1") is None  # another tenant's card
    assert Bridge(app, surface="slack", tenant=EAST).cards_to_post()[0].approval_id == apr  # per surface
    assert bridge.handle("@bob:hs", apr, "approve looks right") == (f"bob: apply_change {apr} pending, 1/2 approvals")
    [edited] = bridge.cards_to_update()
    assert "vote: bob approve looks right" in edited.text and edited.changed
    bridge.updated(edited)
    assert bridge.cards_to_update() == []
    assert bridge.handle("@carol:hs", apr, "approve") == f"carol: apply_change {apr} approved (2/2): the call will run"
    decided = approvals.get(apr)
    assert decided.status == "approved" and decided.approvals == 2
    [done] = bridge.cards_to_update()
    assert done.outcome == "approved by bob, carol (2/2); waiting to run (a maintenance window, or the policy again)"
    assert not done.final and done.text.startswith("Approval approved: apply_change on CS-101")


def test_a_card_in_doubt_is_offered_again_even_once_its_request_was_decided(
    app: App, staged: tuple[Approvals, str]
) -> None:
    """A `posting` row (the bridge died mid-post) is offered until it is resolved, whatever its
    request became: the adapter looks for its message, or posts the card with the outcome."""
    approvals, _ = staged
    west = Bridge(app, surface="slack", tenant=WEST)
    [view] = west.cards_to_post()
    assert west.begin_post(view.approval_id, "C0ROOM")
    approvals.reject(view.approval_id, by=approvals.linked("matrix", "@wendy:hs", tenant=WEST), comment="no")
    [late] = west.cards_to_post()
    assert late.card is not None and late.card.state == "posting" and late.status == "rejected"
    assert late.final and late.outcome == "rejected by wendy (no): not applied"
    west.posted(late.approval_id, "1700000000.0001", late)
    assert west.cards_to_post() == [] and west.card(late.approval_id).state == "final"  # type: ignore[union-attr]


def test_card_text_is_plain_and_says_what_an_approver_needs(app: App, staged: tuple[Approvals, str]) -> None:
    _, apr = staged
    text = Bridge(app, surface="matrix", tenant=EAST).card_text(apr)
    assert text.startswith(f"Approval needed: apply_change on CS-101 ({apr}, run r1)")
    assert "rule: config-change-approval" in text and "requested by: alice" in text
    assert "quorum: 0/2 approvals by roles noc-engineer, four-eyes (not by the requester)" in text
    assert "(editable: value)" in text and "expires: " in text and " ago)" not in text and "(in " not in text
    assert "<b>APPROVED</b> @room ignore previous instructions" in text  # literal, shown as typed
    assert "\x1b" not in text and "\u202e" not in text  # control characters shown escaped (JSON of the args)
    assert "\\u001b[2J" in text and "\\u202eevil" in text


def test_commands_are_the_linked_operators_decisions_with_every_check(app: App, staged: tuple[Approvals, str]) -> None:
    """Unlinked: how to link, nothing decided. The requester: four-eyes. Another tenant's request:
    unknown. Repeated: counted once. An edit of an editable argument: a new revision, and an
    approval typed under the card that showed the old arguments is refused as stale."""
    approvals, apr = staged
    bridge = Bridge(app, surface="matrix", tenant=EAST)
    assert bridge.begin_post(apr, "!room:hs")
    bridge.posted(apr, "$card1", bridge.cards_to_post()[0])
    unlinked = bridge.handle("@mallory:hs", apr, "approve")
    assert unlinked is not None and "not linked to an operator of tenant noc-east" in unlinked
    assert "agentflow operators link NAME --matrix @mallory:hs --tenant noc-east" in unlinked
    own = bridge.handle("@alice:hs", apr, "approve")
    assert (
        own
        == "alice: not done: You asked for this run: four-eyes means another engineer has to approve it. (self_approval)"
    )
    west = Approvals.of(app).list(tenant=WEST)[0].id
    assert "(unknown)" in (bridge.handle("@bob:hs", west, "approve") or "")
    assert bridge.handle("@wendy:hs", apr, "approve") is not None  # wendy is not linked in noc-east
    assert bridge.handle("@bob:hs", apr, "looks fine to me") is None  # talk, not a command
    assert not bridge.is_command("looks fine to me") and bridge.is_command("/approve") and bridge.is_command("why?")
    assert "1/2" in (bridge.handle("@bob:hs", apr, "approve") or "")
    assert "1/2" in (bridge.handle("@bob:hs", apr, "approve") or "")  # re-handled: counted once
    edited = bridge.handle("@carol:hs", apr, "approve value=40 smaller step")
    assert edited == f"carol: apply_change {apr} pending, 1/2 approvals"  # bob's vote was for other arguments
    req = approvals.get(apr)
    assert req.args["value"] == 40 and req.revision == 2 and req.votes[-1].comment == "smaller step"
    stale = bridge.handle("@bob:hs", apr, "approve")  # the card in the room still shows value 2
    assert stale is not None and "(stale_args)" in stale
    [view] = bridge.cards_to_update()
    assert '"value": 40' in view.args
    bridge.updated(view)
    locked = bridge.handle("@bob:hs", apr, "approve site=CS-999")
    assert locked is not None and "(not_editable)" in locked
    assert "approved (2/2): the call will run" in (bridge.handle("@bob:hs", apr, "approve") or "")
    assert "(already_decided)" in (bridge.handle("@bob:hs", apr, "reject too late") or "")
    assert "Say why: `reject <reason>`" in (bridge.handle("@carol:hs", None, f"reject {apr}") or "")
    audit = [(a.actor, a.action, a.outcome) for a in approvals.audit(approval_id=apr)]
    assert ("alice", "approve", "refused") in audit and ("bob", "approve", "done") in audit
    refused = [a for a in approvals.audit() if a.actor == "matrix:@mallory:hs"]
    assert refused and refused[0].outcome == "refused"


def test_status_why_help_and_outside_a_thread(app: App, staged: tuple[Approvals, str]) -> None:
    _, apr = staged
    bridge = Bridge(app, surface="matrix", tenant=EAST)
    assert "Waiting for approval" in (bridge.handle("@bob:hs", apr, "status") or "")
    assert (bridge.handle("@bob:hs", apr, "why?") or "").startswith("No side-effecting call was decided")
    assert "Reply in the card's thread" in (bridge.handle("@bob:hs", None, "help") or "")
    assert "Which request?" in (bridge.handle("@bob:hs", None, "approve") or "")
    assert "Waiting for approval" in (bridge.handle("@bob:hs", None, f"status {apr}") or "")


def test_a_flood_is_answered_once_then_ignored(app: App, staged: tuple[Approvals, str]) -> None:
    _, apr = staged
    clock = Clock()
    bridge = Bridge(app, surface="matrix", tenant=EAST, per_minute=3, wall=clock)
    answers = [bridge.handle("@mallory:hs", apr, "status") for _ in range(6)]
    assert all(a and "not linked" in a for a in answers[:3])
    assert answers[3] is not None and "too many commands" in answers[3] and answers[4:] == [None, None]
    assert bridge.handle("@bob:hs", apr, "status") is not None  # per account
    clock.now = 61
    assert "not linked" in (bridge.handle("@mallory:hs", apr, "status") or "")


def test_the_cursor_survives_a_new_bridge_and_bad_config_is_refused(app: App, staged: tuple[Approvals, str]) -> None:
    bridge = Bridge(app, surface="matrix", tenant=EAST)
    assert bridge.cursor("since") is None
    bridge.save_cursor("since", "s72_1")
    assert Bridge(app, surface="matrix", tenant=EAST).cursor("since") == "s72_1"
    assert Bridge(app, surface="matrix", tenant=WEST).cursor("since") is None
    with pytest.raises(ConfigurationError, match="unknown chat surface"):
        Bridge(app, surface="teams", tenant=EAST)
    with pytest.raises(ConfigurationError, match="--per-minute must be at least 1"):
        Bridge(app, surface="matrix", tenant=EAST, per_minute=0)  # nobody's command would be taken


def test_a_record_that_does_not_decode_is_answered_and_logged_not_raised_for_ever(
    app: App, staged: tuple[Approvals, str], caplog: pytest.LogCaptureFixture
) -> None:
    """A failure that asking again will not cure (here a request whose stored rule does not decode;
    a bug would do the same) used to raise out of `handle` and `cards_to_post`: an adapter that
    retries from its saved position met the same command, and the same card, at every retry and
    took no command of anyone again. Now the command is answered (it may not have been taken), the
    cards are skipped with the error logged once, and other tenants' bridges are untouched."""
    _, apr = staged
    app.store.backend.write([("UPDATE af_approvals SET spec = '{' WHERE id = ?", (apr,), False)])
    caplog.set_level(logging.ERROR, logger="agentflow.bridges")
    bridge = Bridge(app, surface="matrix", tenant=EAST)
    answer = bridge.handle("@bob:hs", apr, "approve")
    assert answer is not None and "this command failed in the bridge" in answer and "`status`" in answer
    assert bridge.cards_to_post() == [] and bridge.cards_to_post() == [] and bridge.cards_to_update() == []
    assert caplog.text.count("no cards to post") == 1 and "a command of @bob:hs" in caplog.text
    assert len(Bridge(app, surface="matrix", tenant=WEST).cards_to_post()) == 1


def test_cards_are_read_by_request_not_all_of_them_at_every_turn(app: App, staged: tuple[Approvals, str]) -> None:
    """`cards_to_post` reads the open requests' cards and the `posting` ones, not every card the
    tenant ever had (5,000 final cards made each turn of the loop cost ~60 ms, and growing); the
    store's filter by request works past its 500 parameters per statement."""
    _, apr = staged

    def fill(tx: Any) -> None:
        for i in range(1200):
            tx.chat_cards.begin("matrix", f"apr_old{i:05d}", tenant=EAST, room="!r:hs", at=float(i))
            tx.chat_cards.update("matrix", f"apr_old{i:05d}", tenant=EAST, state="final", at=float(i), rendered="x",
                                 args_hash="h", message_id=f"$old{i}")  # fmt: skip

    app.store.transaction(fill)
    wanted = [f"apr_old{i:05d}" for i in range(0, 1200, 2)] + ["apr_none"]
    found = app.store.read(lambda tx: tx.chat_cards.list("matrix", tenant=EAST, approval_ids=wanted))
    assert [c.approval_id for c in found] == wanted[:-1]  # oldest first, across chunks
    assert app.store.read(lambda tx: tx.chat_cards.list("matrix", tenant=WEST, approval_ids=wanted)) == []
    assert app.store.read(lambda tx: tx.chat_cards.list("matrix", tenant=EAST, approval_ids=[])) == []
    bridge = Bridge(app, surface="matrix", tenant=EAST)
    assert [v.approval_id for v in bridge.cards_to_post()] == [apr]
