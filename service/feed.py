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
* Catch-up reads pages bounded in bytes (a quarter of the client's byte budget) and waits for room
  in the client's outbox before each (so it reads at the client's pace, and what waits for a client
  stays within its budget, however large the events or the backlog). Live fan-out never waits for
  a client: a client that cannot take a run within its budget goes back to catching up from the
  log, at its own pace, until it is current again; nothing is lost and nobody is closed for it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg

from . import eventlog, traces
from .connection import Subscription
from .db import DatabaseUnavailable
from .frames import EncodedEvent
from .session import history_truncated

logger = logging.getLogger("herald.feed")

ConnectionFactory = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]
Broadcast = Callable[[str, Sequence[EncodedEvent]], list[int]]
"""The hub's fan-out: (project, a contiguous run of events) -> per event, how many subscribers it reached."""
OnSend = Callable[[eventlog.StoredEvent, int], None]
End = Callable[[Subscription, str], None]
"""The hub's ending of one subscription with a last frame (its client stays connected)."""


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
        page_bytes: int = 1024 * 1024,
        retry_delay_s: float = 0.5,
        on_send: OnSend | None = None,
        end: End | None = None,
    ) -> None:
        self.project_id = project_id
        self.delivered = delivered
        self.subscribers: set[Subscription] = set()
        self.live: set[Subscription] = set()  # caught up: served by the pump's fan-out
        self._connection = connection
        self._broadcast = broadcast
        self.page_size = page_size
        self.page_bytes = page_bytes  # of the live fan-out's runs
        self.retry_delay_s = retry_delay_s
        self._on_send = on_send  # metrics: (event, subscribers reached)
        self._end = end
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
                    run = await eventlog.read_run(
                        conn, self.project_id, self.delivered, max_events=self.page_size, max_bytes=self.page_bytes
                    )
                if eventlog.truncated(self.delivered, run.oldest) and self._open:
                    # Pruned past what this process delivered: its live subscribers would skip events.
                    for sub in list(self.live):
                        if eventlog.truncated(sub.position, run.oldest):
                            self._truncated(sub, run)
                    self.delivered = run.oldest - 1
                    continue
                events = run.events
                if events and self._open:
                    started = traces.now()
                    reached = self._broadcast(self.project_id, [EncodedEvent.of(e) for e in events])
                    traces.deliver(self.project_id, events, reached, started)
                    self.delivered = events[-1].seq
                    if self._on_send is not None:
                        for event, count in zip(events, reached, strict=True):
                            self._on_send(event, count)
                if not run.full and not self._dirty:
                    break
        except DatabaseUnavailable as exc:
            logger.warning("fan-out of %s paused, database unavailable: %s", self.project_id, exc)
        finally:
            self._pumping = False

    # --- catch-up --------------------------------------------------------------------------------

    async def _catch_up(self, sub: Subscription) -> None:
        client = sub.client
        page_bytes = max(1, client.budget // 4)
        while client.subscriptions.get(sub.project_id) is sub:
            async with client.paging:
                await client.outbox.room()
                if client.close_code is not None:
                    return  # its connection ends and the hub lets go of it
                try:
                    async with self._connection() as conn:
                        run = await eventlog.read_run(
                            conn, sub.project_id, sub.position, max_events=self.page_size, max_bytes=page_bytes
                        )
                except DatabaseUnavailable:
                    run = None
                if run is not None and eventlog.truncated(sub.position, run.oldest):
                    # A prune overtook this catch-up: say so rather than skip what it dropped.
                    if client.subscriptions.get(sub.project_id) is sub:
                        sub.catch_up = None
                        self._truncated(sub, run)
                    return
                if run is not None and run.events and client.subscriptions.get(sub.project_id) is sub:
                    if not client.push_many([EncodedEvent.of(e) for e in run.events]):
                        return
                    sub.position = run.events[-1].seq
            if run is None:
                await asyncio.sleep(self.retry_delay_s)
                continue
            if client.subscriptions.get(sub.project_id) is not sub:
                return
            if not run.full and sub.position >= self.delivered:
                # No await between the check above and this switch: the pump cannot run in between.
                sub.live = True
                self.live.add(sub)
                sub.catch_up = None
                return

    def _truncated(self, sub: Subscription, run: eventlog.Run) -> None:
        """End `sub` with `history_truncated` (docs/protocol.md §7.4): after the events it was sent, as
        the refusal of a subscribe would have been, with the head the same read saw as `stateSeq`."""
        exc = eventlog.HistoryTruncated(sub.position, run.oldest, run.head)
        frame = history_truncated(sub.project_id, exc).frame()
        if self._end is not None:
            self._end(sub, frame)
        else:
            self.remove(sub)
            sub.client.push(frame)

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
