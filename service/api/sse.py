"""Server-Sent Events: the fallback transport of docs/protocol.md §5, on the same hub and cursors as `/ws`.

A stream is a hub `Client` like a WebSocket: the same bounded outbox and writer, the same catch-up and
live hand-over, the same 4429 for a reader that cannot keep up, the same cursor per (user, clientId,
project). Only the framing differs, and sse-starlette does that (plus keep-alive comments, HEAD, and
noticing the reader went away). A stream ends when its connection is closed; the browser's
EventSource reconnects by itself with `Last-Event-ID`, which resumes exactly.

* `/api/projects/{id}/stream`: `id:` is the event's seq.
* `/api/stream?projects=a,b`: `id:` is the position vector after the event (`a:5,b:9`), so one
  `Last-Event-ID` resumes every project of the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.background import BackgroundTask

from .. import logs
from ..auth import InvalidToken, Principal, Verifier
from ..codes import ErrorCode
from ..config import Settings
from ..connection import Client, Outbox
from ..cursors import AckBuffer
from ..db import Database
from ..hub import Hub
from ..limits import RateLimits
from ..messages import HASH_PATTERN, MAX_SAFE_INTEGER, PROJECT_ID_PATTERN
from ..session import Connect, FindStart, Refuse, Session, found_start
from ..transports import SSETransport, error_event
from .dependencies import (
    AcksDep,
    DatabaseDep,
    HttpLimitsDep,
    HubDep,
    SettingsDep,
    VerifierDep,
    admit,
    require,
)
from .errors import ERRORS, ApiError, rate_limited
from .websocket import valid_client_id

router = APIRouter(tags=["streams"])
logger = logging.getLogger("herald.api.sse")

RETRY_MS = 2000
MAX_PROJECTS = 100
# Refusals said on the stream as `event: error` (an EventSource cannot read an HTTP error's body): the
# client reloads the state and resumes after its seq (§7.4, §7.5).
RESYNCS = frozenset({ErrorCode.HISTORY_TRUNCATED, ErrorCode.HISTORY_REWRITTEN})
MAX_SEQ_DIGITS = 18  # docs/protocol.md §7.1: a longer number is refused before it is parsed
PROJECT_ID = re.compile(PROJECT_ID_PATTERN)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_RESPONSES = {**ERRORS, 200: {"content": {"text/event-stream": {}}, "description": "an event stream (§5)"}}


def stream_principal(request: Request, parts: Streams, token: str | None) -> Principal:
    """The token from `Authorization: Bearer`, else from `?token=` (EventSource cannot set headers),
    counted against its HTTP rate like any call."""
    header = request.headers.get("authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials:
        token = credentials.strip()
    if not token:
        raise ApiError(ErrorCode.UNAUTHORIZED, "missing token (Authorization: Bearer TOKEN, or ?token=)")
    try:
        principal = parts.verify(token)
    except InvalidToken as exc:
        raise ApiError(ErrorCode.UNAUTHORIZED, str(exc)) from None
    return admit(principal, parts.http_limits)


def checked_client_id(client_id: str | None) -> str | None:
    if client_id is not None and not valid_client_id(client_id):
        raise ApiError(ErrorCode.INVALID_DATA, "clientId: 1 to 128 printable characters", field="clientId")
    return client_id


def bad_cursor(message: str) -> ApiError:
    return ApiError(ErrorCode.INVALID_CURSOR, message, status=400)


def parse_seq(text: str, what: str) -> int:
    """A seq written in a header or a query: 400 `invalid_cursor` when not a non-negative integer, 422
    `invalid_data` past 18 digits (read before any `int()`, which would spend time on a digit bomb)."""
    if not text.isascii() or not text.isdigit():
        raise bad_cursor(f"{what} must be a seq (a non-negative integer), got {text[:40]!r}")
    if len(text) > MAX_SEQ_DIGITS:
        raise ApiError(ErrorCode.INVALID_DATA, f"{what}: at most {MAX_SEQ_DIGITS} digits", field=what)
    return int(text)


def parse_vector(text: str, what: str) -> dict[str, int]:
    """`a:5,b:9` as {"a": 5, "b": 9}; 400 `invalid_cursor` when malformed."""
    vector: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        project_id, sep, seq = part.rpartition(":")
        if not sep or not project_id:
            raise bad_cursor(f"{what}: expected PROJECT:SEQ,..., got {part[:80]!r}")
        vector[project_id] = parse_seq(seq, what)
    return vector


async def start_positions(
    session: Session,
    client: Client,
    asked: dict[str, int | None],
    *,
    database: Database,
    acks: AckBuffer,
    hashes: dict[str, str] | None = None,
) -> tuple[list[Connect], list[Refuse]]:
    """Run the stream's session until each project has its start (the position asked for, else the
    client's cursor, else the head: the session's rule), before anything streams: a refusal becomes
    the HTTP error of its code (404, 422 `invalid_cursor` beyond the head), an outage 503; except
    `history_truncated` and `history_rewritten` (checked against `hashes`, the afterHash of each
    project's `after`), returned for the stream to say as `event: error` (an EventSource cannot read
    the body of an HTTP error)."""
    for project_id, after in asked.items():
        session.subscribe(project_id, after, (hashes or {}).get(project_id))
    starts: list[Connect] = []
    truncated: list[Refuse] = []
    async with database.connection() as conn:
        while effects := session.take():
            for effect in effects:
                if isinstance(effect, FindStart):
                    found, cursor = await acks.find_start(
                        conn,
                        project_id=effect.project_id,
                        user=client.user,
                        client_id=client.client_id,
                        cursor=effect.cursor,
                        after=effect.after,
                    )
                    found_start(session, effect, found, cursor)
                elif isinstance(effect, Refuse) and effect.code in RESYNCS:
                    truncated.append(effect)
                elif isinstance(effect, Refuse):
                    raise ApiError(effect.code, effect.message)
                elif isinstance(effect, Connect):
                    starts.append(effect)
                # `subscribed` replies have no SSE form: the stream itself is the answer.
    return starts, truncated


@dataclass(frozen=True, slots=True)
class Streams:
    """The running parts a stream uses."""

    verify: Verifier
    http_limits: RateLimits
    hub: Hub
    acks: AckBuffer
    database: Database
    settings: Settings


async def _streams(
    verify: VerifierDep,
    http_limits: HttpLimitsDep,
    hub: HubDep,
    acks: AcksDep,
    database: DatabaseDep,
    settings: SettingsDep,
) -> Streams:
    return Streams(verify, http_limits, hub, acks, database, settings)


StreamsDep = Annotated[Streams, Depends(_streams)]


async def open_stream(
    parts: Streams,
    principal: Principal,
    client_id: str | None,
    asked: dict[str, int | None],
    *,
    vector: bool,
    hashes: dict[str, str] | None = None,
) -> EventSourceResponse:
    for project_id in asked:  # every 403 (and 404 for ids no project can have) before any lookup
        require(principal, "subscribe", project_id)
    settings = parts.settings
    if parts.hub.connections_of(principal.user) >= settings.max_connections_per_user:
        cap = settings.max_connections_per_user
        raise rate_limited(5, f"this user already has {cap} connections here; close one first")
    transport = SSETransport({}, vector=vector)
    # Without a clientId there is no durable cursor (§5): the stream gets an id nobody can resume by.
    client = Client(
        transport,
        principal,
        client_id or f"sse-{uuid.uuid4().hex}",
        Outbox(settings.ws_outbox_bytes),
        stall_s=settings.ws_stall_s,
    )
    logs.connection_id.set(client.connection_id)  # every line logged for this stream names it
    opened = time.monotonic()
    hub = parts.hub
    # Counted against the user's cap now, in the same step as the check (streams opened together must
    # not all pass it); let go of if no stream comes of it.
    hub.add_client(client)
    try:
        session = Session(principal, verify=parts.verify, durable=client_id is not None)
        starts, truncated = await start_positions(
            session, client, asked, database=parts.database, acks=parts.acks, hashes=hashes
        )
    except BaseException:
        hub.disconnect(client)
        raise
    transport.positions.update({start.project_id: start.after for start in starts})

    async def events() -> AsyncIterator[ServerSentEvent]:
        try:
            yield ServerSentEvent(retry=RETRY_MS)
            if truncated:  # §7.4, §7.5: say which projects, and end; nothing streams from a position that skips
                for refusal in truncated:
                    event = error_event(refusal.frame())
                    if event is not None:
                        yield event
                return
            for start in starts:
                hub.connect(client, start.project_id, after=start.after, head=start.head)
            client.writer = asyncio.create_task(client.write())
            async for event in transport.events():
                yield event
        finally:
            hub.disconnect(client)
            if client.writer is not None:
                client.writer.cancel()
                with contextlib.suppress(BaseException):
                    await client.writer
            logger.info(
                "stream of %s (client %s) ended after %.1f s", client.user, client.client_id, time.monotonic() - opened
            )

    return EventSourceResponse(
        events(),
        headers=SSE_HEADERS,
        ping=settings.sse_keepalive_ms / 1000,
        ping_message_factory=lambda: ServerSentEvent(comment="keep-alive"),
        sep="\n",
        # A reader whose socket took nothing for the stall time is closed (4429, connection.py); if it
        # still takes nothing, the send that waits for it is given up too and the stream dropped.
        send_timeout=settings.ws_stall_s + 10,
        background=BackgroundTask(hub.disconnect, client),  # also when the stream never started
    )


@router.get("/api/projects/{project_id}/stream", responses=SSE_RESPONSES, response_class=EventSourceResponse)
async def project_stream(
    project_id: str,
    request: Request,
    parts: StreamsDep,
    client_id: Annotated[str | None, Query(alias="clientId", description="whose durable cursor to resume")] = None,
    after: Annotated[int | None, Query(ge=0, le=MAX_SAFE_INTEGER, description="start after this seq")] = None,
    after_hash: Annotated[
        str | None,
        Query(
            alias="afterHash",
            pattern=HASH_PATTERN,
            description="extension: the hash of the event at `after` as the client has it (§7.5); "
            "not checked when Last-Event-ID is sent",
        ),
    ] = None,
    token: Annotated[str | None, Query(description="the token, for EventSource (no headers)")] = None,
) -> EventSourceResponse:
    """One project's events as SSE (subscribe). Resumes from Last-Event-ID, else `after` (checked
    against `afterHash` when given), else the cursor of (user, clientId), else the head."""
    principal = stream_principal(request, parts, token)
    if after_hash is not None and after is None:
        raise bad_cursor("afterHash needs the `after` whose event it is")
    last_event_id = request.headers.get("last-event-id")
    if last_event_id is not None:
        # The browser's own reconnect: the URL still carries the first `after` and its hash, which
        # name another position than Last-Event-ID; it is the seq that counts, unchecked.
        after = parse_seq(last_event_id, "Last-Event-ID")
        after_hash = None
    hashes = {project_id: after_hash} if after_hash is not None else None
    return await open_stream(
        parts, principal, checked_client_id(client_id), {project_id: after}, vector=False, hashes=hashes
    )


@router.get("/api/stream", responses=SSE_RESPONSES, response_class=EventSourceResponse)
async def multi_stream(
    request: Request,
    parts: StreamsDep,
    projects: Annotated[str, Query(description="comma-separated project ids", min_length=1)],
    client_id: Annotated[str | None, Query(alias="clientId", description="whose durable cursors to resume")] = None,
    after: Annotated[str | None, Query(description="a position vector, P1:5,P2:9")] = None,
    token: Annotated[str | None, Query(description="the token, for EventSource (no headers)")] = None,
) -> EventSourceResponse:
    """Several projects' events on one stream (subscribe on each). Each `id:` is the position vector
    after the event; Last-Event-ID (else `after`) resumes every project it names, the others resume
    from the cursor, else the head."""
    principal = stream_principal(request, parts, token)
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
    return await open_stream(parts, principal, checked_client_id(client_id), asked, vector=True)
