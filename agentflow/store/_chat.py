"""Chat surfaces: accounts linked to operators (`af_chat_links`) and the cards a bridge posted
(`af_chat_cards`). The SQL for `agentflow.approvals`' links and the chat bridges' cards."""

from __future__ import annotations

from agentflow.store._backend import Records


class ChatLinkRecords(Records):
    """Chat accounts linked to operators, per tenant and surface."""


class ChatCardRecords(Records):
    """The approval cards a chat bridge posted, per surface and approval request."""
