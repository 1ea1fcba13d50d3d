"""Schema versioning: migrations run on open; a database from a newer agentflow is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agentflow.errors import SchemaVersionError, StoreError
from agentflow.store._constants import SCHEMA_REVISION
from agentflow.store._urls import redact_url

MIGRATIONS = Path(__file__).with_name("migrations")
#: Every revision this version of agentflow knows, oldest first; a test pins it to Alembic's.
KNOWN_REVISIONS = ("0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008", "0009", "0010")


def alembic_config(url: str, connection: Any = None) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def check_revision(url: str, found: str | None) -> bool:
    """True when the schema is current; False when it must be upgraded; raise when too new."""
    if found == SCHEMA_REVISION:
        return True
    if found is not None and found not in KNOWN_REVISIONS:
        raise SchemaVersionError(
            f"the database {redact_url(url)} has agentflow schema revision {found!r}, which this version of "
            f"agentflow does not know (it knows up to {SCHEMA_REVISION!r}): it was written by a "
            "newer agentflow. Upgrade agentflow (pip install -U agentflow) to open it; nothing "
            "was changed."
        )
    return False


def upgrade(url: str) -> None:
    """Bring the schema to head with Alembic (creates it on an empty database)."""
    from alembic import command
    from sqlalchemy import create_engine, event, text

    postgres = url.startswith("postgresql")
    if postgres:
        from agentflow.store._postgres import sqlalchemy_url

        url = sqlalchemy_url(url)
    engine = create_engine(url)
    if url.startswith("sqlite"):
        from agentflow.store._sqlite import PAGE_SIZE

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _rec: Any) -> None:
            # page_size must be set before the first table exists; WAL is a property of the file.
            dbapi_conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            dbapi_conn.execute("PRAGMA journal_mode = WAL")

    try:
        with engine.begin() as conn:
            if postgres:
                from agentflow.store._postgres import MIGRATE_LOCK

                # Processes opening a new database at once: one migrates, the others wait for
                # it here, then find the schema current (DDL is transactional on PostgreSQL).
                conn.execute(text(f"SELECT pg_advisory_xact_lock({MIGRATE_LOCK})"))
            command.upgrade(alembic_config(url, conn), "head")
    except Exception as exc:
        raise StoreError(f"migrating {redact_url(url)} to schema {SCHEMA_REVISION} failed: {exc}") from exc
    finally:
        engine.dispose()
