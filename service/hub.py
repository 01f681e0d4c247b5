"""The hub: who is subscribed to what on this process, and the fan-out.

The log stores and orders, the listener wakes, the hub fans out; none of them retries another's work.

* A `Feed` per project with local subscribers remembers `delivered`, the last seq this process has
  read from the log and fanned out. A wake-up makes one pump read the rows after it, encode each
  event once, and hand the same string to every live subscriber that is exactly one behind.
* A new `Subscription` first catches up from its start position by reading the log in pages, at its
  own pace, and only then joins the live fan-out. The switch happens without an `await` between
  "am I caught up with the feed?" and "I am live", so no event can slip between catch-up and live
  delivery, and a subscriber skips whatever it already has: no gap, no duplicate.
* Every `Client` has a bounded outbox drained by its own writer. Live fan-out never waits for a
  client: one whose outbox overflows is closed with 4429 and resumes from its cursor. Catch-up waits
  for room instead, since it reads at the client's pace anyway.

The seed's `ConnectionManager` verbs are kept: `connect`, `disconnect`, `broadcast_to_project`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from . import log as event_log
from .auth import Principal
from .codes import CloseCode
from .db import DatabaseUnavailable

logger = logging.getLogger("herald.hub")

ConnectionFactory = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


class Transport(Protocol):
    """What the hub needs of a connection: WebSocket and SSE both provide it."""

    async def send(self, frame: str) -> None: ...

    async def close(self, code: int, reason: str) -> None: ...


class EventFrame(str):
    """An encoded event that still knows its project, seq and type. To a WebSocket it is the text it
    is; SSE writes its `id:` and `event:` lines from these without parsing the JSON again. One is
    made per event and shared by every subscriber, like the string it is."""

    project_id: str
    seq: int
    type: str

    @classmethod
    def of(cls, event: event_log.StoredEvent) -> EventFrame:
        frame = cls(event.encode().decode())
        frame.project_id, frame.seq, frame.type = event.project_id, event.seq, event.type
        return frame


class Outbox:
    """A bounded FIFO of encoded frames for one client, drained by one writer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._frames: deque[str] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: str) -> bool:
        """Queue without waiting; False when full (the client cannot keep up)."""
        if self.closed or len(self._frames) >= self.limit:
            return False
        self._frames.append(frame)
        self._ready.set()
        if len(self._frames) > self.limit // 2:
            self._room.clear()
        return True

    async def room(self) -> None:
        """Wait until the outbox is at most half full (catch-up leaves the rest to live events)."""
        await self._room.wait()

    async def get(self) -> str | None:
        """The next frame, or None once the outbox is closed (what was queued is dropped)."""
        while not self._frames and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        if self.closed:
            return None
        frame = self._frames.popleft()
        if len(self._frames) <= self.limit // 2:
            self._room.set()
        return frame

    def close(self) -> None:
        self.closed = True
        self._frames.clear()
        self._ready.set()
        self._room.set()


@dataclass(eq=False)
class Client:
    """One connection on this process (a WebSocket, or an SSE stream)."""

    transport: Transport
    principal: Principal
    client_id: str
    outbox: Outbox
    connection_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)
    last_ping: float = field(default_factory=time.monotonic)
    close_code: int | None = None
    close_reason: str = ""
    heartbeat: bool = True  # WebSocket clients answer pings; SSE streams get keep-alive comments instead
    writer: asyncio.Task[None] | None = None
    close_grace_s: float = 5.0
    _force_close: asyncio.TimerHandle | None = None

    @property
    def user(self) -> str:
        return self.principal.user

    def push(self, frame: str) -> bool:
        """Queue a frame; on overflow the client is closed with 4429 and False is returned."""
        if self.close_code is not None:
            return False
        if self.outbox.put(frame):
            return True
        self.kick(CloseCode.SLOW_CONSUMER, "outbound buffer overflow: reconnect and resume from your cursor")
        return False

    def kick(self, code: int, reason: str) -> None:
        """Close the connection with `code` (the first reason wins); queued frames are dropped, and
        the client resumes from its cursor."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            self.outbox.close()
            # A writer stuck on a client that stopped reading would never get to the close frame.
            if self.writer is not None and not self.writer.done():
                self._force_close = asyncio.get_running_loop().call_later(self.close_grace_s, self._abandon)

    def _abandon(self) -> None:
        if self.writer is not None and not self.writer.done():
            logger.info("client %s did not drain in time; dropping it", self.connection_id)
            self.writer.cancel()

    async def write(self) -> None:
        """The writer: send queued frames in order until the client is kicked, then close it."""
        try:
            while (frame := await self.outbox.get()) is not None:
                await self.transport.send(frame)
        finally:
            if self._force_close is not None:
                self._force_close.cancel()
            if self.close_code is not None:
                with contextlib.suppress(Exception):
                    await self.transport.close(self.close_code, self.close_reason)

    def seen(self) -> None:
        self.last_seen = time.monotonic()


@dataclass(eq=False)
class Subscription:
    """One client's subscription to one project: `position` is the last seq sent to it."""

    client: Client
    project_id: str
    position: int
    live: bool = False
    catch_up: asyncio.Task[None] | None = None


@dataclass(eq=False)
class Feed:
    """A project with local subscribers: how far this process has read and fanned out its log."""

    project_id: str
    delivered: int
    subscribers: set[Subscription] = field(default_factory=set)
    live: set[Subscription] = field(default_factory=set)
    pumping: bool = False
    dirty: bool = False


class Hub:
    """Subscriptions and fan-out for one process (the seed's ConnectionManager)."""

    def __init__(
        self,
        connection: ConnectionFactory,
        *,
        page_size: int = 1000,
        retry_delay_s: float = 0.5,
        on_send: Callable[[event_log.StoredEvent, int], None] | None = None,
    ) -> None:
        self._connection = connection
        self.page_size = page_size
        self.retry_delay_s = retry_delay_s
        self.feeds: dict[str, Feed] = {}
        self.clients: set[Client] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_send = on_send  # metrics hook: (event, subscribers reached)

    # --- the seed's verbs ------------------------------------------------------------------------

    def add_client(self, client: Client) -> None:
        self.clients.add(client)

    async def connect(self, client: Client, project_id: str, *, after: int, head: int) -> Subscription:
        """Subscribe `client` to `project_id` from `after` (exclusive); replaces an earlier subscription.

        The caller has checked authorization and that after <= head. Events with seq > after follow
        in order, first from the log (catch-up), then live.
        """
        self.disconnect(client, project_id)
        feed = self.feeds.get(project_id)
        if feed is None:
            feed = self.feeds[project_id] = Feed(project_id, delivered=head)
        sub = Subscription(client, project_id, position=after)
        client.subscriptions[project_id] = sub
        feed.subscribers.add(sub)
        self._start_catch_up(feed, sub)
        if head > feed.delivered:  # events the listener has not woken us for yet
            self.wake(project_id)
        return sub

    def disconnect(self, client: Client, project_id: str | None = None) -> None:
        """Drop one subscription of `client`, or all of them and the client itself."""
        projects = [project_id] if project_id is not None else list(client.subscriptions)
        for pid in projects:
            sub = client.subscriptions.pop(pid, None)
            if sub is None:
                continue
            if sub.catch_up is not None:
                sub.catch_up.cancel()
            feed = self.feeds.get(pid)
            if feed is not None:
                feed.subscribers.discard(sub)
                feed.live.discard(sub)
                if not feed.subscribers:
                    del self.feeds[pid]
        if project_id is None:
            self.clients.discard(client)

    def broadcast_to_project(self, project_id: str, event: event_log.StoredEvent, frame: str) -> int:
        """Hand one encoded event to every live local subscriber of the project that is exactly one
        behind it; returns how many got it. Never waits: a full outbox closes that client (4429)."""
        feed = self.feeds.get(project_id)
        if feed is None:
            return 0
        reached = 0
        for sub in list(feed.live):
            if event.seq <= sub.position:
                continue  # it read this one during its catch-up
            if event.seq > sub.position + 1:  # cannot happen by construction; recover rather than gap
                logger.warning("subscriber behind the feed on %s; catching it up", project_id)
                feed.live.discard(sub)
                sub.live = False
                self._start_catch_up(feed, sub)
                continue
            if sub.client.push(frame):
                sub.position = event.seq
                reached += 1
            else:
                self.disconnect(sub.client)
        return reached

    # --- wake-ups and the pump -------------------------------------------------------------------

    def wake(self, project_id: str, seq: int | None = None) -> None:
        """New rows may exist for the project (a NOTIFY, a re-read): make sure one pump reads them."""
        feed = self.feeds.get(project_id)
        if feed is None or (seq is not None and seq <= feed.delivered):
            return
        if feed.pumping:
            feed.dirty = True
            return
        feed.pumping = True
        self._spawn(self._pump(feed))

    async def wake_stale(self) -> None:
        """Re-read every project whose head is past what this process delivered (one query).

        The listener calls this after every (re)connect and every few seconds, so events whose
        notification was lost, or written while it was deaf, still arrive.
        """
        if not self.feeds:
            return
        async with self._connection() as conn:
            rows = await conn.fetch("SELECT id, head FROM projects WHERE id = ANY($1::text[])", list(self.feeds))
        for row in rows:
            self.wake(row["id"], row["head"])

    async def _pump(self, feed: Feed) -> None:
        try:
            while self.feeds.get(feed.project_id) is feed:
                feed.dirty = False
                async with self._connection() as conn:
                    events = await event_log.read_after(conn, feed.project_id, feed.delivered, self.page_size)
                for event in events:
                    reached = self.broadcast_to_project(feed.project_id, event, EventFrame.of(event))
                    feed.delivered = event.seq
                    if self._on_send is not None:
                        self._on_send(event, reached)
                if len(events) < self.page_size and not feed.dirty:
                    break
        except DatabaseUnavailable as exc:
            logger.warning("fan-out of %s paused, database unavailable: %s", feed.project_id, exc)
        finally:
            feed.pumping = False

    # --- catch-up --------------------------------------------------------------------------------

    def _start_catch_up(self, feed: Feed, sub: Subscription) -> None:
        sub.catch_up = self._spawn(self._catch_up(feed, sub))

    async def _catch_up(self, feed: Feed, sub: Subscription) -> None:
        client = sub.client
        # After waiting for room the outbox is at most half full: a page never overflows it.
        page = max(1, min(self.page_size, client.outbox.limit // 2))
        while client.subscriptions.get(sub.project_id) is sub:
            await client.outbox.room()
            try:
                async with self._connection() as conn:
                    events = await event_log.read_after(conn, sub.project_id, sub.position, page)
            except DatabaseUnavailable:
                await asyncio.sleep(self.retry_delay_s)
                continue
            if client.subscriptions.get(sub.project_id) is not sub:
                return
            for event in events:
                if len(client.outbox) > client.outbox.limit // 2:
                    await client.outbox.room()  # several catch-ups on one connection share the room
                    if client.subscriptions.get(sub.project_id) is not sub:
                        return
                if not client.push(EventFrame.of(event)):
                    self.disconnect(client)
                    return
                sub.position = event.seq
            if len(events) < page and sub.position >= feed.delivered:
                # No await between the check above and this switch: the pump cannot run in between.
                sub.live = True
                feed.live.add(sub)
                sub.catch_up = None
                return

    # --- heartbeats and expiry ---------------------------------------------------------------------

    async def tick(self, heartbeat_s: float) -> None:
        """Forever: ping each WebSocket client every `heartbeat_s`, close those silent for two
        intervals (4408), and close those whose token has expired (4401). One task for all clients."""
        period = min(1.0, heartbeat_s / 4)
        while True:
            await asyncio.sleep(period)
            now, wall = time.monotonic(), time.time()
            for client in list(self.clients):
                if client.principal.expires_at <= wall:
                    client.kick(CloseCode.AUTH, "token expired")
                elif client.heartbeat and now - client.last_seen > 2 * heartbeat_s:
                    client.kick(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
                elif client.heartbeat and now - client.last_ping >= heartbeat_s:
                    client.last_ping = now
                    client.push(f'{{"type":"ping","ts":{int(wall * 1000)}}}')

    # --- housekeeping ----------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)  # a strong reference: a collected task would silently deliver nothing
        task.add_done_callback(self._tasks.discard)
        return task

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def subscription_count(self) -> int:
        return sum(len(f.subscribers) for f in self.feeds.values())
