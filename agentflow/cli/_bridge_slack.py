"""`agentflow chat-bridge slack`: a tenant's approval cards in a Slack channel, decided with
buttons and modals (needs the `slack` extra)."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from agentflow.cli._bridge import bridge_app
from agentflow.cli._common import DbOption, client, err_console, fail, load_app, missing_extra
from agentflow.errors import AgentflowError, ConfigurationError
from agentflow.store import redact_url, resolve_url

__all__ = ["bridge_app"]

#: The Slack app's credentials: from the environment only (a command line is seen by `ps`).
SECRETS = ("SLACK_BOT_TOKEN", "SLACK_SIGNING_SECRET")


@bridge_app.command("slack")
def slack(
    channel: Annotated[str, typer.Option("--channel", help="The channel id cards are posted to (C0123...).")],
    tenant: Annotated[str, typer.Option("--tenant", help="The tenant whose approval requests are bridged.")],
    db: DbOption = None,
    app_ref: Annotated[
        str | None,
        typer.Option(
            "--app", help="The App (module:attribute) whose clock decides expiry (default: the system clock)."
        ),
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to listen on (put HTTPS in front: Slack needs it).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port of the Interactivity request URL (/slack/events).")] = 3000,
    api_url: Annotated[
        str | None,
        typer.Option("--api-url", envvar="SLACK_API_URL", help="Slack Web API base URL (default Slack's)."),
    ] = None,
    interval: Annotated[float, typer.Option(help="Seconds between looks for new and changed cards.")] = 1.0,
) -> None:
    """Post a Block Kit card per open approval request of TENANT to CHANNEL and decide them with
    Approve / Reject / Edit, as the operator each Slack user is linked to (`agentflow operators
    link NAME --slack U123 --tenant T`).

    SLACK_BOT_TOKEN and SLACK_SIGNING_SECRET come from the environment, never the command line.
    Point the Slack app's Interactivity request URL at https://<this host>/slack/events."""
    secrets = {name: os.environ.get(name, "").strip() for name in SECRETS}
    missing = [name for name, value in secrets.items() if not value]
    if missing:
        fail(ConfigurationError(
            f"set {' and '.join(missing)} in the environment (the Slack app's Basic Information page has the "
            "signing secret, OAuth & Permissions the xoxb- bot token); they are never taken on the command line"
        ))  # fmt: skip
    try:
        from agentflow.bridges import SlackBridge
    except ImportError as exc:
        missing_extra("the Slack bridge", "slack", exc)
    if app_ref:
        the_app = load_app(app_ref, db)
    else:
        from agentflow.engine import App

        client(db).store.close()  # a store that does not exist is an error saying how to create it
        the_app = App(resolve_url(db))
    try:
        bridge = SlackBridge(the_app, channel=channel, tenant=tenant, bot_token=secrets["SLACK_BOT_TOKEN"],
                             signing_secret=secrets["SLACK_SIGNING_SECRET"], api_url=api_url, interval=interval)  # fmt: skip
        _ = the_app.store  # an unreachable or too-new database is said here, not as a traceback
    except AgentflowError as exc:
        fail(exc)
    err_console.print(
        f"agentflow chat-bridge slack: tenant {tenant} -> channel {channel}; Slack posts to http://{host}:{port}/slack/events "
        f"(store {redact_url(the_app.db)}, Web API {api_url or 'https://slack.com/api/'})"
    )
    bridge.serve(host=host, port=port)
