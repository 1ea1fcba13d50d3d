"""Tools from Model Context Protocol servers, recorded and guarded (issue 20; filled in by its work).

Optional: needs the `mcp` extra (`pip install "agentflow[mcp]"`). The agent never imports this
package; an MCP server object offers its tools to `Agent(tools=[...])` through agentflow.llm.
"""

from __future__ import annotations

__all__: list[str] = []
