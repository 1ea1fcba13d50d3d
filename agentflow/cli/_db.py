"""`agentflow db upgrade`: create the store's schema or migrate it to this version's head."""

from __future__ import annotations

import typer

from agentflow.cli._common import DbOption, console, fail, store
from agentflow.errors import AgentflowError

db_app = typer.Typer(help="The store's schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Create the schema or migrate it to this version's head."""
    try:
        the_store = store(db)  # opening the store migrates it
    except AgentflowError as exc:
        fail(exc)
    from agentflow.store import SCHEMA_REVISION, redact_url

    console.print(f"{redact_url(the_store.url)}: schema at revision {SCHEMA_REVISION}", highlight=False)
