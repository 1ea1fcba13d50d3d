"""The Slack bridge end to end: `agentflow chat-bridge slack` as a real subprocess, on the store of
a real `agentflow serve` (whose worker drives the NOC copilot on the offline runbook model,
inside the maintenance window), with Slack's two sides played for real:

- **inbound**: interaction payloads built like Slack's (block_actions, view_submission), signed
  with the test app's signing secret exactly as Slack signs them, POSTed over HTTP to the
  bridge's `/slack/events`; and forgeries of them (a bad signature, a stale timestamp, a replay);
- **outbound**: every Web API call of the bridge goes to a local stand-in of Slack's API
  (tests/support/slack_api.py) that answers like Slack, keeps the channel's messages, checks
  Block Kit's limits and records every call. Slack itself cannot be reached from CI.

alice asks the copilot (she is the requester: four-eyes refuses her approval); bob approves;
eve's Slack account is linked to nobody; dave is an operator of another tenant.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.served import CLI, NOC_APP, ROOT, Served, env
from support.slack_api import Call, SlackApi
from support.slack_bridge import CHANNEL, TOKEN, SlackBridge, form, signed_headers

from agentflow.testing import assert_eventually

pytestmark = pytest.mark.slow

ALICE, BOB, EVE, DAVE = "UALICE001", "UBOB00001", "UEVE00001", "UDAVE0001"
APPROVE, REJECT, EDIT = "af_approve", "af_reject", "af_edit"
# One site per test (CS-101..106 are the north region, CS-107 the other tenant's).
SITES = ("CS-101", "CS-102", "CS-103", "CS-104", "CS-105", "CS-106", "CS-107")
RUN = 60  # seconds a run or the bridge may take to reach a point (a few in practice)


def task(site: str) -> str:
    return f"{site} drop rate is high since this morning, investigate and fix it."


class World:
    """A served NOC copilot (tenants noc-east and noc-west), the Slack stand-in, the bridge."""

    def __init__(self, tmp: Path, api: SlackApi) -> None:
        self.api = api
        self.served = Served(tmp, NOC_APP, incidents=",".join(f"{s}:mis_set_handover" for s in SITES))
        self.served.add_operators({"alice": "noc-engineer", "bob": "noc-engineer"})
        self.served.add_operators({"dave": "noc-engineer"}, tenant="noc-west")
        for name, account, tenant in (
            ("alice", ALICE, "noc-east"),
            ("bob", BOB, "noc-east"),
            ("dave", DAVE, "noc-west"),
        ):
            cli(self.served, "operators", "link", name, "--slack", account, "--tenant", tenant)
        self.served.start()
        self.served.wait_ready()
        self.bridge = SlackBridge(self.served, api)

    def parked(self, who: str, site: str) -> dict[str, Any]:
        """Start `who`'s run on `site`; its approval card (API.md `Card`) once it waits on it."""
        run_id = self.served.start_run(who, task(site))

        def waiting() -> dict[str, Any] | None:
            run = self.served.api(who, "GET", f"/api/runs/{run_id}")
            assert run["status"] not in ("completed", "failed", "cancelled"), run
            pending = [c for c in run["approvals"] if c["status"] == "pending"]
            return pending[0] if run["status"] == "waiting" and pending else None

        card: dict[str, Any] = assert_eventually(waiting, timeout=RUN, message=f"{run_id} never waited on an approval")
        return card

    def request(self, approval_id: str, who: str = "bob") -> dict[str, Any]:
        card: dict[str, Any] = self.served.api(who, "GET", f"/api/approvals/{approval_id}")
        return card

    def card_message(self, approval_id: str) -> tuple[Call, str]:
        """The chat.postMessage of `approval_id`'s card (exactly one), and its ts."""
        calls = assert_eventually(lambda: cards_of(self.api, approval_id), timeout=RUN,
                                  message=f"no card posted for {approval_id}:\n{self.bridge.log_tail()}")  # fmt: skip
        assert len(calls) == 1, [c.args for c in calls]
        assert calls[0].answer is not None
        return calls[0], str(calls[0].answer["ts"])

    def told(self, user: str, pattern: str, since: int = 0) -> str:
        """The ephemeral message to `user` (after call number `since`) matching `pattern`."""

        def found() -> str | None:
            texts = [c.args.get("text", "") for c in self.api.calls[since:] if c.method == "chat.postEphemeral"
                     and c.args.get("user") == user]  # fmt: skip
            return next((t for t in texts if re.search(pattern, t)), None)

        return str(assert_eventually(found, timeout=30, message=f"{user} was never told /{pattern}/"))


def cli(served: Served, *args: str) -> str:
    """`agentflow ARGS --db <served's store>`; its output (it must succeed)."""
    done = subprocess.run([*CLI, *args, "--db", served.db], cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, f"agentflow {' '.join(args)}: {done.stderr}"
    return done.stdout


def cards_of(api: SlackApi, approval_id: str) -> list[Call]:
    return [c for c in api.posted(CHANNEL)
            if (c.args.get("metadata") or {}).get("event_payload", {}).get("approval_id") == approval_id]  # fmt: skip


def button(call: Call | dict[str, Any], action_id: str) -> str:
    """The value of a card's button."""
    blocks = call.args["blocks"] if isinstance(call, Call) else call["blocks"]
    for block in blocks:
        for element in block.get("elements", []) if block["type"] == "actions" else []:
            if element["action_id"] == action_id:
                return str(element["value"])
    raise AssertionError(f"no {action_id} button on the card")


def texts(blocks: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Every text object of a message's blocks: (type, text)."""
    found: list[tuple[str, str]] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") in ("plain_text", "mrkdwn") and isinstance(node.get("text"), str):
                found.append((node["type"], node["text"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(blocks)
    return found


def shown(api: SlackApi, ts: str) -> str:
    """What the card message says now (after its updates), as one text."""
    return "\n".join(t for _, t in texts(api.message(CHANNEL, ts)["blocks"]))


def decided(world: World, approval_id: str) -> dict[str, Any]:
    req = world.request(approval_id)
    return {"status": req["status"], "votes": [(v["principal"], v["decision"]) for v in req["votes"]]}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    api = SlackApi(token=TOKEN)
    api.start()
    made = World(tmp_path_factory.mktemp("slack"), api)
    try:
        made.bridge.start()
        made.bridge.wait_ready()
        yield made
    finally:
        made.bridge.stop()
        made.served.stop()
        api.stop()


# -- the main path -------------------------------------------------------------------------------
def test_bob_approves_from_the_card_and_the_change_is_applied_once(world: World) -> None:
    """One card per request; an unlinked account and the requester decide nothing (each told why,
    privately); bob's click decides, the change is applied once, the card shows the outcome; the
    same request sent again is refused and decides nothing twice."""
    card = world.parked("alice", "CS-101")
    call, ts = world.card_message(card["id"])
    value = button(call, APPROVE)
    assert value == f"{card['id']}|{card['args_hash']}"
    body = shown(world.api, ts)
    assert "Approval needed: apply_change on CS-101" in body and "config-change-approval" in body
    assert "0/1 approvals by roles noc-engineer, four-eyes" in body and "hoA3Offset" in body

    mark = len(world.api.calls)
    answer, _, _ = world.bridge.click(EVE, APPROVE, value, message_ts=ts)
    assert answer.status_code == 200
    told = world.told(EVE, "not linked", mark)
    assert f"agentflow operators link NAME --slack {EVE} --tenant noc-east" in told
    answer, _, _ = world.bridge.click(ALICE, APPROVE, value, message_ts=ts)
    assert answer.status_code == 200
    assert "four-eyes" in world.told(ALICE, "self_approval", mark)
    assert decided(world, card["id"]) == {"status": "pending", "votes": []}

    answer, body_sent, headers = world.bridge.click(BOB, APPROVE, value, message_ts=ts)
    assert answer.status_code == 200
    assert "approved (1/1 approvals)" in world.told(BOB, "approved", mark)
    assert decided(world, card["id"]) == {"status": "approved", "votes": [("bob", "approve")]}
    assert_eventually(lambda: world.served.net.effects("apply"), timeout=RUN, message="never applied")
    world.served.assert_one_apply("CS-101")
    assert_eventually(lambda: "Outcome: approved by bob (1/1); applied at" in shown(world.api, ts), timeout=RUN,
                      message=f"the card never showed the outcome:\n{shown(world.api, ts)}")  # fmt: skip
    assert world.api.updates(ts), "the card was never edited with chat.update"
    assert not [b for b in world.api.message(CHANNEL, ts)["blocks"] if b["type"] == "actions"], "buttons left"

    replayed = world.bridge.send(body_sent, headers)
    assert replayed.status_code == 401 and "replayed" in replayed.text
    assert decided(world, card["id"]) == {"status": "approved", "votes": [("bob", "approve")]}
    world.served.assert_one_apply("CS-101")
    assert len(cards_of(world.api, card["id"])) == 1


# -- what Slack did not send ---------------------------------------------------------------------
def test_forged_stale_and_oversized_requests_are_refused_before_anything_is_read(world: World) -> None:
    """A request not signed with the app's secret, signed too long ago (or in the future), with
    missing or malformed headers, changed after signing, or too big, is refused; nothing is
    decided and nobody is answered in Slack."""
    card = world.parked("alice", "CS-102")
    call, _ = world.card_message(card["id"])
    body = form({"type": "block_actions", "user": {"id": BOB}, "team": {"id": "T0TEST01"},
                 "channel": {"id": CHANNEL}, "trigger_id": "1.2.3", "actions": [
                     {"action_id": APPROVE, "block_id": "af_actions", "value": button(call, APPROVE)}]})  # fmt: skip
    now = int(time.time())
    mark = len(world.api.calls)
    tampered = signed_headers(body)
    cases = {
        "bad signature": (body, signed_headers(body, secret="not-the-signing-secret")),
        "stale": (body, signed_headers(body, timestamp=now - 6 * 60)),
        "future": (body, signed_headers(body, timestamp=now + 6 * 60)),
        "no headers": (body, {"Content-Type": "application/x-www-form-urlencoded"}),
        "bad timestamp": (body, {**signed_headers(body), "X-Slack-Request-Timestamp": "soon"}),
        "tampered": (body.replace(BOB, EVE), tampered),
    }
    for name, (sent, headers) in cases.items():
        answer = world.bridge.send(sent, headers)
        assert answer.status_code == 401, (name, answer.status_code, answer.text)
    big = "payload=" + "x" * (300 * 1024)
    assert world.bridge.send(big, signed_headers(big)).status_code == 413
    assert decided(world, card["id"]) == {"status": "pending", "votes": []}
    answered = [c.method for c in world.api.calls[mark:] if c.method in ("chat.postEphemeral", "views.open")]
    assert answered == [], "a refused request was answered in Slack"


def test_a_card_of_another_tenant_or_channel_decides_nothing(world: World) -> None:
    """A signed click naming another tenant's request (dave's, noc-west) is refused as unknown to
    bob's tenant, and a click from another channel is refused; neither request changes. The
    other tenant's request never gets a card in this tenant's channel."""
    west = world.parked("dave", "CS-107")
    east = world.parked("alice", "CS-103")
    call, ts = world.card_message(east["id"])
    mark = len(world.api.calls)
    world.bridge.click(BOB, APPROVE, f"{west['id']}|{west['args_hash']}", message_ts=ts)
    assert "no approval request" in world.told(BOB, "unknown", mark)
    world.bridge.click(BOB, APPROVE, button(call, APPROVE), channel="C0ELSEWHERE")
    world.told(BOB, "only on cards in channel", mark)
    world.bridge.click(DAVE, APPROVE, button(call, APPROVE), message_ts=ts)
    world.told(DAVE, "not linked", mark)  # dave's account is linked in noc-west, not in the bridge's tenant
    assert world.request(west["id"], "dave")["status"] == "pending"
    assert decided(world, east["id"]) == {"status": "pending", "votes": []}
    assert cards_of(world.api, west["id"]) == []


# -- modals --------------------------------------------------------------------------------------
def test_reject_with_a_reason_in_a_modal(world: World) -> None:
    """Reject opens a modal (views.open with the click's trigger_id); a submission without a
    reason is sent back with an error in the modal; with one, the request is rejected as bob,
    nothing is applied, and the card says so."""
    card = world.parked("alice", "CS-104")
    call, ts = world.card_message(card["id"])
    mark = len(world.api.calls)
    world.bridge.click(BOB, REJECT, button(call, REJECT), message_ts=ts)
    opened = assert_eventually(lambda: [c for c in world.api.calls[mark:] if c.method == "views.open"], timeout=30)
    view = opened[0].args["view"]
    assert view["callback_id"] == REJECT and json.loads(view["private_metadata"])["id"] == card["id"]

    empty = world.bridge.submit(BOB, view, {"af_reason": "  "})
    assert empty.status_code == 200 and empty.json()["response_action"] == "errors", empty.text
    assert "af_reason" in empty.json()["errors"]
    assert decided(world, card["id"]) == {"status": "pending", "votes": []}

    refused = world.bridge.submit(ALICE, view, {"af_reason": "mine"})  # alice may reject: four-eyes is for approving
    assert refused.status_code == 200
    req = world.request(card["id"])
    assert req["status"] == "rejected" and req["votes"][0]["principal"] == "alice"
    assert_eventually(lambda: "Outcome: rejected by alice (mine): not applied" in shown(world.api, ts), timeout=RUN,
                      message=f"the card never showed the rejection:\n{shown(world.api, ts)}")  # fmt: skip
    late = world.bridge.submit(BOB, view, {"af_reason": "too late"})
    assert late.json()["response_action"] == "errors" and "already_decided" in json.dumps(late.json())
    assert [e for e in world.served.net.effects("apply") if e["site"] == "CS-104"] == []
