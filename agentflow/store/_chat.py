"""Chat surfaces: accounts linked to operators (`af_chat_links`) and the cards a bridge posted
(`af_chat_cards`). The SQL for `agentflow.approvals`' links and the chat bridges' cards; the
rules (who may link what, when a card is posted or edited) live there. Every statement names
the tenant."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agentflow.store._backend import Records
from agentflow.store._governance import equal_filters

_LINK_COLUMNS = "tenant, surface, account, principal_id, created_at"
_CARD_COLUMNS = "surface, approval_id, tenant, room, message_id, state, rendered, args_hash, updated_at"
#: A card's states: `posting` is written before the post (a bridge restarted mid-post looks for
#: its message before posting again), `posted` once the chat system gave it an id, `final` once
#: the request was decided and its outcome shown (never edited again).
CARD_STATES = ("posting", "posted", "final")
_CHUNK = 500


@dataclass(frozen=True, slots=True)
class ChatLinkRow:
    """A chat account (`surface`: matrix or slack; `account`: its user id there) linked to an
    operator (`principal_id`) of `tenant`."""

    tenant: str
    surface: str
    account: str
    principal_id: str
    created_at: float


@dataclass(frozen=True, slots=True)
class ChatCardRow:
    """The card a bridge posted for an approval request: in which room, its message id there
    (None while `posting`), its state (`CARD_STATES`), the text last shown (`rendered`) and the
    hash of the arguments it showed (`args_hash`: what a decision typed under it approves)."""

    surface: str
    approval_id: str
    tenant: str
    room: str
    message_id: str | None
    state: str
    rendered: str | None
    args_hash: str | None
    updated_at: float


class ChatLinkRecords(Records):
    """Chat accounts linked to operators, per tenant and surface."""

    def get(self, *, tenant: str, surface: str, account: str) -> ChatLinkRow | None:
        row = self.conn.execute(
            f"SELECT {_LINK_COLUMNS} FROM af_chat_links WHERE tenant = ? AND surface = ? AND account = ?",
            (tenant, surface, account),
        ).fetchone()
        return None if row is None else ChatLinkRow(*row)

    def add(self, row: ChatLinkRow) -> None:
        self._write(
            f"INSERT INTO af_chat_links ({_LINK_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
            (row.tenant, row.surface, row.account, row.principal_id, row.created_at),
        )

    def remove(self, *, tenant: str, surface: str, account: str) -> None:
        self._write(
            "DELETE FROM af_chat_links WHERE tenant = ? AND surface = ? AND account = ?", (tenant, surface, account)
        )

    def list(
        self, *, tenant: str | None = None, principal_id: str | None = None, surface: str | None = None,
        account: str | None = None,
    ) -> list[ChatLinkRow]:  # fmt: skip
        """Links (of the tenant, operator, surface or account given), by tenant, surface and account."""
        clauses, params = equal_filters(tenant=tenant, principal_id=principal_id, surface=surface, account=account)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT {_LINK_COLUMNS} FROM af_chat_links{where} ORDER BY tenant, surface, account"
        return [ChatLinkRow(*r) for r in self.conn.execute(sql, params).fetchall()]


class ChatCardRecords(Records):
    """The approval cards a chat bridge posted, per surface and approval request. The text shown
    (`rendered`) quotes the request's arguments and comments: it is sealed like them."""

    def get(self, surface: str, approval_id: str, *, tenant: str) -> ChatCardRow | None:
        row = self.conn.execute(
            f"SELECT {_CARD_COLUMNS} FROM af_chat_cards WHERE surface = ? AND approval_id = ? AND tenant = ?",
            (surface, approval_id, tenant),
        ).fetchone()
        return None if row is None else self._opened(row)

    def by_message(self, surface: str, message_id: str, *, tenant: str) -> ChatCardRow | None:
        """The card posted as `message_id` (a reply in its thread is about its request)."""
        row = self.conn.execute(
            f"SELECT {_CARD_COLUMNS} FROM af_chat_cards WHERE surface = ? AND message_id = ? AND tenant = ?",
            (surface, message_id, tenant),
        ).fetchone()
        return None if row is None else self._opened(row)

    def list(
        self, surface: str, *, tenant: str, states: Sequence[str] = CARD_STATES,
        approval_ids: Sequence[str] | None = None,
    ) -> list[ChatCardRow]:  # fmt: skip
        """The tenant's cards on `surface` in the given states (of these requests), oldest first."""
        marks = ", ".join("?" * len(states))
        sql = f"SELECT {_CARD_COLUMNS} FROM af_chat_cards WHERE surface = ? AND tenant = ? AND state IN ({marks})"
        if approval_ids is None:
            chunks: list[Sequence[str]] = [[]]
        else:  # a bounded number of parameters per statement
            chunks = [approval_ids[i : i + _CHUNK] for i in range(0, len(approval_ids), _CHUNK)]
        rows = []
        for ids in chunks:
            where = f" AND approval_id IN ({', '.join('?' * len(ids))})" if approval_ids is not None else ""
            rows += self.conn.execute(sql + where, (surface, tenant, *states, *ids)).fetchall()
        return [self._opened(r) for r in sorted(rows, key=lambda r: (r[8], r[1]))]  # updated_at, approval_id

    def begin(self, surface: str, approval_id: str, *, tenant: str, room: str, at: float) -> bool:
        """Record that a card is about to be posted (`posting`); False when the request has a
        card row already (another bridge process, or an earlier attempt, got there first)."""
        sql = (
            f"INSERT INTO af_chat_cards ({_CARD_COLUMNS}) VALUES (?, ?, ?, ?, NULL, 'posting', NULL, NULL, ?) "
            "ON CONFLICT (surface, approval_id) DO NOTHING"
        )
        params = (surface, approval_id, tenant, room, at)
        if not self.writable:
            self._write(sql, params)  # refused: not a transaction
        return self.conn.execute(sql, params).rowcount == 1

    def update(
        self, surface: str, approval_id: str, *, tenant: str, state: str, at: float, rendered: str | None,
        args_hash: str | None, message_id: str | None = None,
    ) -> None:  # fmt: skip
        """A card's new state, shown text and argument hash (and its message id, once posted:
        kept when None)."""
        sealed = self.seals.seal(rendered, tenant, "af_chat_cards.rendered", surface, approval_id)
        self._write(
            "UPDATE af_chat_cards SET state = ?, rendered = ?, args_hash = ?, updated_at = ?, "
            "message_id = COALESCE(?, message_id) WHERE surface = ? AND approval_id = ? AND tenant = ?",
            (state, sealed, args_hash, at, message_id, surface, approval_id, tenant),
        )

    def _opened(self, row: Any) -> ChatCardRow:
        card = ChatCardRow(*row)
        rendered = self.seals.open(card.rendered, card.tenant, "af_chat_cards.rendered", card.surface, card.approval_id)
        return dataclasses.replace(card, rendered=rendered)
