"""One client connection on this process: its transport, its bounded outbox and writer, its
subscriptions, and the heartbeat and token expiry that end it.

A WebSocket and an SSE stream are both a `Client`; they differ only in their `Transport`
(transports.py). Everything a client is sent (events and replies alike) goes through `push`, so it
sees one order. Live fan-out never waits for a client: `push` writes at once when it can, else queues
in the outbox, and a client whose outbox overflows is closed with 4429 and resumes from its cursor
(docs/delivery.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from .auth import Principal
from .codes import CloseCode
from .frames import EncodedEvent

logger = logging.getLogger("herald.connection")

Frame = str | EncodedEvent
"""What a client is sent: an event, encoded once for everyone, or a reply (JSON text) of its own."""


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


class Outbox:
    """A bounded FIFO of frames for one client, drained by one writer."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._frames: deque[Frame] = deque()
        self._ready = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self.closed = False

    def __len__(self) -> int:
        return len(self._frames)

    def put(self, frame: Frame) -> bool:
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

    async def get(self) -> Frame | None:
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

    def flush(self, send_now: Callable[[Sequence[Frame]], bool]) -> None:
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
    """One connection on this process (a WebSocket, or an SSE stream).

    `heartbeat_s`: how often the client is pinged and must answer (WebSocket); None for a transport
    that keeps itself alive (SSE sends keep-alive comments and needs no answer).
    """

    transport: Transport
    principal: Principal
    client_id: str
    outbox: Outbox
    heartbeat_s: float | None = None
    connection_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    subscriptions: dict[str, Subscription] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.monotonic)
    last_ping: float = field(default_factory=time.monotonic)
    close_code: int | None = None
    close_reason: str = ""
    writer: asyncio.Task[None] | None = None
    close_grace_s: float = 5.0
    _force_close: asyncio.TimerHandle | None = None
    _sending: bool = False  # the writer is in the middle of a send

    def __post_init__(self) -> None:
        if self.heartbeat_s:
            # The first ping comes at a random point of the first interval, so clients that connected
            # together are not all pinged (and do not all answer) in the same instant.
            self.last_ping -= random.uniform(0, self.heartbeat_s)

    @property
    def user(self) -> str:
        return self.principal.user

    def push(self, frame: Frame) -> bool:
        """Send or queue one frame; see `push_many`."""
        return self.push_many((frame,))

    def push_many(self, frames: Sequence[Frame]) -> bool:
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
                self.close(CloseCode.SLOW_CONSUMER, "outbound buffer overflow: reconnect and resume from your cursor")
                return False
        return True

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
                self.outbox.flush(self.transport.send_now)  # what queued up meanwhile, in one write
                self._sending = False
        finally:
            if self._force_close is not None:
                self._force_close.cancel()
            if self.close_code is not None:
                with contextlib.suppress(Exception):
                    await self.transport.close(self.close_code, self.close_reason)

    def seen(self) -> None:
        """Something arrived from the client: it is alive."""
        self.last_seen = time.monotonic()

    def tick(self, now: float, wall: float) -> None:
        """Close the client if its token expired (4401) or it went silent for two heartbeats (4408);
        else ping it when a heartbeat is due. `now` is monotonic, `wall` the epoch time."""
        if self.principal.expires_at <= wall:
            self.close(CloseCode.AUTH, "token expired")
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
