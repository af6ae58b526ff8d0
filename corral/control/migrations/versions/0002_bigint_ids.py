"""64-bit ids for jobs, events and metrics on PostgreSQL (32-bit INTEGER there; SQLite's are 64-bit already).

Revision ID: 0002
Revises: 0001
Create Date: 2026-05-20
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = [("jobs", "id"), ("events", "id"), ("events", "job_id"), ("metrics", "id"), ("metrics", "job_id")]


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return  # SQLite: an INTEGER PRIMARY KEY is 64-bit, and must stay INTEGER to be the rowid
    _retype(sa.BigInteger(), "bigint")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _retype(sa.Integer(), "integer")


def _retype(type_: sa.types.TypeEngine[int], sql_type: str) -> None:
    for table, column in COLUMNS:
        op.alter_column(table, column, type_=type_)
        if column == "id":  # the sequence behind the SERIAL column has a type of its own
            seq = op.get_bind().scalar(sa.text("SELECT pg_get_serial_sequence(:t, 'id')"), {"t": table})
            op.execute(f"ALTER SEQUENCE {seq} AS {sql_type}")
