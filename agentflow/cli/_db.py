"""`agentflow db upgrade`: create the store's schema or migrate it to this version's head.
`agentflow db rotate-key`: re-seal the stored payloads under the active encryption key."""

from __future__ import annotations

import typer

from agentflow.cli._common import DbOption, console, fail, store
from agentflow.errors import AgentflowError, ConfigurationError

db_app = typer.Typer(help="The store's schema.", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Create the schema or migrate it to this version's head."""
    the_store = store(db, create=True)  # opening the store creates or migrates it
    from agentflow.store import SCHEMA_REVISION, redact_url

    console.print(f"{redact_url(the_store.url)}: schema at revision {SCHEMA_REVISION}", highlight=False)


@db_app.command("rotate-key")
def db_rotate_key(db: DbOption = None) -> None:
    """Re-seal every payload under the active encryption key (the first of
    AGENTFLOW_ENCRYPTION_KEYS; keep the old ones listed after it until this has run). Rows of
    newly sealed tenants are sealed, rows of tenants no longer sealed are opened. Safe while
    workers run; run it again if rows are left."""
    the_store = store(db)  # an existing store: there is nothing to re-seal in a new one
    try:
        if the_store.sealing is None:
            raise ConfigurationError(
                "no encryption keys are configured: set AGENTFLOW_ENCRYPTION_KEYS='new:<base64 key>,old:<base64 key>' "
                "(the first seals; the others open what they sealed)"
            )
        counts = the_store.reseal()
        active = the_store.sealing.active
    except AgentflowError as exc:
        fail(exc)
    finally:
        the_store.close()
    left = counts.pop("left")
    changed = ", ".join(f"{table} {n}" for table, n in counts.items() if n) or "nothing to change"
    console.print(f"re-sealed under key {active!r}: {changed}", highlight=False)
    if left:
        console.print(
            f"{left} value(s) are still sealed under other keys (written meanwhile by a process with the old "
            "active key, or messages no run refers to): run it again before removing old keys",
            highlight=False,
        )
