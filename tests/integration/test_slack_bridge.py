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

from agentflow import App
from agentflow.bridges import Bridge
from agentflow.testing import assert_eventually
from tests.integration import slackapp

pytestmark = pytest.mark.slow

ALICE, BOB, EVE, DAVE = "UALICE001", "UBOB00001", "UEVE00001", "UDAVE0001"
APPROVE, REJECT, EDIT = "af_approve", "af_reject", "af_edit"
# One site per test, spread over the regions (north CS-101.., south CS-107.., east CS-113..,
# west CS-119..): the pack changes at most 3 sites of a region an hour. CS-107: the other tenant's.
SITES = ("CS-101", "CS-102", "CS-107", "CS-108", "CS-113", "CS-114", "CS-119", "CS-120", "CS-109")
RUN = 60  # seconds a run or the bridge may take to reach a point (a few in practice)


def task(site: str) -> str:
    return f"{site} drop rate is high since this morning, investigate and fix it."


class World:
    """A served NOC copilot (tenants noc-east and noc-west), the Slack stand-in, the bridge."""

    def __init__(self, tmp: Path, api: SlackApi, app_ref: str = NOC_APP) -> None:
        self.api = api
        self.served = Served(tmp, app_ref, incidents=",".join(f"{s}:mis_set_handover" for s in SITES))
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


def assert_one_apply(served: Served, site: str) -> None:
    """The network's ledger: `site`'s change was pushed exactly once, nothing twice."""
    net = served.net
    assert len([e for e in net.effects("apply") if e["site"] == site]) == 1, net.effects("apply")
    assert net.duplicate_keys() == []


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
    assert_one_apply(world.served, "CS-101")
    assert_eventually(lambda: "Outcome: approved by bob (1/1); applied at" in shown(world.api, ts), timeout=RUN,
                      message=f"the card never showed the outcome:\n{shown(world.api, ts)}")  # fmt: skip
    assert world.api.updates(ts), "the card was never edited with chat.update"
    assert not [b for b in world.api.message(CHANNEL, ts)["blocks"] if b["type"] == "actions"], "buttons left"

    replayed = world.bridge.send(body_sent, headers)
    assert replayed.status_code == 401 and "replayed" in replayed.text
    assert decided(world, card["id"]) == {"status": "approved", "votes": [("bob", "approve")]}
    assert_one_apply(world.served, "CS-101")
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
    east = world.parked("alice", "CS-113")
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
    card = world.parked("alice", "CS-114")
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
    assert [e for e in world.served.net.effects("apply") if e["site"] == "CS-114"] == []


def test_edit_and_approve_in_a_modal_and_a_stale_card_is_refused(world: World) -> None:
    """A button carrying another argument hash than the request's (a card shown before an edit)
    is refused as stale. Edit opens a modal prefilled with the staged value of each editable
    argument; a value that is not a number is sent back with an error; a number approves the
    edited call as bob, and the change applied is the edited one, once."""
    card = world.parked("alice", "CS-119")
    call, ts = world.card_message(card["id"])
    mark = len(world.api.calls)
    world.bridge.click(BOB, APPROVE, f"{card['id']}|{'0' * 64}", message_ts=ts)
    assert "arguments changed" in world.told(BOB, "stale_args", mark)
    assert decided(world, card["id"]) == {"status": "pending", "votes": []}

    world.bridge.click(BOB, EDIT, button(call, EDIT), message_ts=ts)
    opened = assert_eventually(lambda: [c for c in world.api.calls[mark:] if c.method == "views.open"], timeout=30)
    view = opened[0].args["view"]
    [value_input] = [b for b in view["blocks"] if b.get("block_id") == "af_arg:value"]
    assert value_input["element"]["initial_value"] == json.dumps(card["args"]["value"])
    bad = world.bridge.submit(BOB, view, {"af_arg:value": "two and a half", "af_comment": ""})
    assert bad.json()["response_action"] == "errors" and "af_arg:value" in bad.json()["errors"], bad.text
    good = world.bridge.submit(BOB, view, {"af_arg:value": "2.5", "af_comment": "2.5 is enough"})
    assert good.status_code == 200 and good.text in ("", "null"), good.text
    req = world.request(card["id"])
    assert req["status"] == "approved" and req["args"]["value"] == 2.5 and req["revision"] == 2
    assert [(v["principal"], v["comment"]) for v in req["votes"]] == [("bob", "2.5 is enough")]
    applied = assert_eventually(
        lambda: [e for e in world.served.net.effects("apply") if e["site"] == "CS-119"], timeout=RUN
    )
    assert len(applied) == 1 and applied[0]["detail"]["value"] == 2.5, applied


# -- Slack's API down ----------------------------------------------------------------------------
def test_slack_down_the_bridge_keeps_serving_and_catches_up(world: World) -> None:
    """While Slack's API answers 503 the bridge still takes Slack's requests: bob's click on a
    posted card decides (telling him and editing the card fail quietly), and the card is edited
    once Slack is back. A card whose post failed while its request was decided on the web is
    posted once Slack is back, showing the decision, without buttons."""
    card = world.parked("alice", "CS-108")
    call, ts = world.card_message(card["id"])
    world.api.down = True
    try:
        answer, _, _ = world.bridge.click(BOB, APPROVE, button(call, APPROVE), message_ts=ts)
        assert answer.status_code == 200
        assert decided(world, card["id"]) == {"status": "approved", "votes": [("bob", "approve")]}
        late = world.parked("alice", "CS-120")
        assert_eventually(lambda: [c for c in world.api.called("chat.postMessage") if c.answer is None
                                   and c.args["metadata"]["event_payload"]["approval_id"] == late["id"]],
                          timeout=RUN, message="the bridge never tried to post while Slack was down")  # fmt: skip
        world.served.api("bob", "POST", f"/api/approvals/{late['id']}/approve", json={"seen_hash": late["args_hash"]})
        assert "Outcome: approved by bob" not in shown(world.api, ts)
    finally:
        world.api.down = False
    assert_eventually(lambda: "Outcome: approved by bob" in shown(world.api, ts), timeout=RUN,
                      message=f"the card never caught up:\n{shown(world.api, ts)}")  # fmt: skip
    _, late_ts = world.card_message(late["id"])
    assert_eventually(lambda: "Approved: apply_change on CS-120" in shown(world.api, late_ts), timeout=RUN)
    assert not [b for b in world.api.message(CHANNEL, late_ts)["blocks"] if b["type"] == "actions"]
    assert len(cards_of(world.api, card["id"])) == 1


# -- a bridge killed mid-post ----------------------------------------------------------------------
@pytest.mark.parametrize("point", ["slack.card_claimed", "slack.card_posted"])
@pytest.mark.parametrize("decided_meanwhile", [False, True], ids=["pending", "decided-on-the-web"])
def test_a_bridge_killed_mid_post_never_posts_a_card_twice(tmp_path: Path, point: str, decided_meanwhile: bool) -> None:
    """SIGKILLed after the card row was written `posting` (before the post, or after Slack took
    the post but before it was recorded) and restarted: the card is in the channel exactly once
    (found by the approval id in its metadata when it had been posted). Pending, bob's click on
    it decides; decided on the web while the bridge was down, it shows the decision, without
    buttons."""
    api = SlackApi(token=TOKEN)
    api.start()
    world = World(tmp_path, api)
    try:
        world.bridge.env["AGENTFLOW_CRASH_AT"] = f"{point}:1"
        world.bridge.start()
        card = world.parked("alice", "CS-101")
        assert world.bridge.proc is not None
        assert world.bridge.proc.wait(timeout=RUN) == -9, world.bridge.log_tail()
        reader = App(world.served.db)
        row = Bridge(reader, surface="slack", tenant="noc-east").card(card["id"])
        reader.close()
        assert row is not None and row.state == "posting" and row.message_id is None
        assert len(cards_of(api, card["id"])) == (1 if point == "slack.card_posted" else 0)
        if decided_meanwhile:
            world.served.api(
                "bob", "POST", f"/api/approvals/{card['id']}/approve", json={"seen_hash": card["args_hash"]}
            )

        del world.bridge.env["AGENTFLOW_CRASH_AT"]
        world.bridge.start()
        world.bridge.wait_ready()
        call, ts = world.card_message(card["id"])
        if point == "slack.card_posted":
            # Found in the channel (nothing posted again) and edited to what it shows now.
            assert_eventually(lambda: api.updates(ts), timeout=RUN, message="the card found was never edited")
            assert api.called("conversations.history")
        if not decided_meanwhile:
            answer, _, _ = world.bridge.click(BOB, APPROVE, button(call, APPROVE), message_ts=ts)
            assert answer.status_code == 200
        assert_eventually(lambda: "Outcome: approved by bob (1/1); applied at" in shown(api, ts), timeout=RUN,
                          message=f"the card never showed the outcome:\n{shown(api, ts)}")  # fmt: skip
        assert not [b for b in api.message(CHANNEL, ts)["blocks"] if b["type"] == "actions"]
        assert_one_apply(world.served, "CS-101")
        assert len(cards_of(api, card["id"])) == 1
    finally:
        world.bridge.stop()
        world.served.stop()
        api.stop()


# -- untrusted text --------------------------------------------------------------------------------
def test_markup_in_a_tool_output_and_in_arguments_is_shown_inert(tmp_path: Path) -> None:
    """A tool output with `<!channel>`, `*bold*`, `<http://…|click>`, a user mention and a code
    fence, and a staged note with `<!here>` and a channel link, reach the card as typed: in
    `plain_text` objects (never formatted) or in one `mrkdwn` code block each, with every `<`,
    `>` and `&` escaped and the fence broken; the notification text is escaped too, and links
    are not unfurled. Nothing in the posted JSON could notify, link or format."""
    api = SlackApi(token=TOKEN)
    api.start()
    world = World(tmp_path, api, app_ref="tests.integration.slackapp:app")
    try:
        world.bridge.start()
        world.bridge.wait_ready()
        run_id = world.served.start_run("alice", "CS-101: look at the notes and pin one")
        card = assert_eventually(
            lambda: next(iter(world.served.api("alice", "GET", f"/api/runs/{run_id}")["approvals"]), None), timeout=RUN
        )
        call, _ = world.card_message(card["id"])
        posted = call.args
        assert posted["mrkdwn"] is False and posted["unfurl_links"] is False and posted["unfurl_media"] is False
        assert "<" not in posted["text"] and ">" not in posted["text"]
        found = texts(posted["blocks"])
        fence = re.compile(r"^(\*Staged change\*\n)?```\n(?P<body>.*)\n```$", re.DOTALL)
        bodies = []
        for kind, text in found:
            if kind == "mrkdwn":
                block = fence.match(text)
                assert block is not None, f"mrkdwn outside one code block: {text!r}"
                assert "```" not in block["body"] and "<" not in text and ">" not in text, text
                bodies.append(block["body"])
        inert_payload = slackapp.PAYLOAD.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        inert_payload = inert_payload.replace("``", "`\u200b`").replace("``", "`\u200b`")
        assert any(inert_payload in b for b in bodies), bodies  # the evidence, shown whole
        assert any("&lt;!here&gt; ping &lt;#C0OTHER&gt; *urgent* &lt;https://evil.example|login&gt;" in b
                   for b in bodies), bodies  # fmt: skip
        # Everything else is plain_text, which Slack shows as typed (not even emoji codes).
        assert all(obj.get("emoji") is False for obj in _plain_objects(posted["blocks"]))
    finally:
        world.bridge.stop()
        world.served.stop()
        api.stop()


def _plain_objects(node: Any) -> list[dict[str, Any]]:
    if isinstance(node, dict):
        own = [node] if node.get("type") == "plain_text" else []
        return own + [o for v in node.values() for o in _plain_objects(v)]
    return [o for v in node for o in _plain_objects(v)] if isinstance(node, list) else []


def test_the_cli_takes_the_slack_secrets_from_the_environment_only(tmp_path: Path) -> None:
    """Without SLACK_BOT_TOKEN / SLACK_SIGNING_SECRET the command exits 2 saying where to set
    them (and that the command line is not the place); it has no flag for either."""
    db = f"sqlite:///{tmp_path / 'wf.db'}"
    base = [*CLI, "chat-bridge", "slack", "--channel", "C0NOC0001", "--tenant", "noc-east", "--db", db]
    clean = {k: v for k, v in env().items() if not k.startswith("SLACK_")}
    done = subprocess.run(base, cwd=ROOT, env={**clean, "SLACK_BOT_TOKEN": TOKEN}, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "SLACK_SIGNING_SECRET" in done.stderr and "never taken on the command line" in done.stderr
    assert TOKEN not in done.stderr
    helped = subprocess.run([*base, "--help"], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120)
    assert "--token" not in helped.stdout and "--signing-secret" not in helped.stdout and "--api-url" in helped.stdout


# -- commands typed in a card's thread -------------------------------------------------------------
def test_commands_typed_in_a_cards_thread(world: World) -> None:
    """`status` and `reject <reason>` typed in the card's thread (Events API) are answered in the
    thread through the chat core's commands, as the operator the account is linked to; an
    unlinked account is told how to link; an event Slack resends (same event id, signed anew)
    is handled once; talk that is no command is left alone."""
    card = world.parked("alice", "CS-109")
    _, ts = world.card_message(card["id"])
    mark = len(world.api.calls)

    def replies() -> list[str]:
        return [c.args.get("text", "") for c in world.api.calls[mark:] if c.method == "chat.postMessage"
                and c.args.get("thread_ts") == ts and c.answer is not None]  # fmt: skip

    assert world.bridge.say(BOB, "looks fine to me", thread_ts=ts, event_id="Ev01").status_code == 200
    assert world.bridge.say(EVE, "approve", thread_ts=ts, event_id="Ev02").status_code == 200
    assert_eventually(lambda: any("agentflow operators link NAME --slack" in r for r in replies()), timeout=30)
    world.bridge.say(BOB, "status", thread_ts=ts, event_id="Ev03")
    assert_eventually(lambda: any("Waiting for approval" in r for r in replies()), timeout=30)
    world.bridge.say(BOB, "reject not tonight &lt;!channel&gt;", thread_ts=ts, event_id="Ev04")
    world.bridge.say(BOB, "reject not tonight &lt;!channel&gt;", thread_ts=ts, event_id="Ev04", retry=1)
    assert_eventually(lambda: any("rejected" in r for r in replies()), timeout=30)
    req = world.request(card["id"])
    assert req["status"] == "rejected" and [(v["principal"], v["comment"]) for v in req["votes"]] == [
        ("bob", "not tonight <!channel>")
    ]
    assert_eventually(lambda: "Outcome: rejected by bob" in shown(world.api, ts), timeout=RUN)
    assert len(replies()) == 3, replies()  # eve's, status, the rejection: nothing for talk or the resent event
    assert all("<" not in r for r in replies())


def test_a_flood_of_clicks_is_cut_per_user(world: World) -> None:
    """One Slack user's clicks beyond 20 a minute are dropped unanswered (nothing looked up,
    nothing sent to Slack); another user's clicks are still answered."""
    value = f"apr_{'0' * 20}|{'0' * 64}"  # well formed; whose it is does not matter here
    mark = len(world.api.calls)
    flood = "UFLOOD001"
    for _ in range(25):
        assert world.bridge.click(flood, APPROVE, value)[0].status_code == 200

    def told(user: str) -> int:
        return len([c for c in world.api.calls[mark:] if c.method == "chat.postEphemeral" and c.args["user"] == user])

    assert_eventually(lambda: told(flood) == 20, timeout=30, message=f"{told(flood)} answers to the flood")
    world.bridge.click(EVE, APPROVE, value)
    assert_eventually(lambda: told(EVE) == 1, timeout=30)
    assert told(flood) == 20
