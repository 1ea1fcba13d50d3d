"""Alembic environment for agentflow's own tables (prefix `af_`, version table `af_alembic_version`)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine
from sqlmodel import SQLModel

from agentflow.store import _models  # noqa: F401  (registers the tables on SQLModel.metadata)
from agentflow.store._constants import VERSION_TABLE


def _include(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # Only agentflow's tables: the database may be shared with the application's own.
    if type_ == "table":
        return bool(name and name.startswith("af_") and name != VERSION_TABLE)
    return True


def run() -> None:
    config = context.config
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as conn:
            _configure(conn)
        return
    _configure(connection)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=SQLModel.metadata,
        version_table=VERSION_TABLE,
        include_object=_include,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


run()
