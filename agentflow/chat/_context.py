"""`Chat`: what every chat surface (web page, terminal, Slack, Matrix) works with."""

from __future__ import annotations

from functools import cached_property

from agentflow.approvals import Approvals
from agentflow.engine import App, Client, Clock
from agentflow.store import EventStore


class Chat:
    """One store as chat surfaces see it: its runs (through a `Client`) and its approvals, on the
    client's clock (a shifted demo clock shows the same times on every surface). Nothing is
    opened until first used.

    Args:
        client: reads and starts runs; the approvals service is made on the same store and clock.
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    @classmethod
    def of(cls, app: App) -> Chat:
        """The chat view of an App's store, on the App's clock."""
        return cls(app.client)

    @property
    def store(self) -> EventStore:
        return self.client.store

    @property
    def clock(self) -> Clock:
        return self.client.clock

    @cached_property
    def approvals(self) -> Approvals:
        """Decisions and listings of approval requests, on the same store and clock."""
        return Approvals(self.client.store, self.client.clock)
