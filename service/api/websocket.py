"""`/ws`: the WebSocket transport of PROTOCOL.md §4.

One connection carries many projects. The handshake checks the `Origin`; the first message (or the
`token` query parameter) authenticates within 5 s; then every frame is checked on its own (scopes per
project, schema, rate) and a bad one gets an `error` frame while the connection lives on. Events go
through the hub and the client's bounded outbox; replies to the client's own frames go through the
same outbox, so everything the client sees is in one order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, WebSocket
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect

from .. import eventlog, frames
from ..app import Runtime
from ..auth import InvalidToken, Principal, verify
from ..codes import CloseCode, ErrorCode
from ..db import DatabaseUnavailable
from ..hub import Client, EventFrame, Outbox
from ..messages import (
    EVENT_TYPES,
    AckMessage,
    AuthMessage,
    InvalidData,
    PingMessage,
    PongMessage,
    PublishMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    check,
    event_data,
)

router = APIRouter()
logger = logging.getLogger("herald.api.websocket")
M = TypeVar("M", bound=BaseModel)

AUTH_TIMEOUT_S = 5.0
MAX_CLIENT_ID = 128


class WebSocketTransport:
    """The hub's Transport over a Starlette WebSocket; `send_now` writes encoded frames straight to the
    connection through uvicorn's `herald.frames` extension (service/frames.py) when it is there."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        extension = (websocket.scope.get("extensions") or {}).get(frames.EXTENSION)
        self._write: Callable[[bytes], bool] | None = extension["write"] if extension else None

    async def send(self, frame: str) -> None:
        await self.websocket.send_text(frame)

    def send_now(self, messages: Sequence[str]) -> bool:
        if self._write is None:
            return False
        if len(messages) == 1:
            return self._write(wire(messages[0]))
        return self._write(b"".join(wire(m) for m in messages))

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code=code, reason=reason[:120])


def wire(message: str) -> bytes:
    """The WebSocket frame of a message; an event's is encoded once and shared by every connection."""
    if isinstance(message, EventFrame):
        if message.wire is None:
            message.wire = frames.text_frame(message.encode())
        return message.wire
    return frames.text_frame(message.encode())


def origin_allowed(origin: str | None, host: str | None, allowed: list[str]) -> bool:
    """Non-browser clients send no Origin; browsers may come from the service's own origin (an Origin
    whose host:port is the request's Host) or from HERALD_ALLOWED_ORIGINS."""
    if origin is None:
        return True
    if origin.rstrip("/") in allowed:
        return True
    return host is not None and urlsplit(origin).netloc.lower() == host.lower()


def valid_client_id(value: str) -> bool:
    return 0 < len(value) <= MAX_CLIENT_ID and value.isprintable()


class RateLimit:
    """A token bucket per connection; persistent abuse (many rejections in a window) closes with 1008."""

    def __init__(self, rate: float, burst: float, max_rejections: int = 50, window_s: float = 10.0) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()
        self.max_rejections, self.window_s = max_rejections, window_s
        self.rejections: list[float] = []

    def allow(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.rejections = [t for t in self.rejections if now - t < self.window_s] + [now]
        return False

    @property
    def exhausted(self) -> bool:
        return len(self.rejections) > self.max_rejections


def frame(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


def error_frame(code: ErrorCode, message: str, ref: str | None = None) -> str:
    return frame(type="error", code=code.value, message=message, ref=ref)


def ref_of(message: dict[str, Any]) -> str | None:
    """PROTOCOL.md §4: the offending message's messageId, else its projectId, else null."""
    for key in ("messageId", "projectId"):
        value = message.get(key)
        if isinstance(value, str):
            return value
    return None


MAX_PIPELINED = 64  # publishes of one connection waiting for their commit before reading waits too


class Session:
    """The per-connection protocol after authentication: one frame in, replies and effects out.

    Replies go out in the order of the messages they answer. Consecutive publishes are pipelined: each
    is queued for the group commit (service/log.py) and the next message is read at once, up to
    MAX_PIPELINED waiting; their `published` answers go out in order as the commits land. Any other
    message, or a reply that does not need the database, first waits for the publishes before it, so
    a client sees exactly what it would if every message were handled to the end before the next.
    """

    def __init__(self, rt: Runtime, client: Client) -> None:
        self.rt = rt
        self.client = client
        self.rate = RateLimit(rt.settings.ws_rate, rt.settings.ws_burst)
        # Pipelined publishes, oldest first (a list, not a deque: at most MAX_PIPELINED, and an idle
        # connection should cost little).
        self._publishing: list[tuple[asyncio.Future[tuple[eventlog.StoredEvent, bool]], str, str | None]] = []

    async def settle(self) -> None:
        """Wait until every pipelined publish has been answered."""
        while self._publishing:
            # Their futures resolve in order, and each answers every one before it (its first callback).
            await asyncio.wait({self._publishing[-1][0]})

    def _answer_publishes(self, _: object = None) -> None:
        """Answer the publishes whose commit has landed, in the order they came, up to the first that
        is still waiting."""
        while self._publishing and self._publishing[0][0].done():
            future, pid, ref = self._publishing.pop(0)
            if future.cancelled():
                continue
            failure = future.exception()
            if failure is None:
                event, _ = future.result()
                self.reply(frame(type="published", projectId=pid, messageId=event.message_id, seq=event.seq))
            elif isinstance(failure, eventlog.ProjectNotFound):
                self.error(ErrorCode.NOT_FOUND, f"no project {pid!r}", ref)
            elif isinstance(failure, DatabaseUnavailable):
                self.error(ErrorCode.UNAVAILABLE, "the database is unreachable; nothing was written, retry", ref)
            else:  # a bug: say so, and let the client resume elsewhere rather than wait for an answer
                logger.error("connection %s failed publishing", self.client.connection_id, exc_info=failure)
                self.client.kick(CloseCode.GOING_AWAY, "internal error; reconnect and resume")

    def reply(self, text: str) -> None:
        self.client.push(text)

    def error(self, code: ErrorCode, message: str, ref: str | None = None) -> None:
        self.reply(error_frame(code, message, ref))

    async def handle(self, text: str | None) -> None:
        """Handle one inbound message (None: a binary frame). A publish is pipelined (answered when
        its commit lands); every other answer first waits for those of the publishes before it."""
        self.client.seen()
        if not self.rate.allow():
            await self.settle()
            if self.rate.exhausted:
                self.client.kick(CloseCode.POLICY_VIOLATION, "inbound rate limit exceeded")
            else:
                self.error(ErrorCode.RATE_LIMITED, "too many messages; slow down (this one was dropped)")
            return
        message, problem = self.decode(text)
        if message is not None and message["type"] in EVENT_TYPES:
            await self.publish(message)
            return
        await self.settle()
        if message is None:
            self.error(ErrorCode.INVALID_FRAME, problem, None if text is None else self.ref_in(text))
            return
        kind = message["type"]
        handler = self.handlers.get(kind)
        if handler is not None:
            await handler(self, message)
        else:
            self.error(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}", ref_of(message))

    @staticmethod
    def decode(text: str | None) -> tuple[dict[str, Any] | None, str]:
        """The message if it is a JSON object with a string type, else None and what is wrong."""
        if text is None:
            return None, "binary frames are not supported; send JSON text"
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            return None, f"not valid JSON: {exc}"
        if not isinstance(message, dict):
            return None, "a message must be a JSON object with a type"
        if not isinstance(message.get("type"), str):
            return None, "type: a message needs a string type"
        return message, ""

    @staticmethod
    def ref_in(text: str) -> str | None:
        """The `ref` of a refused frame: that of a JSON object without a string type, else null."""
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError:
            return None
        return ref_of(message) if isinstance(message, dict) else None

    def parse(self, model: type[M], message: dict[str, Any]) -> M | None:
        try:
            return check(model, message)
        except InvalidData as exc:
            self.error(ErrorCode.INVALID_FRAME, exc.message, ref_of(message))
            return None

    async def auth(self, message: dict[str, Any]) -> None:
        parsed = self.parse(AuthMessage, message)
        if parsed is None:
            return
        try:
            principal = verify(self.rt.secret, parsed.token)
        except InvalidToken as exc:
            self.client.kick(CloseCode.AUTH, str(exc))
            return
        if principal.user != self.client.user:
            self.client.kick(CloseCode.AUTH, "a refreshed token must be for the same user")
            return
        self.client.principal = principal
        for project_id in list(self.client.subscriptions):
            if not principal.may("subscribe", project_id):
                self.rt.hub.disconnect(self.client, project_id)
                self.error(ErrorCode.FORBIDDEN, "the new token does not grant this project", project_id)
                self.reply(frame(type="unsubscribed", projectId=project_id))

    async def subscribe(self, message: dict[str, Any]) -> None:
        parsed = self.parse(SubscribeMessage, message)
        if parsed is None:
            return
        pid = parsed.project_id
        if not self.client.principal.may("subscribe", pid):
            self.error(ErrorCode.FORBIDDEN, f"this token may not subscribe to {pid!r}", pid)
            return
        try:
            async with self.rt.connection() as conn:
                head = await eventlog.head(conn, pid)
                cursor = None
                if head is not None and parsed.after is None:
                    cursor = await self.rt.cursor(conn, pid, self.client)
        except DatabaseUnavailable:
            self.error(ErrorCode.UNAVAILABLE, "the database is unreachable; retry", pid)
            return
        if head is None:
            self.error(ErrorCode.NOT_FOUND, f"no project {pid!r}", pid)
            return
        if parsed.after is not None and parsed.after > head:
            self.error(ErrorCode.INVALID_CURSOR, f"after {parsed.after} is beyond the head {head}", pid)
            return
        start = parsed.after if parsed.after is not None else min(cursor, head) if cursor is not None else head
        self.reply(frame(type="subscribed", projectId=pid, after=start, head=head))
        await self.rt.hub.connect(self.client, pid, after=start, head=head)

    async def unsubscribe(self, message: dict[str, Any]) -> None:
        parsed = self.parse(UnsubscribeMessage, message)
        if parsed is None:
            return
        self.rt.hub.disconnect(self.client, parsed.project_id)
        self.reply(frame(type="unsubscribed", projectId=parsed.project_id))

    async def ack(self, message: dict[str, Any]) -> None:
        parsed = self.parse(AckMessage, message)
        if parsed is None:
            return
        pid, seq = parsed.project_id, parsed.seq
        sub = self.client.subscriptions.get(pid)
        if sub is None:
            self.error(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {pid!r} on this connection", pid)
            return
        feed = self.rt.hub.feeds.get(pid)
        if seq > sub.position and (feed is None or seq > feed.delivered):
            try:
                async with self.rt.connection() as conn:
                    head = await eventlog.head(conn, pid)
            except DatabaseUnavailable:
                self.error(ErrorCode.UNAVAILABLE, "the database is unreachable; ack again", pid)
                return
            if head is None or seq > head:
                self.error(ErrorCode.INVALID_ACK, f"seq {seq} is beyond the head {head}", pid)
                return
        self.rt.acks.add(project_id=pid, user=self.client.user, client_id=self.client.client_id, seq=seq)

    async def publish(self, message: dict[str, Any]) -> None:
        ref = ref_of(message)
        try:
            parsed = check(PublishMessage, message)
            data = event_data(parsed.type, parsed.data)
        except InvalidData as exc:
            await self.settle()
            self.error(ErrorCode.INVALID_DATA, exc.message, ref)
            return
        pid = parsed.project_id
        if not self.client.principal.may("publish", pid):
            await self.settle()
            self.error(ErrorCode.FORBIDDEN, f"this token may not publish to {pid!r}", ref)
            return
        if len(self._publishing) >= MAX_PIPELINED:
            await asyncio.wait({self._publishing[0][0]})
        # Group commit: publishes arriving together share one transaction; answered in order.
        future = self.rt.appender.submit(project_id=pid, type=parsed.type, data=data, message_id=parsed.message_id)
        self._publishing.append((future, pid, ref))
        future.add_done_callback(self._answer_publishes)

    async def ping(self, message: dict[str, Any]) -> None:
        parsed = self.parse(PingMessage, message)
        if parsed is not None:
            self.reply(frame(type="pong", ts=message.get("ts")))

    async def pong(self, message: dict[str, Any]) -> None:
        self.parse(PongMessage, message)  # being alive is what counts; `seen` already noted it

    handlers: ClassVar[dict[str, Callable[[Session, dict[str, Any]], Awaitable[None]]]] = {
        "auth": auth,
        "subscribe": subscribe,
        "unsubscribe": unsubscribe,
        "ack": ack,
        "ping": ping,
        "pong": pong,
    }


async def authenticate(websocket: WebSocket, rt: Runtime) -> Principal | None:
    """The token from the query string, else from a first `auth` message within 5 s; None after
    closing the socket with 4401."""
    token = websocket.query_params.get("token")
    if token is None:
        try:
            message = await asyncio.wait_for(websocket.receive(), AUTH_TIMEOUT_S)
        except TimeoutError:
            await websocket.close(CloseCode.AUTH, "no auth message within 5 s")
            return None
        if message["type"] == "websocket.disconnect":
            return None
        try:
            parsed = orjson.loads(message.get("text") or b"")
            token = check(AuthMessage, parsed).token
        except (orjson.JSONDecodeError, InvalidData):
            await websocket.close(CloseCode.AUTH, 'the first message must be {"type":"auth","token":...}')
            return None
    try:
        return verify(rt.secret, token)
    except InvalidToken as exc:
        await websocket.close(CloseCode.AUTH, str(exc))
        return None


@router.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket) -> None:
    rt: Runtime = websocket.app.state.runtime
    settings = rt.settings
    if not origin_allowed(websocket.headers.get("origin"), websocket.headers.get("host"), settings.allowed_origins):
        await websocket.close(CloseCode.ORIGIN)  # before accept: the handshake is refused with 403
        return
    client_id = websocket.query_params.get("clientId") or uuid.uuid4().hex
    if not valid_client_id(client_id):
        await websocket.close(CloseCode.POLICY_VIOLATION)  # refused at the handshake (403)
        return
    await websocket.accept()
    principal = await authenticate(websocket, rt)
    if principal is None:
        return
    client = Client(WebSocketTransport(websocket), principal, client_id, Outbox(settings.ws_outbox))
    session = Session(rt, client)
    rt.hub.add_client(client)
    client.push(
        frame(type="welcome", clientId=client_id, connectionId=client.connection_id, heartbeatMs=settings.heartbeat_ms)
    )
    client.writer = asyncio.create_task(client.write())
    reader = asyncio.create_task(receive(websocket, session))
    try:
        await asyncio.wait({reader, client.writer}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            # A bug in handling a message: close with a code the contract says to retry, after what was
            # already queued, so the client reconnects and resumes rather than waiting or giving up.
            client.kick(CloseCode.GOING_AWAY, "internal error; reconnect and resume")
            await asyncio.wait({client.writer}, timeout=client.close_grace_s)
    finally:
        rt.hub.disconnect(client)
        for task in (reader, client.writer):
            task.cancel()
        failure, _ = await asyncio.gather(reader, client.writer, return_exceptions=True)
        if isinstance(failure, Exception):  # a bug in handling a message: say so, never drop silently
            logger.error("connection %s failed handling a message", client.connection_id, exc_info=failure)
        with contextlib.suppress(Exception):
            await rt.acks.flush_client(client.user, client.client_id)


async def receive(websocket: WebSocket, session: Session) -> None:
    while session.client.close_code is None:
        try:
            message = await websocket.receive()
        except (WebSocketDisconnect, RuntimeError):  # the peer is gone (Starlette: RuntimeError after close)
            return
        if message["type"] == "websocket.disconnect":
            return
        text = message.get("text")
        await session.handle(text if text is not None else None)  # its errors are bugs: they end the reader
