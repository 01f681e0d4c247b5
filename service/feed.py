"""A feed: one project's log as this process delivers it, from the log itself.

The log stores and orders, the listener wakes, the feed reads, the hub fans out; none of them retries
another's work.

* `delivered` is the last seq this process has read from the log and fanned out. A wake-up makes the
  feed's one pump read the rows after it (through eventlog.py, never its own SQL), encode each event
  once (frames.EncodedEvent), and hand the run to the hub's `broadcast_to_project`.
* A new subscription first catches up from its start position by reading the log in pages, at its
  own pace, and only then joins the live fan-out. The switch happens without an `await` between
  "am I caught up with the feed?" and "I am live", so no event can slip between catch-up and live
  delivery, and a subscriber skips whatever it already has: no gap, no duplicate.
* Catch-up waits for room in the client's outbox (it reads at the client's pace anyway); live
  fan-out never waits for a client.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from . import eventlog
from .connection import Subscription
from .db import DatabaseUnavailable
from .frames import EncodedEvent

logger = logging.getLogger("herald.feed")

ConnectionFactory = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]
Broadcast = Callable[[str, Sequence[EncodedEvent]], list[int]]
"""The hub's fan-out: (project, a contiguous run of events) -> per event, how many subscribers it reached."""
OnSend = Callable[[eventlog.StoredEvent, int], None]


class Feed:
    """One project with local subscribers: its subscriptions, how far this process has delivered its
    log, the pump that reads further, and the catch-up of each new subscription."""

    def __init__(
        self,
        project_id: str,
        delivered: int,
        *,
        connection: ConnectionFactory,
        broadcast: Broadcast,
        page_size: int = 1000,
        retry_delay_s: float = 0.5,
        on_send: OnSend | None = None,
    ) -> None:
        self.project_id = project_id
        self.delivered = delivered
        self.subscribers: set[Subscription] = set()
        self.live: set[Subscription] = set()  # caught up: served by the pump's fan-out
        self._connection = connection
        self._broadcast = broadcast
        self.page_size = page_size
        self.retry_delay_s = retry_delay_s
        self._on_send = on_send  # metrics: (event, subscribers reached)
        self._pumping = False
        self._dirty = False
        self._open = True
        self._tasks: set[asyncio.Task[None]] = set()

    # --- subscriptions ---------------------------------------------------------------------------

    def add(self, sub: Subscription) -> None:
        """Serve `sub` from its position: catch up from the log, then live."""
        self.subscribers.add(sub)
        self.catch_up(sub)

    def remove(self, sub: Subscription) -> None:
        if sub.catch_up is not None:
            sub.catch_up.cancel()
        self.subscribers.discard(sub)
        self.live.discard(sub)

    def catch_up(self, sub: Subscription) -> None:
        """(Re)start `sub`'s catch-up from its position; it goes live once current."""
        self.live.discard(sub)
        sub.live = False
        sub.catch_up = self._spawn(self._catch_up(sub))

    # --- wake-ups and the pump -------------------------------------------------------------------

    def wake(self, seq: int | None = None) -> None:
        """New rows may exist (a NOTIFY naming `seq`, a re-read): make sure one pump reads them."""
        if not self._open or (seq is not None and seq <= self.delivered):
            return
        if self._pumping:
            self._dirty = True
            return
        self._pumping = True
        self._spawn(self._pump())

    async def _pump(self) -> None:
        try:
            while self._open:
                self._dirty = False
                async with self._connection() as conn:
                    events = await eventlog.read_after(conn, self.project_id, self.delivered, self.page_size)
                if events and self._open:
                    reached = self._broadcast(self.project_id, [EncodedEvent.of(e) for e in events])
                    self.delivered = events[-1].seq
                    if self._on_send is not None:
                        for event, count in zip(events, reached, strict=True):
                            self._on_send(event, count)
                if len(events) < self.page_size and not self._dirty:
                    break
        except DatabaseUnavailable as exc:
            logger.warning("fan-out of %s paused, database unavailable: %s", self.project_id, exc)
        finally:
            self._pumping = False

    # --- catch-up --------------------------------------------------------------------------------

    async def _catch_up(self, sub: Subscription) -> None:
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
                if not client.push_many([EncodedEvent.of(e) for e in events]):
                    return  # closed (4429): its connection ends and the hub lets go of it
                sub.position = events[-1].seq
            if len(events) < page and sub.position >= self.delivered:
                # No await between the check above and this switch: the pump cannot run in between.
                sub.live = True
                self.live.add(sub)
                sub.catch_up = None
                return

    # --- tasks -----------------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)  # a strong reference: a collected task would silently deliver nothing
        task.add_done_callback(self._tasks.discard)
        return task

    def close(self) -> None:
        """Stop reading: the project has no subscribers left here. A read in progress ends on its own
        (cancelling it would cancel a query on a pooled connection) and fans out to no one."""
        self._open = False

    async def stop(self) -> None:
        """Close and cancel what still runs (the process is stopping)."""
        self.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
