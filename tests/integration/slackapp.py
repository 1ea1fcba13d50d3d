"""A tiny app for the Slack bridge's injection test (tests/integration/test_slack_bridge.py),
served with `agentflow serve --app tests.integration.slackapp:app --db ...` and bridged with
`agentflow chat-bridge slack --app tests.integration.slackapp:app ...`.

Its agent "inj" reads a site's notes (a read-only tool whose output is hostile Slack markup),
then stages a side-effecting note carrying markup of its own: the approval card must show both
as typed, notify nobody and link nowhere.
"""

from __future__ import annotations

import agentflow.llm as llm
from agentflow import Agent, App

PAYLOAD = "<!channel> *bold* <http://evil.example|click> <@U0BOSS1> &amp; ```fence``` _it_"
NOTE = "<!here> ping <#C0OTHER> *urgent* <https://evil.example|login>"


@llm.tool(side_effect="none", target="site")
def lookup(site: str) -> str:
    """Look up the notes of a cell site."""
    return PAYLOAD


@llm.tool(side_effect="idempotent", target="site")
def post_note(site: str, note: str) -> str:
    """Pin a note on a cell site (needs an approval: a side effect without a policy rule)."""
    return f"noted on {site}"


app = App()  # the store: AGENTFLOW_DB, set by --db
agent = Agent(
    name="inj",
    model=llm.LangChainChat(
        llm.ScriptedChatModel(
            responses=[
                {"tool_calls": [{"name": "lookup", "args": {"site": "CS-101"}}]},
                {"tool_calls": [{"name": "post_note", "args": {"site": "CS-101", "note": NOTE}}]},
                "done",
            ]
        )
    ),
    tools=[lookup, post_note],
)
agent.register(app)
