"""`Tx`: the store's records over one connection, for code above the store that needs a
read-check-write to be atomic (approval decisions, policy decisions, sessions).

    store.transaction(lambda tx: tx.approvals.get(approval_id), what="...")   # one transaction
    store.read(lambda tx: tx.principals.list())                                # plain reads

Every statement is a method here or in the modules it gathers; callers pass and get plain values.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from agentflow.errors import StoreError
from agentflow.store._backend import Conn, Op
from agentflow.store._constants import TERMINAL_SQL
from agentflow.store._seal import Sealer

if TYPE_CHECKING:
    from agentflow.store._usage import PolicyUsage


class Tx:
    """Principals and their tokens, approvals, audit, sessions and policy usage on one connection."""

    def __init__(
        self, conn: Conn, signal_ops: Callable[[str, str, str, float], list[Op]], *, writable: bool = True,
        clean: Callable[[str], str] = str, seals: Sealer | None = None,
    ) -> None:  # fmt: skip
        # Imported on the first transaction, not with the store: a process that only runs
        # workflows never opens one, and its start-up is shorter by these modules.
        from agentflow.store._chat import ChatCardRecords, ChatLinkRecords
        from agentflow.store._events import DeliveryRecords, EventRecords, WebhookRecords
        from agentflow.store._governance import ApprovalRecords, AuditRecords, PrincipalRecords, TokenRecords
        from agentflow.store._sessions import SessionRecords

        self.conn = conn
        self.writable = writable  # False in `store.read`: writes are refused (not a transaction)
        self._signal_ops = signal_ops
        self.principals = PrincipalRecords(conn, writable=writable)
        self.tokens = TokenRecords(conn, writable=writable)
        self.approvals = ApprovalRecords(conn, writable=writable, clean=clean, seals=seals)
        self.audit = AuditRecords(conn, writable=writable, clean=clean, seals=seals)
        self.sessions = SessionRecords(conn, writable=writable)
        self.events = EventRecords(conn, writable=writable, clean=clean, seals=seals)
        self.webhooks = WebhookRecords(conn, writable=writable, clean=clean, seals=seals)
        self.deliveries = DeliveryRecords(conn, writable=writable, clean=clean, seals=seals)
        self.chat_links = ChatLinkRecords(conn, writable=writable)
        self.chat_cards = ChatCardRecords(conn, writable=writable, clean=clean, seals=seals)

    def usage(self, *, deciding: tuple[str, str] = ("", ""), as_of: float | None = None) -> PolicyUsage:
        """Policy usage counts (see `PolicyUsage`)."""
        from agentflow.store._usage import PolicyUsage

        return PolicyUsage(self.conn, deciding=deciding, as_of=as_of, writable=self.writable)

    def run_is_live(self, run_id: str) -> bool:
        """Whether the run exists and has not ended."""
        row = self.conn.execute(
            f"SELECT 1 FROM af_runs WHERE id = ? AND status NOT IN {TERMINAL_SQL}", (run_id,)
        ).fetchone()
        return row is not None

    def signal(self, run_id: str, name: str, payload: str, now: float) -> None:
        """Deliver a signal in this transaction (it wakes the run when it commits)."""
        if not self.writable:
            raise StoreError("a signal sent inside store.read(...), which is not a transaction: use store.transaction")
        for sql, params, _ in self._signal_ops(run_id, name, payload, now):
            self.conn.execute(sql, params)
