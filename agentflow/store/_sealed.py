"""The store's side of encryption at rest (`_seal.py` says what is sealed and how): the tenant of
a run (cached: a step write needs it), blobs stored under a plain hash or a sealed locator, and
whole rows opened or sealed for copies (replays, forks). A mixin of `EventStore`."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from agentflow.store._backend import Backend, Op
from agentflow.store._records import RunRecord, StepRecord, step_params
from agentflow.store._redact import Redaction
from agentflow.store._seal import LOCATOR, PREFIX, Sealer, missing_key

#: table -> (its sealed columns, the columns bound into their associated data, where the row's
#: tenant comes from: its own `tenant` column, its run's, or its approval request's).
SEALED: dict[str, tuple[tuple[str, ...], tuple[str, ...], str]] = {
    "af_runs": (("input", "output", "error", "meta"), ("id",), "tenant"),
    "af_steps": (("args", "result", "error"), ("run_id", "seq"), "run"),
    "af_step_attempts": (("error",), ("run_id", "seq", "attempt"), "run"),
    "af_signals": (("payload",), ("run_id", "name"), "run"),
    "af_approvals": (("args", "diff"), ("id",), "tenant"),
    "af_approval_votes": (("comment",), ("approval_id", "principal_id"), "approval"),
    "af_audit": (("reason",), ("approval_id", "run_id"), "tenant"),
    "af_chat_cards": (("rendered",), ("surface", "approval_id"), "tenant"),
    "af_events": (("payload",), ("id",), "tenant"),
    "af_webhooks": (("url", "secret"), ("id",), "tenant"),
}
#: The primary key of each table with sealed columns (what `reseal` rewrites rows by).
_PRIMARY: dict[str, tuple[str, ...]] = {
    "af_runs": ("id",), "af_steps": ("run_id", "seq"), "af_step_attempts": ("run_id", "seq", "attempt"),
    "af_signals": ("id",), "af_approvals": ("id",), "af_approval_votes": ("approval_id", "principal_id"),
    "af_audit": ("id",), "af_chat_cards": ("surface", "approval_id"), "af_events": ("id",), "af_webhooks": ("id",),
}  # fmt: skip
_BLOB_COLUMNS = ("hash", "data", "size", "created_at")
#: A message hash inside a step's recorded request or response.
_BLOB_REF = re.compile(r"\b[0-9a-f]{32}\b")
# SQLite's bound-parameter limit is 999 in old builds: a blob read binds one locator per key
# and the plain hash for each message.
_CHUNK = 400
_TENANTS_CACHED = 10_000

Rows = dict[str, list[tuple[Any, ...]]]
Field = Callable[..., "str | None"]


class SealedRows:
    """Tenants, blobs and whole-row copies for `EventStore` (see the module docstring)."""

    backend: Backend
    redaction: Redaction
    seals: Sealer
    _tenants: dict[str, str]

    # -- the tenant of a run -----------------------------------------------------------------
    def remember_tenant(self, run_id: str, tenant: str) -> None:
        if len(self._tenants) >= _TENANTS_CACHED:
            self._tenants.clear()
        self._tenants[run_id] = tenant

    def tenant_of(self, run_id: str) -> str | None:
        """The tenant of a run (a run's tenant never changes, so it is cached); None if no run."""
        tenant = self._tenants.get(run_id)
        if tenant is None:
            rows = self.backend.query("SELECT tenant FROM af_runs WHERE id = ?", (run_id,))
            if not rows:
                return None
            tenant = str(rows[0][0])
            self.remember_tenant(run_id, tenant)
        return tenant

    # -- runs and steps ----------------------------------------------------------------------
    def open_run(self, run: RunRecord) -> RunRecord:
        """The run with its payloads opened (in place: the record was just read)."""
        o, t, i = self.seals.open, run.tenant, run.id
        run.input = o(run.input, t, "af_runs.input", i) or ""
        run.output, run.error = o(run.output, t, "af_runs.output", i), o(run.error, t, "af_runs.error", i)
        run.meta = o(run.meta, t, "af_runs.meta", i)
        return run

    def sealed_step_params(self, run_id: str, epoch: int, tenant: str, s: StepRecord) -> tuple[Any, ...]:
        """The parameters of the fenced step write (`step_params`), its payloads sealed when the
        tenant is (built as a tuple: a copy of the record would cost more than the sealing)."""
        params = step_params(run_id, epoch, s)
        if not self.seals.on(tenant):
            return params
        f, seq = self.seals.seal, s.seq
        args = f(s.args, tenant, "af_steps.args", run_id, seq)
        result, error = (
            f(s.result, tenant, "af_steps.result", run_id, seq),
            f(s.error, tenant, "af_steps.error", run_id, seq),
        )
        return (*params[:7], args, result, error, *params[10:])

    def open_step(self, run_id: str, tenant: str, s: StepRecord) -> StepRecord:
        """The step with its payloads opened (in place: the record was just read)."""
        a, r, e = s.args, s.result, s.error
        if not ((a and a[:3] == "af:") or (r and r[:3] == "af:") or (e and e[:3] == "af:")):
            return s  # clear (every step of a store without encryption): one look per value
        o, seq = self.seals.open, s.seq
        s.args = o(s.args, tenant, "af_steps.args", run_id, seq)
        s.result = o(s.result, tenant, "af_steps.result", run_id, seq)
        s.error = o(s.error, tenant, "af_steps.error", run_id, seq)
        return s

    # -- blobs -------------------------------------------------------------------------------
    def blob_op(self, digest: str, data: str, now: float, *, tenant: str | None) -> Op:
        """Store a content-addressed payload once (a second insert of the same key is a no-op).
        Its secrets are masked: the hash names the payload as it was sent, the row holds it
        masked. A sealed tenant's payload is stored sealed, under a locator (see `_seal.py`)."""
        data = self.redaction.json(data) or data
        key = digest
        if self.seals.on(tenant):
            key, data = self.seals.seal_blob(digest, data)
        return (
            "INSERT INTO af_blobs (hash, data, size, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (key, data, len(data.encode()), now),
            False,
        )

    def get_blobs(self, digests: Sequence[str]) -> dict[str, str]:
        """The payloads of these hashes (missing ones are absent from the result), opened.

        Raises:
            StoreKeyError: one is missing while blobs sealed under a key not configured exist.
        """
        return {d: row[1] for d, row in self.blob_rows(digests).items()}

    def blob_rows(self, digests: Sequence[str]) -> dict[str, tuple[Any, ...]]:
        """The `af_blobs` rows of these hashes as if stored in clear (hash, data, size, created_at)."""
        unique = list(dict.fromkeys(digests))
        sealing = self.seals.sealing
        keys = sealing.key_ids if sealing is not None else ()
        step = max(1, _CHUNK // (len(keys) + 1))
        found: dict[str, tuple[Any, ...]] = {}
        for lo in range(0, len(unique), step):
            part = unique[lo : lo + step]
            # Where each may be: a locator per configured key (the active one first), then in clear.
            where = (
                {d: [*(sealing.locator(d, k) for k in keys), d] for d in part} if sealing else {d: [d] for d in part}
            )
            wanted = [w for places in where.values() for w in places]
            marks = ",".join("?" * len(wanted))
            rows = self.backend.query(
                f"SELECT {', '.join(_BLOB_COLUMNS)} FROM af_blobs WHERE hash IN ({marks})", wanted
            )
            by_key = {r[0]: r for r in rows}
            for d, places in where.items():
                row = next((by_key[p] for p in places if p in by_key), None)
                if row is not None:
                    data = self.seals.open_blob(row[0], row[1])
                    found[d] = (d, data, len(data.encode()), row[3])
        if len(found) < len(unique):
            self._check_blob_keys()
        return found

    def _check_blob_keys(self) -> None:
        """A message is missing: if blobs sealed under a key this process lacks exist, say so
        (the message may be one of them) instead of letting the run fail for a missing record."""
        sealing = self.seals.sealing
        known = [f"{LOCATOR}{k}{LOCATOR}" for k in (sealing.key_ids if sealing is not None else ())]
        sql = "SELECT hash FROM af_blobs WHERE substr(hash, 1, 1) = ?" + "".join(
            " AND substr(hash, 1, ?) != ?" for _ in known
        )
        params: list[Any] = [LOCATOR]
        for prefix in known:
            params += [len(prefix), prefix]
        rows = self.backend.query(sql + " LIMIT 1", tuple(params))
        if rows:
            key_id = str(rows[0][0])[1:].partition(LOCATOR)[0]
            what = "a message this history refers to may be among the blobs that"
            raise missing_key(what, key_id, None, active=sealing.active if sealing is not None else None)

    # -- whole rows (copies of a run tree, forks) --------------------------------------------
    def open_rows(self, rows: Rows, columns: Callable[[str], list[str]]) -> Rows:
        """Rows of a run tree (`export_tree`) with their payloads opened."""
        return self._rows(rows, columns, self.seals.open)

    def seal_rows(self, rows: Rows, columns: Callable[[str], list[str]]) -> Rows:
        """Rows opened by `open_rows` sealed as this store seals them (blobs under locators for
        sealed tenants, and in clear for clear ones)."""
        out = self._rows(rows, columns, self.seals.seal)
        blobs = out.get("af_blobs")
        if blobs:
            tenants = {r[columns("af_runs").index("tenant")] for r in rows.get("af_runs", [])}
            sealed = [self.blob_op(r[0], r[1], r[3], tenant=t)[1] for t in tenants if self.seals.on(t) for r in blobs]
            clear = blobs if any(not self.seals.on(t) for t in tenants) or not tenants else []
            out["af_blobs"] = list(dict((r[0], tuple(r)) for r in [*sealed, *clear]).values())
        return out

    def _rows(self, rows: Rows, columns: Callable[[str], list[str]], field: Field) -> Rows:
        runs_cols = columns("af_runs")
        tenants = {r[runs_cols.index("id")]: r[runs_cols.index("tenant")] for r in rows.get("af_runs", [])}
        approval_cols = columns("af_approvals")
        approvals = {
            r[approval_cols.index("id")]: r[approval_cols.index("tenant")] for r in rows.get("af_approvals", [])
        }
        out: Rows = {}
        for table, found in rows.items():
            spec = SEALED.get(table)
            if spec is None:
                out[table] = found
                continue
            sealed, ids, source = spec
            cols = columns(table)
            at, id_at = [cols.index(c) for c in sealed], [cols.index(c) for c in ids]
            owner = cols.index({"tenant": "tenant", "run": "run_id", "approval": "approval_id"}[source])
            lookup = {"tenant": None, "run": tenants, "approval": approvals}[source]
            copied = []
            for row in found:
                values = list(row)
                tenant = values[owner] if lookup is None else lookup.get(values[owner])
                key = [values[i] for i in id_at]
                for column, i in zip(sealed, at, strict=True):
                    values[i] = field(values[i], tenant, f"{table}.{column}", *key)
                copied.append(tuple(values))
            out[table] = copied
        return out

    # -- key rotation --------------------------------------------------------------------------
    def reseal(self, *, batch: int = 500) -> dict[str, int]:
        """Bring every stored payload to this store's sealing: sealed under the active key for
        sealed tenants (re-sealing what older keys sealed, sealing what was written in clear),
        in clear for the others; messages moved to the active key's locators. Each batch of
        rows is read and rewritten in one transaction (PostgreSQL: rows locked), so a worker's
        concurrent write is never overwritten. Idempotent: run it again if rows are left.

        Returns:
            rows rewritten per table, and `left`: values still sealed under another key
            (written meanwhile by a process with the old active key, or unreferenced messages).

        Raises:
            StoreKeyError: a value sealed under a key that is not configured (nothing of its
                batch was rewritten).
        """
        done: dict[str, int] = {}
        refs: dict[bool, set[str]] = {True: set(), False: set()}  # message hashes, by sealed-ness
        for table in SEALED:
            done[table] = self._reseal_table(table, batch, refs)
        done["af_blobs"] = self._reseal_blobs(refs)
        done["left"] = self._left_under_old_keys()
        return done

    def _reseal_table(self, table: str, batch: int, refs: dict[bool, set[str]]) -> int:
        columns, ids, source = SEALED[table]
        keys = _PRIMARY[table]
        named = list(dict.fromkeys((*keys, *ids)))  # the primary key and the associated data's ids
        tenant = {"tenant": "t.tenant", "run": "r.tenant", "approval": "a.tenant"}[source]
        join = {"tenant": "", "run": " LEFT JOIN af_runs r ON r.id = t.run_id",
                "approval": " LEFT JOIN af_approvals a ON a.id = t.approval_id"}[source]  # fmt: skip
        lock = " FOR UPDATE OF t" if self.backend.dialect == "postgresql" else ""
        select = (
            f"SELECT {', '.join(f't.{c}' for c in named)}, {tenant}, {', '.join(f't.{c}' for c in columns)} "
            f"FROM {table} t{join} ORDER BY {', '.join(f't.{c}' for c in keys)} LIMIT ? OFFSET ?{lock}"
        )
        update = f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in columns)} WHERE " + " AND ".join(
            f"{c} = ?" for c in keys
        )

        def body(conn: Any, offset: int) -> tuple[int, int]:
            rows = conn.execute(select, (batch, offset)).fetchall()
            n = 0
            for row in rows:
                by_name = dict(zip(named, row, strict=False))
                values = tuple(row[len(named) + 1 :])
                new = self._resealed(table, values, row[len(named)], [by_name[c] for c in ids], refs)
                if new != values:
                    conn.execute(update, (*new, *(by_name[c] for c in keys)))
                    n += 1
            return len(rows), n

        changed, offset = 0, 0
        while True:
            found, n = self.backend.transact(partial(body, offset=offset), what=f"re-sealing {table}")
            changed, offset = changed + n, offset + found
            if found < batch:
                return changed

    def _resealed(
        self, table: str, values: Sequence[Any], tenant: str | None, key: list[Any], refs: dict[bool, set[str]]
    ) -> tuple[Any, ...]:
        """A row's sealed columns as the current sealing stores them (the same values if so)."""
        out = []
        sealed = self.seals.on(tenant)
        active = f"{PREFIX}{self.seals.sealing.active}:" if self.seals.sealing is not None else None
        for column, value in zip(SEALED[table][0], values, strict=True):
            where = f"{table}.{column}"
            plain = self.seals.open(value, tenant, where, *key)
            if table == "af_steps" and plain is not None:
                refs[sealed].update(_BLOB_REF.findall(plain))
            keep = value is None or (value.startswith(active) if sealed and active else value == plain)
            out.append(value if keep else self.seals.seal(plain, tenant, where, *key))
        return tuple(out)

    def _reseal_blobs(self, refs: dict[bool, set[str]]) -> int:
        """Messages sealed tenants refer to: under the active key's locator (moved from older
        keys' locators, or sealed from a plain row no clear tenant refers to); messages clear
        tenants refer to: in clear."""
        changed = 0
        for digest in sorted(refs[True] | refs[False]):
            changed += self.backend.transact(
                partial(self._reseal_blob, digest=digest, refs=refs), what="re-sealing blobs"
            )
        return changed

    def _reseal_blob(self, conn: Any, digest: str, refs: dict[bool, set[str]]) -> int:
        sealing = self.seals.sealing
        places = [*(sealing.locator(digest, k) for k in sealing.key_ids), digest] if sealing else [digest]
        marks = ",".join("?" * len(places))
        rows = {
            r[0]: r
            for r in conn.execute(f"SELECT hash, data, created_at FROM af_blobs WHERE hash IN ({marks})", places)
        }
        if not rows:
            return 0
        any_row = rows[next(p for p in places if p in rows)]
        plain = self.seals.open_blob(any_row[0], any_row[1])
        wanted = set()
        if digest in refs[True] and sealing is not None:
            wanted.add(places[0])
        if digest in refs[False] or sealing is None:
            wanted.add(digest)
        changed = 0
        for place in wanted - set(rows):
            data = plain if place == digest else self.seals.seal_blob(digest, plain)[1]
            conn.execute("INSERT INTO af_blobs (hash, data, size, created_at) VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                         (place, data, len(data.encode()), any_row[2]))  # fmt: skip
            changed += 1
        for place in set(rows) - wanted:
            conn.execute("DELETE FROM af_blobs WHERE hash = ?", (place,))
            changed += 1
        return changed

    def _left_under_old_keys(self) -> int:
        sealing = self.seals.sealing
        active = sealing.active if sealing is not None else None
        left = 0
        for table, (columns, _, _) in SEALED.items():
            for column in columns:
                sql = f"SELECT count(*) FROM {table} WHERE {column} LIKE ?" + (
                    f" AND {column} NOT LIKE ?" if active else ""
                )
                params = (f"{PREFIX}%", f"{PREFIX}{active}:%") if active else (f"{PREFIX}%",)
                left += int(self.backend.query(sql, params)[0][0])
        sql = "SELECT count(*) FROM af_blobs WHERE substr(hash, 1, 1) = ?" + (
            " AND substr(hash, 1, ?) != ?" if active else ""
        )
        prefix = f"{LOCATOR}{active}{LOCATOR}"
        return left + int(self.backend.query(sql, (LOCATOR, len(prefix), prefix) if active else (LOCATOR,))[0][0])
