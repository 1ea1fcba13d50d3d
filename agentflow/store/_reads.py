"""The read side's queries (listings, usage sums, counts) and the copies a replay or a fork makes
of a run's rows. A mixin of `EventStore`: the SQL stays in the store."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from agentflow.store._backend import Backend, Conn, Op
from agentflow.store._constants import OPEN_STATUSES, TERMINAL_SQL
from agentflow.store._records import RunRecord, StepRecord
from agentflow.store._seal import PREFIX, Sealer

# What a replay copies for a run's tree, besides the runs themselves.
_PER_RUN = ("af_steps", "af_step_attempts", "af_signals", "af_approvals")
_BLOB_REF = re.compile(r"\b[0-9a-f]{32}\b")
# SQLite's bound-parameter limit is 32766 in current builds but 999 in old ones: stay under it.
_CHUNK = 500


def _chunks(ids: Sequence[str]) -> Iterator[tuple[tuple[str, ...], str]]:
    """`ids` in parts the driver accepts as bound parameters, each with its `?, ?, ...` list."""
    for lo in range(0, len(ids), _CHUNK):
        part = tuple(ids[lo : lo + _CHUNK])
        yield part, ", ".join("?" * len(part))


def table_columns(table: str) -> list[str]:
    """The columns of one of agentflow's tables, from its SQLModel model."""
    from sqlmodel import SQLModel

    import agentflow.store._models  # noqa: F401 - registers the tables on SQLModel.metadata

    return [c.name for c in SQLModel.metadata.tables[table].columns]


def _run_table_select(backend: Backend) -> str:
    """Per-run step aggregates in one pass (the database's JSON functions read the recorded usage;
    a sealed value reads as NULL, and the last column says the run has sealed payloads)."""

    def num(column: str, path: str) -> str:
        return f"CASE WHEN {column} LIKE '{PREFIX}%' THEN NULL ELSE {backend.json_num(column, path)} END"

    def text(column: str, path: str) -> str:
        return f"CASE WHEN {column} LIKE '{PREFIX}%' THEN NULL ELSE {backend.json_text(column, path)} END"

    return f"""
SELECT r.id, r.workflow, r.tenant, r.status, r.created_at, r.completed_at,
       (SELECT count(*) FROM af_steps s WHERE s.run_id = r.id),
       (SELECT count(*) FROM af_steps s WHERE s.run_id = r.id AND s.kind = 'llm' AND s.status = 'completed'),
       (SELECT count(*) FROM af_steps s WHERE s.run_id = r.id AND s.kind = 'tool'),
       (SELECT coalesce(sum({num("s.result", "usage.input_tokens")}
                            + {num("s.result", "usage.output_tokens")}), 0)
          FROM af_steps s WHERE s.run_id = r.id AND s.kind = 'llm' AND s.status = 'completed'),
       (SELECT coalesce(sum({num("s.result", "usage.cost_usd")}), 0.0)
          FROM af_steps s WHERE s.run_id = r.id AND s.kind = 'llm' AND s.status = 'completed'),
       {text("r.meta", "requested_by")}, {text("r.meta", "forked_from")},
       {text("r.error", "type")} || ': ' || {text("r.error", "message")},
       CASE WHEN r.input LIKE '{PREFIX}%' THEN 1 ELSE 0 END
FROM af_runs r
"""


class ReadQueries:
    """Queries of the read side (traces, chat views, usage), mixed into `EventStore`."""

    backend: Backend
    seals: Sealer

    if TYPE_CHECKING:  # provided by `EventStore` and its `SealedRows`
        Rows = dict[str, list[tuple[Any, ...]]]

        def get_run(self, run_id: str) -> RunRecord: ...
        def create_run_op(
            self, run_id: str, workflow: str, tenant: str, input: str, now: float,
            parent_id: str | None, parent_seq: int | None, root_id: str | None, meta: str | None,
        ) -> Op: ...  # fmt: skip
        def open_rows(self, rows: Rows, columns: Callable[[str], list[str]]) -> Rows: ...
        def seal_rows(self, rows: Rows, columns: Callable[[str], list[str]]) -> Rows: ...
        def blob_rows(self, digests: Sequence[str]) -> dict[str, tuple[Any, ...]]: ...
        def sealed_step_params(self, run_id: str, epoch: int, tenant: str, s: StepRecord) -> tuple[Any, ...]: ...

    def llm_usage(self, *, run_id: str | None = None, tenant: str | None = None) -> list[tuple[str, str]]:
        """(model name, recorded result JSON) of every completed model call of a run, a
        tenant's runs, or the whole store."""
        sql = (
            "SELECT s.name, s.result, r.tenant, s.run_id, s.seq FROM af_steps s JOIN af_runs r ON r.id = s.run_id "
            "WHERE s.kind = 'llm' AND s.status = 'completed'"
        )
        params: list[Any] = []
        if run_id is not None:
            sql += " AND s.run_id = ?"
            params.append(run_id)
        if tenant is not None:
            sql += " AND r.tenant = ?"
            params.append(tenant)
        opened = self.seals.open
        rows = self.backend.query(sql, tuple(params))
        return [(r[0], opened(r[1], r[2], "af_steps.result", r[3], r[4]) or "null") for r in rows]

    def count_steps(self, run_id: str) -> int:
        return int(self.backend.query("SELECT count(*) FROM af_steps WHERE run_id = ?", (run_id,))[0][0])

    def run_table(
        self, *, tenant: str | None = None, status: str | None = None, since: float | None = None,
        until: float | None = None, tool: str | None = None, approved_by: str | None = None, limit: int = 1000,
    ) -> list[tuple[Any, ...]]:  # fmt: skip
        """Runs, newest first, with their step aggregates: id, workflow, tenant, status,
        created_at, completed_at, steps, model calls, tool calls, tokens, cost, requested_by,
        forked_from, error."""
        clauses: list[str] = []
        params: list[Any] = []
        for clause, value in (
            ("r.tenant = ?", tenant),
            ("r.status = ?", status),
            ("r.created_at >= ?", since),
            ("r.created_at < ?", until),
            ("EXISTS (SELECT 1 FROM af_steps s WHERE s.run_id = r.id AND s.kind = 'tool' AND s.name = ?)", tool),
            ("EXISTS (SELECT 1 FROM af_approvals a JOIN af_approval_votes v ON v.approval_id = a.id "
             "WHERE a.run_id = r.id AND v.decision = 'approve' AND v.principal = ?)", approved_by),
        ):  # fmt: skip
            if value is not None:
                clauses.append(clause)
                params.append(value)
        where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
        sql = _run_table_select(self.backend) + where + " ORDER BY r.created_at DESC, r.id LIMIT ?"
        rows = self.backend.query(sql, (*params, limit))
        return [self._unsealed_row(r[:-1]) if r[-1] or self.seals.on(r[2]) else r[:-1] for r in rows]

    def run_calls(self, run_ids: Sequence[str], *, tenant: str) -> dict[str, tuple[set[str], set[str]]]:
        """For each of `tenant`'s runs among `run_ids`: the tools its policy decided on (asked
        for, run or not) and the targets its gated calls named (what a runs list filters on)."""
        found: dict[str, tuple[set[str], set[str]]] = {r: (set(), set()) for r in run_ids}
        for part, marks in _chunks(run_ids):
            tools = self.backend.query(
                "SELECT DISTINCT s.run_id, s.name FROM af_steps s JOIN af_runs r ON r.id = s.run_id "
                f"WHERE r.tenant = ? AND s.kind = 'policy' AND s.run_id IN ({marks})",
                (tenant, *part),
            )
            targets = self.backend.query(
                "SELECT DISTINCT run_id, target FROM af_policy_usage "
                f"WHERE tenant = ? AND target IS NOT NULL AND run_id IN ({marks})",
                (tenant, *part),
            )
            for run_id, tool in tools:
                found[run_id][0].add(str(tool))
            for run_id, target in targets:
                found[run_id][1].add(str(target))
        return found

    def run_totals(self, run_ids: Sequence[str], *, tenant: str) -> dict[str, tuple[int, int, float, int]]:
        """For each of `tenant`'s runs among `run_ids`: (steps, tokens, cost in USD, open approval
        requests), three statements per 500 runs whatever their number (a runs list polled every
        few seconds reads them together, not run by run). Tokens and cost are the recorded usage
        of completed model calls, summed as `agentflow.agent.usage` sums them."""
        found = {r: (0, 0, 0.0, 0) for r in run_ids}
        steps: dict[str, int] = {}
        tokens: dict[str, int] = {}
        cost: dict[str, float] = {}
        opened: dict[str, int] = {}
        for part, marks in _chunks(run_ids):
            counted = self.backend.query(
                "SELECT s.run_id, count(*) FROM af_steps s JOIN af_runs r ON r.id = s.run_id "
                f"WHERE r.tenant = ? AND s.run_id IN ({marks}) GROUP BY s.run_id",
                (tenant, *part),
            )
            steps.update((run_id, int(n)) for run_id, n in counted)
            models = self.backend.query(
                "SELECT s.run_id, s.result, s.seq FROM af_steps s JOIN af_runs r ON r.id = s.run_id "
                f"WHERE r.tenant = ? AND s.kind = 'llm' AND s.status = 'completed' AND s.run_id IN ({marks})",
                (tenant, *part),
            )
            for run_id, result, seq in models:
                text = self.seals.open(result, tenant, "af_steps.result", run_id, seq) or "null"
                used = (json.loads(text) or {}).get("usage") or {}
                tokens[run_id] = (
                    tokens.get(run_id, 0) + int(used.get("input_tokens") or 0) + int(used.get("output_tokens") or 0)
                )
                cost[run_id] = cost.get(run_id, 0.0) + float(used.get("cost_usd") or 0.0)
            waiting = self.backend.query(
                f"SELECT run_id, count(*) FROM af_approvals WHERE tenant = ? AND run_id IN ({marks}) "
                f"AND status IN ({', '.join('?' * len(OPEN_STATUSES))}) GROUP BY run_id",
                (tenant, *part, *OPEN_STATUSES),
            )
            opened.update((run_id, int(n)) for run_id, n in waiting)
        for run_id in found:
            found[run_id] = (steps.get(run_id, 0), tokens.get(run_id, 0), cost.get(run_id, 0.0), opened.get(run_id, 0))
        return found

    def _unsealed_row(self, row: tuple[Any, ...]) -> tuple[Any, ...]:
        """A `run_table` row of a sealed run: what the database could not read in its payloads
        (tokens, cost, who asked, where it was forked from, the error) read here, opened."""
        run = self.get_run(row[0])
        tokens, cost = 0.0, 0.0
        for _, result in self.llm_usage(run_id=run.id):
            usage = (json.loads(result) or {}).get("usage") or {}
            tokens += float(usage.get("input_tokens") or 0) + float(usage.get("output_tokens") or 0)
            cost += float(usage.get("cost_usd") or 0)
        meta, error = run.meta_dict(), run.error_dict()
        failed = f"{error.get('type')}: {error.get('message')}" if error else None
        return (*row[:9], tokens, cost, meta.get("requested_by"), meta.get("forked_from"), failed)

    # -- copies of a run's rows ----------------------------------------------------------------
    def export_tree(self, root_id: str) -> dict[str, list[tuple[Any, ...]]]:
        """The rows of a run tree (runs, steps, attempts, signals, approvals, votes and the blobs
        its runs and steps refer to), by table: what a replay reads, and nothing of other runs."""
        rows: dict[str, list[tuple[Any, ...]]] = {}
        runs = self.backend.query(
            f"SELECT {', '.join(table_columns('af_runs'))} FROM af_runs WHERE root_id = ?", (root_id,)
        )
        rows["af_runs"] = runs
        ids = [r[0] for r in runs]
        for table in _PER_RUN:
            rows[table] = self._select_in(table, "run_id", ids)
        rows["af_approval_votes"] = self._select_in(
            "af_approval_votes", "approval_id", [r[0] for r in rows["af_approvals"]]
        )
        # Copied opened: the target store seals them as it seals (`import_rows`).
        rows = self.open_rows(rows, table_columns)
        text = " ".join(str(v) for t in ("af_runs", "af_steps") for row in rows[t] for v in row if isinstance(v, str))
        rows["af_blobs"] = list(self.blob_rows(sorted(set(_BLOB_REF.findall(text)))).values())
        return rows

    def import_rows(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        """Insert rows `export_tree` read (into a fresh store), in one transaction."""
        rows = self.seal_rows(rows, table_columns)

        def body(conn: Conn) -> None:
            for table, found in rows.items():
                cols = table_columns(table)
                sql = f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                for row in found:
                    conn.execute(sql, row)

        self.backend.transact(body, what="copying a run's rows")

    def _select_in(self, table: str, column: str, values: Sequence[Any]) -> list[tuple[Any, ...]]:
        cols = ", ".join(table_columns(table))
        out: list[tuple[Any, ...]] = []
        for lo in range(0, len(values), _CHUNK):
            part = values[lo : lo + _CHUNK]
            marks = ", ".join("?" * len(part))
            out += self.backend.query(f"SELECT {cols} FROM {table} WHERE {column} IN ({marks})", part)
        return out

    def rewind_for_replay(self, run_id: str, root_id: str) -> None:
        """Make a copied run pending again with only its final steps (its unfinished ones, intent
        without outcome, dropped); the other live runs of its tree are set aside (cancelled)."""

        def body(conn: Conn) -> None:
            conn.execute(
                "UPDATE af_runs SET status = 'pending', owner = NULL, output = NULL, error = NULL, "
                "completed_at = NULL, wake_at = NULL, waiting_on = NULL WHERE id = ?",
                (run_id,),
            )
            conn.execute("DELETE FROM af_steps WHERE run_id = ? AND status NOT IN ('completed', 'failed')", (run_id,))
            conn.execute(
                f"UPDATE af_runs SET status = 'cancelled' WHERE root_id = ? AND id != ? AND status NOT IN {TERMINAL_SQL}",
                (root_id, run_id),
            )

        self.backend.transact(body, what="preparing a replay")

    def fork(self, run: RunRecord, steps: Sequence[StepRecord], *, new_id: str, meta: str,
             now: float) -> bool:  # fmt: skip
        """Create run `new_id` (pending) as a copy of `run` with these steps, in one transaction:
        the run and its prefix appear together, or not at all. False if `new_id` exists."""
        create = self.create_run_op(new_id, run.workflow, run.tenant, run.input, now, None, None, None, meta)
        # The new run's epoch is 0, so the fenced step inserts apply only to the run created here.
        # Its payloads are sealed anew: sealed ones are bound to the run they were sealed for.
        ops = [(self.backend.upsert_step_sql, self.sealed_step_params(new_id, 0, run.tenant, s)) for s in steps]

        def body(conn: Conn) -> bool:
            if conn.execute(create[0], create[1]).rowcount != 1:
                return False
            for sql, params in ops:
                conn.execute(sql, params)
            return True

        return self.backend.transact(body, what=f"forking run {run.id} into {new_id}")

    def reset_failed(self, run_id: str) -> bool:
        """Make a failed run pending again (its history kept); False if it was not failed."""
        (n,) = self.backend.write(
            [
                (
                    "UPDATE af_runs SET status = 'pending', error = NULL, completed_at = NULL "
                    "WHERE id = ? AND status = 'failed'",
                    (run_id,),
                    False,
                )
            ],
            run_id=run_id,
        )
        return n == 1
