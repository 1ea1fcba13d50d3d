"""What every command group shares: the consoles, the `--db` and `--json` options, the error
exit, and `load_app` (the one place `--db` meets an App built by the user's code)."""

from __future__ import annotations

import importlib
import os
import sys
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from agentflow.cli._exit import EXIT_BUSY, EXIT_USAGE
from agentflow.errors import AgentflowError, ApprovalError, ConfigurationError, StoreBusyError

if TYPE_CHECKING:
    from agentflow.approvals import Approvals
    from agentflow.engine import App, Client
    from agentflow.store import EventStore

console = Console()
err_console = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="SQLAlchemy URL of the store (default: $AGENTFLOW_DB, else sqlite:///agentflow.db)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(exc: AgentflowError) -> NoReturn:
    """Print an error raised by the engine or the store as `error: Type: message` and exit with
    the table's code (`_exit`): 75 when the store is busy or unreachable (retry later), else 2
    (bad usage or configuration: an unknown run, no such database, bad credentials)."""
    # soft_wrap: a URL or a command in the message is never broken across lines (it is copied).
    err_console.print(f"[bold red]error:[/] {type(exc).__name__}: {_shown(exc)}", soft_wrap=True)
    raise typer.Exit(code=_exit_code(exc))


def fail_decision(exc: AgentflowError) -> NoReturn:
    """Print an error of operators, approvals or policy packs as `error (code): message`; exit 2
    (75 when the store is busy or unreachable).

    An approval error's code (`self_approval`, `stale_args`, ...) is what scripts match on."""
    code = f" ({exc.code})" if isinstance(exc, ApprovalError) else ""
    err_console.print(f"[bold red]error{code}:[/] {_shown(exc)}", highlight=False)
    raise typer.Exit(code=_exit_code(exc))


def missing_extra(what: str, extra: str, exc: ImportError) -> NoReturn:
    """Exit 2 saying which extra `what` needs (`pip install 'agentflow[extra]'`) and what failed."""
    err_console.print(f"[bold red]error:[/] {what} needs the {extra} extra: pip install 'agentflow[{extra}]' ({exc})")
    raise typer.Exit(code=2) from None


def _exit_code(exc: AgentflowError) -> int:
    return EXIT_BUSY if isinstance(exc, StoreBusyError) else EXIT_USAGE


def _shown(exc: Exception) -> str:
    """An error's message as printed: secrets masked (it may quote input or a store's answer), and
    literal (a `[...]` in it is text, not rich markup)."""
    from rich.markup import escape

    from agentflow.store import Redaction

    return escape(Redaction.current().text(str(exc)))  # `[redacted]` is not a style


def client(db: str | None, *, create: bool = False) -> Client:
    """A Client on the store `--db` names (the one rule: `agentflow.store.resolve_url`), opened
    here: reads, signals and cancels need no App (nothing is registered, nothing runs here).

    A store that does not exist is an error saying how to create it (exit 2), never a new empty
    one: only commands that create what they store pass `create=True` (`db upgrade`,
    `operators add`; `worker`, `run`, `demo` and `serve` open the store through the App). A store
    that cannot be opened exits here (`fail`)."""
    from agentflow.engine import Client
    from agentflow.store import EventStore, resolve_url

    try:
        return Client(store=EventStore(resolve_url(db), create=create))
    except AgentflowError as exc:
        fail(exc)


def store(db: str | None, *, create: bool = False) -> EventStore:
    """The event store `--db` names (see `client`)."""
    return client(db, create=create).store


def approvals_of(db: str | None, *, create: bool = False) -> Approvals:
    """Operators and approval requests in the store `--db` names (see `client`)."""
    from agentflow.approvals import Approvals

    found = client(db, create=create)
    return Approvals(found.store, found.clock)


def load_app(ref: str, db: str | None) -> App:
    """Import `module:attribute` and return the App it names, on the store `--db` names.

    The flag wins over the environment. It is exported as `AGENTFLOW_DB` before the import, so
    an `App()` without a URL, and module-level code that opens the store, follow it. An App
    whose code names another database is refused (exit 2) rather than served: `--db` would
    be silently ignored, and runs would land where the operator did not look.

    Raises:
        typer.BadParameter: `ref` is malformed, its module does not import, or it is no App.
        typer.Exit: `--db` was given and the App opens another database.
    """
    if not db:
        return _import_app(ref)
    from agentflow.store import pinned_url

    try:
        with pinned_url(db):  # an App(...) naming another database fails as it is built
            the_app = _import_app(ref)
    except ConfigurationError as exc:
        _refuse(ref, exc.message)
    # An App built before the import (a module imported earlier) is checked here.
    _require_same_database(ref, the_app, db)
    return the_app


def _import_app(ref: str) -> App:
    from agentflow.engine import App

    module_name, _, attr = ref.partition(":")
    if not module_name or not attr:
        raise typer.BadParameter(f"--app must look like module:attribute, got {ref!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise typer.BadParameter(f"cannot import {module_name!r}: {exc}") from None
    except ConfigurationError:
        raise  # the --db pin (load_app says which databases)
    except AgentflowError as exc:
        fail(exc)  # e.g. the module opens its store and the database is unreachable: no traceback
    obj = getattr(module, attr, None)
    if not isinstance(obj, App):
        raise typer.BadParameter(f"{ref!r} is not an agentflow.App (got {type(obj).__name__})")
    return obj


def _require_same_database(ref: str, the_app: App, db: str) -> None:
    from agentflow.store import redact_url, same_database

    if not same_database(the_app.db, db):
        _refuse(ref, f"--db is {redact_url(db)}, but the App {ref} opens {redact_url(the_app.db)} (a URL its code "
                     f"passes to App(...)), so --db would be ignored. Drop the URL from App(...) so the app follows "
                     f"--db and $AGENTFLOW_DB, or pass that same URL as --db.")  # fmt: skip


def _refuse(ref: str, message: str) -> NoReturn:
    # soft_wrap: a URL is never broken across lines (it is meant to be copied).
    err_console.print(Text.assemble(("error: ", "bold red"), f"{ref}: {message}"), soft_wrap=True)
    raise typer.Exit(code=2)
