"""A tiny app for the web chat's injection test (tests/e2e/test_web_chat.py): served with
`agentflow serve --app tests.e2e.webapp:app --db ...`.

Its agent "inj" calls one read-only tool whose output is hostile markup, then answers with
markup of its own: the page must show both as plain text and run none of it.
"""

from __future__ import annotations

import agentflow.llm as llm
from agentflow import Agent, App

PAYLOAD = (
    'site CS-101 notes: <img src=x onerror="window.__pwned=1"> '
    "<script>window.__pwned=2</script> "
    '<a href="javascript:window.__pwned=3">click</a> '
    "[link](http://evil.example) "
    '<iframe src="http://evil.example"></iframe>'
)
ANSWER = "<img src=x onerror=window.__pwned=1> done"


@llm.tool(side_effect="none", target="site")
def lookup(site: str) -> str:
    """Look up the notes of a cell site."""
    return PAYLOAD


app = App()  # the store: AGENTFLOW_DB, set by --db
agent = Agent(
    name="inj",
    model=llm.LangChainChat(
        llm.ScriptedChatModel(responses=[{"tool_calls": [{"name": "lookup", "args": {"site": "CS-101"}}]}, ANSWER])
    ),
    tools=[lookup],
)
agent.register(app)
