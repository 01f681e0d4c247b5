"""Server-Sent Events: the fallback transport of PROTOCOL.md §5, on the same hub and cursors as `/ws`.

A stream is a hub `Client` like a WebSocket: the same bounded outbox and writer, the same catch-up and
live hand-over, the same 4429 for a reader that cannot keep up, the same cursor per (user, clientId,
project). Only the framing differs, and sse-starlette does that (plus keep-alive comments, HEAD, and
noticing the reader went away). A stream ends when the hub kicks its client; the browser's
EventSource reconnects by itself with `Last-Event-ID`, which resumes exactly.

* `/api/projects/{id}/stream`: `id:` is the event's seq.
* `/api/stream?projects=a,b`: `id:` is the position vector after the event (`a:5,b:9`), so one
  `Last-Event-ID` resumes every project of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Annotated

from fastapi import APIRouter, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent

from .. import eventlog
from ..app import Runtime
from ..auth import InvalidToken, Principal, verify
from ..codes import ErrorCode
from ..hub import Client, EventFrame, Outbox
from ..messages import PROJECT_ID_PATTERN
from .http import ERRORS, ApiError, Rt, project_missing, require
from .websocket import valid_client_id

router = APIRouter(tags=["streams"])

RETRY_MS = 2000
SEND_TIMEOUT_S = 30.0  # a reader whose socket accepts nothing for this long is gone: drop the stream
MAX_PROJECTS = 100
PROJECT_ID = re.compile(PROJECT_ID_PATTERN)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_RESPONSES = {**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "an event stream (§5)"}}


class SSETransport:
    """The hub's Transport for one stream: the client's writer hands frames over one at a time to the
    response's generator, so a reader that stops reading stalls the writer and fills the outbox,
    exactly as a WebSocket does."""

    def __init__(self, positions: dict[str, int], *, vector: bool) -> None:
        self.positions = positions  # the last seq sent per project: the vector of `id:`
        self.vector = vector
        self._handoff: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue(maxsize=1)  # one in hand
        self._farewell: ServerSentEvent | None = None

    async def send(self, frame: str) -> None:
        if isinstance(frame, EventFrame):
            self.positions[frame.project_id] = frame.seq
            await self._handoff.put(ServerSentEvent(frame, event=frame.type, id=self.last_event_id(frame)))
        # The hub sends a stream nothing but events (no pings, no replies): other frames have no reader.

    def send_now(self, frames: Sequence[str]) -> bool:
        return False  # the response's generator takes one event at a time, from the writer

    def last_event_id(self, frame: EventFrame) -> str:
        if not self.vector:
            return str(frame.seq)
        return ",".join(f"{p}:{seq}" for p, seq in self.positions.items())

    async def close(self, code: int, reason: str) -> None:
        """End the stream. Never waits: it also runs in a writer cancelled while the reader was stuck,
        and what was still queued is dropped, as a kick drops the outbox."""
        self._farewell = ServerSentEvent(comment=f"closed {code}: {reason}")
        while not self._handoff.empty():
            self._handoff.get_nowait()
        self._handoff.put_nowait(None)

    async def frames(self) -> AsyncIterator[ServerSentEvent]:
        while (event := await self._handoff.get()) is not None:
            yield event
        if self._farewell is not None:
            yield self._farewell


def stream_principal(request: Request, rt: Runtime, token: str | None) -> Principal:
    """The token from `Authorization: Bearer`, else from `?token=` (EventSource cannot set headers)."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials:
        token = credentials.strip()
    if not token:
        raise ApiError(ErrorCode.UNAUTHORIZED, "missing token (Authorization: Bearer TOKEN, or ?token=)")
    try:
        return verify(rt.secret, token)
    except InvalidToken as exc:
        raise ApiError(ErrorCode.UNAUTHORIZED, str(exc)) from None


def checked_client_id(client_id: str | None) -> str | None:
    if client_id is not None and not valid_client_id(client_id):
        raise ApiError(ErrorCode.INVALID_DATA, "clientId: 1 to 128 printable characters", field="clientId")
    return client_id


def bad_cursor(message: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_CURSOR, message, status=400)


def parse_vector(text: str, what: str) -> dict[str, int]:
    """`a:5,b:9` as {"a": 5, "b": 9}; 400 `invalid_cursor` when malformed."""
    vector: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        project_id, sep, seq = part.rpartition(":")
        if not sep or not project_id or not seq.isascii() or not seq.isdigit():
            raise bad_cursor(f"{what}: expected PROJECT:SEQ,..., got {part!r}")
        vector[project_id] = int(seq)
    return vector


async def start_positions(
    rt: Runtime, principal: Principal, client: Client, asked: dict[str, int | None]
) -> tuple[dict[str, int], dict[str, int]]:
    """Where each project of a stream starts, and its head: the position asked for (Last-Event-ID or
    `after`), else the client's cursor, else the head. Errors before any streaming starts: 403, 404,
    and 422 `invalid_cursor` for a position beyond the head."""
    for project_id in asked:
        require(principal, "subscribe", project_id)
    positions: dict[str, int] = {}
    heads: dict[str, int] = {}
    async with rt.connection() as conn:
        for project_id, after in asked.items():
            head = await eventlog.head(conn, project_id)
            if head is None:
                raise project_missing(project_id)
            if after is not None and after > head:
                raise ApiError(ErrorCode.INVALID_CURSOR, f"{project_id}: position {after} is beyond the head {head}")
            if after is None and client.client_id:
                cursor = await rt.cursor(conn, project_id, client)
                after = min(cursor, head) if cursor is not None else None
            positions[project_id] = head if after is None else after
            heads[project_id] = head
    return positions, heads


async def open_stream(
    rt: Runtime, principal: Principal, client_id: str | None, asked: dict[str, int | None], *, vector: bool
) -> EventSourceResponse:
    transport = SSETransport({}, vector=vector)
    # Without a clientId there is no durable cursor (§5): the stream gets an id nobody can resume by.
    client = Client(transport, principal, client_id or "", Outbox(rt.settings.ws_outbox), heartbeat=False)
    positions, heads = await start_positions(rt, principal, client, asked)
    transport.positions.update(positions)
    if not client_id:
        client.client_id = f"sse-{uuid.uuid4().hex}"

    async def events() -> AsyncIterator[ServerSentEvent]:
        rt.hub.add_client(client)
        try:
            yield ServerSentEvent(retry=RETRY_MS)
            for project_id, after in positions.items():
                await rt.hub.connect(client, project_id, after=after, head=heads[project_id])
            client.writer = asyncio.create_task(client.write())
            async for event in transport.frames():
                yield event
        finally:
            rt.hub.disconnect(client)
            if client.writer is not None:
                client.writer.cancel()
                with contextlib.suppress(BaseException):
                    await client.writer

    keepalive_s = rt.settings.sse_keepalive_ms / 1000
    return EventSourceResponse(
        events(),
        headers=SSE_HEADERS,
        ping=keepalive_s,
        ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
        sep="\n",
        send_timeout=SEND_TIMEOUT_S,
    )


@router.get("/api/projects/{project_id}/stream", responses=SSE_RESPONSES, response_class=EventSourceResponse)
async def project_stream(
    project_id: str,
    request: Request,
    rt: Rt,
    client_id: Annotated[str | None, Query(alias="clientId", description="whose durable cursor to resume")] = None,
    after: Annotated[int | None, Query(ge=0, description="start after this seq")] = None,
    token: Annotated[str | None, Query(description="the token, for EventSource (no headers)")] = None,
) -> EventSourceResponse:
    """One project's events as SSE (subscribe). Resumes from Last-Event-ID, else `after`, else the
    cursor of (user, clientId), else the head."""
    principal = stream_principal(request, rt, token)
    last_event_id = request.headers.get("last-event-id")
    if last_event_id is not None:
        if not (last_event_id.isascii() and last_event_id.isdigit()):
            raise bad_cursor(f"Last-Event-ID must be a seq (a non-negative integer), got {last_event_id!r}")
        after = int(last_event_id)
    return await open_stream(rt, principal, checked_client_id(client_id), {project_id: after}, vector=False)


@router.get("/api/stream", responses=SSE_RESPONSES, response_class=EventSourceResponse)
async def multi_stream(
    request: Request,
    rt: Rt,
    projects: Annotated[str, Query(description="comma-separated project ids", min_length=1)],
    client_id: Annotated[str | None, Query(alias="clientId", description="whose durable cursors to resume")] = None,
    after: Annotated[str | None, Query(description="a position vector, P1:5,P2:9")] = None,
    token: Annotated[str | None, Query(description="the token, for EventSource (no headers)")] = None,
) -> EventSourceResponse:
    """Several projects' events on one stream (subscribe on each). Each `id:` is the position vector
    after the event; Last-Event-ID (else `after`) resumes every project it names, the others resume
    from the cursor, else the head."""
    principal = stream_principal(request, rt, token)
    ids = list(dict.fromkeys(p.strip() for p in projects.split(",") if p.strip()))
    if not ids:
        raise ApiError(ErrorCode.INVALID_DATA, "projects: name at least one project", field="projects")
    if len(ids) > MAX_PROJECTS:
        raise ApiError(ErrorCode.INVALID_DATA, f"projects: at most {MAX_PROJECTS} per stream", field="projects")
    for project_id in ids:
        if not PROJECT_ID.fullmatch(project_id):
            raise ApiError(ErrorCode.INVALID_DATA, f"projects: {project_id!r} is not a project id", field="projects")
    last_event_id = request.headers.get("last-event-id")
    if last_event_id is not None:
        vector = parse_vector(last_event_id, "Last-Event-ID")
    else:
        vector = parse_vector(after, "after") if after else {}
    asked: dict[str, int | None] = {p: vector.get(p) for p in ids}
    return await open_stream(rt, principal, checked_client_id(client_id), asked, vector=True)
