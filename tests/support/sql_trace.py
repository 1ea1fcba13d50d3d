"""Every statement the SQLite store's connections send, with its bound values in place: for the
tests that check which tenant each statement of a request names."""

from __future__ import annotations

import sqlite3

import pytest

from agentflow.store._sqlite import SqliteStore


def trace_sqlite(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """From now on (until the test ends), every connection the SQLite store opens reports each
    statement it runs into the list returned. Connections opened before are not traced: make
    the App (or its store) after this call."""
    statements: list[str] = []
    connect = SqliteStore.connect_raw

    def traced(self: SqliteStore) -> sqlite3.Connection:
        conn = connect(self)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(SqliteStore, "connect_raw", traced)
    return statements
