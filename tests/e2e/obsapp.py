"""The app the observability tests serve and kill (`--app tests.e2e.obsapp:app`, store from
`AGENTFLOW_DB`): an agent whose scripted model calls one read-only tool and then answers (model
calls with token usage, a tool call, a policy decision), and `ticks`, a workflow of slow steps that
a test can SIGKILL a worker in the middle of, and `tick_wait`, which parks for a signal between two
steps."""

from __future__ import annotations

import asyncio

import agentflow.llm as llm
from agentflow import Agent, App, WorkflowContext
from agentflow.testing import ScriptedChatModel

#: Seconds each `tick` takes: long enough for a test to kill the worker between two steps.
TICK = 0.15


@llm.tool(side_effect="none", target="site")
def kpis(site: str) -> str:
    """The KPIs of a cell site."""
    return f"{site}: drop rate 0.4 %, handover success 99.1 %"


def build(db: str | None = None) -> tuple[App, Agent]:
    """The App (db None: `AGENTFLOW_DB`) with the agent and `ticks` registered."""
    app = App(db, lease_ttl=2.0)
    agent = Agent(
        name="obs",
        model=llm.LangChainChat(
            ScriptedChatModel(responses=[{"tool_calls": [{"name": "kpis", "args": {"site": "CS-101"}}]}, "all good"])
        ),
        tools=[kpis],
    )
    agent.register(app)

    @app.activity(name="tick", side_effect=False)
    async def tick(i: int) -> int:
        await asyncio.sleep(TICK)
        return i

    @app.workflow(name="ticks")
    async def ticks(ctx: WorkflowContext, n: int) -> int:
        total = 0
        for i in range(n):
            total += await ctx.run(tick, i)
        return total

    @app.workflow(name="tick_wait")
    async def tick_wait(ctx: WorkflowContext) -> int:
        first = await ctx.run(tick, 1)
        await ctx.wait_signal("go")
        return first + await ctx.run(tick, 2)

    return app, agent


app, agent = build()
