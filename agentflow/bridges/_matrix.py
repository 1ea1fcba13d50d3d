"""`MatrixBridge`: approval cards in a Matrix room and decisions typed in their threads, over
matrix-nio (any homeserver; `pip install 'agentflow[matrix]'`).

One loop, per turn: post a card for each new request, long-poll `/sync` and handle the room's
new events, then edit the cards that changed (in that order: a command is bound to the card its
sender saw, not to an edit of this turn); the sync token is saved in the store once the events
are handled, so a restarted bridge starts where it stopped.

- A card is an `m.text` message whose body is the card's plain text (never a `formatted_body`:
  tool and model text is untrusted) with `"org.agentflow.approval": "<approval id>"` and an
  empty `m.mentions` (the intentional-mentions rule: an `@room` or a display name inside
  untrusted text notifies nobody). It is edited (`m.replace`) as votes arrive and gets the
  outcome as a reply in its thread when the run is done with it.
- No card is posted twice: the card row is written `posting` before the send; the send's
  transaction id is derived from the approval id and the bot keeps one device per tenant, so
  the homeserver answers a resent transaction with the first event; and a bridge restarted
  with a `posting` row looks through the room's recent messages for its card before posting.
- Commands are `approve [comment]`, `reject <reason>`, `status`, `why?` typed in a card's
  thread (or as a reply to it), and a 👍 reaction on the card (approve). The sender's user id
  (which the homeserver vouches for) is the account `Bridge.handle` looks up, never a display
  name. Edits of messages are not commands; notices (other bots) are ignored. A command
  handled twice (a crash after the decision, before the token was saved) decides once: the
  approvals service counts an operator's repeated decision once, and the answer's transaction
  id is derived from the command's event id.
- Crash tests: `AGENTFLOW_CRASH_AT=bridge_card_sent` kills the bridge after a card was sent and
  before its row says so (see `agentflow.engine.crash_point`).
- A homeserver that is down or refuses for a while: the bridge retries with exponential
  backoff (capped, with jitter) and does not exit; a wrong password or an encrypted room is a
  `ConfigurationError` (fix the configuration).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from agentflow.bridges._core import Bridge, CardView
from agentflow.engine import crash_point
from agentflow.errors import AgentflowError, ConfigurationError

log = logging.getLogger("agentflow.bridges.matrix")
#: The custom content key that marks a card (and which request it shows).
CARD_KEY = "org.agentflow.approval"
_USER = re.compile(r"@[^:\s]+:[^\s]+")
# A room id is `!` and an opaque string (`:server` after it before room version 12); an alias
# always names its server.
_ROOM = re.compile(r"![^\s]+|#[^:\s]+:[^\s]+")
_THUMBS_UP = re.compile(r"^(\U0001f44d|:\+1:|\+1)[\U0001f3fb-\U0001f3ff\ufe0f]*$")
_FALLBACK = re.compile(r"^(> .*\n)+\n", re.MULTILINE)  # a rich reply's quoted fallback
#: Pages of 100 events read back: the bot's messages searched for a card after a restart, or
#: what arrived while the bridge was away beyond one sync's 100 events.
SEARCH_PAGES = 10


class Unavailable(Exception):
    """The homeserver did not do what was asked (down, overloaded, an error answer): retried."""


class LoggedOut(Unavailable):
    """The homeserver no longer knows the bot's access token: log in again (with the password)."""


def _failed(what: str, resp: Any) -> Unavailable:
    code = getattr(resp, "status_code", "")
    kind = LoggedOut if code == "M_UNKNOWN_TOKEN" else Unavailable
    return kind(f"{what}: {code} {getattr(resp, 'message', resp)}")


@dataclass(frozen=True)
class MatrixConfig:
    """Where the bot lives and what it does.

    Args:
        homeserver: the homeserver's client URL, e.g. http://127.0.0.1:8008.
        user: the bot's user id, e.g. @agentflow:example.org.
        room: the tenant's room: an id (!abc:example.org) or an alias (#noc-east:example.org).
        password: the bot's password (or `access_token`).
        access_token: an access token of the bot (instead of a password).
        device_id: the bot's device (default: one per tenant, so resent transactions dedupe).
        poll: seconds one `/sync` waits for new events (a card is posted at most this late).
        max_backoff: the longest wait between attempts while the homeserver is unavailable.
    """

    homeserver: str
    user: str
    room: str
    password: str | None = field(default=None, repr=False)
    access_token: str | None = field(default=None, repr=False)
    device_id: str | None = None
    poll: float = 2.0
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        """Refuse at once what no retry could fix (a bridge otherwise retries forever)."""
        parts = urllib.parse.urlsplit(self.homeserver)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigurationError(f"--homeserver {self.homeserver!r} is not a URL: give the homeserver's client "
                                     "URL, e.g. https://matrix.example.org")  # fmt: skip
        if _USER.fullmatch(self.user) is None:
            raise ConfigurationError(f"--user {self.user!r} is not a Matrix user id: give the bot's full id, e.g. "
                                     "@agentflow:example.org")  # fmt: skip
        if _ROOM.fullmatch(self.room) is None:
            raise ConfigurationError(f"--room {self.room!r} is neither a room id nor an alias: give e.g. "
                                     "!abcdef:example.org or '#noc-east:example.org' (quoted: # starts a shell comment)")  # fmt: skip
        for name, value, least in (("poll", self.poll, 0.1), ("max_backoff", self.max_backoff, 1.0)):
            if not value >= least:  # (NaN included)
                raise ConfigurationError(
                    f"--{name.replace('_', '-')} must be at least {least:g} seconds, not {value!r}"
                )


class MatrixBridge:
    """Drives a `Bridge` over one Matrix room (see the module docstring); `run(stop)` until stopped."""

    def __init__(self, bridge: Bridge, config: MatrixConfig) -> None:
        if bridge.surface != "matrix":
            raise ConfigurationError(f"a Matrix bridge needs Bridge(surface='matrix'), not {bridge.surface!r}")
        if not (config.password or config.access_token):
            raise ConfigurationError("the Matrix bot needs a password or an access token")
        self.bridge, self.config = bridge, config
        self.device_id = config.device_id or "AGENTFLOW_" + hashlib.sha256(bridge.tenant.encode()).hexdigest()[:10]
        self.room_id: str | None = None
        self.user_id = config.user  # as the homeserver spells it, once logged in
        self.client: Any = None
        self._since: str | None = None
        self._threads: dict[str, str] = {}  # the bot's answers' event ids -> the approval they are about
        self._healthy = False

    # -- the loop ----------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; retry with backoff while the homeserver is unavailable.

        Raises:
            ConfigurationError: the bot cannot log in (wrong password or token), or the room is
                end-to-end encrypted (the bridge reads and writes plain text only).
        """
        task = asyncio.create_task(self._forever())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (task, stopped):
                t.cancel()
            await asyncio.gather(task, stopped, return_exceptions=True)
            await self._close()
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    async def _forever(self) -> None:
        delay = 1.0
        while True:
            try:
                await self._session()
            except (ConfigurationError, asyncio.CancelledError):
                raise
            except (Unavailable, AgentflowError, OSError, TimeoutError) as exc:
                if self._healthy:
                    delay, self._healthy = 1.0, False
                wait = delay * random.uniform(0.5, 1.0)
                log.warning("matrix bridge: %s; trying again in %.1fs", _said(exc), wait,
                            extra={"tenant": self.bridge.tenant})  # fmt: skip
                if isinstance(exc, LoggedOut):
                    if self.config.access_token:
                        raise ConfigurationError(f"the homeserver no longer knows the bot's access token ({exc}): "
                                                 "give a valid one") from None  # fmt: skip
                    await self._close()  # log in again; other failures keep the session (no new device token)
                await asyncio.sleep(wait)
                delay = min(delay * 2, self.config.max_backoff)
            except Exception as exc:  # noqa: BLE001 - aiohttp's errors and the like: the loop must live
                log.warning("matrix bridge: %s: %s; trying again", type(exc).__name__, exc)
                await self._close()
                await asyncio.sleep(min(delay, self.config.max_backoff))
                delay = min(delay * 2, self.config.max_backoff)

    async def _session(self) -> None:
        if self.client is None:
            await self._login()
        if self.room_id is None:
            await self._join()
        self._since = self.bridge.cursor("since")
        if self._since is None:  # the first start: what was said before the bridge is history
            self._since = (await self._sync(0, timeline=0)).next_batch
            self.bridge.save_cursor("since", self._since)
        while True:
            await self.turn()

    async def turn(self) -> None:
        """Post new cards, handle what the room said (one `/sync`), then edit the changed cards.

        In that order: a command is checked against the arguments of the card as the room showed
        it when the command was typed (the card row's hash), never against an edit this very turn
        makes (edited first, arguments changed on the web while a command waited in the sync, or
        while the bridge was down, were approved by a command typed under the old card); and a
        card in doubt after a crash is found again before the commands about it are read."""
        await self._post_cards()
        resp = await self._sync(int(self.config.poll * 1000))
        room = resp.rooms.join.get(self.room_id)
        if room is not None:
            events = [getattr(e, "source", None) or {} for e in room.timeline.events]
            if room.timeline.limited and room.timeline.prev_batch and self._since:
                events = await self._missed(room.timeline.prev_batch, self._since) + events
            for source in events:
                await self._on_event(source)
        self._since = resp.next_batch
        self.bridge.save_cursor("since", resp.next_batch)
        await self._update_cards()
        self._healthy = True

    async def _missed(self, before: str, since: str) -> list[dict[str, Any]]:
        """The events between the last sync (`since`) and what this one returned (it said
        `limited`: more arrived while the bridge was away than one sync returns), oldest first."""
        from nio import MessageDirection, RoomMessagesResponse

        found: list[dict[str, Any]] = []
        start = before
        for _ in range(SEARCH_PAGES):
            page = await self.client.room_messages(self.room_id, start=start, end=since, limit=100,
                                                   direction=MessageDirection.back)  # fmt: skip
            if not isinstance(page, RoomMessagesResponse):
                raise _failed("messages", page)
            found.extend(getattr(e, "source", None) or {} for e in page.chunk)
            if not page.chunk or not page.end or page.end == start:
                return found[::-1]
            start = page.end
        log.warning("matrix bridge: over %d events arrived while away; the older ones are skipped",
                    SEARCH_PAGES * 100, extra={"tenant": self.bridge.tenant})  # fmt: skip
        return found[::-1]

    # -- connecting ----------------------------------------------------------------------------
    async def _login(self) -> None:
        from nio import AsyncClient, AsyncClientConfig, LoginError

        cfg = self.config
        # One connection retry inside nio, then our backoff (nio alone would retry forever).
        options = AsyncClientConfig(max_timeouts=1, request_timeout=30 + cfg.poll, encryption_enabled=False)
        self.client = AsyncClient(cfg.homeserver, cfg.user, device_id=self.device_id, config=options)
        if cfg.access_token:
            self.client.restore_login(cfg.user, self.device_id, cfg.access_token)
        else:
            done = await self.client.login(cfg.password, device_name="agentflow chat bridge")
            if isinstance(done, LoginError):
                if done.status_code in ("M_FORBIDDEN", "M_USER_DEACTIVATED", "M_INVALID_PARAM"):
                    raise ConfigurationError(f"the Matrix homeserver refused the bot {cfg.user}'s login "
                                             f"({done.status_code}: {done.message}): check --user and the password")  # fmt: skip
                raise _failed("login", done)
        await self._who_am_i()

    async def _who_am_i(self) -> None:
        """The bot's user id as the homeserver spells it (it may differ from --user in case):
        what its own messages carry as sender, and what a restarted bridge looks for its cards by."""
        from nio import WhoamiResponse

        me = await self.client.whoami()
        if not isinstance(me, WhoamiResponse):
            raise _failed("whoami", me)
        self.user_id = str(me.user_id)

    async def _join(self) -> None:
        from nio import JoinError, RoomResolveAliasError

        cfg = self.config
        room = cfg.room
        if room.startswith("#"):
            found = await self.client.room_resolve_alias(room)
            if isinstance(found, RoomResolveAliasError):
                raise _failed(f"the room alias {room} does not resolve", found)
            room = found.room_id
        joined = await self.client.join(room)
        if isinstance(joined, JoinError):
            raise _failed(f"cannot join {cfg.room} (invite {cfg.user})", joined)
        self.room_id = joined.room_id
        await self._refuse_encrypted()
        log.info("matrix bridge: in %s as %s", self.room_id, cfg.user, extra={"tenant": self.bridge.tenant})

    async def _refuse_encrypted(self) -> None:
        from nio import RoomGetStateEventResponse

        state = await self.client.room_get_state_event(self.room_id, "m.room.encryption")
        if isinstance(state, RoomGetStateEventResponse) and state.content.get("algorithm"):
            raise ConfigurationError(f"the room {self.config.room} is end-to-end encrypted: the bridge reads and "
                                     "writes plain text only; give it an unencrypted room")  # fmt: skip

    async def _close(self) -> None:
        self.room_id = None
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()

    async def _sync(self, timeout_ms: int, *, timeline: int = 100) -> Any:
        from nio import SyncResponse

        room_filter = {"rooms": [self.room_id], "timeline": {"limit": timeline},
                       "state": {"lazy_load_members": True}, "ephemeral": {"not_types": ["*"]}}  # fmt: skip
        sync_filter = {"room": room_filter, "presence": {"not_types": ["*"]}, "account_data": {"not_types": ["*"]}}
        resp = await self.client.sync(timeout=timeout_ms, since=self._since, sync_filter=sync_filter)
        if not isinstance(resp, SyncResponse):
            raise _failed("sync", resp)
        return resp

    # -- cards ---------------------------------------------------------------------------------
    async def _post_cards(self) -> None:
        assert self.room_id is not None
        for view in self.bridge.cards_to_post():
            if view.card is not None:
                found = await self._find_card(view.approval_id)
                if found is not None:
                    log.info("matrix bridge: card %s was posted before a restart", view.approval_id)
                    self.bridge.posted(view.approval_id, found, view)
                    continue
            elif not self.bridge.begin_post(view.approval_id, self.room_id):
                continue
            event_id = await self._send(card_content(view), f"af-card-{view.approval_id}")
            crash_point("bridge_card_sent")  # crash tests: the card is in the room, its row still `posting`
            self.bridge.posted(view.approval_id, event_id, view)

    async def _update_cards(self) -> None:
        for view in self.bridge.cards_to_update():
            assert view.card is not None and view.card.message_id is not None
            card_event = view.card.message_id
            if view.changed:
                digest = hashlib.sha256(view.text.encode()).hexdigest()[:16]
                await self._send(edit_content(view, card_event), f"af-edit-{view.approval_id}-{digest}")
            if view.final and view.outcome:
                content = thread_reply(f"Outcome: {view.outcome}", card_event, card_event)
                await self._send(content, f"af-outcome-{view.approval_id}")
            self.bridge.updated(view)

    async def _find_card(self, approval_id: str) -> str | None:
        """The bot's card event for `approval_id` among its recent messages in the room."""
        from nio import RoomMessagesResponse

        start = None
        only_mine = {"types": ["m.room.message"], "senders": [self.user_id]}
        for _ in range(SEARCH_PAGES):
            page = await self.client.room_messages(self.room_id, start=start, limit=100, message_filter=only_mine)
            if not isinstance(page, RoomMessagesResponse):
                raise _failed("messages", page)
            for event in page.chunk:
                content = (getattr(event, "source", None) or {}).get("content") or {}
                if content.get(CARD_KEY) == approval_id and "m.relates_to" not in content:
                    return str(event.event_id)
            if not page.chunk or not page.end or page.end == start:
                return None
            start = page.end
        return None

    # -- events --------------------------------------------------------------------------------
    async def _on_event(self, source: dict[str, Any]) -> None:
        sender, kind = source.get("sender"), source.get("type")
        content = source.get("content")
        if not isinstance(sender, str) or sender == self.user_id or not isinstance(content, dict):
            return
        relates = content.get("m.relates_to") if isinstance(content.get("m.relates_to"), dict) else {}
        assert isinstance(relates, dict)
        if kind == "m.reaction":
            await self._on_reaction(sender, relates)
            return
        if kind != "m.room.message" or content.get("msgtype") != "m.text" or not isinstance(content.get("body"), str):
            return  # notices (bots), images, state: not commands
        if relates.get("rel_type") == "m.replace" or "m.new_content" in content:
            return  # an edit: a command is what was typed first, not what it was changed to
        text = strip_fallback(content["body"])
        if not self.bridge.is_command(text):
            return  # people talk in threads too: no look-up, no answer
        root = _thread_root(relates)
        approval_id = self._approval_of(root) if root else None
        answer = self.bridge.handle(sender, approval_id, text)
        if answer:
            event_id = str(source.get("event_id") or "")
            await self._answer(answer, root if approval_id else None, event_id, approval_id)

    async def _on_reaction(self, sender: str, relates: dict[str, Any]) -> None:
        target, key = relates.get("event_id"), relates.get("key")
        if relates.get("rel_type") != "m.annotation" or not isinstance(target, str) or not isinstance(key, str):
            return
        card = self.bridge.card_of_message(target)
        if card is None or _THUMBS_UP.match(key) is None:
            return
        answer = self.bridge.handle(sender, card.approval_id, "approve 👍")
        if answer:
            await self._answer(answer, target, target, card.approval_id, tx=f"af-react-{target}-{sender}")

    def _approval_of(self, event_id: str) -> str | None:
        card = self.bridge.card_of_message(event_id)
        return card.approval_id if card is not None else self._threads.get(event_id)

    async def _answer(
        self, text: str, root: str | None, reply_to: str, approval_id: str | None, *, tx: str | None = None
    ) -> None:
        content = thread_reply(text, root, reply_to) if root else _reply(text, reply_to)
        sent = await self._send(content, tx or f"af-answer-{reply_to}")
        if approval_id is not None:
            self._threads[sent] = approval_id
            if len(self._threads) > 10_000:
                self._threads.pop(next(iter(self._threads)))

    async def _send(self, content: dict[str, Any], tx_id: str) -> str:
        from nio import RoomSendResponse

        sent = await self.client.room_send(self.room_id, "m.room.message", content, tx_id=tx_id)
        if not isinstance(sent, RoomSendResponse):
            raise _failed("send", sent)
        return str(sent.event_id)


def card_content(view: CardView) -> dict[str, Any]:
    """A card's message: plain text only, marked with its approval id, mentioning nobody."""
    return {"msgtype": "m.text", "body": view.text, "m.mentions": {}, CARD_KEY: view.approval_id}


def edit_content(view: CardView, card_event: str) -> dict[str, Any]:
    """An edit (`m.replace`) of a card to show `view`."""
    new = {"msgtype": "m.text", "body": view.text, "m.mentions": {}, CARD_KEY: view.approval_id}
    return {"msgtype": "m.text", "body": "* " + view.text, "m.mentions": {}, "m.new_content": new,
            "m.relates_to": {"rel_type": "m.replace", "event_id": card_event}}  # fmt: skip


def thread_reply(text: str, root: str, reply_to: str) -> dict[str, Any]:
    """A notice in the thread of `root`, answering `reply_to`."""
    return {"msgtype": "m.notice", "body": text, "m.mentions": {},
            "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": True,
                             "m.in_reply_to": {"event_id": reply_to}}}  # fmt: skip


def _reply(text: str, reply_to: str) -> dict[str, Any]:
    return {"msgtype": "m.notice", "body": text, "m.mentions": {},
            "m.relates_to": {"m.in_reply_to": {"event_id": reply_to}}}  # fmt: skip


def strip_fallback(body: str) -> str:
    """A reply's own text, without the quoted message clients put before it (`> <@x> ...`)."""
    return _FALLBACK.sub("", body, count=1) if body.startswith("> ") else body


def _thread_root(relates: dict[str, Any]) -> str | None:
    """The event a message is about: its thread's root, else the message it replies to."""
    if relates.get("rel_type") == "m.thread" and isinstance(relates.get("event_id"), str):
        return str(relates["event_id"])
    reply = relates.get("m.in_reply_to")
    if isinstance(reply, dict) and isinstance(reply.get("event_id"), str):
        return str(reply["event_id"])
    return None


def _said(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if not isinstance(exc, Unavailable) else str(exc)
