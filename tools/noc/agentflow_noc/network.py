"""`Network`: the simulated 5G network's state and its audit ledger, in a SQLite file of its own.

The file is separate from the workflow store on purpose: the store says what the workflow
*believes* happened, this ledger says what *actually* happened to the network. Every external
effect (a config push, a rollback, a ticket, a notification) is one row of `effects`, with the
idempotency key that caused it; the key has no uniqueness constraint, so a double push would be
visible. A call repeating a key (or a ticket/notification already made for the run) changes
nothing and is logged in `noops` instead.

Limits: one host, several processes (SQLite WAL); not on network filesystems.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

from agentflow_noc import model

DEFAULT_SEED = 5
START = 1_767_225_600.0  # 2026-01-01T00:00Z: the network clock until someone sets it

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sites (site TEXT PRIMARY KEY, region TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS config (
    site TEXT NOT NULL, param TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (site, param));
CREATE TABLE IF NOT EXISTS incidents (site TEXT PRIMARY KEY, scenario TEXT NOT NULL, since REAL NOT NULL);
CREATE TABLE IF NOT EXISTS effects (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, site TEXT,
    idempotency_key TEXT NOT NULL, detail TEXT NOT NULL, at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS effects_key ON effects (idempotency_key);
CREATE TABLE IF NOT EXISTS noops (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, site TEXT,
    idempotency_key TEXT NOT NULL, reason TEXT NOT NULL, of_effect INTEGER, at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS tickets (
    id INTEGER PRIMARY KEY AUTOINCREMENT, dedupe TEXT NOT NULL UNIQUE, site TEXT, summary TEXT NOT NULL,
    severity TEXT NOT NULL, notes TEXT NOT NULL DEFAULT '[]', created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY AUTOINCREMENT, dedupe TEXT NOT NULL UNIQUE, channel TEXT NOT NULL,
    message TEXT NOT NULL, type TEXT NOT NULL, at REAL NOT NULL);
"""


def _clock(conn: sqlite3.Connection) -> float:
    return float(conn.execute("SELECT value FROM meta WHERE key = 'now'").fetchone()[0])


def run_of(key: str) -> str:
    """The run id inside an idempotency key `<run_id>:<seq>`."""
    return key.rpartition(":")[0] or key


class Network:
    """A simulated network of cell sites (CS-101.. in regions north, south, east, west).

    Args:
        path: the SQLite file; created and seeded on first use, shared by every process.
        seed: the KPI seed of a new file (an existing file keeps the seed it was made with).
    """

    def __init__(self, path: str | Path, *, seed: int = DEFAULT_SEED) -> None:
        self.path = str(path)
        with closing(self._connect()) as conn:
            # WAL lets readers go on while one process writes; the mode is kept in the file.
            conn.execute("PRAGMA journal_mode = WAL")
        with self._write() as conn:
            # One statement at a time: executescript() would commit the open transaction first.
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            if conn.execute("SELECT 1 FROM meta WHERE key = 'seed'").fetchone() is None:
                self._seed_network(conn, seed)
        with self._read() as conn:
            self.seed = int(conn.execute("SELECT value FROM meta WHERE key = 'seed'").fetchone()[0])

    def __repr__(self) -> str:
        return f"<Network {self.path} seed={self.seed}>"

    # -- connections ---------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        # The default busy timeout (5 s) is too short when several workers push at once on a
        # slow disk; a writer waits its turn instead of failing.
        conn.execute("PRAGMA busy_timeout = 30000")
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; BEGIN IMMEDIATE takes the lock up front, so a check-then-insert
        (the dedupe of a key) cannot interleave with another process's."""
        with closing(self._connect()) as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read snapshot (a deferred transaction)."""
        with closing(self._connect()) as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("ROLLBACK")

    def _seed_network(self, conn: sqlite3.Connection, seed: int) -> None:
        conn.executemany("INSERT INTO meta VALUES (?, ?)", [("seed", str(seed)), ("now", repr(START))])
        for site in model.all_sites():
            conn.execute("INSERT INTO sites VALUES (?, ?)", (site, model.region_of(site)))
            config = model.default_config(seed, site)
            conn.executemany(
                "INSERT INTO config VALUES (?, ?, ?)", [(site, p, json.dumps(v)) for p, v in config.items()]
            )

    # -- topology, config, clock ---------------------------------------------------------
    def sites(self, region: str | None = None) -> list[str]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT site FROM sites WHERE ? IS NULL OR region = ? ORDER BY site", (region, region)
            ).fetchall()
        return [r[0] for r in rows]

    def check_site(self, site: str) -> str:
        """The canonical site id; ValueError (which the model sees) for an unknown site."""
        canonical = site.strip().upper() if isinstance(site, str) else site
        if model.region_of(canonical) is None:
            raise ValueError(f"unknown site {site!r}: sites are {model.all_sites()[0]}..{model.all_sites()[-1]}")
        return str(canonical)

    def config(self, site: str) -> dict[str, Any]:
        site = self.check_site(site)
        with self._read() as conn:
            return self._config(conn, site)

    @staticmethod
    def _config(conn: sqlite3.Connection, site: str) -> dict[str, Any]:
        rows = conn.execute("SELECT param, value FROM config WHERE site = ?", (site,)).fetchall()
        return {r["param"]: json.loads(r["value"]) for r in rows}

    def now(self) -> float:
        """The network's clock (seconds since the epoch); only `set_time`/`advance` move it."""
        with self._read() as conn:
            return _clock(conn)

    def set_time(self, when: float) -> None:
        """Set the network clock, e.g. to the workflow clock's `ctx.now().timestamp()`."""
        with self._write() as conn:
            conn.execute("UPDATE meta SET value = ? WHERE key = 'now'", (repr(float(when)),))

    def advance(self, seconds: float) -> float:
        with self._write() as conn:
            now = _clock(conn) + seconds
            conn.execute("UPDATE meta SET value = ? WHERE key = 'now'", (repr(now),))
        return now

    # -- incidents -----------------------------------------------------------------------
    def inject(self, site: str, scenario: str) -> None:
        """Start an incident: `mis_set_handover` (hoA3Offset pushed to 8 dB outside any workflow),
        `congestion` (a demand surge), `backhaul_fault` (the primary backhaul link degrades) or
        `mis_set_tx_power` (txPower pushed to 46 dBm, above the envelope, outside any workflow)."""
        site = self.check_site(site)
        if scenario not in model.SCENARIOS:
            raise ValueError(f"unknown scenario {scenario!r}; known: {list(model.SCENARIOS)}")
        with self._write() as conn:
            now = _clock(conn)
            conn.execute("INSERT OR REPLACE INTO incidents VALUES (?, ?, ?)", (site, scenario, now))
            if scenario == "mis_set_handover":
                conn.execute("UPDATE config SET value = '8' WHERE site = ? AND param = 'hoA3Offset'", (site,))
            if scenario == "mis_set_tx_power":
                conn.execute("UPDATE config SET value = '46' WHERE site = ? AND param = 'txPower'", (site,))

    def incident(self, site: str) -> str | None:
        site = self.check_site(site)
        with self._read() as conn:
            row = conn.execute("SELECT scenario FROM incidents WHERE site = ?", (site,)).fetchone()
        return None if row is None else str(row[0])

    # -- KPIs ----------------------------------------------------------------------------
    def kpis(
        self, site: str, *, window_minutes: int = 60, at: float | None = None, config: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The 5-minute KPI series of the window ending at `at` (default: the network clock)
        under `config` (default: the current one), and its mean."""
        site = self.check_site(site)
        with self._read() as conn:
            current = self._config(conn, site)
            row = conn.execute("SELECT scenario FROM incidents WHERE site = ?", (site,)).fetchone()
            now = _clock(conn)
        end = now if at is None else at
        last = int(end // model.BUCKET_SECONDS)
        count = max(1, int(window_minutes) * 60 // model.BUCKET_SECONDS)
        incident = None if row is None else str(row[0])
        series = [
            {"t": b * model.BUCKET_SECONDS, **model.sample(self.seed, site, b, config or current, incident)}
            for b in range(last - count + 1, last + 1)
        ]
        return {"site": site, "region": model.region_of(site), "window_minutes": int(window_minutes), "at": end,
                "series": series, "mean": model.summarize(series)}  # fmt: skip

    def previous_config(self, site: str) -> dict[str, Any]:
        """The config before the most recent change (apply or rollback) of `site`."""
        site = self.check_site(site)
        with self._read() as conn:
            config = self._config(conn, site)
            row = conn.execute(
                "SELECT detail FROM effects WHERE site = ? AND kind IN ('apply', 'rollback') ORDER BY id DESC LIMIT 1",
                (site,),
            ).fetchone()
        if row is not None:
            detail = json.loads(row[0])
            config[detail["param"]] = detail["previous"]
        return config

    # -- effects -------------------------------------------------------------------------
    def _prior(self, conn: sqlite3.Connection, kind: str, site: str | None, key: str) -> dict[str, Any] | None:
        """The recorded result of `key` if it already caused an effect (and log the no-op)."""
        row = conn.execute("SELECT id, detail FROM effects WHERE idempotency_key = ? ORDER BY id", (key,)).fetchone()
        if row is None:
            return None
        self._noop(conn, kind, site, key, "repeated idempotency key", row["id"])
        return {**json.loads(row["detail"]), "deduplicated": True, "effect_id": row["id"]}

    @staticmethod
    def _noop(conn: sqlite3.Connection, kind: str, site: str | None, key: str, reason: str, of: int | None) -> None:
        now = _clock(conn)
        conn.execute(
            "INSERT INTO noops (kind, site, idempotency_key, reason, of_effect, at) VALUES (?, ?, ?, ?, ?, ?)",
            (kind, site, key, reason, of, now),
        )

    @staticmethod
    def _effect(
        conn: sqlite3.Connection, kind: str, site: str | None, key: str, detail: dict[str, Any]
    ) -> dict[str, Any]:
        now = _clock(conn)
        cur = conn.execute(
            "INSERT INTO effects (kind, site, idempotency_key, detail, at) VALUES (?, ?, ?, ?, ?)",
            (kind, site, key, json.dumps(detail), now),
        )
        return {**detail, "deduplicated": False, "effect_id": cur.lastrowid}

    def apply(self, site: str, param: str, value: Any, *, key: str) -> dict[str, Any]:
        """Push `param = value` to `site` once per idempotency `key`.

        Returns {applied, site, param, value, previous, change_id, deduplicated, effect_id}; a
        repeated key returns the first call's result with `deduplicated: True`."""
        site = self.check_site(site)
        value = model.normalize(param, value)
        with self._write() as conn:
            prior = self._prior(conn, "apply", site, key)
            if prior is not None:
                return prior
            previous = self._config(conn, site)[param]
            conn.execute("UPDATE config SET value = ? WHERE site = ? AND param = ?", (json.dumps(value), site, param))
            detail = {"applied": True, "site": site, "param": param, "value": value, "previous": previous,
                      "change_id": model.change_id(site, param, value)}  # fmt: skip
            return self._effect(conn, "apply", site, key, detail)

    def rollback(self, site: str, change_id: str, *, key: str) -> dict[str, Any]:
        """Restore the value `change_id`'s latest apply replaced, once per `key`.

        A change that is not in effect (never applied, already rolled back) is not touched:
        {rolled_back: False, reason} and a logged no-op."""
        site = self.check_site(site)
        with self._write() as conn:
            prior = self._prior(conn, "rollback", site, key)
            if prior is not None:
                return prior
            rows = conn.execute(
                "SELECT id, kind, detail FROM effects WHERE site = ? AND kind IN ('apply', 'rollback') ORDER BY id",
                (site,),
            ).fetchall()
            applied = [r for r in rows if r["kind"] == "apply" and json.loads(r["detail"])["change_id"] == change_id]
            undone = {json.loads(r["detail"]).get("undoes") for r in rows if r["kind"] == "rollback"}
            if not applied or applied[-1]["id"] in undone:
                reason = "change was never applied" if not applied else "change already rolled back"
                self._noop(conn, "rollback", site, key, reason, applied[-1]["id"] if applied else None)
                return {"rolled_back": False, "site": site, "change_id": change_id, "reason": reason}
            target = json.loads(applied[-1]["detail"])
            param, restored = target["param"], target["previous"]
            current = self._config(conn, site)[param]
            conn.execute(
                "UPDATE config SET value = ? WHERE site = ? AND param = ?", (json.dumps(restored), site, param)
            )
            detail = {"rolled_back": True, "site": site, "change_id": change_id, "param": param,
                      "value": restored, "previous": current, "undoes": applied[-1]["id"]}  # fmt: skip
            return self._effect(conn, "rollback", site, key, detail)

    def create_ticket(self, site: str, summary: str, severity: str, *, key: str, dedupe: str) -> dict[str, Any]:
        """Open a ticket once per `dedupe` (e.g. run + ticket type) and once per `key`."""
        site = self.check_site(site)
        if severity not in model.SEVERITIES:
            raise ValueError(f"severity must be one of {list(model.SEVERITIES)}, not {severity!r}")
        with self._write() as conn:
            prior = self._prior(conn, "ticket_create", site, key)
            if prior is not None:
                return prior
            row = conn.execute("SELECT id FROM tickets WHERE dedupe = ?", (dedupe,)).fetchone()
            if row is not None:
                self._noop(conn, "ticket_create", site, key, f"ticket already open for {dedupe}", None)
                return {**self._ticket(conn, row["id"]), "deduplicated": True}
            now = _clock(conn)
            cur = conn.execute(
                "INSERT INTO tickets (dedupe, site, summary, severity, created_at) VALUES (?, ?, ?, ?, ?)",
                (dedupe, site, summary, severity, now),
            )
            return self._effect(conn, "ticket_create", site, key, self._ticket(conn, int(cur.lastrowid or 0)))

    @staticmethod
    def _ticket(conn: sqlite3.Connection, number: int) -> dict[str, Any]:
        row = conn.execute("SELECT * FROM tickets WHERE id = ?", (number,)).fetchone()
        return {"ticket_id": f"INC-{10000 + row['id']}", "site": row["site"], "summary": row["summary"],
                "severity": row["severity"], "notes": json.loads(row["notes"])}  # fmt: skip

    def ticket(self, ticket_id: str) -> dict[str, Any]:
        with self._read() as conn:
            return self._ticket(conn, self._ticket_number(conn, ticket_id))

    @staticmethod
    def _ticket_number(conn: sqlite3.Connection, ticket_id: str) -> int:
        number = int(ticket_id[4:]) - 10000 if ticket_id.startswith("INC-") and ticket_id[4:].isdigit() else -1
        if conn.execute("SELECT 1 FROM tickets WHERE id = ?", (number,)).fetchone() is None:
            raise ValueError(f"unknown ticket {ticket_id!r}")
        return number

    def update_ticket(self, ticket_id: str, note: str, *, key: str) -> dict[str, Any]:
        """Append `note` to a ticket once per `key`."""
        with self._write() as conn:
            number = self._ticket_number(conn, ticket_id)
            prior = self._prior(conn, "ticket_update", None, key)
            if prior is not None:
                return prior
            notes = [*self._ticket(conn, number)["notes"], note]
            conn.execute("UPDATE tickets SET notes = ? WHERE id = ?", (json.dumps(notes), number))
            ticket = self._ticket(conn, number)
            return self._effect(conn, "ticket_update", ticket["site"], key, {**ticket, "note": note})

    def notify(self, channel: str, message: str, notification_type: str, *, key: str, dedupe: str) -> dict[str, Any]:
        """Send a notification once per `dedupe` (e.g. run + notification type) and per `key`."""
        with self._write() as conn:
            prior = self._prior(conn, "notify", None, key)
            if prior is not None:
                return prior
            row = conn.execute("SELECT id FROM notifications WHERE dedupe = ?", (dedupe,)).fetchone()
            if row is not None:
                self._noop(conn, "notify", None, key, f"already notified for {dedupe}", None)
                return {"notification_id": f"NTF-{row['id']}", "delivered": False, "deduplicated": True}
            now = _clock(conn)
            cur = conn.execute(
                "INSERT INTO notifications (dedupe, channel, message, type, at) VALUES (?, ?, ?, ?, ?)",
                (dedupe, channel, message, notification_type, now),
            )
            detail = {"notification_id": f"NTF-{cur.lastrowid}", "delivered": True, "channel": channel,
                      "type": notification_type, "message": message}  # fmt: skip
            return self._effect(conn, "notify", None, key, detail)

    # -- the ledger ----------------------------------------------------------------------
    def result_for_key(self, key: str) -> dict[str, Any] | None:
        """The result of the effect `key` caused, or None: what a `reconcile(key)` answers."""
        with self._read() as conn:
            row = conn.execute(
                "SELECT id, detail FROM effects WHERE idempotency_key = ? ORDER BY id", (key,)
            ).fetchone()
        return None if row is None else {**json.loads(row["detail"]), "deduplicated": True, "effect_id": row["id"]}

    def effects(self, kind: str | None = None, run_prefix: str | None = None) -> list[dict[str, Any]]:
        """Every effect, oldest first: {id, kind, site, idempotency_key, detail, at}."""
        return self._rows("effects", kind, run_prefix, lambda r: {**dict(r), "detail": json.loads(r["detail"])})

    def noops(self, kind: str | None = None, run_prefix: str | None = None) -> list[dict[str, Any]]:
        """Every deduplicated call, oldest first: {id, kind, site, idempotency_key, reason, of_effect, at}."""
        return self._rows("noops", kind, run_prefix, dict)

    def _rows(self, table: str, kind: str | None, run_prefix: str | None, shape: Any) -> list[dict[str, Any]]:
        prefix = (run_prefix or "").replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        with self._read() as conn:
            rows = conn.execute(
                f"SELECT * FROM {table} WHERE (? IS NULL OR kind = ?) AND idempotency_key LIKE ? ESCAPE '\\' "
                "ORDER BY id",
                (kind, kind, prefix),
            ).fetchall()
        return [shape(r) for r in rows]

    def applies_per_key(self) -> dict[str, int]:
        """How many config pushes each idempotency key caused (each must be 1)."""
        counts: dict[str, int] = {}
        for e in self.effects("apply"):
            counts[e["idempotency_key"]] = counts.get(e["idempotency_key"], 0) + 1
        return counts

    def duplicate_keys(self) -> list[dict[str, Any]]:
        """Effects that happened more than once; empty on a healthy ledger.

        Two kinds of duplicate: one idempotency key with several effects (the dedupe failed),
        and one run pushing the same change again while it is still in effect, under another
        key (a step re-executed as a new step: the double push the engine must prevent)."""
        found: list[dict[str, Any]] = []
        by_key: dict[str, list[int]] = {}
        for e in self.effects():
            by_key.setdefault(e["idempotency_key"], []).append(e["id"])
        found += [{"key": k, "reason": "key applied more than once", "effects": ids}
                  for k, ids in by_key.items() if len(ids) > 1]  # fmt: skip
        # (run, site, param) -> (change id, effect id) of the change that run has in effect
        active: dict[tuple[str, str, str], tuple[str, int]] = {}
        for e in self.effects():
            detail = e["detail"]
            if e["kind"] == "rollback" and detail.get("rolled_back"):
                active = {slot: held for slot, held in active.items() if held[1] != detail["undoes"]}
            elif e["kind"] == "apply":
                slot = (run_of(e["idempotency_key"]), e["site"], detail["param"])
                held = active.get(slot)
                if held is not None and held[0] == detail["change_id"]:
                    found.append({"key": f"{slot[0]}:{held[0]}", "reason": "change pushed again while in effect",
                                  "effects": [held[1], e["id"]]})  # fmt: skip
                active[slot] = (detail["change_id"], e["id"])
        return found
