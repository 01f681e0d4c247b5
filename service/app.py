"""create_app(settings) -> FastAPI. The lifespan wires the database and the delivery machinery.

Nothing is built at import time: tests and the CLI create as many apps as they need, each with its
own settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import uvicorn
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from . import cursors, db, eventlog
from .auth import install_log_redaction
from .codes import CloseCode
from .config import Settings
from .cursors import AckBuffer
from .frames import WebSocketProtocol
from .hub import Client, Hub
from .listener import Listener
from .messages import MAX_MESSAGE_BYTES
from .metrics import Metrics

logger = logging.getLogger("herald.app")

FRONTEND_DIST = db.ROOT / "frontend" / "dist"


@dataclass
class Runtime:
    """What one running service holds: settings, secret, the pool, and the delivery machinery."""

    settings: Settings
    secret: str
    database_url: str
    pool: asyncpg.Pool
    embedded: db.EmbeddedPostgres | None = None
    hub: Hub = field(init=False)
    appender: eventlog.Appender = field(init=False)
    acks: AckBuffer = field(init=False)
    listener: Listener = field(init=False)
    metrics: Metrics = field(init=False)
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.metrics = Metrics()
        self.hub = Hub(self.connection, on_send=self.metrics.sent)
        self.metrics.watch(self.hub)
        self.appender = eventlog.Appender(self.connection)
        self.acks = AckBuffer(self.connection)
        self.listener = Listener(self.database_url, self.hub)

    def start_background(self) -> None:
        heartbeat_s = self.settings.heartbeat_ms / 1000
        for coro in (self.listener.run(), self.acks.run(), self.hub.tick(heartbeat_s)):
            task = asyncio.create_task(coro)
            self.background.add(task)  # strong references: a collected task would silently stop

    async def cursor(self, conn: asyncpg.Connection, project_id: str, client: Client) -> int | None:
        """Where `client` resumes `project_id`: its durable cursor, or a newer ack not yet persisted."""
        key = {"project_id": project_id, "user": client.user, "client_id": client.client_id}
        stored = await cursors.get(conn, **key)
        pending = self.acks.peek(**key)
        candidates = [v for v in (stored, pending) if v is not None]
        return max(candidates) if candidates else None

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
            try:
                await self.pool.release(conn)
            except Exception:  # resetting a connection the server already closed: the pool drops it
                logger.debug("released a broken connection", exc_info=True)


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


async def drain(runtime: Runtime) -> None:
    """Persist every pending ack and tell every client to go (1001; an SSE stream simply ends)."""
    with contextlib.suppress(Exception):
        await runtime.acks.flush()
    for client in list(runtime.hub.clients):
        client.kick(CloseCode.GOING_AWAY, "server shutting down; reconnect and resume")


async def stop_runtime(runtime: Runtime) -> None:
    """Drain, then stop the background work, the pool and the embedded database."""
    await drain(runtime)
    await runtime.appender.close()
    await runtime.hub.close()
    for task in list(runtime.background):
        task.cancel()
    await asyncio.gather(*runtime.background, return_exceptions=True)
    try:
        await asyncio.wait_for(runtime.pool.close(), timeout=5)
    except db.UNAVAILABLE_ERRORS:  # includes TimeoutError
        runtime.pool.terminate()
    if runtime.embedded is not None:
        await asyncio.to_thread(runtime.embedded.stop)


class Server(uvicorn.Server):
    """uvicorn, draining Herald's clients first when it shuts down.

    uvicorn waits for open connections before it runs the lifespan's shutdown, and an SSE stream never
    ends by itself, so without this every open stream would hold the process for the whole graceful
    timeout. Draining first closes WebSockets with 1001 and ends streams at once.
    """

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        app = self.config.app
        runtime: Runtime | None = getattr(getattr(app, "state", None), "runtime", None)
        if runtime is not None:
            await drain(runtime)
        await super().shutdown(sockets)


def server_config(
    app: FastAPI, *, host: str, port: int, log_level: str = "info", access_log: bool = True
) -> uvicorn.Config:
    """uvicorn settings that are part of the contract, shared by the CLI, the tests and the benchmarks."""
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ws=WebSocketProtocol,  # uvicorn's default (websockets-sansio), plus frames encoded once per event
        ws_max_size=MAX_MESSAGE_BYTES,  # a larger message closes the socket with 1009
        ws_per_message_deflate=False,  # compressing every message once per client costs ~20x at fan-out
        timeout_graceful_shutdown=5,  # open connections must not hold the process at shutdown
        log_level=log_level,
        access_log=access_log,  # applied while the Config is built: setting it later does nothing
        lifespan="on",
    )


def create_app(settings: Settings, *, frontend_dist: Path | None = FRONTEND_DIST) -> FastAPI:
    """The whole service as an ASGI app. `frontend_dist`: the built dashboard to serve at `/`."""
    from .api import http, sse, webhooks, websocket

    install_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        runtime = await start_runtime(settings)
        app.state.runtime = runtime
        runtime.start_background()
        logger.info("herald ready on %s", db.redact(runtime.database_url))
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
    app.include_router(websocket.router)
    app.include_router(sse.router)
    app.include_router(webhooks.router)
    http.install(app, frontend_dist=frontend_dist)
    return app
