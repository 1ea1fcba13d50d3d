"""Policy usage (`af_policy_usage`): the tool calls policies let through, counted by rate and
blast-radius limits across every run of the store.

`PolicyUsage` is what `agentflow.policy.decide` reads (its `Usage` protocol: `calls`, `targets`,
`busy`). Inside the transaction that records a decision (`EventStore.transaction`) the counts
and the reservation are atomic, so limits hold across concurrent runs and worker processes.
"""

from __future__ import annotations

from typing import Any

from agentflow.store._backend import Conn, Records
from agentflow.store._constants import TERMINAL_SQL


class PolicyUsage(Records):
    """Usage as it stands now (inside a deciding transaction), or as it stood at `as_of`.

    Args:
        conn: the connection (of the deciding transaction, or a reader's).
        deciding: (run id, call key) of the call being decided: a decision made again after a
            crash must not count the call's own earlier reservation against it.
        as_of: a what-if reads the usage of a past decision: only what was recorded strictly
            before it, and runs still open then (None: now).
    """

    def __init__(
        self, conn: Conn, *, deciding: tuple[str, str] = ("", ""), as_of: float | None = None, writable: bool = True
    ) -> None:
        super().__init__(conn, writable=writable)
        self.deciding = deciding
        self.as_of = as_of

    def _before(self, column: str) -> tuple[str, tuple[Any, ...]]:
        return ("", ()) if self.as_of is None else (f" AND {column} < ?", (self.as_of,))

    def calls(self, tenant: str, tool: str, since: float) -> int:
        """Calls of `tool` in `tenant` after `since` (the call being decided excluded)."""
        before, bound = self._before("at")
        sql = (
            "SELECT count(*) FROM af_policy_usage WHERE tenant = ? AND tool = ? AND at > ? "
            "AND NOT (run_id = ? AND call_id = ?)" + before
        )
        return int(self.conn.execute(sql, (tenant, tool, since, *self.deciding, *bound)).fetchone()[0])

    def targets(self, tenant: str, region: str | None, since: float) -> set[str]:
        """Targets changed (side-effecting calls) in `tenant` (and `region`) after `since`."""
        before, bound = self._before("at")
        sql = (
            "SELECT DISTINCT target FROM af_policy_usage WHERE tenant = ? AND side_effect = 1 "
            "AND target IS NOT NULL AND at > ?" + before
        )
        params: tuple[Any, ...] = (tenant, since, *bound)
        if region is not None:
            sql, params = sql + " AND region = ?", (*params, region)
        return {row[0] for row in self.conn.execute(sql, params)}

    def busy(self, target: str, run_id: str) -> bool:
        """Whether another run still open holds a change on `target`."""
        bound: tuple[float, ...] = ()
        still_open = f"r.status NOT IN {TERMINAL_SQL}"
        if self.as_of is not None:
            still_open = "u.at < ? AND (r.completed_at IS NULL OR r.completed_at > ?)"
            bound = (self.as_of, self.as_of)
        sql = (
            "SELECT 1 FROM af_policy_usage u JOIN af_runs r ON r.id = u.run_id WHERE u.target = ? "
            f"AND u.side_effect = 1 AND u.run_id != ? AND {still_open} LIMIT 1"
        )
        return self.conn.execute(sql, (target, run_id, *bound)).fetchone() is not None

    def reserve(
        self, *, tenant: str, tool: str, target: str | None, region: str | None, run_id: str, call_key: str,
        side_effect: bool, at: float,
    ) -> None:  # fmt: skip
        """Count a call once per gated call (`call_key`), however often it is decided again."""
        seen = self.conn.execute(
            "SELECT 1 FROM af_policy_usage WHERE run_id = ? AND call_id = ? AND tool = ?", (run_id, call_key, tool)
        ).fetchone()
        if seen is None:
            self._write(
                "INSERT INTO af_policy_usage (tenant, tool, target, region, run_id, call_id, side_effect, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (tenant, tool, target, region, run_id, call_key, int(side_effect), at),
            )
