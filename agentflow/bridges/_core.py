"""`Bridge`: what every chat bridge (Matrix, Slack) does, whatever its transport.

A surface adapter drives one `Bridge` per tenant and surface (one bridge process per tenant and
surface: two would both post):

    bridge = Bridge(app, surface="matrix", tenant="noc-east")
    for view in bridge.cards_to_post():           # open requests without a posted card
        if view.card is not None:                 # `posting`: a restart mid-post, so look first
            found = find_my_message(view.approval_id)
            if found:
                bridge.posted(view.approval_id, found, view)
                continue
        elif not bridge.begin_post(view.approval_id, room):
            continue                              # someone else got there first
        bridge.posted(view.approval_id, post(view.text), view)
    for view in bridge.cards_to_update():         # votes, a decision, the run's outcome
        edit(view.card.message_id, view.text)
        if view.final:
            reply_in_thread(view.outcome)
        bridge.updated(view)
    answer = bridge.handle(sender_id, approval_id_of_the_thread, text)   # None: not a command
    bridge.cursor("since"); bridge.save_cursor("since", token)          # a transport's position

`handle` acts for the operator the sender's account is linked to (`Approvals.linked`: the user
id the chat system vouches for, never a display name) through the approvals service, so a chat
decision has every check of the web's: tenant, roles, four-eyes, quorum, expiry, and the
arguments the card showed (an edit since is refused as stale). `approve value=40` edits an
argument the rule lets approvers edit. Everything a tool, a model or a person wrote reaches
the card through `safe_text` and is sent as plain text, never as markup.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from agentflow.approvals import ApprovalRequest, Approvals, Principal
from agentflow.chat import (
    Chat,
    card,
    card_rows,
    evidence,
    refusal_text,
    rule_text,
    safe_text,
    status_text,
    truncate,
    utc,
    why_text,
)
from agentflow.engine import App, Client
from agentflow.errors import ApprovalError, ApprovalRefused, ConfigurationError, CorruptRecordError, StoreError
from agentflow.store import TERMINAL_STATUSES, ChatCardRow, RunRecord, StepRecord, Tx, check_tenant, local_id

T = TypeVar("T")
log = logging.getLogger("agentflow.bridges")
SURFACES = ("matrix", "slack")
_COMMAND = re.compile(r"^\s*/?(approve|reject|status|why\??|help)\b\s*(.*)$", re.IGNORECASE | re.DOTALL)
_NAMED = re.compile(r"^(apr_[0-9a-f]{6,40})\b\s*(.*)$", re.DOTALL)
_EDIT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(\S+)\s*(.*)$", re.DOTALL)
EVIDENCE = 2  # tool outputs shown as evidence on a card
THREAD_HELP = (
    "Reply in the card's thread: `approve [comment]` (`approve value=40` edits an editable argument), "
    "`reject <reason>`, `status`, `why?`."
)


@dataclass(frozen=True)
class CardView:
    """An approval card as plain text fields (each made safe with `safe_text`) and the whole
    `text` a surface posts. `card` is the request's card row, if any; `final` says nothing on
    the card will change again (the request is decided and its call ran, or never will)."""

    approval_id: str
    run_id: str
    status: str
    tool: str
    target: str
    diff: str
    args: str
    rule: str
    requested_by: str
    quorum: str
    expires: str
    evidence: list[str]
    votes: list[str]
    editable: list[str]
    outcome: str | None
    final: bool
    args_hash: str
    text: str
    card: ChatCardRow | None = None

    @property
    def changed(self) -> bool:
        """Whether the card as posted shows something else (or was never posted)."""
        return self.card is None or self.card.rendered != self.text


@dataclass
class _Budget:
    """Commands per account in a sliding window: a flood is answered once, then ignored."""

    per_minute: int
    seen: dict[str, deque[float]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self, account: str, now: float) -> int:
        """0: within the budget; 1: the first command over it; 2: later ones."""
        with self.lock:
            if len(self.seen) > 10_000:  # forget quiet accounts (a flood of senders)
                self.seen = {a: t for a, t in self.seen.items() if t and t[-1] > now - 60}
            times = self.seen.setdefault(account, deque())
            while times and times[0] <= now - 60:
                times.popleft()
            if len(times) > self.per_minute:
                return 2
            times.append(now)
            return 0 if len(times) <= self.per_minute else 1


class Bridge:
    """The surface-neutral side of a chat bridge for one tenant (see the module docstring).

    Args:
        app: the App (or a Client) whose store and clock the approvals are in (its workers may
            run elsewhere; a Client on the store is enough when the App's clock is the system's).
        surface: "matrix" or "slack" (the card rows and linked accounts are per surface).
        tenant: whose requests are posted and decided (a card of another tenant is never found).
        per_minute: commands an account may send per minute; more are answered once, then ignored.
        wall: wall-clock time for the rate limit (tests pass their own).
    """

    def __init__(
        self, app: App | Client, *, surface: str, tenant: str, per_minute: int = 20,
        wall: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        if surface not in SURFACES:
            raise ConfigurationError(f"unknown chat surface {surface!r}: use one of {', '.join(SURFACES)}")
        check_tenant(tenant)
        if not per_minute >= 1:
            raise ConfigurationError(f"--per-minute must be at least 1, not {per_minute!r}: below it nobody's command "
                                     "would be taken")  # fmt: skip
        self.app, self.surface, self.tenant = app, surface, tenant
        self.chat = Chat(app.client if isinstance(app, App) else app)
        self.store = self.chat.store
        self.approvals = Approvals(self.chat.store, self.chat.clock)
        self._budget = _Budget(per_minute)
        self._logged: set[str] = set()
        self._wall = wall
        # Who the cards are rendered for: nobody in particular (what each person may do is
        # checked when they type a command).
        self._room = Principal(id="", name="", tenant=tenant, roles=[])

    # -- cards ---------------------------------------------------------------------------------
    def cards_to_post(self) -> list[CardView]:
        """Open requests of the tenant without a card, and every card still `posting` (whatever
        its request became since), oldest first. A view whose `card` is set is such a row: an
        earlier post may have reached the chat, so look for it before posting (a request decided
        meanwhile is posted with its outcome, then edited like any card).

        A failure that asking again will not cure (a record that does not decode, a bug) is
        logged once and no card is offered, so an adapter still takes commands; a store that is
        away raises (the adapter retries)."""
        return self._lasting_failure_logged("cards to post", self._cards_to_post, [])

    def _cards_to_post(self) -> list[CardView]:
        # The open requests' cards and the `posting` ones: not every card the tenant ever had
        # (a turn of the adapter's loop would read them all, a few seconds apart, for ever).
        wanted = {r.id: r for r in self.approvals.list(tenant=self.tenant, status="pending")}
        cards = {c.approval_id: c for c in self._cards(("posting", "posted", "final"), approval_ids=list(wanted))}
        cards |= {c.approval_id: c for c in self._cards(("posting",))}
        wanted = {i: r for i, r in wanted.items() if i not in cards}
        for row in cards.values():
            if row.state == "posting":
                wanted[row.approval_id] = self.approvals.get(row.approval_id, tenant=self.tenant)
        ordered = sorted(wanted.values(), key=lambda r: (r.created_at, r.id))
        return [self._view(r, cards.get(r.id)) for r in ordered]

    def cards_to_update(self) -> list[CardView]:
        """Posted cards whose text changed (votes, an edit, a decision, the run's outcome) or
        that became final, oldest first (a lasting failure: logged once, none; see `cards_to_post`)."""
        return self._lasting_failure_logged("cards to update", self._cards_to_update, [])

    def _cards_to_update(self) -> list[CardView]:
        views = []
        for row in self._cards(("posted",)):
            view = self.view(row.approval_id, row)
            if view.changed or view.final:
                views.append(view)
        return views

    def view(self, approval_id: str, card_row: ChatCardRow | None = None) -> CardView:
        """The card of a request of the tenant as it is now.

        Raises:
            ApprovalRefused: code "unknown" when the tenant has no such request.
        """
        req = self.approvals.get(approval_id, tenant=self.tenant)
        return self._view(req, card_row if card_row is not None else self.card(approval_id))

    def card_text(self, approval_id: str) -> str:
        """The plain text of a request's card as it is now."""
        return self.view(approval_id).text

    def card(self, approval_id: str) -> ChatCardRow | None:
        """The request's card row (None: never posted)."""
        return self.store.read(lambda tx: tx.chat_cards.get(self.surface, approval_id, tenant=self.tenant))

    def card_of_message(self, message_id: str) -> ChatCardRow | None:
        """The tenant's card posted as `message_id` (a reply in its thread is about its request)."""
        return self.store.read(lambda tx: tx.chat_cards.by_message(self.surface, message_id, tenant=self.tenant))

    def begin_post(self, approval_id: str, room: str) -> bool:
        """Record, before posting, that the card is being posted; False when the request has a
        card row already (posted, or being posted by an earlier attempt: see `cards_to_post`)."""
        now = self.chat.clock.now()
        return self._write(lambda tx: tx.chat_cards.begin(self.surface, approval_id, tenant=self.tenant, room=room,
                                                          at=now))  # fmt: skip

    def posted(self, approval_id: str, message_id: str, shown: CardView | str) -> None:
        """The card was posted as `message_id`, showing `shown` (pass the view posted: its text
        and the arguments' hash are recorded; a bare text is bound to the current arguments)."""
        self._record(approval_id, shown, message_id)

    def updated(self, shown: CardView) -> None:
        """The card was edited to show `shown` (and its outcome posted, when final)."""
        self._record(shown.approval_id, shown, None)

    # -- commands ------------------------------------------------------------------------------
    @staticmethod
    def is_command(text: str) -> bool:
        """Whether `handle` would act on `text` (an adapter skips its look-ups for talk)."""
        return _COMMAND.match(text) is not None

    def handle(self, account: str, approval_id: str | None, text: str) -> str | None:
        """The answer to `text` typed by `account` (the sender's user id on the surface) in the
        thread of `approval_id`'s card (None: outside any card's thread). None when `text` is no
        command (people talk in threads too) or the account is past its budget.

        A decision repeated (the same command handled twice after a crash) counts once. A
        failure that asking again will not cure (a bug, a record that does not decode) is logged
        and answered, so an adapter replaying what it missed does not stop at this command for
        good; a store that is away raises (the adapter retries the command later)."""
        found = _COMMAND.match(text)
        if found is None:
            return None
        over = self._budget.take(account, self._wall())
        if over > 1:
            return None
        if over == 1:
            return f"{account}: too many commands; wait a minute (the next ones are ignored until then)."
        try:
            return self._handle(account, approval_id, found)
        except Exception as exc:
            if not _lasting(exc):
                raise
            log.exception("chat bridge: a command of %s on %s failed", account, approval_id,
                          extra={"tenant": self.tenant, "surface": self.surface})  # fmt: skip
            return (f"{safe_text(account)}: this command failed in the bridge ({type(exc).__name__}, logged) and may not have "
                    "been taken: `status` says where the request stands.")  # fmt: skip

    def _handle(self, account: str, approval_id: str | None, found: re.Match[str]) -> str:
        verb, rest = found.group(1).lower().rstrip("?"), found.group(2).strip()
        try:
            who = self.approvals.linked(self.surface, account, tenant=self.tenant)
        except ApprovalError as exc:
            return safe_text(exc.message)
        named = _NAMED.match(rest)
        if named is not None:
            approval_id, rest = named.group(1), named.group(2).strip()
        if verb == "help":
            return THREAD_HELP
        if approval_id is None:
            return f"Which request? {THREAD_HELP} Outside a thread, name it: `{verb} apr_…`."
        try:
            return self._command(who, verb, approval_id, rest)
        except ApprovalError as exc:
            return f"{who.name}: not done ({exc.code}): {safe_text(exc.message)}"

    def _command(self, who: Principal, verb: str, approval_id: str, rest: str) -> str:
        req = self.approvals.get(approval_id, tenant=self.tenant)
        run = self.chat.store.get_run(req.run_id)
        if verb == "status":
            return safe_text(status_text(self.chat, run))
        if verb == "why":
            return safe_text(why_text(self.chat, run, self.chat.store.load_steps(run.id)))
        shown = self.card(approval_id)
        seen = shown.args_hash if shown is not None and shown.args_hash else req.args_hash
        try:
            if verb == "reject":
                if not rest:
                    raise ApprovalRefused("say why: `reject <reason>`", code="invalid", approval_id=approval_id)
                decided = self.approvals.reject(approval_id, by=who, comment=rest)
            else:
                edits, comment = _edits(req, rest)
                args = {**req.args, **edits} if edits else None
                decided = self.approvals.approve(approval_id, by=who, comment=comment, args=args, seen_hash=seen)
        except ApprovalRefused as exc:  # in words for people; the code for those who script
            return f"{who.name}: not done: {safe_text(refusal_text(exc.code, exc.message, req, who))} ({exc.code})"
        return f"{who.name}: {_progress(decided)}"

    # -- a transport's position (a sync token), kept in the store --------------------------------
    def cursor(self, name: str) -> str | None:
        """A value the adapter saved (e.g. Matrix's sync token), None at first."""
        return self.store.setting(self._key(name))

    def save_cursor(self, name: str, value: str) -> None:
        self.store.set_setting(self._key(name), value, self.chat.clock.now())

    # -- plumbing ------------------------------------------------------------------------------
    def _key(self, name: str) -> str:
        return f"bridge:{self.surface}:{self.tenant}:{name}"

    def _lasting_failure_logged(self, what: str, body: Callable[[], T], instead: T) -> T:
        try:
            return body()
        except Exception as exc:
            if not _lasting(exc):
                raise
            said = f"{what}: {type(exc).__name__}: {exc}"
            if said not in self._logged:  # once, not at every turn of the adapter's loop
                self._logged.add(said)
                log.exception("chat bridge: no %s (until this is fixed)", what,
                              extra={"tenant": self.tenant, "surface": self.surface})  # fmt: skip
            return instead

    def _cards(self, states: tuple[str, ...], approval_ids: list[str] | None = None) -> list[ChatCardRow]:
        return self.store.read(lambda tx: tx.chat_cards.list(self.surface, tenant=self.tenant, states=states,
                                                             approval_ids=approval_ids))  # fmt: skip

    def _write(self, body: Callable[[Tx], T]) -> T:
        return self.store.transaction(body, what="recording a chat card", locks=(f"card:{self.tenant}",))

    def _record(self, approval_id: str, shown: CardView | str, message_id: str | None) -> None:
        view = self.view(approval_id) if isinstance(shown, str) else shown
        text = shown if isinstance(shown, str) else shown.text
        now = self.chat.clock.now()
        state = "final" if view.final else "posted"
        self._write(lambda tx: tx.chat_cards.update(self.surface, approval_id, tenant=self.tenant, state=state,
                                                    at=now, rendered=text, args_hash=view.args_hash,
                                                    message_id=message_id))  # fmt: skip

    def _view(self, req: ApprovalRequest, row: ChatCardRow | None) -> CardView:
        steps = self.chat.store.load_steps(req.run_id)
        run = self.chat.store.get_run(req.run_id)
        shown = card(self.chat, req, self._room, steps)
        shown.pop("now", None)  # no "in 59m": the text would change every minute
        rows = dict(card_rows(shown))
        votes = [text for label, text in card_rows(shown) if label == "vote"]
        outcome, final = _outcome(req, run, steps)
        fields: dict[str, Any] = {
            "approval_id": req.id, "run_id": local_id(req.run_id, req.tenant), "status": req.status,
            "tool": rows["tool"], "target": rows["target"], "diff": rows["diff"], "args": rows["args"],
            "rule": _rule(req, steps), "requested_by": rows["requested by"], "quorum": rows["quorum"],
            "expires": rows["expires"], "evidence": _evidence(self.chat, req, steps), "votes": votes,
            "editable": [safe_text(a) for a in req.spec.editable_args], "outcome": outcome, "final": final,
            "args_hash": req.args_hash,
        }  # fmt: skip
        return CardView(**fields, text=_render(fields), card=row)


def _lasting(exc: Exception) -> bool:
    """Whether asking again will fail the same way: anything but the store being away (busy,
    down, a full disk: it comes back), a record that does not decode included."""
    return not isinstance(exc, StoreError) or isinstance(exc, CorruptRecordError)


def _render(f: dict[str, Any]) -> str:
    """The card as plain text: what would run, on what, why it needs a decision, who decides,
    until when, the evidence, the votes, and the outcome once there is one."""
    head = "Approval needed" if f["status"] in ("pending", "escalated") else f"Approval {f['status']}"
    lines = [
        f"{head}: {f['tool']} on {f['target']} ({f['approval_id']}, run {f['run_id']})",
        f"change: {f['diff']}",
        f"arguments: {f['args']}",
        f"rule: {f['rule']}",
        f"requested by: {f['requested_by']}",
        f"quorum: {f['quorum']}",
        f"expires: {f['expires']}",
    ]
    lines += [f"evidence: {e}" for e in f["evidence"]]
    lines += [f"vote: {v}" for v in f["votes"]]
    if f["outcome"]:
        lines.append(f"outcome: {f['outcome']}")
    elif f["status"] in ("pending", "escalated"):
        edit = f" (editable: {', '.join(f['editable'])})" if f["editable"] else ""
        lines.append(THREAD_HELP + edit)
    return "\n".join(lines)


def _rule(req: ApprovalRequest, steps: list[StepRecord]) -> str:
    """The rule that asked for the approval in words, and the policy's reason when it gave one."""
    text = f"{safe_text(req.rule)}: {safe_text(rule_text(req))}"
    for step in reversed(steps):
        if step.kind == "policy" and step.result and _call_of(step) == req.call_id:
            reason = (json.loads(step.result) or {}).get("reason")
            if reason:
                return f"{text} ({truncate(safe_text(reason), 300, 3)})"
    return text


def _evidence(chat: Chat, req: ApprovalRequest, steps: list[StepRecord]) -> list[str]:
    """What the agent said and read before it asked (`agentflow.chat.evidence`): its words with
    the call, its diagnosis, its latest reads of the target. Untrusted: made safe, cut short."""
    found = evidence(chat, req, steps)
    shown = []
    if found["reason"]:
        shown.append(f"the agent said: {truncate(safe_text(found['reason']), 400, 6)}")
    for item in found["diagnosis"]:
        shown.append(
            f"{safe_text(item['tool'])} {safe_text(item['field'])}: {truncate(safe_text(item['value']), 300, 4)}"
        )
    for read in found["reads"][-EVIDENCE:]:
        shown.append(f"{safe_text(read['tool'])} read: {truncate(safe_text(read['result']), 400, 6)}")
    return shown


def _outcome(req: ApprovalRequest, run: RunRecord, steps: list[StepRecord]) -> tuple[str | None, bool]:
    """What became of the request: (words, whether it is final), None while it is open."""
    if req.open:
        return None, False
    by = ", ".join(safe_text(v.principal) for v in req.votes if v.revision == req.revision and
                   v.decision == ("reject" if req.status == "rejected" else "approve"))  # fmt: skip
    if req.status == "rejected":
        why = "; ".join(safe_text(v.comment) for v in req.votes if v.decision == "reject" and v.comment)
        return f"rejected by {by or '?'}" + (f" ({truncate(why, 300, 3)})" if why else "") + ": not applied", True
    if req.status == "expired":
        return "expired without a decision: not applied", True
    if req.status == "withdrawn":
        return f"the run ended ({run.status}) before a decision: not applied", True
    ran = [s for s in steps if s.kind == "tool" and _call_of(s) == req.call_id and s.status in ("completed", "failed")]
    approved = f"approved by {by or '?'} ({req.approvals}/{req.spec.quorum})"
    if ran and ran[-1].status == "completed":
        return f"{approved}; applied at {utc(ran[-1].finished_at or 0, seconds=True)}", True
    if ran:
        return f"{approved}; the call failed: {truncate(safe_text(ran[-1].error or ''), 300, 3)}", True
    if run.status in TERMINAL_STATUSES:
        return f"{approved}; not applied: the run {run.status} first", True
    return f"{approved}; waiting to run (a maintenance window, or the policy again)", False


def _call_of(step: StepRecord) -> str | None:
    try:
        args = json.loads(step.args or "{}")
    except ValueError:
        return None
    return args.get("call") if isinstance(args, dict) else None


def _edits(req: ApprovalRequest, rest: str) -> tuple[dict[str, Any], str]:
    """Leading `name=value` words naming an argument of the request (`approve value=40 ok`):
    the edits (a number or JSON value when it parses, else text) and the comment after them."""
    edits: dict[str, Any] = {}
    while (found := _EDIT.match(rest)) is not None and found.group(1) in req.args:
        raw = found.group(2)
        try:
            edits[found.group(1)] = json.loads(raw)
        except ValueError:
            edits[found.group(1)] = raw
        rest = found.group(3).strip()
    return edits, rest


def _progress(req: ApprovalRequest) -> str:
    what = f"{safe_text(req.tool)} {req.id}"
    if req.status == "approved":
        return f"{what} approved ({req.approvals}/{req.spec.quorum}): the call will run"
    if req.status == "rejected":
        return f"{what} rejected: the call will not run"
    return f"{what} {req.status}, {req.approvals}/{req.spec.quorum} approvals"
