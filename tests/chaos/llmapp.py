"""The App the LLM crash tests run in worker subprocesses (`--app llmapp:app`).

One workflow, five model calls through the real `openai` client (`OpenAIChat`) against the
test's local OpenAI-compatible server, whose URL comes from `AGENTFLOW_TEST_LLM_URL` (read when
the workflow runs, so the test process can drive it against a server of its own too). The
first answer is a tool call the workflow answers itself; the tool is pure, so the only effect
of the run outside the store is the requests the server counts.
"""

from __future__ import annotations

import json
import os
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage, ToolMessage

from agentflow import App
from agentflow.agent import chat, spent
from agentflow.llm import OpenAIChat, tool

URL_ENV = "AGENTFLOW_TEST_LLM_URL"
CALLS = 5


@tool(side_effect="none", target="site")
def get_kpis(site: str) -> dict[str, Any]:
    """Read the KPIs of a cell site."""
    return {"site": site, "rrc_drop_rate": 0.027, "worst_cell": 3}


def make_app(db: str | None = None) -> App:
    """An App with the LLM chaos workflow registered (db None: `AGENTFLOW_DB`)."""
    app = App(db, inline_wait=0.0, lease_ttl=10.0)

    @app.workflow(name="llm_chaos")
    async def llm_chaos(ctx: Any, site: str) -> dict[str, Any]:
        model = OpenAIChat(model="test-model", base_url=os.environ[URL_ENV], timeout=20.0)
        messages: list[BaseMessage] = [
            SystemMessage("You are a NOC copilot. Use the tools."),
            HumanMessage(f"Why is {site} dropping calls?"),
        ]
        answers: list[str] = []
        calls: list[list[Any]] = []
        for i in range(CALLS):
            reply = await chat(ctx, model, messages, [get_kpis])
            messages.append(reply.message)
            if reply.message.tool_calls:
                for call in reply.message.tool_calls:
                    calls.append([call["id"], call["name"], call["args"]])
                    result = get_kpis.invoke(call["args"])
                    messages.append(ToolMessage(json.dumps(result), tool_call_id=call["id"]))
            else:
                answers.append(str(reply.message.content))
                messages.append(HumanMessage(f"Follow-up {i}: and now?"))
        used = spent(ctx)
        return {
            "answers": answers,
            "tool_calls": calls,
            "messages": len(messages),
            "usage": [used.input_tokens, used.output_tokens],
        }

    return app


app = make_app()
