"""create_app(settings) -> FastAPI. The lifespan wires the database and the delivery machinery.

Nothing is built at import time: tests and the CLI create as many apps as they need, each with its
own settings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from . import db
from .auth import install_log_redaction
from .config import Settings
from .messages import MAX_MESSAGE_BYTES

log = logging.getLogger("herald")

FRONTEND_DIST = db.ROOT / "frontend" / "dist"


@dataclass
class Runtime:
    """What one running service holds: its settings, secret and database pool."""

    settings: Settings
    secret: str
    database_url: str
    pool: asyncpg.Pool
    embedded: db.EmbeddedPostgres | None = None
    background: set[asyncio.Task[None]] = field(default_factory=set)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection; an unreachable database becomes `DatabaseUnavailable` (503), promptly."""
        try:
            conn = await self.pool.acquire(timeout=self.settings.db_timeout_s)
        except Exception as exc:  # any failure to connect (refused, shutting down, not accepting, ...)
            raise db.DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
        try:
            yield conn
        except db.UNAVAILABLE_ERRORS as exc:
            raise db.DatabaseUnavailable(str(exc) or type(exc).__name__) from exc
        finally:
            await self.pool.release(conn)


async def start_runtime(settings: Settings) -> Runtime:
    """Start (or join) the database, migrate it, and open the pool."""
    embedded: db.EmbeddedPostgres | None = None
    if settings.database_url is None:
        embedded = await asyncio.to_thread(db.start_embedded, settings.data_dir)
        url = embedded.url
    else:
        url = settings.database_url
    try:
        await db.migrate_async(url)
        pool = await db.create_pool(url, size=settings.pool_size, timeout=settings.db_timeout_s)
    except BaseException:
        if embedded is not None:
            await asyncio.to_thread(embedded.stop)
        raise
    return Runtime(
        settings=settings,
        secret=settings.signing_secret(),
        database_url=url,
        pool=pool,
        embedded=embedded,
    )


async def stop_runtime(runtime: Runtime) -> None:
    for task in list(runtime.background):
        task.cancel()
    await asyncio.gather(*runtime.background, return_exceptions=True)
    try:
        await asyncio.wait_for(runtime.pool.close(), timeout=5)
    except db.UNAVAILABLE_ERRORS:  # includes TimeoutError
        runtime.pool.terminate()
    if runtime.embedded is not None:
        await asyncio.to_thread(runtime.embedded.stop)


def server_config(app: FastAPI, *, host: str, port: int, log_level: str = "info") -> uvicorn.Config:
    """uvicorn settings that are part of the contract, shared by the CLI, the tests and the benchmarks."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ws_max_size=MAX_MESSAGE_BYTES,  # a larger message closes the socket with 1009
        ws_per_message_deflate=False,  # compressing every message once per client costs ~20x at fan-out
        timeout_graceful_shutdown=5,  # open connections must not hold the process at shutdown
        log_level=log_level,
        lifespan="on",
    )


def create_app(settings: Settings, *, frontend_dist: Path | None = FRONTEND_DIST) -> FastAPI:
    """The whole service as an ASGI app. `frontend_dist`: the built dashboard to serve at `/`."""
    from .api import http

    install_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await start_runtime(settings)
        app.state.runtime = runtime
        log.info("herald ready on %s", db.redact(runtime.database_url))
        try:
            yield
        finally:
            await stop_runtime(runtime)

    app = FastAPI(
        title="Herald",
        version="1",
        summary="Durable real-time notifications: a PostgreSQL event log with WebSocket and SSE delivery.",
        lifespan=lifespan,
        docs_url="/api/docs",
        redoc_url=None,
        openapi_url="/api/openapi.json",
    )
    if settings.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.allowed_origins,
            allow_credentials=False,  # bearer tokens, never cookies
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
            expose_headers=["Retry-After"],
            max_age=600,
        )
    http.install(app, frontend_dist=frontend_dist)
    return app
