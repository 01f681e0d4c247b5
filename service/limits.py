"""Limits at the edge: on request headers (time and size), and on rates.

Headers. uvicorn's httptools protocol holds a request's headers in memory for as long as they take
to arrive, and of any size: a client that never finishes them, or sends megabytes of them, holds a
connection and its memory for as long as it likes. `http_protocol` returns that protocol with two
limits: the headers of a request must be complete within a time, and within a size (431).

Rates. A token bucket holds up to `burst` tokens and refills at `rate` per second; each call takes
one. Buckets are in memory, per process: a limit protects the process that enforces it, and several
instances each allow their own rate (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .db import DatabaseBusy


def http_protocol(*, header_timeout_s: float, max_header_bytes: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol, dropping a request whose headers take longer than
    `header_timeout_s` to arrive and answering 431 (then closing) when they exceed `max_header_bytes`."""
    refusal = json.dumps(
        {"error": "too_large", "message": f"the request's headers exceed {max_header_bytes} bytes"}
    ).encode()
    response_431 = (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
        + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(refusal)
        + refusal
    )

    class HttpProtocol(HttpToolsProtocol):
        _awaiting_headers = True  # no request has begun, or the last one is complete
        _header_bytes = 0
        _header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            super().connection_made(transport)
            self._header_deadline = self.loop.call_later(header_timeout_s, self._too_slow)

        def data_received(self, data: bytes) -> None:
            if not self._awaiting_headers:
                super().data_received(data)
                return
            if self._header_deadline is None:  # the first byte of the next request on this connection
                self._header_deadline = self.loop.call_later(header_timeout_s, self._too_slow)
            self._header_bytes += len(data)
            super().data_received(data)
            if self._awaiting_headers and self._header_bytes > max_header_bytes and not self.transport.is_closing():
                self.transport.write(response_431)
                self.transport.close()

        def on_headers_complete(self) -> None:
            self._awaiting_headers = False
            self._stop_clock()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._awaiting_headers, self._header_bytes = True, 0  # the clock starts with the next byte

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_clock()
            super().connection_lost(exc)

        def _stop_clock(self) -> None:
            if self._header_deadline is not None:
                self._header_deadline.cancel()
                self._header_deadline = None

        def _too_slow(self) -> None:
            self._header_deadline = None
            if self._awaiting_headers and not self.transport.is_closing():
                self.transport.close()

    return HttpProtocol


class RateLimit:
    """A token bucket; persistent abuse (more than `max_rejections` refusals within `window_s`) shows
    as `exhausted`, which the WebSocket protocol answers by closing with 1008."""

    def __init__(
        self,
        rate: float,
        burst: float,
        max_rejections: int = 50,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.clock = clock
        self.stamp = clock()
        self.max_rejections, self.window_s = max_rejections, window_s
        self.rejections: list[float] = []

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.rejections = [t for t in self.rejections if now - t < self.window_s] + [now]
        return False

    @property
    def retry_after_s(self) -> int:
        """Whole seconds until the next call would be allowed (at least 1)."""
        return max(1, math.ceil((1 - self.tokens) / self.rate))

    @property
    def exhausted(self) -> bool:
        return len(self.rejections) > self.max_rejections


class RateLimits:
    """One bucket per key, for the `max_keys` keys seen most recently (a key unseen for long enough
    starts again with a full bucket, which only ever errs towards allowing)."""

    def __init__(
        self, rate: float, burst: float, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst = rate, burst
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, RateLimit] = OrderedDict()

    def check(self, key: str) -> int | None:
        """None when `key` may make a call now (and counts it); else the seconds to wait."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = RateLimit(self.rate, self.burst, clock=self.clock)
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return None if bucket.allow() else bucket.retry_after_s


class Gates:
    """At most `width` holders per key at once (batch publishes into one project): a caller past it
    waits, up to a time, then is answered busy. So a project whose row is locked elsewhere holds at
    most `width` pooled connections waiting for it, not the whole pool."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._gates: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}  # key -> (gate, [holders and waiters])

    @contextlib.asynccontextmanager
    async def hold(self, key: str, wait_s: float) -> AsyncIterator[None]:
        """Hold `key`'s gate for the block; raises DatabaseBusy after `wait_s` without getting in."""
        gate, count = self._gates.setdefault(key, (asyncio.Semaphore(self.width), [0]))
        count[0] += 1
        try:
            try:
                await asyncio.wait_for(gate.acquire(), wait_s)
            except TimeoutError:
                raise DatabaseBusy(f"more than {self.width} batch publishes into {key!r} at once") from None
            try:
                yield
            finally:
                gate.release()
        finally:
            count[0] -= 1
            if not count[0]:
                del self._gates[key]


class ConcurrencyLimit:
    """ASGI middleware: at most `limit` HTTP requests in progress in this process (SSE streams
    included, WebSockets not: those are capped per user). Past it, a request is answered at once with
    the contract's 503 `unavailable` and `Retry-After: 1` (uvicorn's own limit_concurrency answers plain
    text), so a flood costs a counter, not a task per request waiting for the database."""

    def __init__(self, app: Any, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.in_progress = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.limit:
            body = json.dumps(
                {"error": "unavailable", "message": "too many requests in progress on this instance; retry"}
            ).encode()
            headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
            await send({"type": "http.response.start", "status": 503, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1
