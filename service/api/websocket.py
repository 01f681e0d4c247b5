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
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, WebSocket
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect

from .. import log as event_log
from ..app import Runtime
from ..auth import InvalidToken, Principal, verify
from ..codes import CloseCode, ErrorCode
from ..db import DatabaseUnavailable
from ..hub import Client, Outbox
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
logger = logging.getLogger("herald.websocket")
M = TypeVar("M", bound=BaseModel)

AUTH_TIMEOUT_S = 5.0
MAX_CLIENT_ID = 128


class WebSocketTransport:
    """The hub's Transport over a Starlette WebSocket."""

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket

    async def send(self, frame: str) -> None:
        await self.websocket.send_text(frame)

    async def close(self, code: int, reason: str) -> None:
        await self.websocket.close(code=code, reason=reason[:120])


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


class Session:
    """The per-connection protocol after authentication: one frame in, replies and effects out."""

    def __init__(self, rt: Runtime, client: Client) -> None:
        self.rt = rt
        self.client = client
        self.rate = RateLimit(rt.settings.ws_rate, rt.settings.ws_burst)

    def reply(self, text: str) -> None:
        self.client.push(text)

    def error(self, code: ErrorCode, message: str, ref: str | None = None) -> None:
        self.reply(error_frame(code, message, ref))

    async def handle(self, text: str | None) -> None:
        """Handle one inbound message (None: a binary frame)."""
        self.client.seen()
        if not self.rate.allow():
            if self.rate.exhausted:
                self.client.kick(CloseCode.POLICY_VIOLATION, "inbound rate limit exceeded")
            else:
                self.error(ErrorCode.RATE_LIMITED, "too many messages; slow down (this one was dropped)")
            return
        if text is None:
            self.error(ErrorCode.INVALID_FRAME, "binary frames are not supported; send JSON text")
            return
        try:
            message = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self.error(ErrorCode.INVALID_FRAME, f"not valid JSON: {exc}")
            return
        if not isinstance(message, dict):
            self.error(ErrorCode.INVALID_FRAME, "a message must be a JSON object with a type")
            return
        kind = message.get("type")
        if not isinstance(kind, str):
            self.error(ErrorCode.INVALID_FRAME, "type: a message needs a string type", ref_of(message))
            return
        handler = self.handlers.get(kind)
        if handler is not None:
            await handler(self, message)
        elif kind in EVENT_TYPES:
            await self.publish(message)
        else:
            self.error(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}", ref_of(message))

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
                head = await event_log.head(conn, pid)
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
                    head = await event_log.head(conn, pid)
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
            self.error(ErrorCode.INVALID_DATA, exc.message, ref)
            return
        pid = parsed.project_id
        if not self.client.principal.may("publish", pid):
            self.error(ErrorCode.FORBIDDEN, f"this token may not publish to {pid!r}", ref)
            return
        try:
            async with self.rt.connection() as conn:
                event, _ = await event_log.append(
                    conn, project_id=pid, type=parsed.type, data=data, message_id=parsed.message_id
                )
        except event_log.ProjectNotFound:
            self.error(ErrorCode.NOT_FOUND, f"no project {pid!r}", ref)
            return
        except DatabaseUnavailable:
            self.error(ErrorCode.UNAVAILABLE, "the database is unreachable; nothing was written, retry", ref)
            return
        self.reply(frame(type="published", projectId=pid, messageId=event.message_id, seq=event.seq))

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
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while session.client.close_code is None:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            text = message.get("text")
            await session.handle(text if text is not None else None)
