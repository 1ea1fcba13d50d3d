"""`agentflow chat-bridge matrix`: approval cards in a Matrix room, decisions typed in their threads.

    export AGENTFLOW_MATRIX_PASSWORD=...          # or AGENTFLOW_MATRIX_TOKEN (an access token)
    agentflow operators link bob --matrix @bob:example.org --tenant noc-east
    agentflow chat-bridge matrix --homeserver https://matrix.example.org --user @agentflow:example.org \\
        --room '#noc-east:example.org' --tenant noc-east --db postgresql://...

Runs until Ctrl-C or SIGTERM. The bridge acts for the operator each sender's account is linked
to (`operators link`), through the same approvals service as the web; it holds no operator token.
One bridge per tenant and room.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import signal
from typing import TYPE_CHECKING, Annotated

import typer

from agentflow.cli._bridge import bridge_app
from agentflow.cli._common import DbOption, client, fail, load_app
from agentflow.errors import AgentflowError

if TYPE_CHECKING:
    from agentflow.bridges import MatrixBridge

__all__ = ["bridge_app"]
log = logging.getLogger("agentflow.bridges.matrix")


@bridge_app.command("matrix")
def matrix(
    homeserver: Annotated[str, typer.Option(help="The homeserver's URL, e.g. https://matrix.example.org.")],
    user: Annotated[str, typer.Option(help="The bot's Matrix user id, e.g. @agentflow:example.org.")],
    room: Annotated[
        str, typer.Option(help="The tenant's room: an id (!abc:example.org) or an alias (#noc:example.org).")
    ],
    tenant: Annotated[str, typer.Option(help="The tenant whose approval requests are posted and decided here.")],
    password_env: Annotated[
        str, typer.Option("--password-env", help="The environment variable holding the bot's password.")
    ] = "AGENTFLOW_MATRIX_PASSWORD",
    token_env: Annotated[
        str, typer.Option("--token-env", help="The environment variable holding an access token (instead).")
    ] = "AGENTFLOW_MATRIX_TOKEN",
    app_ref: Annotated[
        str | None,
        typer.Option("--app", help="The App (module:attribute) whose clock decides expiry; default: the system clock."),
    ] = None,
    device_id: Annotated[
        str | None,
        typer.Option(
            "--device-id", help="The bot's device (default: one per tenant: resent messages are not doubled)."
        ),
    ] = None,
    poll: Annotated[float, typer.Option(help="Seconds one sync waits for new messages.")] = 2.0,
    per_minute: Annotated[int, typer.Option("--per-minute", help="Commands one account may send per minute.")] = 20,
    db: DbOption = None,
) -> None:
    """Post a card per open approval request of the tenant in a Matrix room, and take `approve`,
    `reject <reason>`, `status`, `why?` (and a 👍 reaction) in each card's thread from accounts
    linked to operators (`agentflow operators link NAME --matrix @x:server`).

    The password (or access token) is read from an environment variable, never from the command
    line. Cards and replies are plain text; nobody is mentioned. Runs until Ctrl-C or SIGTERM; a
    homeserver that is down is retried with backoff."""
    from agentflow.bridges import Bridge, MatrixBridge, MatrixConfig

    if importlib.util.find_spec("nio") is None:
        raise typer.BadParameter("the Matrix bridge needs matrix-nio: pip install 'agentflow[matrix]'")
    password, token = os.environ.get(password_env) or None, os.environ.get(token_env) or None
    if not (password or token):
        raise typer.BadParameter(f"set {password_env} (the bot's password) or {token_env} (an access token)")
    try:
        config = MatrixConfig(homeserver=homeserver, user=user, room=room, password=None if token else password,
                              access_token=token, device_id=device_id, poll=poll)  # fmt: skip
        source = load_app(app_ref, db) if app_ref else client(db)
        bridge = Bridge(source, surface="matrix", tenant=tenant, per_minute=per_minute)
        asyncio.run(_serve(MatrixBridge(bridge, config)))
    except AgentflowError as exc:
        fail(exc)


async def _serve(bridge: MatrixBridge) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("matrix bridge: starting", extra={"tenant": bridge.bridge.tenant, "room": bridge.config.room})
    await bridge.run(stop)
    log.info("matrix bridge: stopped", extra={"tenant": bridge.bridge.tenant})
