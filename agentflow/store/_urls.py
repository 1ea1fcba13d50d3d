"""Store URLs: the one parser, the backend registry, and the rule that picks the database.

    resolve_url(db)      the argument, else $AGENTFLOW_DB, else sqlite:///agentflow.db
    parse_url(url)       the backend a URL names (ConfigurationError if none, or its driver is missing)
    open_backend(url)    that backend, opened

A new backend is one file beside `_sqlite.py` and one `BackendEntry` in `BACKENDS`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agentflow.errors import ConfigurationError

if TYPE_CHECKING:
    from agentflow.store._backend import Backend

#: The environment variable naming the store when no URL is passed.
ENV = "AGENTFLOW_DB"
#: The store when neither an argument nor `AGENTFLOW_DB` names one.
DEFAULT_URL = "sqlite:///agentflow.db"


@dataclass(frozen=True, slots=True)
class BackendEntry:
    """A storage backend: the URL prefixes it serves and where its class lives."""

    dialect: str
    prefixes: tuple[str, ...]
    module: str  # imported only when a URL names this backend
    cls: str
    #: A module the backend needs (its driver) and how to install it, checked before opening.
    driver: str | None = None
    install: str = ""
    example: str = ""


BACKENDS: tuple[BackendEntry, ...] = (
    BackendEntry("sqlite", ("sqlite:///",), "agentflow.store._sqlite", "SqliteStore",
                 example="sqlite:///path/to/file.db"),
    BackendEntry("postgresql", ("postgresql://", "postgresql+psycopg://"), "agentflow.store._postgres",
                 "PostgresStore", driver="psycopg", install="pip install 'agentflow[postgres]'",
                 example="postgresql://user@host:5432/dbname"),
)  # fmt: skip


# The database a command line named (`--db`) while it loads the user's code (see `pinned_url`).
_PINNED: ContextVar[str | None] = ContextVar("agentflow_pinned_db", default=None)


def resolve_url(db: str | None = None) -> str:
    """The database to use: `db` when given, else `$AGENTFLOW_DB`, else `sqlite:///agentflow.db`.

    This is the one rule every surface follows (App, Client, the CLI's `--db`).

    Raises:
        ConfigurationError: inside `pinned_url(pin)`, `db` names another database than `pin`.
    """
    pin = _PINNED.get()
    if db is not None and pin is not None and not same_database(db, pin):
        raise ConfigurationError(
            f"--db is {redact_url(pin)}, but the code passes {redact_url(db)} to App(...) (or Client(...)), "
            "so --db would be ignored. Drop the URL from App(...) so the app follows --db and "
            "$AGENTFLOW_DB, or pass that same URL as --db."
        )
    return db or os.environ.get(ENV) or DEFAULT_URL


@contextmanager
def pinned_url(url: str) -> Iterator[None]:
    """What the CLI's `--db` does while it imports the user's module: `$AGENTFLOW_DB` becomes `url`
    (and stays so: `App()` and processes started later follow it), and while the block runs (in
    this thread or task) `resolve_url` refuses a URL naming another database, so an
    `App("sqlite:///other.db")` fails where it is built, before the module's code touches it."""
    os.environ[ENV] = url
    token = _PINNED.set(url)
    try:
        yield
    finally:
        _PINNED.reset(token)


def redact_url(url: str) -> str:
    """The URL without its password (for messages)."""
    scheme, sep, rest = url.partition("://")
    userinfo, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return url
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


def backend_entry(url: str) -> BackendEntry:
    """The backend a store URL names.

    Raises:
        ConfigurationError: no backend serves the URL, or its driver is not installed.
    """
    for entry in BACKENDS:
        if url.startswith(entry.prefixes):
            if entry.driver is not None and importlib.util.find_spec(entry.driver) is None:
                raise ConfigurationError(
                    f"the database URL {redact_url(url)} needs the {entry.dialect} driver ({entry.driver}): "
                    f"{entry.install}"
                )
            return entry
    examples = " or ".join(f"{e.dialect} ({e.example})" for e in BACKENDS)
    raise ConfigurationError(f"unsupported database URL {redact_url(url)!r}: agentflow stores runs in {examples}")


def parse_url(url: str) -> str:
    """The dialect of a store URL ("sqlite" or "postgresql"), or ConfigurationError."""
    return backend_entry(url).dialect


def open_backend(url: str, *, synchronous: str = "FULL", busy_timeout: float | None = None) -> Backend:
    """The backend for a store URL, opened (connections are made on first use)."""
    entry = backend_entry(url)
    kwargs: dict[str, Any] = {"synchronous": synchronous}
    if busy_timeout is not None:
        kwargs["busy_timeout"] = busy_timeout
    factory: Callable[..., Backend] = getattr(importlib.import_module(entry.module), entry.cls)
    return factory(url, **kwargs)


def same_database(a: str, b: str) -> bool:
    """Whether two URLs name the same database: a SQLite file by its absolute path, PostgreSQL
    whichever driver suffix names it (`postgresql+psycopg://` is `postgresql://`)."""
    a, b = _canonical(a), _canonical(b)
    if a == b:
        return True
    prefix = "sqlite:///"
    if a.startswith(prefix) and b.startswith(prefix):
        return os.path.abspath(a[len(prefix) :]) == os.path.abspath(b[len(prefix) :])
    return False


def _canonical(url: str) -> str:
    return "postgresql://" + url[len("postgresql+psycopg://") :] if url.startswith("postgresql+psycopg://") else url
