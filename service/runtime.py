"""The running parts of one service process, started and stopped together.

`start` brings up (or joins) the database, migrates it and opens the pool; a `Runtime` then wires
the delivery machinery: the group commit (eventlog.Appender), the held acks (cursors.AckBuffer), the
hub, the listener that wakes it, the heartbeat ticker, the metrics. Routes never see the Runtime:
they get the one part they use (api/dependencies.py).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from . import db, eventlog
from .codes import CloseCode
from .config import Settings
from .connection import keep_alive
from .cursors import AckBuffer
from .hub import Hub
from .listener import Listener
from .metrics import Metrics


@dataclass
class Runtime:
    """What one running service holds."""

    settings: Settings
    secret: str
    database_url: str
    database: db.Database
    embedded: db.EmbeddedPostgres | None = None
    hub: Hub = field(init=False)
    appender: eventlog.Appender = field(init=False)
    acks: AckBuffer = field(init=False)
    listener: Listener = field(init=False)
    metrics: Metrics = field(init=False)
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        connection = self.database.connection
        self.metrics = Metrics()
        self.hub = Hub(connection, on_send=self.metrics.sent)
        self.metrics.watch(self.hub)
        self.appender = eventlog.Appender(connection)
        self.acks = AckBuffer(connection)
        self.listener = Listener(self.database_url, self.hub)

    def start_background(self) -> None:
        heartbeat_s = self.settings.heartbeat_ms / 1000
        for coro in (self.listener.run(), self.acks.run(), keep_alive(self.hub.clients, heartbeat_s)):
            task = asyncio.create_task(coro)
            self.background.add(task)  # strong references: a collected task would silently stop


async def start(settings: Settings) -> Runtime:
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
        database=db.Database(pool, timeout=settings.db_timeout_s),
        embedded=embedded,
    )


async def drain(runtime: Runtime) -> None:
    """Persist every pending ack and tell every client to go (1001; an SSE stream simply ends)."""
    with contextlib.suppress(Exception):
        await runtime.acks.flush()
    for client in list(runtime.hub.clients):
        client.close(CloseCode.GOING_AWAY, "server shutting down; reconnect and resume")


async def stop(runtime: Runtime) -> None:
    """Drain, then stop the background work, the pool and the embedded database."""
    await drain(runtime)
    await runtime.appender.close()
    await runtime.hub.close()
    for task in list(runtime.background):
        task.cancel()
    await asyncio.gather(*runtime.background, return_exceptions=True)
    await runtime.database.close()
    if runtime.embedded is not None:
        await asyncio.to_thread(runtime.embedded.stop)
