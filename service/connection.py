"""One client connection on this process: its transport, its outbox and writer, its byte budget, its
subscriptions, and the heartbeat, expiry and stall checks that end it.

A WebSocket and an SSE stream are both a `Client`; they differ only in their `Transport`
(transports.py). Everything a client is sent (events and replies alike) goes through the outbox's
one order. What waits for a client, in the outbox and in the socket's buffer together, is bounded by
its byte budget (HERALD_WS_OUTBOX_BYTES): live fan-out `offer`s events and is refused past it, and
the subscription then reads from the log at the client's pace instead (feed.py), so a client that
keeps reading, however slowly, is never closed for being behind. One that accepts no bytes at all
for `stall_s` while frames wait is closed with 4429 (docs/delivery.md, "Backpressure").
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .auth import Principal
from .codes import CloseCode
from .frames import EncodedEvent

logger = logging.getLogger("herald.connection")

BEFORE_CLOSE_S = 2.0  # the most a close waits for `before_close`

Frame = str | EncodedEvent
"""What a client is sent: an event, encoded once for everyone, or a reply (JSON text) of its own."""


def size(frame: Frame) -> int:
    """What a frame costs in the budget: an event's WebSocket frame, a reply's length."""
    return len(frame.frame) if isinstance(frame, EncodedEvent) else len(frame)


class Transport(Protocol):
    """What a connection needs of its transport: WebSocket and SSE both provide it."""

    async def send(self, frame: Frame) -> None:
        """Send one frame, waiting while the peer is not reading."""
        ...

    def send_now(self, frames: Sequence[Frame]) -> bool:
        """Write all of `frames`, in order, at once, if the connection takes them without waiting;
        else write none and return False (the caller then uses `send`, which waits for room)."""
        ...

    async def close(self, code: int, reason: str) -> None: ...

    def buffered(self) -> int:
        """Bytes written to the connection that the peer has not taken yet (the socket's buffer)."""
        ...


class Outbox:
    """The frames waiting for one client's writer, in order, and their bytes.

    `budget` is the client's byte budget: the outbox itself never refuses a frame (replies must go
    out), but it has `room` only while it holds at most a quarter of the budget, which is what a
    catch-up waits for before it reads another page from the log.
    """

    def __init__(self, budget: int) -> None:
        self.budget = budget
        self.bytes = 0
        self.frames: deque[Frame] = deque()  # read directly on the hot path (a deque's truth is C)
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.closed = False

    def __len__(self) -> int:
        return len(self.frames)

    def put(self, frame: Frame) -> bool:
        """Queue without waiting; False once the outbox is closed."""
        if self.closed:
            return False
        self.frames.append(frame)
        self.bytes += size(frame)
        self._ready.set()
        if self.bytes > self.budget // 4:
            self._room.clear()
        return True

    async def room(self) -> None:
        """Wait until the outbox holds at most a quarter of the budget (or is closed)."""
        await self._room.wait()

    async def get(self) -> Frame | None:
        """The next frame, or None once the outbox is closed (what was queued is dropped)."""
        while not self.frames and not self.closed:
            self._ready.clear()
            await self._ready.wait()
        if self.closed:
            return None
        frame = self.frames.popleft()
        self.bytes -= size(frame)
        if self.bytes <= self.budget // 4:
            self._room.set()
        return frame

    def flush(self, send_now: Callable[[Sequence[Frame]], bool]) -> bool:
        """Hand everything queued to `send_now` in one call; drop it from the queue if it was taken."""
        if self.frames and not self.closed and send_now(list(self.frames)):
            self.bytes = 0
            self.frames.clear()
            self._room.set()
            return True
        return False

    def close(self) -> None:
        self.closed = True
        self.frames.clear()
        self.bytes = 0
        self._ready.set()
        self._room.set()


@dataclass(eq=False)
class Client:
    """One connection on this process (a WebSocket, or an SSE stream).

    `heartbeat_s`: how often the client is pinged and must answer (WebSocket); None for a transport
    that keeps itself alive (SSE sends keep-alive comments and needs no answer).
    """

    transport: Transport
    principal: Principal
    client_id: str
    outbox: Outbox
    heartbeat_s: float | None = None
    stall_s: float = 10.0
    connection_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)
    last_ping: float = field(default_factory=time.monotonic)
    close_code: int | None = None
    close_reason: str = ""
    writer: asyncio.Task[None] | None = None
    close_grace_s: float = 5.0
    # Runs before the close frame goes out (it persists the client's acks): a client that resumes at
    # once elsewhere then resumes after what it acked.
    before_close: Callable[[], Awaitable[None]] | None = None
    _force_close: asyncio.TimerHandle | None = None
    _sending: bool = False  # the writer is in the middle of a send
    # Stall detection, kept off the fan-out's path: the writes the transport took.
    _writes: int = 0
    _writes_seen: int = 0
    # One catch-up page at a time per client, whatever the number of its subscriptions catching up:
    # each waits for room, reads and pushes under it, so pages never pile up past the budget.
    paging: asyncio.Lock = field(default_factory=asyncio.Lock)
    last_progress: float = field(default_factory=time.monotonic)  # when the peer last took bytes
    _buffered_seen: int = 0

    def __post_init__(self) -> None:
        if self.heartbeat_s:
            # The first ping comes at a random point of the first interval, so clients that connected
            # together are not all pinged (and do not all answer) in the same instant.
            self.last_ping -= random.uniform(0, self.heartbeat_s)

    @property
    def user(self) -> str:
        return self.principal.user

    @property
    def budget(self) -> int:
        return self.outbox.budget

    def pending(self) -> int:
        """Bytes waiting for the client: in the outbox and in the socket's buffer."""
        return self.outbox.bytes + self.transport.buffered()

    def push(self, frame: Frame) -> bool:
        """Send or queue one frame; see `push_many`."""
        return self.push_many((frame,))

    def push_many(self, frames: Sequence[Frame]) -> bool:
        """Send `frames` in order, or queue them, whatever the budget (replies must go out; a catch-up
        paces itself by `room`); False once the client is closed. Never waits.

        When nothing is queued and the writer is idle, the frames are written right here, all at once,
        if the transport takes them without waiting (the usual case: a WebSocket whose buffer is not
        full): a fan-out then writes to each client in one tight loop, one write per client per page
        of events, instead of waking a writer task per client per event. Otherwise they are queued
        behind what is there, and the writer sends them when the client makes room.
        """
        if self.close_code is not None:
            return False
        if not self._sending and not self.outbox.frames and self.transport.send_now(frames):
            self._writes += 1
            return True
        for frame in frames:
            self.outbox.put(frame)
        return True

    def offer(self, events: Sequence[EncodedEvent]) -> bool:
        """Live fan-out: push `events` if they fit the budget with what already waits; else push
        nothing and return False (the subscription then catches up from the log instead)."""
        if self.close_code is not None:
            return False
        if not self._sending and not self.outbox.frames:
            # The usual case, kept cheap (this runs per client per run): written at once when the socket
            # is writable (its buffer then holds less than its high-water mark plus this run, a fraction
            # of the budget), else queued.
            if self.transport.send_now(events):
                self._writes += 1
            else:
                for event in events:
                    self.outbox.put(event)
            return True
        if self.pending() + sum(len(e.frame) for e in events) > self.budget:
            return False
        return self.push_many(events)

    def close(self, code: int, reason: str) -> None:
        """Close the connection with `code` (the first reason wins) once the writer gets to it; what is
        still queued is dropped, and the client resumes from its cursor. Never waits."""
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
        """The writer: send queued frames in order until the client is closed, then close the
        transport with the code given."""
        try:
            while (frame := await self.outbox.get()) is not None:
                self._sending = True
                await self.transport.send(frame)  # waits while the client is not reading
                self._writes += 1
                self.outbox.flush(self.transport.send_now)  # what queued up meanwhile, in one write
                self._sending = False
        finally:
            if self._force_close is not None:
                self._force_close.cancel()
            if self.close_code is not None:
                if self.before_close is not None:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(self.before_close(), BEFORE_CLOSE_S)
                with contextlib.suppress(Exception):
                    await self.transport.close(self.close_code, self.close_reason)

    def seen(self) -> None:
        """Something arrived from the client: it is alive."""
        self.last_seen = time.monotonic()

    def tick(self, now: float, wall: float) -> None:
        """Close the client if its token expired (4401), if it took no bytes for `stall_s` while frames
        waited (4429), or if it went silent for two heartbeats (4408); else ping it when a heartbeat
        is due. `now` is monotonic, `wall` the epoch time."""
        # Progress: nothing waits in the outbox (what the socket's buffer may still hold is less than its
        # high-water mark plus one run, and the next frame to queue starts the clock); or a write went
        # through since the last tick (the socket was writable: the peer had taken bytes); or the
        # socket's buffer shrank. The buffer is asked only while frames wait, to keep ticks cheap.
        if not self.outbox.frames and not self._sending:
            self.last_progress = now
            self._buffered_seen = 0
        else:
            buffered = self.transport.buffered()
            if self._writes != self._writes_seen or buffered < self._buffered_seen:
                self.last_progress = now
            self._buffered_seen = buffered
        self._writes_seen = self._writes
        if self.principal.expires_at <= wall:  # at expiry, as the contract says (the leeway is for checking)
            self.close(CloseCode.AUTH, "token expired")
        elif now - self.last_progress > self.stall_s:
            self.close(CloseCode.SLOW_CONSUMER, f"took no bytes for {self.stall_s:g} s: reconnect and resume")
        elif self.heartbeat_s is None:
            return
        elif now - self.last_seen > 2 * self.heartbeat_s:
            self.close(CloseCode.HEARTBEAT_TIMEOUT, "heartbeat timeout")
        elif now - self.last_ping >= self.heartbeat_s:
            self.last_ping = now
            self.push(f'{{"type":"ping","ts":{int(wall * 1000)}}}')


@dataclass(eq=False)
class Subscription:
    """One client's subscription to one project: `position` is the last seq sent to it."""

    client: Client
    project_id: str
    position: int
    live: bool = False
    catch_up: asyncio.Task[None] | None = None


async def keep_alive(clients: Iterable[Client], heartbeat_s: float) -> None:
    """Forever: tick every client of `clients` (a live view, such as the hub's set) a few times per
    heartbeat. One task for all clients rather than a timer each."""
    period = min(1.0, heartbeat_s / 4)
    while True:
        await asyncio.sleep(period)
        now, wall = time.monotonic(), time.time()
        for client in list(clients):
            client.tick(now, wall)
