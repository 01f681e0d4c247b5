"""Alembic migrations: upgrade from empty, downgrade to base, upgrade again; schema matches tables.py."""

from __future__ import annotations

import asyncio

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from service import db
from service.tables import metadata


async def table_names(url: str) -> set[str]:
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        return {r["tablename"] for r in rows}
    finally:
        await conn.close()


async def test_upgrade_downgrade_upgrade(empty_database_url: str) -> None:
    """From an empty database to head, back to base (nothing left), and to head again."""
    url = empty_database_url
    await asyncio.to_thread(db.migrate, url)
    assert {"projects", "events", "cursors", "alembic_version"} <= await table_names(url)
    await asyncio.to_thread(db.downgrade, url, "base")
    assert await table_names(url) == {"alembic_version"}
    await asyncio.to_thread(db.migrate, url)
    assert {"projects", "events", "cursors"} <= await table_names(url)
    await asyncio.to_thread(db.migrate, url)  # idempotent at head


async def test_migrated_schema_matches_tables_module(database_url: str) -> None:
    """The migrations and service/tables.py describe the same schema (no drift)."""
    engine = create_async_engine(db.sqlalchemy_url(database_url), poolclass=NullPool)

    def diff(connection: Connection) -> list[object]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, metadata))

    try:
        async with engine.connect() as connection:
            differences = await connection.run_sync(diff)
    finally:
        await engine.dispose()
    assert differences == []


async def test_url_with_percent_in_password_reaches_alembic() -> None:
    """A `%` in the URL (an encoded password) does not break alembic's config parser."""
    config = db.alembic_config("postgresql://u:p%40ss@localhost/db")
    assert config.attributes["url"] == "postgresql+asyncpg://u:p%40ss@localhost/db"
    assert db.asyncpg_dsn("postgres://u@h/d") == "postgresql://u@h/d"
    assert db.with_database("postgresql://postgres:@/x?host=/tmp/s", "y") == "postgresql://postgres:@/y?host=/tmp/s"
