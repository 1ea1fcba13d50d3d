"""`Chat`: what every chat surface (web page, terminal, Slack, Matrix) works with."""

from __future__ import annotations

from dataclasses import dataclass

from agentflow.approvals import Approvals
from agentflow.engine import App, Client, Clock
from agentflow.store import EventStore


@dataclass(frozen=True, slots=True)
class Chat:
    """One store as chat surfaces see it: its runs (through a `Client`) and its approvals, on the
    app's clock (a shifted demo clock shows the same times on every surface).

    Args:
        client: reads and starts runs.
        approvals: decides and lists approval requests (same store, same clock).
    """

    client: Client
    approvals: Approvals

    @classmethod
    def of(cls, app: App) -> Chat:
        """The chat view of an App's store, on the App's clock."""
        return cls(app.client, Approvals.of(app))

    @property
    def store(self) -> EventStore:
        return self.client.store

    @property
    def clock(self) -> Clock:
        return self.approvals.clock
