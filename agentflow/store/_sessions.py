"""Browser sessions of the web chat (`af_sessions`): only a hash of the cookie's secret is kept."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from agentflow.store._backend import Records


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A live session: who, in which tenants (tenant -> principal id), acting in which one, and
    the token each tenant was signed in with (tenant -> token id; empty for older sessions)."""

    id_hash: str
    operator: str
    principals: dict[str, str]
    tenant: str
    csrf: str
    expires_at: float
    tokens: dict[str, str] = field(default_factory=dict)


class SessionRecords(Records):
    """Browser sessions (`af_sessions`)."""

    def add(self, row: SessionRow, *, now: float) -> None:
        self._write(
            "INSERT INTO af_sessions (id_hash, operator, principals, tenant, csrf, created_at, expires_at, revoked, "
            "tokens) VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?)",
            (
                row.id_hash,
                row.operator,
                json.dumps(row.principals),
                row.tenant,
                row.csrf,
                now,
                row.expires_at,
                json.dumps(row.tokens),
            ),
        )

    def find(self, id_hash: str, *, now: float) -> SessionRow | None:
        """The session unless it is unknown, revoked or expired at `now`."""
        row = self.conn.execute(
            "SELECT id_hash, operator, principals, tenant, csrf, expires_at, tokens FROM af_sessions "
            "WHERE id_hash = ? AND revoked = 0 AND expires_at > ?",
            (id_hash, now),
        ).fetchone()
        if row is None:
            return None
        return SessionRow(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], json.loads(row[6] or "{}"))

    def set_tenant(self, id_hash: str, tenant: str) -> None:
        self._write("UPDATE af_sessions SET tenant = ? WHERE id_hash = ?", (tenant, id_hash))

    def revoke(self, id_hash: str) -> None:
        self._write("UPDATE af_sessions SET revoked = 1 WHERE id_hash = ?", (id_hash,))
