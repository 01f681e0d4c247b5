"""`/ws`: the WebSocket transport of docs/protocol.md §4, a thin driver of the connection's session.

One connection carries many projects. The handshake checks the `Origin` and the `clientId`; the
first message (or the `token` query parameter) authenticates within 5 s. From then on every message
goes into the connection's `Session` (session.py), which decides what it means; the `Driver` here
carries out what the session asks (appends, database reads, subscriptions, acks, a close) and feeds
the answers back. Replies go out through the connection's outbox, the one events take, so everything
the client sees is in one order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Coroutine
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import orjson
from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from .. import eventlog, logs, proxies
from ..auth import InvalidToken, Principal, Verifier
from ..codes import CloseCode
from ..connection import Client, Outbox
from ..cursors import AckBuffer
from ..db import Database, DatabaseBusy, DatabaseUnavailable
from ..eventlog import Appender
from ..hub import Hub
from ..limits import RateLimit
from ..messages import AuthMessage, InvalidData, check
from ..session import (
    Ack,
    Append,
    CheckAck,
    Close,
    Connect,
    Disconnect,
    Effect,
    FindStart,
    Reauthorize,
    Refuse,
    Send,
    Session,
    encode,
    found_start,
)
from ..transports import WebSocketTransport
from .dependencies import AcksDep, AppenderDep, DatabaseDep, HubDep, SettingsDep, VerifierDep

router = APIRouter()
logger = logging.getLogger("herald.api.websocket")

AUTH_TIMEOUT_S = 5.0
MAX_CLIENT_ID = 128


def origin_allowed(origin: str | None, host: str | None, allowed: list[str], scheme: str | None = None) -> bool:
    """Non-browser clients send no Origin; browsers may come from the service's own origin or from
    HERALD_ALLOWED_ORIGINS. The service's own origin is the Host the client asked for (`host`: the
    request's `Host`, or a trusted proxy's forwarded host, proxies.py) and, when a trusted proxy said
    which, the scheme the client used (`scheme`, `http` or `https`); a port that is the scheme's default
    may be written or left out."""
    if origin is None:
        return True
    if origin.rstrip("/") in allowed:
        return True
    if host is None:
        return False
    parts = urlsplit(origin)
    origin_scheme = parts.scheme.lower()
    if scheme is not None and origin_scheme != scheme:
        return False
    default_port = {"http": ":80", "https": ":443"}.get(origin_scheme, "")
    ours, theirs = host.lower(), parts.netloc.lower()
    if default_port:
        ours, theirs = ours.removesuffix(default_port), theirs.removesuffix(default_port)
    return theirs == ours


def valid_client_id(value: str) -> bool:
    return 0 < len(value) <= MAX_CLIENT_ID and value.isprintable()


class Driver:
    """Carries out one WebSocket session's effects and feeds the answers back to it.

    `accepting` is set while the session may take the next message: the reader waits on it, so a
    message that must wait for the publishes or the request before it holds up reading, as it would
    if each message were handled to the end before the next.
    """

    def __init__(
        self, session: Session, client: Client, *, hub: Hub, appender: Appender, acks: AckBuffer, database: Database
    ) -> None:
        self.session = session
        self.client = client
        self.hub = hub
        self.appender = appender
        self.acks = acks
        self.database = database
        self.accepting = asyncio.Event()
        self.accepting.set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def read(self, websocket: WebSocket) -> None:
        """Feed the client's messages to the session until the connection ends. Its errors are bugs:
        they end the reader, and the endpoint closes with 1001."""
        while self.client.close_code is None:
            await self.accepting.wait()
            try:
                message = await websocket.receive()
            except (WebSocketDisconnect, RuntimeError):  # the peer is gone (Starlette: RuntimeError after close)
                return
            if message["type"] == "websocket.disconnect":
                return
            self.client.seen()
            self.session.receive(message.get("text"))
            self.run()

    def run(self) -> None:
        """Carry out everything the session asks now (an answer given here may ask for more)."""
        while effects := self.session.take():
            for effect in effects:
                self._perform(effect)
        if self.session.accepting:
            self.accepting.set()
        else:
            self.accepting.clear()

    def _perform(self, effect: Effect) -> None:
        client = self.client
        match effect:
            case Send(text):
                client.push(text)
            case Refuse():
                client.push(effect.frame())
            case Append(ticket, project_id, type, data, message_id):
                # Group commit: publishes arriving together share one transaction; answered in order.
                future = self.appender.submit(project_id=project_id, type=type, data=data, message_id=message_id)
                future.add_done_callback(partial(self._guard, self._appended, ticket))
            case FindStart():
                self._spawn(self._find_start(effect))
            case CheckAck(ticket, project_id, seq):
                known = self.hub.known_head(client, project_id)
                if known is not None and seq <= known:
                    self.session.ack_checked(ticket, known)
                else:
                    self._spawn(self._read_head(effect))
            case Ack(project_id, seq, hash):
                self.acks.add(
                    project_id=project_id,
                    user=client.user,
                    client_id=client.client_id,
                    seq=seq,
                    hash=None if hash is None else bytes.fromhex(hash),
                )
            case Connect(project_id, after, head):
                self.hub.connect(client, project_id, after=after, head=head)
            case Disconnect(project_id):
                self.hub.disconnect(client, project_id)
            case Reauthorize(principal):
                client.principal = principal
            case Close(code, reason):
                client.close(code, reason)

    def _appended(self, ticket: int, future: asyncio.Future[tuple[eventlog.StoredEvent, bool]]) -> None:
        outcome = asyncio.CancelledError() if future.cancelled() else future.exception() or future.result()
        self.session.appended(ticket, outcome)

    async def _find_start(self, effect: FindStart) -> None:
        try:
            async with self.database.connection() as conn:
                found, cursor = await self.acks.find_start(
                    conn,
                    project_id=effect.project_id,
                    user=self.client.user,
                    client_id=self.client.client_id,
                    cursor=effect.cursor,
                    after=effect.after,
                )
        except DatabaseUnavailable as exc:
            self.session.unavailable(effect.ticket, busy=isinstance(exc, DatabaseBusy))
        else:
            found_start(self.session, effect, found, cursor)

    async def _read_head(self, effect: CheckAck) -> None:
        try:
            async with self.database.connection() as conn:
                head = await eventlog.head(conn, effect.project_id)
        except DatabaseUnavailable as exc:
            self.session.unavailable(effect.ticket, busy=isinstance(exc, DatabaseBusy))
        else:
            self.session.ack_checked(effect.ticket, head)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        async def guarded() -> None:
            try:
                await coro
                self.run()
            except Exception as exc:
                self._fail(exc)

        task = asyncio.create_task(guarded())
        self._tasks.add(task)  # a strong reference: a collected task would never answer
        task.add_done_callback(self._tasks.discard)

    def _guard(self, answer: Any, *args: Any) -> None:
        """Give an answer from a callback; a failure there is a bug, handled as in the reader."""
        try:
            answer(*args)
            self.run()
        except Exception as exc:
            self._fail(exc)

    def _fail(self, exc: Exception) -> None:
        # A bug: say so, and close with a code the contract says to retry, after what was already
        # queued, so the client reconnects and resumes rather than waiting for an answer.
        logger.error("connection %s failed handling a message", self.client.connection_id, exc_info=exc)
        self.client.close(CloseCode.GOING_AWAY, "internal error; reconnect and resume")

    def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()


async def authenticate(websocket: WebSocket, verify: Verifier) -> Principal | None:
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
        return verify(token)
    except InvalidToken as exc:
        await websocket.close(CloseCode.AUTH, str(exc))
        return None


@router.websocket("/ws")
async def websocket_endpoint(
    websocket: WebSocket,
    settings: SettingsDep,
    verify: VerifierDep,
    hub: HubDep,
    appender: AppenderDep,
    acks: AcksDep,
    database: DatabaseDep,
) -> None:
    seen = proxies.forwarded(websocket.scope)
    if not origin_allowed(websocket.headers.get("origin"), seen.host, settings.allowed_origins, seen.scheme):
        await websocket.close(CloseCode.ORIGIN)  # before accept: the handshake is refused with 403
        return
    client_id = websocket.query_params.get("clientId") or uuid.uuid4().hex
    if not valid_client_id(client_id):
        await websocket.close(CloseCode.POLICY_VIOLATION)  # refused at the handshake (403)
        return
    await websocket.accept()
    principal = await authenticate(websocket, verify)
    if principal is None:
        return
    if hub.connections_of(principal.user) >= settings.max_connections_per_user:
        cap = settings.max_connections_per_user
        await websocket.close(CloseCode.TRY_AGAIN_LATER, f"this user already has {cap} connections here")
        return
    transport = WebSocketTransport(websocket)
    client = Client(
        transport,
        principal,
        client_id,
        Outbox(settings.ws_outbox_bytes),
        heartbeat_s=settings.heartbeat_ms / 1000,
        stall_s=settings.ws_stall_s,
        before_close=lambda: acks.flush_client(principal.user, client_id),
    )
    logs.connection_id.set(client.connection_id)  # every line logged for this connection names it
    opened = time.monotonic()
    session = Session(principal, verify=verify, rate=RateLimit(settings.ws_rate, settings.ws_burst))
    driver = Driver(session, client, hub=hub, appender=appender, acks=acks, database=database)
    hub.add_client(client)
    client.push(
        encode(type="welcome", clientId=client_id, connectionId=client.connection_id, heartbeatMs=settings.heartbeat_ms)
    )
    client.writer = asyncio.create_task(client.write())
    reader = asyncio.create_task(driver.read(websocket))
    try:
        await asyncio.wait({reader, client.writer}, return_when=asyncio.FIRST_COMPLETED)
        if reader.done() and not reader.cancelled() and reader.exception() is not None:
            # A bug in handling a message: close with a code the contract says to retry, after what was
            # already queued, so the client reconnects and resumes rather than waiting or giving up.
            client.close(CloseCode.GOING_AWAY, "internal error; reconnect and resume")
            await asyncio.wait({client.writer}, timeout=client.close_grace_s)
    finally:
        hub.disconnect(client)
        driver.stop()
        for task in (reader, client.writer):
            task.cancel()
        failure, _ = await asyncio.gather(reader, client.writer, return_exceptions=True)
        if isinstance(failure, Exception):  # a bug in handling a message: say so, never drop silently
            logger.error("connection %s failed handling a message", client.connection_id, exc_info=failure)
        with contextlib.suppress(Exception):
            await acks.flush_client(client.user, client.client_id)
        logger.info(
            "websocket of %s (client %s) ended after %.1f s", client.user, client.client_id, time.monotonic() - opened
        )
        transport.release_close()  # a close the client started is answered now that its acks are persisted
