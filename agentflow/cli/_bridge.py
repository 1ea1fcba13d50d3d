"""`agentflow chat-bridge matrix | slack`: approvals in the chat a NOC team already uses.

The commands live in `_bridge_matrix` and `_bridge_slack`."""

from __future__ import annotations

import typer

bridge_app = typer.Typer(help="Chat bridges: approval cards and decisions in Matrix or Slack.", no_args_is_help=True)
