"""`agentflow webhooks ...`: signed event subscriptions (filled by the events work)."""

from __future__ import annotations

import typer

webhooks_app = typer.Typer(help="Webhook subscriptions: signed events out.", no_args_is_help=True)
