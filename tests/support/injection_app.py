"""The agent of the chat bridges' injection tests (tests/integration/matrixapp.py, slackapp.py):
it reads a site's notes (a read-only tool whose output is the surface's hostile markup), then
stages a side-effecting note carrying markup of its own, so the approval card must show both as
typed. Each surface's module passes its payloads (and its policies, if any)."""

from __future__ import annotations

from typing import Any

import agentflow.llm as llm
from agentflow import Agent, App


def injection_app(payload: str, note: str, *, policies: Any = None) -> App:
    """An App on AGENTFLOW_DB (set by --db) with the agent "inj" registered."""

    @llm.tool(side_effect="none", target="site")
    def kpi_notes(site: str) -> str:
        """Read the KPI notes of a cell site."""
        return payload

    @llm.tool(side_effect="idempotent", target="site")
    def pin_note(site: str, note: str) -> str:
        """Pin a note on a cell site (needs an approval: a side effect without a policy rule)."""
        return f"noted on {site}"

    app = App()
    script = [
        {"tool_calls": [{"name": "kpi_notes", "args": {"site": "CS-101"}}]},
        {"tool_calls": [{"name": "pin_note", "args": {"site": "CS-101", "note": note}}]},
        "done",
    ]
    agent = Agent(
        name="inj", model=llm.LangChainChat(llm.ScriptedChatModel(responses=script)),
        tools=[kpi_notes, pin_note], **({"policies": policies} if policies is not None else {}),
    )  # fmt: skip
    agent.register(app)
    return app
