"""`Tx`: the store's records over one connection, for code above the store that needs a
read-check-write to be atomic (approval decisions, policy decisions, sessions).

    store.transaction(lambda tx: tx.approvals.get(approval_id), what="...")   # one transaction
    store.read(lambda tx: tx.principals.list())                                # plain reads

Every statement is a method here or in the modules it gathers; callers pass and get plain values.
"""

from __future__ import annotations

from collections.abc import Callable

from agentflow.store._backend import Conn, Op
from agentflow.store._governance import Approvals, Audit, Principals
from agentflow.store._sessions import Sessions
from agentflow.store._usage import PolicyUsage


class Tx:
    """Principals, approvals, audit, sessions and policy usage on one connection."""

    def __init__(self, conn: Conn, signal_ops: Callable[[str, str, str, float], list[Op]]) -> None:
        self.conn = conn
        self._signal_ops = signal_ops
        self.principals = Principals(conn)
        self.approvals = Approvals(conn)
        self.audit = Audit(conn)
        self.sessions = Sessions(conn)

    def usage(self, *, deciding: tuple[str, str] = ("", ""), as_of: float | None = None) -> PolicyUsage:
        """Policy usage counts (see `PolicyUsage`)."""
        return PolicyUsage(self.conn, deciding=deciding, as_of=as_of)

    def run_is_live(self, run_id: str) -> bool:
        """Whether the run exists and has not ended."""
        row = self.conn.execute(
            "SELECT 1 FROM af_runs WHERE id = ? AND status NOT IN ('completed', 'failed', 'cancelled')", (run_id,)
        ).fetchone()
        return row is not None

    def signal(self, run_id: str, name: str, payload: str, now: float) -> None:
        """Deliver a signal in this transaction (it wakes the run when it commits)."""
        for sql, params, _ in self._signal_ops(run_id, name, payload, now):
            self.conn.execute(sql, params)
