"""SQLAlchemy tables: the schema as code.

Migrations create these tables (alembic), and a test checks that the migrated database and this
metadata agree. Queries on the hot path are written against asyncpg directly (see log.py), so this
module is the schema's description, not a data-access layer.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    ForeignKey,
    Index,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

projects = Table(
    "projects",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("repo", Text, nullable=True),
    # The latest seq. Appends lock this row to take the next number, which serializes appends per
    # project and makes commit order equal seq order.
    Column("head", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
)
# GitHub compares repository names case-insensitively, and so do uniqueness and webhook routing.
Index("projects_repo_key", func.lower(projects.c.repo), unique=True)

events = Table(
    "events",
    metadata,
    Column("project_id", Text, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("project_id", "seq", name="events_pkey"),
    UniqueConstraint("project_id", "message_id", name="events_message_id_key"),
)

cursors = Table(
    "cursors",
    metadata,
    Column("project_id", Text, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("user", Text, nullable=False),
    Column("client_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    PrimaryKeyConstraint("project_id", "user", "client_id", name="cursors_pkey"),
)
