"""The Slack bridge: approval cards in a tenant's Slack channel, decided with buttons and modals.

    bridge = SlackBridge(app, channel="C0123", tenant="noc-east", bot_token=..., signing_secret=...)
    bridge.serve(host="127.0.0.1", port=3000)      # or bridge.asgi() under your own server

One Bolt app (HTTP mode: Slack POSTs interactions to `/slack/events`) and one sweeper thread:

- **Cards out.** Each open approval request of the tenant gets one Block Kit card in the channel
  (`chat.postMessage`): tool, target, the staged change, the rule in words, quorum, expiry, the
  run's evidence, and Approve / Reject / Edit buttons whose value carries the request id and the
  hash of the arguments the card showed. The card row is written (`posting`) before the
  post; a bridge restarted between the two looks for its message in the channel's history (by
  the approval id in the message's metadata) before posting again, so no card is posted twice.
  Cards are edited in place (`chat.update`) as votes arrive and when the run's outcome is known.
- **Decisions in.** Requests are checked before anything parses them (`_slack_http`). The clicker
  is the Slack user id Slack signed (`body.user.id`, never a display name), linked to an operator
  of the bridge's tenant (`Approvals.linked`); an unlinked account gets an ephemeral message
  saying how to link it and decides nothing. Approve decides at once, bound to the hash the card
  showed (an edit since is refused as stale); Reject and Edit open a modal (`views.open`) whose
  submission decides. Every decision goes through `Approvals`: roles, tenant, four-eyes, quorum,
  expiry, stale arguments, editable arguments, all audited; a refusal is said in words to the
  clicker only. Commands typed in a card's thread (Events API `message` events: `approve`,
  `reject <reason>`, `status`, `why?`) go through the core's `handle`, answered in the thread;
  an event Slack resends is handled once.
- **Slack down.** Web API calls are retried (connection errors, 429 with Retry-After, 5xx); the
  sweeper backs off (1 s doubling to a minute) while Slack fails and the HTTP side keeps serving.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from slack_bolt import Ack, BoltResponse
from slack_bolt import App as BoltApp
from slack_bolt.authorization import AuthorizeResult
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from slack_sdk.http_retry.builtin_handlers import ServerErrorRetryHandler

from agentflow.approvals import ApprovalRequest, Principal
from agentflow.bridges._core import Bridge, CardView
from agentflow.bridges._slack_blocks import (
    APPROVE,
    COMMENT,
    EDIT,
    REASON,
    REJECT,
    Shown,
    card_blocks,
    edit_modal,
    edited_args,
    fallback_text,
    mrkdwn_escape,
    parse_value,
    reject_modal,
    submitted_text,
)
from agentflow.bridges._slack_http import Guard, asgi_app
from agentflow.engine import crash_point
from agentflow.errors import AgentflowError, ApprovalRefused, AuthenticationError, ConfigurationError

if TYPE_CHECKING:
    from starlette.applications import Starlette

    from agentflow.engine import App
log = logging.getLogger("agentflow.bridges.slack")

EVENT_TYPE = "agentflow_approval"  # the metadata event type of a card message
HISTORY_PAGES = 3  # pages of 100 messages searched for a card a crashed bridge may have posted
CLICKS_PER_MINUTE = 20  # per Slack user: more are dropped unanswered (a stuck key, a script)
MAX_BACKOFF = 60.0
_BAD_TOKEN = ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired")


class SlackBridge:
    """Approval cards of one tenant in one Slack channel (see the module's docstring).

    Args:
        app: the App whose store and clock hold the runs (its workers run elsewhere).
        channel: the channel id cards go to (`C0123...`).
        tenant: the tenant whose requests are shown and decided.
        bot_token: the Slack app's bot token (`xoxb-...`).
        signing_secret: the Slack app's signing secret.
        api_url: the Web API's base URL (default Slack's; tests give a local stand-in).
        interval: seconds between sweeps for new and changed cards.
    """

    def __init__(
        self, app: App, *, channel: str, tenant: str, bot_token: str, signing_secret: str,
        api_url: str | None = None, interval: float = 1.0,
    ) -> None:  # fmt: skip
        if not bot_token or not signing_secret:
            raise ConfigurationError("the Slack bridge needs SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET")
        self.core = Bridge(app, surface="slack", tenant=tenant)
        self.channel, self.tenant, self.interval = channel, tenant, interval
        self.client = WebClient(
            token=bot_token, base_url=api_url or WebClient.BASE_URL, timeout=10,
            retry_handlers=[ConnectionErrorRetryHandler(max_retry_count=2), RateLimitErrorRetryHandler(max_retry_count=2),
                            ServerErrorRetryHandler(max_retry_count=2)],
        )  # fmt: skip
        self.guard = Guard(signing_secret)
        self.identity: dict[str, Any] = {}  # auth.test's answer: the bot's user id, bot id, team
        self._clicks: dict[str, deque[float]] = {}
        self._lock = threading.Lock()
        # Bolt warns at start-up that the client's token is unused when an authorizer is given:
        # that is the point (no auth.test on the request path), so its start-up is quiet.
        bolt_log = logging.getLogger("agentflow.bridges.slack.bolt")
        bolt_log.setLevel(logging.ERROR)
        self.bolt = BoltApp(
            client=self.client, signing_secret=signing_secret, authorize=self._authorizer(),
            process_before_response=False, logger=bolt_log,
        )  # fmt: skip
        bolt_log.setLevel(logging.NOTSET)
        self.bolt.action(APPROVE)(self._on_approve)
        self.bolt.action(REJECT)(self._on_modal_button)
        self.bolt.action(EDIT)(self._on_modal_button)
        self.bolt.view(REJECT)(self._on_reject_submitted)
        self.bolt.view(EDIT)(self._on_edit_submitted)
        self.bolt.event("message")(self._on_message)
        self._events: dict[str, float] = {}  # event ids handled (Slack resends an event it thinks was lost)
        self.bolt.use(self._throttle)

    # -- serving -----------------------------------------------------------------------------------
    def asgi(self) -> Starlette:
        """The web app Slack's Interactivity request URL points at (`POST /slack/events`)."""
        return asgi_app(self.bolt, self.guard, on_ready=lambda: bool(self.identity))

    def serve(self, *, host: str = "127.0.0.1", port: int = 3000) -> None:
        """Sweep in a thread and serve HTTP until interrupted."""
        import uvicorn

        stop = threading.Event()
        sweeper = threading.Thread(target=self.run_sweeps, args=(stop,), name="slack-sweeper", daemon=True)
        sweeper.start()
        try:
            # uvicorn's records go through the root handler (`agentflow --log-format`), like `serve`'s.
            level = logging.getLogger().getEffectiveLevel()
            uvicorn.run(self.asgi(), host=host, port=port, log_config=None, log_level=level,
                        access_log=level <= logging.DEBUG, timeout_graceful_shutdown=2)  # fmt: skip
        finally:
            stop.set()
            sweeper.join(timeout=15)

    def run_sweeps(self, stop: threading.Event) -> None:
        """Sweep every `interval` seconds until `stop` is set; while Slack fails, back off."""
        delay = self.interval
        while not stop.is_set():
            try:
                self.sweep()
                delay = self.interval
            except (SlackClientError, OSError) as exc:
                delay = min(max(delay * 2, 1.0), MAX_BACKOFF)
                refused = exc.response.get("error") if isinstance(exc, SlackApiError) else None
                if refused in _BAD_TOKEN:
                    log.error("Slack refused the bot token (%s): check SLACK_BOT_TOKEN (the xoxb- token of OAuth & "
                              "Permissions, the app installed in the workspace); next try in %.0f s", refused, delay)  # fmt: skip
                else:
                    log.warning("Slack's API failed (%s: %s); next sweep in %.0f s", type(exc).__name__, exc, delay)
            except AgentflowError as exc:
                delay = min(max(delay * 2, 1.0), MAX_BACKOFF)
                log.warning("the store failed (%s: %s); next sweep in %.0f s", type(exc).__name__, exc, delay)
            stop.wait(delay)

    def sweep(self) -> None:
        """Post the cards of new requests, then edit the cards whose text changed."""
        self._identify()
        # New requests, and cards left `posting` (a crash mid-post, Slack down) whatever their
        # request became since: found in the channel and edited, else posted as they are now.
        for view in self.core.cards_to_post():
            self._post(view)
        for view in self.core.cards_to_update():
            self._edit(view)

    def _identify(self) -> None:
        if not self.identity:
            answer = self.client.auth_test()
            self.identity = {k: answer.get(k) for k in ("user_id", "bot_id", "team_id")}
            log.info("Slack bridge for tenant %s posting to %s as %s", self.tenant, self.channel, self.identity)

    def _authorizer(self) -> Callable[..., AuthorizeResult]:
        """Bolt's authorization: the one bot token, no call to Slack on the request path. (A plain
        function: Bolt passes an authorizer its arguments by name, and a method's `self` confuses it.)"""

        def authorize(enterprise_id: str | None, team_id: str | None) -> AuthorizeResult:
            return AuthorizeResult(enterprise_id=enterprise_id, team_id=team_id, bot_token=self.client.token,
                                   bot_user_id=self.identity.get("user_id"), bot_id=self.identity.get("bot_id"))  # fmt: skip

        return authorize

    # -- cards out ---------------------------------------------------------------------------------
    def _post(self, view: CardView) -> None:
        if view.card is not None:  # `posting`: a bridge stopped mid-post; did the post reach Slack?
            found = self._find_posted(view.card.room, view.approval_id)
            if found is not None:
                log.info("the card of %s is in the channel already (posted before a restart)", view.approval_id)
                self.client.chat_update(channel=view.card.room, ts=found, text=fallback_text(view),
                                        blocks=card_blocks(view))  # what it shows now: votes may have come  # fmt: skip
                self.core.posted(view.approval_id, found, view)
                return
        elif not self.core.begin_post(view.approval_id, self.channel):
            return  # another bridge process got there first
        crash_point("slack.card_claimed")  # tests: killed with the row `posting` and nothing posted
        answer = self.client.chat_postMessage(
            channel=view.card.room if view.card else self.channel, text=fallback_text(view),
            blocks=card_blocks(view), mrkdwn=False, unfurl_links=False, unfurl_media=False,
            metadata={"event_type": EVENT_TYPE, "event_payload": {"approval_id": view.approval_id,
                                                                  "tenant": self.tenant}},
        )  # fmt: skip
        crash_point("slack.card_posted")  # tests: killed after Slack took the card, before it was recorded
        self.core.posted(view.approval_id, str(answer["ts"]), view)

    def _find_posted(self, channel: str, approval_id: str) -> str | None:
        """The ts of this bot's card message for `approval_id` in `channel`, if it was posted."""
        cursor = None
        for _ in range(HISTORY_PAGES):
            page = self.client.conversations_history(channel=channel, limit=100, include_all_metadata=True,
                                                     cursor=cursor)  # fmt: skip
            for message in page.get("messages") or []:
                if self._is_card_of(message, approval_id):
                    return str(message["ts"])
            cursor = (page.get("response_metadata") or {}).get("next_cursor")
            if not page.get("has_more") or not cursor:
                return None
        return None

    def _is_card_of(self, message: Mapping[str, Any], approval_id: str) -> bool:
        meta = message.get("metadata") or {}
        payload = meta.get("event_payload") or {}
        mine = message.get("bot_id") == self.identity.get("bot_id") or message.get("user") == self.identity.get(
            "user_id"
        )
        return (mine and meta.get("event_type") == EVENT_TYPE and payload.get("approval_id") == approval_id
                and payload.get("tenant") == self.tenant)  # fmt: skip

    def _edit(self, view: CardView) -> None:
        """Edit a posted card to show `view`, then record it."""
        assert view.card is not None and view.card.message_id is not None
        self.client.chat_update(channel=view.card.room, ts=view.card.message_id, text=fallback_text(view),
                                blocks=card_blocks(view))  # fmt: skip
        self.core.updated(view)

    def refresh(self, approval_id: str) -> None:
        """Edit the card of `approval_id` to what it shows now, if it was posted and changed."""
        row = self.core.card(approval_id)
        if row is not None and row.message_id is not None and row.state == "posted":
            view = self.core.view(approval_id, row)
            if view.changed or view.final:
                self._edit(view)

    # -- decisions in ------------------------------------------------------------------------------
    def _throttle(self, body: dict[str, Any], next: Callable[[], BoltResponse]) -> BoltResponse | None:
        """At most CLICKS_PER_MINUTE interactions a minute per Slack user; the rest are dropped."""
        user = _user(body)
        now = time.monotonic()
        with self._lock:
            recent = self._clicks.setdefault(user, deque())
            while recent and recent[0] < now - 60:
                recent.popleft()
            if len(recent) >= CLICKS_PER_MINUTE:
                log.warning("Slack user %s sent more than %d interactions a minute: dropped", user, CLICKS_PER_MINUTE)
                return BoltResponse(status=200, body="")
            recent.append(now)
        return next()

    def _principal(self, body: dict[str, Any]) -> Principal:
        """The operator the clicking Slack account is linked to in the bridge's tenant.

        Raises:
            AuthenticationError: unlinked (the message says how to link), disabled, revoked.
            ConfigurationError: the interaction comes from another Slack workspace or channel.
        """
        team = (body.get("team") or {}).get("id")
        if self.identity.get("team_id") and team != self.identity["team_id"]:
            raise ConfigurationError(f"this bridge serves Slack workspace {self.identity['team_id']}, not {team}")
        return self.core.approvals.linked("slack", _user(body), tenant=self.tenant)

    def _on_approve(self, ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        try:
            shown = self._shown(body, action)
            who = self._principal(body)
            req = self.core.approvals.approve(shown.approval_id, by=who, seen_hash=shown.args_hash)
        except (AgentflowError, KeyError, TypeError) as exc:
            self._tell(body, _refusal_words(exc))
            return
        self._decided(body, req)

    def _on_modal_button(self, ack: Ack, body: dict[str, Any], action: dict[str, Any]) -> None:
        ack()
        try:
            shown = self._shown(body, action)
            who = self._principal(body)
            req = self.core.approvals.get(shown.approval_id, tenant=self.tenant)
            decision = "reject" if action["action_id"] == REJECT else "approve"
            refused = self.core.approvals.refusal(req, who, decision)
            if refused is not None:
                raise refused
            if req.args_hash != shown.args_hash:
                raise ApprovalRefused("the arguments changed since this card was shown: look at the updated card",
                                      code="stale_args", approval_id=req.id)  # fmt: skip
        except (AgentflowError, KeyError, TypeError) as exc:
            self._tell(body, _refusal_words(exc))
            return
        meta = json.dumps({"id": shown.approval_id, "hash": shown.args_hash, "channel": _channel(body)})
        view = self.core.view(req.id)
        modal = (reject_modal(view, meta) if decision == "reject"
                 else edit_modal(view, req.args, req.spec.editable_args, meta))  # fmt: skip
        try:
            self.client.views_open(trigger_id=body["trigger_id"], view=modal)
        except SlackClientError as exc:
            log.warning("views.open for %s failed: %s", req.id, exc)

    def _on_reject_submitted(self, ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        values = (view.get("state") or {}).get("values") or {}
        reason = submitted_text(values, REASON)
        if not reason:
            ack(response_action="errors", errors={REASON: "say why: the agent and the audit trail see it"})
            return
        self._submitted(ack, body, view, REASON, lambda who, shown: self.core.approvals.reject(
            shown.approval_id, by=who, comment=reason))  # fmt: skip

    def _on_edit_submitted(self, ack: Ack, body: dict[str, Any], view: dict[str, Any]) -> None:
        values = (view.get("state") or {}).get("values") or {}

        def decide(who: Principal, shown: Shown) -> ApprovalRequest:
            req = self.core.approvals.get(shown.approval_id, tenant=self.tenant)
            edited, errors = edited_args(values, req.args, req.spec.editable_args)
            if errors:
                raise _InputErrors(errors)
            return self.core.approvals.approve(req.id, by=who, comment=submitted_text(values, COMMENT), args=edited,
                                               seen_hash=shown.args_hash)  # fmt: skip

        self._submitted(ack, body, view, COMMENT, decide)

    def _submitted(
        self, ack: Ack, body: dict[str, Any], view: dict[str, Any], error_block: str,
        decide: Callable[[Principal, Shown], ApprovalRequest],
    ) -> None:  # fmt: skip
        """A modal's submission: decide, or show why not in the modal (it stays open)."""
        try:
            meta = json.loads(view.get("private_metadata") or "{}")
            shown = Shown(str(meta["id"]), str(meta["hash"]))
            who = self._principal(body)
            req = decide(who, shown)
        except _InputErrors as bad:
            ack(response_action="errors", errors=bad.errors)
            return
        except (AgentflowError, KeyError, TypeError, ValueError) as exc:
            ack(response_action="errors", errors={error_block: _refusal_words(exc)[:150]})
            return
        ack()
        self._decided({**body, "channel": {"id": meta.get("channel") or self.channel}}, req)

    def _on_message(self, body: dict[str, Any], event: dict[str, Any]) -> None:
        """`approve [comment]`, `reject <reason>`, `status`, `why?` typed in a card's thread
        (Events API, `message.channels`): answered in the thread, through the core's commands."""
        text, thread = event.get("text"), event.get("thread_ts")
        if (event.get("subtype") or event.get("bot_id") or event.get("channel") != self.channel or not thread
                or not isinstance(text, str) or not self.core.is_command(_unescape(text))):  # fmt: skip
            return  # talk, edits, the bot's own messages, other channels
        if not self._first_event(str(body.get("event_id", "")), time.monotonic()):
            return
        row = self.core.card_of_message(str(thread))
        team = body.get("team_id")
        if row is None or (self.identity.get("team_id") and team != self.identity["team_id"]):
            return
        answer = self.core.handle(str(event.get("user", "")), row.approval_id, _unescape(text))
        if answer:
            self.client.chat_postMessage(channel=self.channel, thread_ts=str(thread), text=mrkdwn_escape(answer),
                                         mrkdwn=False, unfurl_links=False, unfurl_media=False)  # fmt: skip
        self.refresh(row.approval_id)

    def _first_event(self, event_id: str, now: float) -> bool:
        """False for an event handled in the last hour (Slack retries up to three times)."""
        with self._lock:
            if len(self._events) > 10_000:
                self._events = {e: at for e, at in self._events.items() if at > now - 3600}
            if not event_id or event_id in self._events:
                return False
            self._events[event_id] = now
            return True

    def _decided(self, body: dict[str, Any], req: ApprovalRequest) -> None:
        """Tell the decider what happened, and edit the card now rather than at the next sweep."""
        self._tell(body, f"{req.tool} {req.id}: {req.status} ({req.approvals}/{req.spec.quorum} approvals)")
        try:
            self.refresh(req.id)
        except (SlackClientError, OSError) as exc:
            log.warning("chat.update of %s failed (%s); the sweeper retries", req.id, exc)

    def _shown(self, body: dict[str, Any], action: dict[str, Any]) -> Shown:
        channel = _channel(body)
        if channel and channel != self.channel:
            raise ConfigurationError(f"this bridge decides only on cards in channel {self.channel}")
        return parse_value(action.get("value"))

    def _tell(self, body: dict[str, Any], text: str) -> None:
        """An ephemeral message to the user who clicked (only they see it)."""
        try:
            self.client.chat_postEphemeral(channel=_channel(body) or self.channel, user=_user(body),
                                           text=mrkdwn_escape(text)[:3000], mrkdwn=False)  # fmt: skip
        except (SlackClientError, OSError) as exc:
            log.warning("chat.postEphemeral to %s failed: %s", _user(body), exc)


class _InputErrors(Exception):
    """Inputs of a modal that are not valid: block id -> why."""

    def __init__(self, errors: dict[str, str]) -> None:
        super().__init__(errors)
        self.errors = errors


def _user(body: Mapping[str, Any]) -> str:
    """The Slack user id Slack vouches for (`user.id`; never a name anyone can set)."""
    user = body.get("user")
    return str(user.get("id", "")) if isinstance(user, Mapping) else ""


def _channel(body: Mapping[str, Any]) -> str:
    channel = body.get("channel") or (body.get("container") or {})
    return str(channel.get("id") or channel.get("channel_id") or "") if isinstance(channel, Mapping) else ""


def _unescape(text: str) -> str:
    """A message's text as typed: Slack sends `&`, `<` and `>` escaped."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def _refusal_words(exc: Exception) -> str:
    """A refusal as the clicker reads it: `self_approval: alice asked for this run: ...`."""
    if isinstance(exc, ApprovalRefused | AuthenticationError):
        return f"Not decided ({exc.code}): {exc.message}"
    if isinstance(exc, AgentflowError):
        return f"Not decided: {exc.message}"
    return "Not decided: this interaction is not one this bridge understands"
