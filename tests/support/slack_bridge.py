"""A real `agentflow chat-bridge slack` for tests, and Slack's side of it: interaction payloads
signed the way Slack signs them, posted over HTTP.

`SlackBridge(served, api)` runs the CLI as a subprocess on a free port, on the store of a
`Served` server (whose worker drives the runs), with its Web API pointed at the stand-in
`api` (tests/support/slack_api.py). `click(...)` and `submit(...)` build the block_actions and
view_submission payloads Slack sends (`application/x-www-form-urlencoded`, `payload=<json>`),
sign them (`X-Slack-Signature: v0=HMAC-SHA256(secret, "v0:{ts}:{body}")`) and POST them;
`send(...)` posts any body with any headers (forgeries, replays).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import subprocess
import time
from typing import Any
from urllib.parse import urlencode

import httpx

from agentflow.testing import assert_eventually
from support.served import CLI, ROOT, Served, env
from support.slack_api import TEAM, SlackApi

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"  # the test Slack app's signing secret
TOKEN = "xoxb-test"
CHANNEL = "C0NOC0001"


def signature(secret: str, timestamp: str, body: str) -> str:
    """Slack's request signature: `v0=` + HMAC-SHA256 over `v0:{timestamp}:{body}`."""
    mac = hmac.new(secret.encode(), f"v0:{timestamp}:{body}".encode(), hashlib.sha256).hexdigest()
    return f"v0={mac}"


def form(payload: dict[str, Any]) -> str:
    return urlencode({"payload": json.dumps(payload)})


def signed_headers(body: str, *, secret: str = SECRET, timestamp: int | None = None) -> dict[str, str]:
    ts = str(int(time.time()) if timestamp is None else timestamp)
    return {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Slack-Request-Timestamp": ts,
        "X-Slack-Signature": signature(secret, ts, body),
    }


def action_payload(user: str, action_id: str, value: str, *, channel: str = CHANNEL, message_ts: str = "1.0",
                   team: str = TEAM) -> dict[str, Any]:  # fmt: skip
    """A block_actions payload as Slack sends it when `user` clicks a button of a message."""
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": team},
        "api_app_id": "A0AGENTFLOW",
        "token": "legacy-verification-token",
        "container": {"type": "message", "message_ts": message_ts, "channel_id": channel, "is_ephemeral": False},
        "trigger_id": f"{int(time.time())}.{abs(hash(value)) % 10**8}.trigger",
        "team": {"id": team, "domain": "test"},
        "enterprise": None,
        "is_enterprise_install": False,
        "channel": {"id": channel, "name": "noc"},
        "message": {"type": "message", "ts": message_ts, "text": "card"},
        "state": {"values": {}},
        "response_url": "https://hooks.slack.com/actions/T0TEST01/1/x",
        "actions": [{"action_id": action_id, "block_id": "af_actions", "value": value, "type": "button",
                     "text": {"type": "plain_text", "text": "button"}, "action_ts": f"{time.time():.6f}"}],
    }  # fmt: skip


def submission_payload(user: str, view: dict[str, Any], values: dict[str, str], *, team: str = TEAM) -> dict[str, Any]:
    """A view_submission payload: `view` is the modal the bridge opened (as views.open got it),
    `values` the text typed per input block id."""
    state = {block: {"value": {"type": "plain_text_input", "value": text}} for block, text in values.items()}
    return {
        "type": "view_submission",
        "team": {"id": team, "domain": "test"},
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": team},
        "api_app_id": "A0AGENTFLOW",
        "token": "legacy-verification-token",
        "trigger_id": f"{int(time.time())}.2.trigger",
        "view": {**view, "id": "V0MODAL01", "team_id": team, "state": {"values": state}, "hash": "1.abc",
                 "app_id": "A0AGENTFLOW", "bot_id": "BBOT0001"},
        "response_urls": [],
        "is_enterprise_install": False,
    }  # fmt: skip


def message_event(user: str, text: str, *, thread_ts: str, event_id: str, channel: str = CHANNEL,
                  team: str = TEAM) -> dict[str, Any]:  # fmt: skip
    """An Events API `message` event (a reply in a thread) as Slack POSTs it (JSON body)."""
    ts = f"{time.time():.6f}"
    return {
        "token": "legacy-verification-token", "team_id": team, "api_app_id": "A0AGENTFLOW", "type": "event_callback",
        "event": {"type": "message", "channel": channel, "user": user, "text": text, "ts": ts, "thread_ts": thread_ts,
                  "event_ts": ts, "channel_type": "channel"},
        "event_id": event_id, "event_time": int(time.time()), "authorizations": [],
    }  # fmt: skip


class SlackBridge(Served):
    """`agentflow chat-bridge slack` on `served`'s store (and network, and clock), talking to the
    stand-in `api`. Like `Served`: `kill()` is a crash, `stop()` a shutdown, `restart()` both."""

    def __init__(self, served: Served, api: SlackApi, *, tenant: str = "noc-east", app_ref: str | None = None) -> None:
        super().__init__(served.tmp, app_ref or served.app_ref, incidents="", clock_start=served.clock_start)
        self.served, self.api, self.tenant = served, api, tenant
        self.db, self.net_path = served.db, served.net_path
        self.log_path = served.tmp / f"bridge-{tenant}.log"

    def start(self) -> None:
        cmd = [*CLI, "chat-bridge", "slack", "--channel", CHANNEL, "--tenant", self.tenant, "--db", self.db,
               "--app", self.app_ref, "--port", str(self.port), "--api-url", self.api.url, "--interval", "0.2"]  # fmt: skip
        bridge_env = env(NOC_DB=str(self.net_path), NOC_CLOCK_START=self.clock_start, SLACK_BOT_TOKEN=TOKEN,
                         SLACK_SIGNING_SECRET=SECRET, PYTHONFAULTHANDLER="1", **self.env)  # fmt: skip
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=ROOT, env=bridge_env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 60) -> None:
        """Until the HTTP side answers (its /healthz, whatever Slack's API does)."""

        def answers() -> bool:
            assert self.proc is not None and self.proc.poll() is None, f"the bridge exited:\n{self.log_tail()}"
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).status_code in (200, 503)
            except httpx.TransportError:
                return False

        assert_eventually(
            answers, timeout=timeout, interval=0.05, message=f"the bridge never served:\n{self.log_tail()}"
        )

    # -- Slack's requests ---------------------------------------------------------------------------
    def send(self, body: str, headers: dict[str, str]) -> httpx.Response:
        return httpx.post(f"{self.url}/slack/events", content=body.encode(), headers=headers, timeout=30)

    def click(self, user: str, action_id: str, value: str, **kw: Any) -> tuple[httpx.Response, str, dict[str, str]]:
        """`user` clicks a button: the answer, and the body and headers sent (to send again)."""
        body = form(action_payload(user, action_id, value, **kw))
        headers = signed_headers(body)
        return self.send(body, headers), body, headers

    def say(self, user: str, text: str, *, thread_ts: str, event_id: str, retry: int = 0) -> httpx.Response:
        """`user` types `text` in the thread of `thread_ts` (`retry`: Slack resending the event,
        signed anew, as it does when an answer was slow)."""
        body = json.dumps(message_event(user, text, thread_ts=thread_ts, event_id=event_id))
        headers = {**signed_headers(body), "Content-Type": "application/json"}
        if retry:
            headers.update({"X-Slack-Retry-Num": str(retry), "X-Slack-Retry-Reason": "http_timeout"})
        return self.send(body, headers)

    def submit(self, user: str, view: dict[str, Any], values: dict[str, str]) -> httpx.Response:
        body = form(submission_payload(user, view, values))
        return self.send(body, signed_headers(body))
