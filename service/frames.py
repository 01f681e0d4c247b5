"""WebSocket frames encoded once per event, and written straight to each connection.

A server's WebSocket frames are not masked, so the frame that carries an event is the same bytes for
every client. Through ASGI, every client's copy would be framed again and pass through several
layers of coroutines before reaching its socket; at fan-out that per-client path, not the socket, is
where the time went (docs/benchmarks.md). So Herald runs uvicorn's own WebSocket protocol
(`websockets-sansio`, uvicorn's default) with one ASGI extension, `herald.frames`: a `write(data)`
that puts already-encoded frames on the connection's transport at once, and refuses (False) whenever
that would not be exactly what `websocket.send` does right now: before the handshake completes, after
a close was sent or received, or while the transport is paused because the client is not reading
(the caller then sends through ASGI, which waits for room). Everything else (handshake, reading,
pings, close) is uvicorn's.

Under another ASGI server the extension is absent and every send goes through ASGI.
"""

from __future__ import annotations

import struct
from typing import Any, cast

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

EXTENSION = "herald.frames"


def text_frame(payload: bytes) -> bytes:
    """One final, unmasked text frame carrying `payload` (RFC 6455 §5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, plus the `herald.frames` extension (see the module)."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)  # absent when the handshake was refused
        if scope is not None:
            extensions = cast(dict[str, Any], scope["extensions"])
            extensions[EXTENSION] = {"write": self.write_frames}

    def write_frames(self, data: bytes) -> bool:
        """Write encoded frames now if a `websocket.send` would go out now without waiting; else False
        and nothing is written."""
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
