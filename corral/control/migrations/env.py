"""Alembic's environment for corral: migrations run on the connection `corral.control.migrations` hands over.

There is no alembic.ini: the Config is built in code (corral.control.migrations.config), so the
migrations run the same from a checkout and from an installed package.
"""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from alembic.autogenerate.api import AutogenContext
from sqlalchemy.types import TypeDecorator

from corral.control.store import Base


def render_item(kind: str, obj: Any, autogen_context: AutogenContext) -> str | Literal[False]:
    """A new revision spells corral's column types (e.g. CleanText) as the SQLAlchemy type they store as."""
    if kind == "type" and isinstance(obj, TypeDecorator):
        return f"sa.{type(obj.impl_instance).__name__}()"
    return False


connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite alters a table by copying it: "batch" operations let one migration serve both databases.
    render_as_batch=connection.dialect.name == "sqlite",
    render_item=render_item,
)
with context.begin_transaction():
    context.run_migrations()
