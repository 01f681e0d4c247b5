"""Alembic migrations: upgrade from empty, downgrade to base, upgrade again; schema matches tables.py."""

from __future__ import annotations

import asyncio

import asyncpg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Connection
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from service import db, partitions
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
        # The log's partitions are made at run time, one per range of a project's seqs (partitions.py).
        def include(obj: object, name: str | None, kind: str, reflected: bool, compare_to: object) -> bool:
            return not (kind == "table" and reflected and name is not None and partitions.is_partition(name))

        context = MigrationContext.configure(connection, opts={"compare_type": True, "include_object": include})
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


async def test_cursors_enter_the_ack_ledger_when_it_is_created(empty_database_url: str) -> None:
    """A database with cursors, upgraded to the ledger: each cursor is in it once, at its position, with
    the time it was last written (the earliest the ledger can vouch for); the downgrade removes it."""
    url = empty_database_url
    await asyncio.to_thread(db.migrate, url, "0006")
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        await conn.execute("INSERT INTO projects (id, name, head) VALUES ('p', 'p', 9)")
        await conn.execute(
            'INSERT INTO cursors (project_id, "user", client_id, seq, updated_at) VALUES '
            "('p', 'u', 'a', 4, '2026-01-01T00:00:00Z'), ('p', 'u', 'b', 9, '2026-01-02T00:00:00Z')"
        )
        await asyncio.to_thread(db.migrate, url)
        rows = await conn.fetch('SELECT client_id, l.seq, acked_at, updated_at FROM ack_ledger l JOIN cursors '
                                'USING (project_id, "user", client_id) ORDER BY client_id')  # fmt: skip
        assert [(r["client_id"], r["seq"]) for r in rows] == [("a", 4), ("b", 9)]
        assert all(r["acked_at"] == r["updated_at"] for r in rows)
        await asyncio.to_thread(db.downgrade, url, "0006")
        assert "ack_ledger" not in await table_names(url)
        assert await conn.fetchval("SELECT count(*) FROM cursors") == 2
    finally:
        await conn.close()
