"""The two transports a connection (connection.py) can have: a WebSocket and an SSE stream.

Each provides `send` (waits while the peer is not reading), `send_now` (writes at once or not at
all) and `close(code, reason)`. Everything else about a connection (its outbox, its writer, the
catch-up and live hand-over, 4429 for a reader that cannot keep up) is the same for both.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence

import orjson
from sse_starlette import ServerSentEvent
from starlette.websockets import WebSocket

from . import frames
from .connection import Frame
from .frames import EncodedEvent


class WebSocketTransport:
    """A Starlette WebSocket; `send_now` writes encoded frames straight to the connection through
    uvicorn's `herald.frames` extension (frames.py) when it is there, and refuses otherwise."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        extension = (websocket.scope.get("extensions") or {}).get(frames.EXTENSION)
        self._write: Callable[[bytes], bool] | None = extension["write"] if extension else None
        self._buffered: Callable[[], int] | None = extension["buffered"] if extension else None
        self._release_close: Callable[[], None] | None = extension["release_close"] if extension else None

    async def send(self, frame: Frame) -> None:
        await self.websocket.send_text(frame.text if isinstance(frame, EncodedEvent) else frame)

    def send_now(self, messages: Sequence[Frame]) -> bool:
        if self._write is None:
            return False
        if len(messages) == 1:
            return self._write(_wire(messages[0]))
        return self._write(b"".join(_wire(m) for m in messages))

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code=code, reason=reason[:120])

    def release_close(self) -> None:
        """Answer a close the client started, now that what it left behind is persisted."""
        if self._release_close is not None:
            self._release_close()

    def buffered(self) -> int:
        # Without the extension every send goes through ASGI, which waits while the socket's buffer is
        # above its high-water mark: what it holds is bounded by that mark, not by the budget.
        return self._buffered() if self._buffered is not None else 0


def _wire(frame: Frame) -> bytes:
    """The WebSocket frame of a message: an event's was made once for every connection."""
    return frame.frame if isinstance(frame, EncodedEvent) else frames.text_frame(frame.encode())


class SSETransport:
    """One SSE stream: the connection's writer hands events over one at a time to the response's
    generator (`events`), so a reader that stops reading stalls the writer and fills the outbox,
    exactly as a WebSocket does.

    `positions` is the last seq sent per project. With `vector`, an event's `id:` is all of them
    (`a:5,b:9`, the multi-project stream), so one `Last-Event-ID` resumes every project; else it is
    the event's seq.
    """

    def __init__(self, positions: dict[str, int], *, vector: bool) -> None:
        self.positions = positions
        self.vector = vector
        self._handoff: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue(maxsize=1)  # one in hand
        self._farewell: ServerSentEvent | None = None

    async def send(self, frame: Frame) -> None:
        if isinstance(frame, EncodedEvent):
            self.positions[frame.project_id] = frame.seq
            await self._handoff.put(ServerSentEvent(frame.text, event=frame.type, id=self._last_event_id(frame)))
            return
        # A stream is sent nothing but events (no pings, no replies), except the `error` that ends a
        # subscription (`history_truncated`, feed.py): the stream ends with it, since its position
        # vector could no longer resume that project; the client reloads and opens a new one.
        event = error_event(frame)
        if event is not None:
            self._farewell = None
            await self._handoff.put(event)
            await self._handoff.put(None)

    def send_now(self, messages: Sequence[Frame]) -> bool:
        return False  # the response's generator takes one event at a time, from the writer

    def buffered(self) -> int:
        return 0  # the writer hands over one event at a time; uvicorn's flow control holds the rest back

    def _last_event_id(self, frame: EncodedEvent) -> str:
        if not self.vector:
            return str(frame.seq)
        return ",".join(f"{p}:{seq}" for p, seq in self.positions.items())

    async def close(self, code: int, reason: str) -> None:
        """End the stream with a comment naming the close code. Never waits: it also runs in a writer
        cancelled while the reader was stuck, and what was still queued is dropped, as closing a
        connection drops its outbox."""
        self._farewell = ServerSentEvent(comment=f"closed {code}: {reason}")
        while not self._handoff.empty():
            self._handoff.get_nowait()
        self._handoff.put_nowait(None)

    async def events(self) -> AsyncIterator[ServerSentEvent]:
        while (event := await self._handoff.get()) is not None:
            yield event
        if self._farewell is not None:
            yield self._farewell


def error_event(frame: str) -> ServerSentEvent | None:
    """An `error` frame (session.Refuse) as SSE's `event: error`, whose data is the HTTP error body with
    `projectId` for the WebSocket's `ref` (docs/protocol.md §5, §7.4, §7.5); None for any other frame."""
    message = orjson.loads(frame)
    if not isinstance(message, dict) or message.get("type") != "error":
        return None
    data = {"error": message["code"], "message": message["message"], "projectId": message.get("ref")}
    data.update({k: message[k] for k in ("oldest", "stateSeq", "seq") if k in message})
    return ServerSentEvent(orjson.dumps(data).decode(), event="error")
