"""The running parts of one service process, started and stopped together.

`start` brings up (or joins) the database, migrates it and opens the pool; a `Runtime` then wires
the delivery machinery: the group commit (eventlog.Appender), the held acks (cursors.AckBuffer), the
hub, the listener that wakes it (and reloads the token revocations), the wake-up bus and its relay
when NATS is configured (bus.py), the heartbeat ticker, the metrics, the token verifier and the edge
limits. Routes never see the Runtime: they get the one part they use (api/dependencies.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import asyncpg

from . import auth, db, eventlog, partitions, retention, state, traces
from .bus import Bus, Relay
from .codes import CloseCode
from .config import Settings
from .connection import keep_alive
from .cursors import AckBuffer
from .hub import Hub
from .limits import Gates, RateLimits
from .listener import Listener
from .metrics import Metrics

logger = logging.getLogger("herald.runtime")


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
    bus: Bus | None = field(init=False, default=None)
    relay: Relay | None = field(init=False, default=None)
    metrics: Metrics = field(init=False)
    verifier: auth.Verifier = field(init=False)
    http_limits: RateLimits = field(init=False)
    batch_gates: Gates = field(init=False)
    draining: bool = False
    background: set[asyncio.Task[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        connection = self.database.connection
        settings = self.settings
        self.metrics = Metrics()
        self.hub = Hub(connection, on_send=self.metrics.sent, outbox_bytes=settings.ws_outbox_bytes)
        self.metrics.watch(self.hub)
        self.appender = eventlog.Appender(connection, notify=lambda: self.database.notify)
        self.acks = AckBuffer(connection)
        self.verifier = auth.Verifier(settings.verification_secrets(), max_ttl_s=settings.token_max_ttl_s)
        self.http_limits = RateLimits(settings.http_rate, settings.http_burst)
        self.batch_gates = Gates(width=2)
        self.listener = Listener(self.database_url, channels=self._channels(), refresh=self._refresh)
        if settings.nats_url is not None:
            self.bus = Bus(
                settings.nats_url,
                prefix=settings.nats_prefix,
                watched=self.hub.projects,
                on_head=self._wake_project,
                on_revocations=lambda: self._revocations_changed(""),
                on_state=self._bus_state,
            )
            self.hub.on_projects_changed = self.bus.retune
            self.relay = Relay(
                self.database,
                self.bus,
                events_channel=eventlog.NOTIFY_CHANNEL,
                revocations_channel=auth.REVOCATIONS_CHANNEL,
                poll_s=None if settings.append_notify else settings.head_poll_ms / 1000,
            )
            self.metrics.watch_bus(self.bus, self.relay)

    def _channels(self) -> dict[str, Callable[[str], None]]:
        return {eventlog.NOTIFY_CHANNEL: self._wake, auth.REVOCATIONS_CHANNEL: self._revocations_changed}

    async def _bus_state(self, up: bool) -> None:
        """The bus came up (its subscriptions in place) or went down: stop or start listening on the
        database, which re-reads every watched project either way. Where the relay polls (appends
        without NOTIFY), this process's appends NOTIFY again while its bus is down, for the instances
        listening meanwhile."""
        self.listener.listen({} if up else self._channels())
        if not self.settings.append_notify:
            self.database.notify = not up

    # --- what the listener hears -----------------------------------------------------------------

    def _wake(self, payload: str) -> None:
        """`project:seq`: the project's log reached seq; its feed reads what it has not delivered."""
        project_id, _, seq = payload.rpartition(":")
        self._wake_project(project_id, int(seq) if seq.isdigit() else None)

    def _wake_project(self, project_id: str, head: int | None) -> None:
        started = traces.now()
        traces.notify(project_id, head, self.hub.wake(project_id, head), started)

    def _revocations_changed(self, payload: str) -> None:
        task = asyncio.create_task(self.reload_revocations())
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    async def reload_revocations(self, conn: asyncpg.Connection | None = None) -> None:
        """Load the revocations in force, refuse their tokens from now on, and close the connections
        that were opened with them (4401; an SSE stream ends)."""
        if conn is None:
            try:
                async with self.database.connection() as pooled:
                    await self.reload_revocations(pooled)
            except db.DatabaseUnavailable as exc:  # the listener's next refresh tries again
                logger.warning("reloading revocations failed: %s", exc)
            return
        revocations = await auth.load_revocations(conn, max_ttl_s=self.settings.token_max_ttl_s)
        if revocations == self.verifier.revocations:
            return
        self.verifier.revocations = revocations
        for client in list(self.hub.clients):
            if revocations.refuse(client.principal):
                client.close(CloseCode.AUTH, "token revoked")

    async def _refresh(self, conn: asyncpg.Connection) -> None:
        """After every (re)connect of the listener and every few seconds: re-read every subscribed
        project whose head moved, and reload the revocations, in case a NOTIFY was lost."""
        projects = self.hub.projects()
        if projects:
            for project_id, head in (await eventlog.heads(conn, projects)).items():
                self.hub.wake(project_id, head)
        await self.reload_revocations(conn)

    def start_background(self) -> None:
        heartbeat_s = self.settings.heartbeat_ms / 1000
        extra = [] if self.bus is None or self.relay is None else [self.bus.run(), self.relay.run()]
        for coro in (
            *extra,
            self.listener.run(),
            self.acks.run(),
            keep_alive(self.hub.clients, heartbeat_s),
            state.keep_summaries(self.database.connection),
            partitions.keep_ahead(self.database.connection),
            retention.keep_pruning(
                self.database.connection,
                archive=self.settings.archive_root(),
                interval_s=self.settings.prune_interval_s,
                housekeeping=retention.Housekeeping.of(self.settings),
                on_pruned=lambda pruned: self.metrics.record_pruned(pruned.project_id, pruned.deleted),
            ),
        ):
            task = asyncio.create_task(coro)
            self.background.add(task)  # strong references: a collected task would silently stop


async def start(settings: Settings) -> Runtime:
    """Start (or join) the database, migrate it, and open the pool."""
    traces.setup(settings)  # OpenTelemetry, when an OTLP endpoint is configured
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
    running = Runtime(
        settings=settings,
        secret=settings.signing_secret(),
        database_url=url,
        database=db.Database(pool, timeout=settings.db_timeout_s),
        embedded=embedded,
    )
    await running.reload_revocations()  # before the first request: a revoked token is never let in
    return running


async def drain(runtime: Runtime, *, code: CloseCode = CloseCode.GOING_AWAY) -> None:
    """Persist every pending ack and tell every client to go (with `code`: 1001 at a shutdown, 1012 when
    a reload replaces this worker; an SSE stream simply ends)."""
    runtime.draining = True  # /readyz says so from now on
    with contextlib.suppress(Exception):
        await runtime.acks.flush()
    reason = "server restarting" if code == CloseCode.SERVICE_RESTART else "server shutting down"
    for client in list(runtime.hub.clients):
        client.close(code, f"{reason}; reconnect and resume")


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
    if traces.enabled():
        await asyncio.to_thread(traces.shutdown)  # export the spans still buffered
