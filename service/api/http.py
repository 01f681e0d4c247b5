"""The HTTP API of docs/protocol.md §3: thin routes over eventlog.py and cursors.py.

Every failure, including malformed JSON, FastAPI's own validation errors, unknown routes and a
database outage, is answered with the contract's error body `{"error", "message", "field"?}`.
Bodies are read and parsed here rather than by FastAPI so that size (413), syntax (400) and shape
(422) are told apart, in that order, before anything touches the database.
"""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import orjson
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, HTMLResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import PROTOCOL_VERSION, __version__, cursors, eventlog, retention, state, traces
from ..codes import ErrorCode
from ..db import ConnectionLost, Database
from ..messages import (
    HASH_PATTERN,
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_SAFE_INTEGER,
    AckList,
    AckRequest,
    AckResult,
    CursorList,
    ErrorBody,
    Event,
    EventPage,
    EventType,
    Health,
    InvalidData,
    Liveness,
    Project,
    ProjectCreate,
    ProjectList,
    ProjectState,
    PublishBatchRequest,
    PublishBatchResult,
    PublishRequest,
    Retention,
    check,
    event_data,
    format_timestamp,
)
from ..session import history_rewritten, rewritten_at
from . import errors
from .dependencies import AppenderDep, Auth, BatchGatesDep, DatabaseDep, MetricsDep, ReadinessDep, SettingsDep, require
from .errors import ERRORS, ApiError, error_response, outcome_unknown, project_missing

JSON = "application/json"
M = TypeVar("M", bound=BaseModel)


def json_response(content: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status, media_type=JSON)


# --- reading a request -------------------------------------------------------------------------------


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body: 413 past `limit` bytes, told by Content-Length before reading, else while reading."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(ErrorCode.TOO_LARGE, f"body is {declared} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(ErrorCode.TOO_LARGE, f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: Request, limit: int = MAX_MESSAGE_BYTES) -> Any:
    """The request body parsed as JSON: 413 past `limit` bytes (before parsing), 400 when malformed."""
    body = await read_body(request, limit)
    if not body:
        raise ApiError(ErrorCode.INVALID_JSON, "the body is empty; expected a JSON object")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ApiError(ErrorCode.INVALID_JSON, f"the body is not valid JSON: {exc}") from None


def validate(model: type[M], value: Any, *, prefix: str = "") -> M:
    """`value` as `model`, or 422 `invalid_data` naming the first offending field as a dotted path."""
    try:
        return check(model, value, prefix=prefix)
    except InvalidData as exc:
        raise ApiError(ErrorCode.INVALID_DATA, exc.message, field=exc.field) from None


def validate_event_data(type: str, data: Any, *, prefix: str = "") -> dict[str, Any]:
    try:
        return event_data(type, data)
    except InvalidData as exc:
        if not prefix:
            raise ApiError(ErrorCode.INVALID_DATA, exc.message, field=exc.field) from None
        raise ApiError(ErrorCode.INVALID_DATA, f"{prefix}.{exc.message}", field=f"{prefix}.{exc.field}") from None


def same_project(body: PublishRequest, project_id: str, *, prefix: str = "") -> None:
    """A publish body may repeat its projectId (a client re-sending an event it holds); it must match."""
    if body.project_id is not None and body.project_id != project_id:
        field = f"{prefix}.projectId" if prefix else "projectId"
        raise ApiError(
            ErrorCode.INVALID_DATA,
            f"{field}: {body.project_id!r} does not match the URL's project {project_id!r}",
            field=field,
        )


def parse_time(value: str | None, field: str) -> datetime | None:
    """An ISO 8601 time from a query (UTC when it names no offset), rounded up to the millisecond: the
    bound on `created_at` that selects by the wire's `timestamp`, which is `created_at` cut to the
    millisecond (eventlog.Filter). 422 `invalid_data` naming `field` when it is not a time."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        if moment.microsecond % 1000:
            moment += timedelta(microseconds=1000 - moment.microsecond % 1000)
        return moment
    except (ValueError, OverflowError):
        raise ApiError(
            ErrorCode.INVALID_DATA,
            f"{field}: expected an ISO 8601 time such as 2026-12-02T07:28:45.123Z, got {value!r}",
            field=field,
        ) from None


async def _filters(
    type: Annotated[EventType | None, Query(description="only events of this type")] = None,
    since: Annotated[
        str | None, Query(description="only events with timestamp >= since (ISO 8601; UTC without an offset)")
    ] = None,
    until: Annotated[str | None, Query(description="only events with timestamp < until (ISO 8601)")] = None,
    subject: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="only events about this run id, pull-request number or head sha (data.runId, "
            "data.number, data.prNumber, data.headSha)",
        ),
    ] = None,
) -> eventlog.Filter:
    if subject is not None and "\x00" in subject:
        raise ApiError(ErrorCode.INVALID_DATA, "subject: must not contain U+0000", field="subject")
    return eventlog.Filter(
        type=type, since=parse_time(since, "since"), until=parse_time(until, "until"), subject=subject
    )


Filters = Annotated[eventlog.Filter, Depends(_filters)]
"""The filters of history and export (docs/protocol.md §7.3), checked before anything else (422)."""

After = Annotated[
    int | None,
    Query(
        ge=0,
        le=MAX_SAFE_INTEGER,
        description="only events with seq > after; below the oldest kept, 410 `history_truncated` "
        "(absent: from the oldest kept)",
    ),
]
AfterHash = Annotated[
    str | None,
    Query(
        alias="afterHash",
        pattern=HASH_PATTERN,
        description="extension: the hash of the event at `after` as the client has it; another event there (or "
        "none: beyond the head), 409 `history_rewritten` (docs/protocol.md §7.5)",
    ),
]
Before = Annotated[int | None, Query(ge=1, le=MAX_SAFE_INTEGER, description="only events with seq < before")]


# --- routes ------------------------------------------------------------------------------------------

router = APIRouter()


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {JSON: {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


@router.get("/healthz", response_model=Liveness, responses={503: {"model": ErrorBody}}, tags=["health"])
async def healthz(database: DatabaseDep) -> Response:
    """200 while the database answers, with the release and the wire contract's version; 503
    `unavailable` otherwise."""
    if await database.healthy():
        return json_response({"status": "ok", "version": __version__, "protocol": PROTOCOL_VERSION})
    return error_response(ErrorCode.UNAVAILABLE, "the database is unreachable", headers={"Retry-After": "1"})


@router.get("/readyz", response_model=Health, responses={503: {"model": ErrorBody}}, tags=["health"])
async def readyz(running: ReadinessDep) -> Response:
    """Whether this instance should be sent traffic: the database answers, the LISTEN connection is up
    (else live delivery would wait for the 2 s re-read), and it is not shutting down. 503 names what
    is missing. `/healthz` is liveness: the process and its database."""
    missing = []
    if running.draining:
        missing.append("shutting down")
    if not running.listener.connected.is_set():
        missing.append("the LISTEN connection is down (live delivery falls back to a re-read every 2 s)")
    if not await running.database.healthy():
        missing.append("the database is unreachable")
    if missing:
        return error_response(ErrorCode.UNAVAILABLE, "not ready: " + "; ".join(missing), headers={"Retry-After": "1"})
    return json_response({"status": "ok"})


@router.post(
    "/api/projects",
    status_code=201,
    response_model=Project,
    responses={**ERRORS, 409: {"model": ErrorBody}},
    openapi_extra=_body(ProjectCreate),
    tags=["projects"],
)
async def create_project(request: Request, principal: Auth, database: DatabaseDep, settings: SettingsDep) -> Response:
    """Create a project (admin). The token must name the project's id, or `*`."""
    if not principal.has("admin"):
        raise ApiError(ErrorCode.FORBIDDEN, "creating projects needs the 'admin' scope")
    body = validate(ProjectCreate, await read_json(request))
    if not principal.names(body.id):
        raise ApiError(ErrorCode.FORBIDDEN, f"this token does not grant access to project {body.id!r}")
    async with database.connection() as conn:
        try:
            project = await eventlog.create_project(
                conn,
                id=body.id,
                name=body.name,
                repo=body.repo,
                webhook_secret=body.webhook_secret,
                partition_events=settings.partition_events,
            )
        except eventlog.ProjectExists:
            raise ApiError(ErrorCode.EXISTS, f"project {body.id!r} already exists", field="id") from None
        except eventlog.RepoTaken:
            raise ApiError(
                ErrorCode.INVALID_DATA, f"repo: {body.repo!r} belongs to another project", field="repo"
            ) from None
    return json_response(project.to_dict(), 201)


@router.put(
    "/api/projects/{project_id}/retention",
    response_model=Retention,
    responses=ERRORS,
    openapi_extra=_body(Retention),
    tags=["projects"],
)
async def set_retention(project_id: str, request: Request, principal: Auth, database: DatabaseDep) -> Response:
    """Set how much of the project's log is kept (admin): `{"keepDays":D}`, `{"keepEvents":N}` or
    `{"forever":true}`. The next prune applies it; the answer is the policy now in force."""
    require(principal, "admin", project_id)
    body = validate(Retention, await read_json(request))
    given = [name for name, value in body.model_dump(by_alias=True).items() if value is not None]
    if len(given) != 1:
        raise ApiError(ErrorCode.INVALID_DATA, "give exactly one of keepDays, keepEvents and forever")
    policy = retention.Policy(keep_days=body.keep_days, keep_events=body.keep_events)
    async with database.connection() as conn:
        if not await retention.set_policy(conn, project_id, policy):
            raise project_missing(project_id)
    return json_response(policy.to_dict())


@router.get("/api/projects", response_model=ProjectList, responses=ERRORS, tags=["projects"])
async def list_projects(principal: Auth, database: DatabaseDep) -> Response:
    """The projects this token names, with their heads."""
    async with database.connection() as conn:
        projects = await eventlog.list_projects(conn, principal.projects)
    return json_response({"projects": [p.to_dict() for p in projects]})


@router.post(
    "/api/projects/{project_id}/events",
    status_code=201,
    response_model=Event,
    responses={**ERRORS, 200: {"model": Event, "description": "the original event of a repeated messageId"}},
    openapi_extra=_body(PublishRequest),
    tags=["events"],
)
async def publish(project_id: str, request: Request, principal: Auth, appender: AppenderDep) -> Response:
    """Append an event (publish). 201 with the new event; 200 with the original for a repeated messageId."""
    require(principal, "publish", project_id)
    body = validate(PublishRequest, await read_json(request))
    same_project(body, project_id)
    data = validate_event_data(body.type, body.data)
    # The messageId exists before the first attempt, so an unknown outcome can name it (§7.2).
    message_id = body.message_id or str(uuid.uuid4())
    try:  # group commit: concurrent publishes (HTTP and WebSocket alike) share one transaction
        event, created = await appender.append(project_id=project_id, type=body.type, data=data, message_id=message_id)
    except eventlog.ProjectNotFound:
        raise project_missing(project_id) from None
    except eventlog.OutcomeUnknown as exc:
        raise outcome_unknown([exc.message_id]) from exc
    return Response(event.encode(), status_code=201 if created else 200, media_type=JSON)


@router.post(
    "/api/projects/{project_id}/events/batch",
    status_code=201,
    response_model=PublishBatchResult,
    responses={
        **ERRORS,
        200: {"model": PublishBatchResult, "description": "every messageId was already in the log"},
    },
    openapi_extra=_body(PublishBatchRequest),
    tags=["events"],
)
async def publish_batch(
    project_id: str, request: Request, principal: Auth, database: DatabaseDep, gates: BatchGatesDep
) -> Response:
    """Append up to 1,000 events in one transaction (publish): all or none, contiguous seqs in the order
    given, each idempotent on its messageId. 201 when any was appended; 200 when none was new. A bad
    event refuses the whole batch, naming it (`events.3.data.status`)."""
    require(principal, "publish", project_id)
    raw = await read_json(request, MAX_BATCH_BYTES)
    body = validate(PublishBatchRequest, raw)
    appends = []
    for i, event in enumerate(body.events):
        prefix = f"events.{i}"
        size = len(orjson.dumps(raw["events"][i]))
        if size > MAX_MESSAGE_BYTES:  # as one publish would be: every event must fit one message
            raise ApiError(
                ErrorCode.TOO_LARGE, f"{prefix} is {size} bytes; an event's limit is {MAX_MESSAGE_BYTES}", field=prefix
            )
        same_project(event, project_id, prefix=prefix)
        data = validate_event_data(event.type, event.data, prefix=prefix)
        appends.append(
            eventlog.Append(project_id, event.type, data, event.message_id)
            if event.message_id
            else eventlog.Append(project_id, event.type, data)
        )
    started = traces.now()
    try:
        # At most two batches per project at once: a project whose row is locked elsewhere holds two
        # pooled connections waiting for it, not the pool (the rest are answered busy).
        async with gates.hold(project_id, database.timeout), database.connection() as conn:
            outcomes = await eventlog.append_many(conn, appends, notify=database.notify)  # one transaction: all or none
    except ConnectionLost as exc:
        raise outcome_unknown([a.message_id for a in appends], batch=True) from exc
    results = []
    for outcome in outcomes:
        if isinstance(outcome, eventlog.ProjectNotFound):
            raise project_missing(project_id)
        stored, created = outcome
        results.append({"seq": stored.seq, "messageId": stored.message_id, "created": created})
    traces.publish_batch(project_id, outcomes, started)
    status = 201 if any(r["created"] for r in results) else 200
    return json_response({"projectId": project_id, "events": results}, status)


TRUNCATABLE = {**ERRORS, 410: {"model": ErrorBody}}  # reads that may start below the oldest event kept
CHECKED = {**TRUNCATABLE, 409: {"model": ErrorBody}}  # reads that may check the client's event (afterHash)


def read_start(project_id: str, bounds: eventlog.Bounds | None, after: int | None) -> int:
    """Where a history read or an export starts: after the `after` asked for, unless events after it
    were pruned (410 `history_truncated`, docs/protocol.md §7.4); without one, from the oldest event
    kept (so that a page that names no start, such as the dashboard's newest-first page, keeps
    working once the log is pruned)."""
    if bounds is None:
        raise project_missing(project_id)
    if after is None:
        return bounds.oldest - 1
    if eventlog.truncated(after, bounds.oldest):
        raise truncated_error(eventlog.HistoryTruncated(after, bounds.oldest, bounds.head))
    return after


def truncated_error(exc: eventlog.HistoryTruncated) -> ApiError:
    """410 `history_truncated`: the JSON error body, with `oldest` and `stateSeq` (§7.4)."""
    return ApiError(ErrorCode.HISTORY_TRUNCATED, str(exc), extra={"oldest": exc.oldest, "stateSeq": exc.head})


@router.get("/api/projects/{project_id}/events", response_model=EventPage, responses=CHECKED, tags=["events"])
async def history(
    project_id: str,
    principal: Auth,
    database: DatabaseDep,
    where: Filters,
    after: After = None,
    after_hash: AfterHash = None,
    before: Before = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
) -> Response:
    """A page of the log (subscribe or audit). `next` is the after (asc) or before (desc) of the next
    page; with the same filters, the next page continues the same selection. With `afterHash`, the
    log's event at `after` must be the one the client has (§7.5)."""
    require(principal, ("subscribe", "audit"), project_id)
    if after_hash is not None and after is None:
        raise ApiError(ErrorCode.INVALID_CURSOR, "afterHash needs the `after` whose event it is", status=400)
    async with database.connection() as conn:
        if after_hash is None:
            bounds = await eventlog.bounds(conn, project_id)
        else:
            assert after is not None
            found = await cursors.find_start(
                conn, project_id=project_id, user=principal.user, client_id="", cursor=False, after=after
            )
            bounds = None if found is None else eventlog.Bounds(found.oldest, found.head)
            if found is not None and (
                after > found.head
                or rewritten_at(
                    after=after,
                    after_hash=after_hash,
                    head=found.head,
                    stored=None,
                    cursor_hash=None,
                    log_hash=found.log_hash,
                )
                is not None
            ):
                refusal = history_rewritten(project_id, after, found.head)
                raise ApiError(refusal.code, refusal.message, extra={"seq": after, "stateSeq": found.head})
        start = read_start(project_id, bounds, after)
        events, next_cursor = await eventlog.read_page(
            conn, project_id, after=start, before=before, limit=limit, where=where, order=order
        )
    body = b'{"events":[' + b",".join(e.encode() for e in events) + b'],"next":' + orjson.dumps(next_cursor) + b"}"
    return Response(body, media_type=JSON)


EXPORT_PAGE = 1000  # events read per query of an export, each only when the previous ones have been sent
CSV_COLUMNS = ("seq", "timestamp", "type", "messageId", "hash", "data")
EXPORT_TYPES = {"ndjson": "application/x-ndjson", "csv": "text/csv; charset=utf-8"}


def csv_rows(events: Sequence[eventlog.StoredEvent], *, header: bool = False) -> bytes:
    """Events as CSV lines (RFC 4180, as Python's csv module writes them): `data` is the event's JSON,
    `hash` its chain hash in lowercase hex, as on the wire."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    if header:
        writer.writerow(CSV_COLUMNS)
    for e in events:
        writer.writerow((e.seq, format_timestamp(e.created_at), e.type, e.message_id, e.hash.hex(), e.data))
    return out.getvalue().encode()


class ExportOvertaken(Exception):
    """A prune passed an export under way: the response is aborted (docs/protocol.md §7.4)."""


async def export_body(
    database: Database,
    project_id: str,
    *,
    after: int,
    before: int,
    where: eventlog.Filter,
    ranges: Sequence[eventlog.SeqRange],
    format: Literal["ndjson", "csv"],
) -> AsyncIterator[bytes]:
    """The export's body, a page of events at a time. The next page is read (on a pooled connection
    taken for that one query) only once the response has taken the previous one: the server sends
    while the client reads, and holds one page at most, however slowly the client downloads.

    A prune that passes an export under way (its next page would start below the watermark) aborts the
    response, which the client sees as a transfer cut short, never as a whole export with a hole: the
    watermark is read after each page, so a page read before the prune committed is the only kind sent."""
    if format == "csv":
        yield csv_rows([], header=True)
    while True:
        async with database.connection() as conn:
            events, next_cursor = await eventlog.read_page(
                conn, project_id, after=after, before=before, limit=EXPORT_PAGE, where=where, ranges=ranges
            )
            bounds = await eventlog.bounds(conn, project_id)
        if bounds is not None and eventlog.truncated(after, bounds.oldest):
            raise ExportOvertaken(eventlog.HistoryTruncated(after, bounds.oldest, bounds.head))
        if events:
            yield b"".join(e.encode() + b"\n" for e in events) if format == "ndjson" else csv_rows(events)
        if next_cursor is None:
            return
        after = next_cursor


EXPORT_CONTENT = {
    "description": "every matching event: ndjson, one event's JSON per line; or CSV with a header row",
    "content": {media: {"schema": {"type": "string"}} for media in EXPORT_TYPES.values()},
}


@router.get(
    "/api/projects/{project_id}/export",
    responses={**TRUNCATABLE, 200: EXPORT_CONTENT},
    response_class=Response,
    tags=["audit"],
)
async def export(
    project_id: str,
    principal: Auth,
    database: DatabaseDep,
    where: Filters,
    after: After = None,
    before: Before = None,
    format: Annotated[Literal["ndjson", "csv"], Query(description="ndjson (the default) or csv")] = "ndjson",
) -> Response:
    """Every event that history would answer for these filters, in seq order, without a page limit
    (audit): the log as it was when the export began (up to its head then), streamed as it is read."""
    require(principal, "audit", project_id)
    async with database.connection() as conn:
        bounds = await eventlog.bounds(conn, project_id)
        start = read_start(project_id, bounds, after)
        assert bounds is not None
        head = bounds.head
        ranges = await eventlog.seq_ranges(conn, project_id, where)
    body = export_body(
        database,
        project_id,
        after=start,
        before=head + 1 if before is None else min(before, head + 1),
        where=where,
        ranges=ranges,
        format=format,
    )
    filename = f"{project_id}-events.{format}"
    return StreamingResponse(
        body, media_type=EXPORT_TYPES[format], headers={"Content-Disposition": f'attachment; filename="{filename}"'}
    )


@router.get("/api/projects/{project_id}/state", response_model=ProjectState, responses=TRUNCATABLE, tags=["events"])
async def project_state(
    project_id: str,
    principal: Auth,
    database: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=state.MAX_LIMIT, description="items per list")] = state.DEFAULT_LIMIT,
    at: Annotated[
        int | None, Query(ge=0, le=MAX_SAFE_INTEGER, description="the state as of this seq (audit); at most the head")
    ] = None,
) -> Response:
    """The project's state folded from the log, as of `seq` (subscribe or audit). Subscribe with after =
    seq. With `at` (audit), the state as of that seq: the fold of the events up to it."""
    require(principal, ("subscribe", "audit") if at is None else "audit", project_id)
    async with database.connection() as conn:
        if at is None:
            snapshot = await state.read(conn, project_id, limit=limit)
        else:
            bounds = await eventlog.bounds(conn, project_id)
            if bounds is None:
                raise project_missing(project_id)
            if at > bounds.head:
                raise ApiError(
                    ErrorCode.INVALID_DATA, f"at: {at} is beyond the project's head {bounds.head}", field="at"
                )
            # Below the watermark, the state's stretches point at pruned events (docs/protocol.md §7.4); a
            # prune that passes `at` while it is read makes the answer incomplete, hence the second look.
            if eventlog.truncated(at, bounds.oldest):
                raise truncated_error(eventlog.HistoryTruncated(at, bounds.oldest, bounds.head))
            snapshot = await state.read_at(conn, project_id, at, limit=limit)
            after = await eventlog.bounds(conn, project_id)
            if after is not None and eventlog.truncated(at, after.oldest):
                raise truncated_error(eventlog.HistoryTruncated(at, after.oldest, after.head))
    if snapshot is None:
        raise project_missing(project_id)
    return Response(snapshot.encode(), media_type=JSON)


@router.get("/api/projects/{project_id}/acks", response_model=AckList, responses=ERRORS, tags=["audit"])
async def ack_ledger(
    project_id: str,
    principal: Auth,
    database: DatabaseDep,
    seq: Annotated[int, Query(ge=0, le=MAX_SAFE_INTEGER, description="the seq asked about; at most the head")],
) -> Response:
    """Every client whose acks reached `seq` or beyond, with the advance of its cursor that first did
    (audit), in the order they got there."""
    require(principal, "audit", project_id)
    async with database.connection() as conn:
        head = await eventlog.head(conn, project_id)
        if head is None:
            raise project_missing(project_id)
        if seq > head:
            raise ApiError(ErrorCode.INVALID_DATA, f"seq: {seq} is beyond the project's head {head}", field="seq")
        rows = await cursors.reached(conn, project_id, seq)
    return json_response({"acks": [r.to_dict() for r in rows]})


@router.get("/api/projects/{project_id}/cursors", response_model=CursorList, responses=ERRORS, tags=["cursors"])
async def list_cursors(project_id: str, principal: Auth, database: DatabaseDep) -> Response:
    """How far each client has acknowledged this project (admin): the auditor's view."""
    require(principal, "admin", project_id)
    async with database.connection() as conn:
        if await eventlog.head(conn, project_id) is None:
            raise project_missing(project_id)
        rows = await cursors.list_for_project(conn, project_id)
    return json_response({"cursors": [c.to_dict() for c in rows]})


@router.post(
    "/api/projects/{project_id}/ack",
    response_model=AckResult,
    responses=ERRORS,
    openapi_extra=_body(AckRequest),
    tags=["cursors"],
)
async def ack(project_id: str, request: Request, principal: Auth, database: DatabaseDep) -> Response:
    """Acknowledge everything up to `seq` for `clientId` (subscribe); the cursor never moves back."""
    require(principal, "subscribe", project_id)
    body = validate(AckRequest, await read_json(request))
    async with database.connection() as conn:
        try:
            seq = await cursors.advance(
                conn, project_id=project_id, user=principal.user, client_id=body.client_id, seq=body.seq
            )
        except eventlog.ProjectNotFound:
            raise project_missing(project_id) from None
        except cursors.AckBeyondHead as exc:
            raise ApiError(ErrorCode.INVALID_ACK, str(exc), field="seq") from None
    return json_response({"seq": seq})


METRICS_TEXT = {"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}}


# response_class=Response, which has no media type of its own: the errors are then documented as
# the JSON they are, not as text/plain.
@router.get("/metrics", responses={**ERRORS, 200: METRICS_TEXT}, tags=["health"], response_class=Response)
async def metrics(principal: Auth, metrics: MetricsDep, database: DatabaseDep) -> Response:
    """Prometheus metrics of this process: every project's ids and heads, so only for `admin` on every
    project (`*`) or the `metrics` scope."""
    if not ("metrics" in principal.scopes or (principal.has("admin") and principal.projects is None)):
        raise ApiError(ErrorCode.FORBIDDEN, "metrics need the 'metrics' scope, or 'admin' on every project ('*')")
    await metrics.read_log(database.connection)
    return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)


# --- errors, the dashboard, the OpenAPI document ------------------------------------------------------

_RESERVED_PREFIXES = ("api", "ws", "webhooks", "healthz", "readyz", "metrics")

# The dashboard keeps a token in localStorage, so no script may run on its pages but its own bundle
# (no inline script, no other origin), no other site may frame it (clickjacking), and no page
# address leaves in a Referer. 'self' in connect-src covers its own /ws (CSP Level 3).
DASHBOARD_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _frontend_routes(app: FastAPI, dist: Path | None) -> None:
    index = dist / "index.html" if dist is not None else None
    root = dist.resolve() if dist is not None else None

    @app.api_route("/{path:path}", methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"], include_in_schema=False)
    async def frontend(path: str, request: Request) -> Response:
        """The built dashboard (a single-page app); its client-side routes all get index.html."""
        if path.startswith(_RESERVED_PREFIXES):
            # This route also catches known API paths asked with the wrong method: tell them apart.
            known = any(
                r is not request.scope.get("route") and r.matches(request.scope)[0] is Match.PARTIAL
                for r in app.router.routes
            )
            raise StarletteHTTPException(405 if known else 404)
        if request.method not in ("GET", "HEAD"):
            raise StarletteHTTPException(405)
        if index is None or not index.exists():
            return HTMLResponse(
                headers=DASHBOARD_HEADERS,
                content="<!doctype html><title>Herald</title><h1>Herald</h1><p>The API is running. The dashboard "
                "is not built: run <code>make run</code> (or <code>npm run build</code> in "
                "<code>frontend/</code>).</p>",
            )
        assert dist is not None and root is not None
        candidate = (dist / path).resolve()
        if path and candidate.is_file() and candidate.is_relative_to(root):
            return FileResponse(candidate, headers=DASHBOARD_HEADERS)
        return FileResponse(index, headers={**DASHBOARD_HEADERS, "Cache-Control": "no-cache"})


def install(app: FastAPI, *, frontend_dist: Path | None) -> None:
    """Attach the routes, the error handlers and the dashboard to `app`."""

    errors.install(app)
    app.include_router(router)
    _frontend_routes(app, frontend_dist)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in (PublishRequest, PublishBatchRequest, ProjectCreate, AckRequest, Retention):
                definition = model.model_json_schema(ref_template="#/components/schemas/{model}")
                components.update(definition.pop("$defs", {}))
                components[model.__name__] = definition
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
