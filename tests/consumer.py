"""A careful WebSocket client (reconnects, resumes, acks, dedupes) and the checker that judges what it received.

Used by the fault tests (tests/test_faults.py) and by the soak (bench/soak.py).

The client survives anything: after any drop it reconnects (to a random one of its URLs) and
resubscribes, from its own last seq (`after`) or from its durable cursor; it acks as it goes, answers
pings, and keeps everything it received, duplicates included. With `churn` it also drops its
connection (abruptly or cleanly) and unsubscribes and resubscribes projects, at random moments.

The checker judges each stream: after dedupe it must be every event of the log, once, in order;
within one subscription it must be contiguous from the position the server announced; every event
must be the log's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

DROPS = (ConnectionClosed, OSError, TimeoutError)

# A client without a cursor starts at the head (docs/protocol.md §4), so resuming by cursor is only sound
# once an ack has surely been persisted (the service flushes acks every 0.5 s and at disconnect).
ACK_PERSISTED_S = 2.0


@dataclass
class Segment:
    """What one subscription delivered: the position the server announced, then the seqs, in order."""

    after: int
    seqs: list[int] = field(default_factory=list)


@dataclass
class Consumer:
    """See the module docstring. `resume`: how a resubscribe says where to start: by `after` (its own
    last seq), by `cursor` (no `after`, once an ack is persisted), or either at `random`."""

    client_id: str
    urls: list[str]  # ws://host:port/ws
    projects: list[str]
    token: Callable[[], str]
    resume: Literal["after", "cursor", "random"] = "cursor"
    churn: float | None = None  # mean seconds between drops or resubscribes
    unsubscribes: bool = True  # churn includes unsubscribe/resubscribe, not only drops
    ack_every: int = 7
    pause: tuple[float, float] = (0.01, 0.1)  # before reconnecting, seconds
    open_timeout: float = 5.0
    ack_persisted_s: float = ACK_PERSISTED_S
    rng: random.Random = field(default_factory=random.Random)
    received: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    segments: dict[str, list[Segment]] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)  # highest seq held contiguously from 1
    first_ack: dict[str, float] = field(default_factory=dict)
    connections: int = 0
    drops_on_purpose: int = 0
    unavailable: int = 0  # `unavailable` answers (the database was cut): retried, not errors
    errors: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        for p in self.projects:
            self.received[p], self.segments[p], self.last[p] = [], [], 0

    def holds(self, heads: dict[str, int]) -> bool:
        return all(self.last[p] >= heads[p] for p in self.projects)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            url = f"{self.rng.choice(self.urls)}?clientId={self.client_id}"
            with contextlib.suppress(*DROPS):
                async with connect(url, open_timeout=self.open_timeout, close_timeout=1) as ws:
                    self.connections += 1
                    await ws.send(json.dumps({"type": "auth", "token": self.token()}))
                    for p in self.projects:
                        await self._subscribe(ws, p)
                    await self._session(ws, stop)
            await asyncio.sleep(self.rng.uniform(*self.pause))

    async def _subscribe(self, ws: ClientConnection, project_id: str) -> None:
        message: dict[str, Any] = {"type": "subscribe", "projectId": project_id}
        by_cursor = self.resume == "cursor" or (self.resume == "random" and self.rng.random() < 0.5)
        acked = self.first_ack.get(project_id)
        if not by_cursor or acked is None or time.monotonic() - acked < self.ack_persisted_s:
            message["after"] = self.last[project_id]
        await ws.send(json.dumps(message))

    def _next_churn(self, now: float) -> float:
        return now + self.rng.expovariate(1 / self.churn) if self.churn else float("inf")

    async def _session(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        next_churn = self._next_churn(loop.time())
        subscribed: set[str] = set()
        unacked = 0
        while not stop.is_set():
            if loop.time() >= next_churn:
                next_churn = self._next_churn(loop.time())
                roll = self.rng.random() if self.unsubscribes else self.rng.uniform(0, 0.6)
                if roll < 0.6:
                    self.drops_on_purpose += 1
                    if roll < 0.3:
                        ws.transport.abort()  # the network vanished: no close frame, no flushed acks
                    else:
                        await ws.close()
                    return
                if subscribed:  # unsubscribe one project, then take it up again where this client is
                    p = self.rng.choice(sorted(subscribed))
                    subscribed.discard(p)
                    await ws.send(json.dumps({"type": "unsubscribe", "projectId": p}))
                    await self._subscribe(ws, p)
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.05)
            except TimeoutError:
                continue
            message = json.loads(raw)
            kind, p = message["type"], message.get("projectId")
            if kind == "ping":
                await ws.send(json.dumps({"type": "pong", "ts": message["ts"]}))
            elif kind == "subscribed":
                subscribed.add(p)
                self.segments[p].append(Segment(message["after"]))
            elif kind == "unsubscribed":
                subscribed.discard(p)
            elif kind == "error" and message.get("code") == "unavailable":
                self.unavailable += 1  # the database was cut; a subscribe it refused is sent again
                if p in self.projects and p not in subscribed:
                    await self._subscribe(ws, p)
            elif kind == "error":
                self.errors.append(message)
            elif "seq" in message and p in subscribed:
                seq = message["seq"]
                self.received[p].append((seq, message["messageId"]))
                self.segments[p][-1].seqs.append(seq)
                if seq == self.last[p] + 1:
                    self.last[p] = seq
                unacked += 1
                if unacked >= self.ack_every:
                    unacked = 0
                    for q in subscribed:
                        if self.last[q]:
                            self.first_ack.setdefault(q, time.monotonic())
                            await ws.send(json.dumps({"type": "ack", "projectId": q, "seq": self.last[q]}))

    def tally(self, log: dict[str, dict[int, str]]) -> dict[str, int]:
        """Counts, and every way this client's streams could be wrong: `lost`, `out_of_order`,
        `segment_breaks`, `invented` and `errors` must all be zero. `log`: project -> seq -> messageId."""
        out = {"received": 0, "duplicates": 0, "lost": 0, "out_of_order": 0, "segment_breaks": 0, "invented": 0}
        for p in self.projects:
            seqs = [seq for seq, _ in self.received[p]]
            out["received"] += len(seqs)
            deduped = list(dict.fromkeys(seqs))
            out["duplicates"] += len(seqs) - len(deduped)
            out["lost"] += len(set(range(1, len(log[p]) + 1)) - set(deduped))
            out["out_of_order"] += int(deduped != sorted(deduped))
            for segment in self.segments[p]:
                contiguous = list(range(segment.after + 1, segment.after + 1 + len(segment.seqs)))
                out["segment_breaks"] += int(segment.seqs != contiguous)
            out["invented"] += sum(1 for seq, mid in self.received[p] if log[p].get(seq) != mid)
        out["errors"] = len(self.errors)
        return out

    def check(self, log: dict[str, dict[int, str]]) -> None:
        """Assert what `tally` counts: every project's stream, after dedupe, is the whole log in order;
        each subscription was contiguous from its announced position; every event is the log's own; no
        error frame."""
        assert self.errors == [], self.errors
        for p in self.projects:
            deduped = list(dict.fromkeys(seq for seq, _ in self.received[p]))
            assert deduped == list(range(1, len(log[p]) + 1)), f"{self.client_id}/{p}: gap, loss or disorder"
            for segment in self.segments[p]:
                expected = list(range(segment.after + 1, segment.after + 1 + len(segment.seqs)))
                assert segment.seqs == expected, f"{self.client_id}/{p}: a subscription skipped or repeated"
            assert all(log[p].get(seq) == mid for seq, mid in self.received[p]), f"{self.client_id}/{p}: invented"
