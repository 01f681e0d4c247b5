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
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from . import eventlog
from .auth import Principal
from .codes import CloseCode
from .db import DatabaseUnavailable

logger = logging.getLogger("herald.hub")

ConnectionFactory = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


class Transport(Protocol):
    """What the hub needs of a connection: WebSocket and SSE both provide it."""

    async def send(self, frame: str) -> None: ...

    def send_now(self, frames: Sequence[str]) -> bool:
        """Write all of `frames`, in order, at once, if the connection takes them without waiting;
        else write none and return False (the caller then uses `send`, which waits for room)."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


class EventFrame(str):
    """An encoded event that still knows its project, seq and type. To a WebSocket it is the text it
    is; SSE writes its `id:` and `event:` lines from these without parsing the JSON again. One is
    made per event and shared by every subscriber, like the string it is."""

    project_id: str
    seq: int
    type: str
    wire: bytes | None  # a transport's encoding of it (a WebSocket frame), made by the first one to need it

    @classmethod
    def of(cls, event: eventlog.StoredEvent) -> EventFrame:
        frame = cls(event.encode().decode())
        frame.project_id, frame.seq, frame.type, frame.wire = event.project_id, event.seq, event.type, None
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

    def flush(self, send_now: Callable[[Sequence[str]], bool]) -> None:
        """Hand everything queued to `send_now` in one call; drop it from the queue if it was taken."""
        if self._frames and not self.closed and send_now(list(self._frames)):
            self._frames.clear()
            self._room.set()

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
    _sending: bool = False  # the writer is in the middle of a send

    @property
    def user(self) -> str:
        return self.principal.user

    def push(self, frame: str) -> bool:
        """Send or queue one frame; see `push_many`."""
        return self.push_many((frame,))

    def push_many(self, frames: Sequence[str]) -> bool:
        """Send `frames` in order, or queue them; on overflow the client is closed with 4429 and False
        is returned. Never waits.

        When nothing is queued and the writer is idle, the frames are written right here, all at once,
        if the transport takes them without waiting (the usual case: a WebSocket whose buffer is not
        full): a fan-out then writes to each client in one tight loop, one write per client per page
        of events, instead of waking a writer task per client per event. Otherwise they are queued
        behind what is there, and the writer sends them when the client makes room.
        """
        if self.close_code is not None:
            return False
        if not self._sending and not self.outbox and self.transport.send_now(frames):
            return True
        for frame in frames:
            if not self.outbox.put(frame):
                self.kick(CloseCode.SLOW_CONSUMER, "outbound buffer overflow: reconnect and resume from your cursor")
                return False
        return True

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
                self._sending = True
                await self.transport.send(frame)  # waits while the client is not reading
                self.outbox.flush(self.transport.send_now)  # what queued up meanwhile, in one write
                self._sending = False
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
        on_send: Callable[[eventlog.StoredEvent, int], None] | None = None,
    ) -> None:
        self._connection = connection
        self.page_size = page_size
        self.retry_delay_s = retry_delay_s
        self.feeds: dict[str, Feed] = {}
        self.clients: set[Client] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_send = on_send  # metrics hook: (event, subscribers reached)
        self.heartbeat_s = 0.0  # set by `tick`

    # --- the seed's verbs ------------------------------------------------------------------------

    def add_client(self, client: Client) -> None:
        self.clients.add(client)
        # Each client's first ping comes at a random point of its first interval, so clients that
        # connected together are not all pinged (and do not all answer) in the same instant.
        client.last_ping -= random.uniform(0, self.heartbeat_s)

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

    def broadcast_to_project(self, project_id: str, event: eventlog.StoredEvent, frame: str) -> int:
        """Hand one encoded event to every live local subscriber of the project that is exactly one
        behind it; returns how many got it. Never waits: a full outbox closes that client (4429)."""
        feed = self.feeds.get(project_id)
        if feed is None:
            return 0
        return self._broadcast(feed, [event], [frame])[0]

    def _broadcast(self, feed: Feed, events: list[eventlog.StoredEvent], frames: list[str]) -> list[int]:
        """Fan a contiguous run of events out to the live subscribers: each gets, in one push, the part
        of the run after its position (a subscriber that read some of them during its catch-up skips
        those). Returns, per event, how many subscribers it reached."""
        first, last = events[0].seq, events[-1].seq
        starts = [0] * len(events)  # starts[i]: subscribers whose part begins with event i
        for sub in list(feed.live):
            start = sub.position + 1 - first
            if start >= len(events):
                continue  # it read all of these during its catch-up
            if start < 0:  # cannot happen by construction; recover rather than gap
                logger.warning("subscriber behind the feed on %s; catching it up", feed.project_id)
                feed.live.discard(sub)
                sub.live = False
                self._start_catch_up(feed, sub)
                continue
            if sub.client.push_many(frames[start:] if start else frames):
                sub.position = last
                starts[start] += 1
            else:
                self.disconnect(sub.client)
        reached, running = [], 0
        for count in starts:
            running += count
            reached.append(running)
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
                    events = await eventlog.read_after(conn, feed.project_id, feed.delivered, self.page_size)
                if events and self.feeds.get(feed.project_id) is feed:
                    reached = self._broadcast(feed, events, [EventFrame.of(e) for e in events])
                    feed.delivered = events[-1].seq
                    if self._on_send is not None:
                        for event, count in zip(events, reached, strict=True):
                            self._on_send(event, count)
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
        outbox = client.outbox
        # A page fits in the room left once the outbox is at most half full.
        page = max(1, min(self.page_size, outbox.limit // 2))
        while client.subscriptions.get(sub.project_id) is sub:
            await outbox.room()
            try:
                async with self._connection() as conn:
                    events = await eventlog.read_after(conn, sub.project_id, sub.position, page)
            except DatabaseUnavailable:
                await asyncio.sleep(self.retry_delay_s)
                continue
            if client.subscriptions.get(sub.project_id) is not sub:
                return
            if events:
                while len(outbox) + len(events) > outbox.limit:  # other subscriptions share the outbox
                    await outbox.room()
                    if client.subscriptions.get(sub.project_id) is not sub:
                        return
                if not client.push_many([EventFrame.of(e) for e in events]):
                    self.disconnect(client)
                    return
                sub.position = events[-1].seq
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
        self.heartbeat_s = heartbeat_s
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
