"""Frames: every event encoded once for all connections, and written straight to each socket.

A server's WebSocket frames are not masked, so the frame that carries an event is the same bytes for
every client. The feed's pump encodes each event once into an immutable `EncodedEvent` (its JSON and
its WebSocket frame) and every subscriber is handed that same object.

Through ASGI, every client's copy would be framed again and pass through several layers of coroutines
before reaching its socket; at fan-out that per-client path, not the socket, is where the time went
(docs/benchmarks.md). So Herald runs uvicorn's own WebSocket protocol (`websockets-sansio`, uvicorn's
default) with one ASGI extension, `herald.frames`: a `write(data)` that puts already-encoded frames
on the connection's transport at once, and refuses (False) whenever that would not be exactly what
`websocket.send` does right now: before the handshake completes, after a close was sent or received,
or while the transport is paused because the client is not reading (the caller then sends through
ASGI, which waits for room); and a `buffered()` that tells how many written bytes the peer has not
taken yet (the connection's byte budget counts them). Everything else (handshake, reading, pings,
close) is uvicorn's.

The extension reads a few attributes of uvicorn's protocol that are not public API. `probe()` checks
at start-up that they are there; when they are not (another uvicorn, another ASGI server), Herald logs
a warning and every send goes through plain ASGI: slower at fan-out, the same on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from dataclasses import dataclass
from functools import cache
from typing import Any, cast

import uvicorn
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.protocol import State

from .eventlog import StoredEvent

logger = logging.getLogger("herald.frames")

EXTENSION = "herald.frames"

# What the extension reads of uvicorn's protocol instance, beyond asyncio's Protocol API.
REQUIRED_ATTRIBUTES = ("handshake_complete", "close_sent", "disconnected", "writable", "conn", "transport", "queue")

# How long a close the client started waits for the app to persist what the connection leaves behind
# (its acks) before it is answered anyway.
CLOSE_HOLD_S = 2.0


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying `payload` (RFC 6455 §5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


@dataclass(frozen=True, slots=True)
class EncodedEvent:
    """An event as it goes on the wire, encoded once and shared by every connection: its JSON text
    (a WebSocket text message, an SSE `data:`), its WebSocket frame, and what SSE's `id:` and `event:`
    lines need without parsing the JSON again."""

    project_id: str
    seq: int
    type: str
    text: str
    frame: bytes

    @classmethod
    def of(cls, event: StoredEvent) -> EncodedEvent:
        payload = event.encode()
        return cls(event.project_id, event.seq, event.type, payload.decode(), text_frame(payload))


@cache
def probe() -> str | None:
    """Why the `herald.frames` extension cannot run on the installed uvicorn, or None when it can.

    Builds one protocol instance, as uvicorn does for a connection, and looks for what the extension
    reads. Cached: the installed uvicorn does not change while the process runs."""

    async def app(scope: Any, receive: Any, send: Any) -> None:  # pragma: no cover - never called
        pass

    config = uvicorn.Config(app, lifespan="off", log_config=None)
    loop = asyncio.new_event_loop()
    try:
        config.load()
        protocol = WebSocketsSansIOProtocol(config, ServerState(), {}, _loop=loop)
    except Exception as exc:
        return f"uvicorn's websockets-sansio protocol could not be built ({exc!r})"
    finally:
        loop.close()
    missing = [name for name in REQUIRED_ATTRIBUTES if not hasattr(protocol, name)]
    conn = getattr(protocol, "conn", None)
    missing += [f"conn.{name}" for name in ("state", "close_rcvd", "data_to_send") if not hasattr(conn, name)]
    if missing:
        return f"uvicorn's websockets-sansio protocol lacks {', '.join(missing)}"
    return None


def protocol() -> type[Any] | str:
    """The WebSocket protocol to give uvicorn: Herald's when the probe passes; else uvicorn's own
    default, after a warning (every send then goes through ASGI)."""
    problem = probe()
    if problem is not None:
        logger.warning("fast fan-out disabled, sending through plain ASGI: %s", problem)
        return "websockets-sansio"
    return WebSocketProtocol


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, plus the `herald.frames` extension (see the module).

    One more difference: when the client closes, its close is answered (which is what completes the
    client's `close()`) only once the app calls `release_close`, having persisted the connection's
    acks, or after CLOSE_HOLD_S. So a client that acks, closes cleanly and resumes at once on another
    instance resumes after what it acked (docs/protocol.md §6).
    """

    _holding: asyncio.TimerHandle | None = None

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            extensions = cast(dict[str, Any], scope["extensions"])
            extensions[EXTENSION] = {
                "write": self.write_frames,
                "buffered": self.buffered,
                "release_close": self.release_close,
            }

    def write_frames(self, data: bytes) -> bool:
        """Write encoded frames now if a `websocket.send` would go out now without waiting; else
        False and nothing is written."""
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or not self.writable.is_set()
            or self.conn.state is not State.OPEN
            or self.transport.is_closing()
        ):
            return False
        self.transport.write(data)
        return True

    def handle_close(self, event: Any) -> None:
        if self.close_sent or self.transport.is_closing() or self._holding is not None:
            super().handle_close(event)
            return
        # The client closes: tell the app at once, but hold the answer until the app releases it.
        assert self.conn.close_rcvd is not None
        close = self.conn.close_rcvd
        self.queue.put_nowait({"type": "websocket.disconnect", "code": close.code, "reason": close.reason})
        self._holding = self.loop.call_later(CLOSE_HOLD_S, self.release_close)

    def release_close(self) -> None:
        """Answer the client's close now (the app has persisted what it had to), if it is held."""
        if self._holding is None:
            return
        self._holding.cancel()
        self._holding = None
        if not self.transport.is_closing():
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.transport.close()

    def buffered(self) -> int:
        """Bytes written to the socket that the peer has not taken yet."""
        transport = self.transport
        return 0 if transport is None or transport.is_closing() else transport.get_write_buffer_size()
