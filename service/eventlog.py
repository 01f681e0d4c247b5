"""The event log: projects and their append-only, gap-free event sequences.

Plain async functions over an asyncpg connection. The guarantees live in the SQL:

* `append` takes the next seq by incrementing `projects.head` in the same statement that inserts the
  event. The row lock on the project is held until commit, so appends to one project are serialized,
  commit order equals seq order, and a rolled-back append gives its number back. Appends to different
  projects lock different rows and never wait for each other.
* The NOTIFY is part of the same statement and so of the same transaction: it is sent if and only if
  the event commits. It is only a wake-up hint (`project:seq`); readers always re-read the table.
* A repeated `message_id` appends nothing and returns the original event.
* The same statement records the event as the latest of its subject (`subject`) in `project_state`,
  so the project state (state.py) is always exactly the fold of the committed log.
* The same statement extends the project's audit chain (audit.py): the event's hash covers the previous
  one, kept on the project row it locks, so the chain costs no read of the log.
* `append_many` appends a batch, over any number of projects, in one transaction with one NOTIFY per
  project, under the same guarantees; `Appender` is the group commit that feeds it: the appends that
  arrive while a transaction is committing share the next one (docs/delivery.md, "Group commit").
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, cast

import asyncpg
import orjson

from . import audit, partitions, traces
from .db import BUSY_ERRORS, UNAVAILABLE_ERRORS, ConnectionLost, DatabaseBusy
from .messages import format_timestamp

NOTIFY_CHANNEL = "herald_events"

logger = logging.getLogger("herald.eventlog")


class ProjectNotFound(Exception):
    pass


class OutcomeUnknown(ConnectionLost):
    """An append whose transaction may have committed without the service seeing the reply (the
    connection was lost, or a statement timed out, after it was sent). `message_id` is the id it was
    appended under, if it was: a retry with it appends at most once (docs/protocol.md §7.2)."""

    def __init__(self, message_id: str, cause: str) -> None:
        super().__init__(cause)
        self.message_id = message_id


class ProjectExists(Exception):
    pass


class RepoTaken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One row of the log. `data` is the JSON text exactly as PostgreSQL returns it, so an event is
    encoded without parsing and re-serializing its payload."""

    project_id: str
    seq: int
    message_id: str
    type: str
    data: str
    created_at: datetime
    hash: bytes

    def encode(self) -> bytes:
        """The event's wire JSON (docs/protocol.md §2). Encode once, send to many."""
        return orjson.dumps(
            {
                "type": self.type,
                "projectId": self.project_id,
                "seq": self.seq,
                "messageId": self.message_id,
                "timestamp": format_timestamp(self.created_at),
                "data": orjson.Fragment(self.data),
                "hash": self.hash.hex(),
            }
        )


@dataclass(frozen=True, slots=True)
class ProjectRow:
    id: str
    name: str
    repo: str | None
    head: int

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "repo": self.repo, "head": self.head}


# --- projects ----------------------------------------------------------------------------------------


async def create_project(
    conn: asyncpg.Connection,
    *,
    id: str,
    name: str,
    repo: str | None,
    webhook_secret: str | None = None,
    partition_events: int = partitions.DEFAULT_EVENTS,
) -> ProjectRow:
    """A new project, with its log's first partition; `webhook_secret`: the secret of its own GitHub hook
    (/webhooks/github/ID); `partition_events`: seqs per partition of its log (partitions.py)."""
    try:
        async with conn.transaction():
            row = await conn.fetchrow(
                "INSERT INTO projects (id, name, repo, webhook_secret) VALUES ($1, $2, $3, $4) "
                "RETURNING id, name, repo, head",
                id,
                name,
                repo,
                webhook_secret,
            )
            await partitions.extend(conn, id, upto=partition_events, size=partition_events)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "projects_repo_key":
            raise RepoTaken(repo) from None
        raise ProjectExists(id) from None
    return ProjectRow(**dict(row))


async def list_projects(conn: asyncpg.Connection, ids: frozenset[str] | None) -> list[ProjectRow]:
    """Every project, or those in `ids`, ordered by id."""
    if ids is None:
        rows = await conn.fetch("SELECT id, name, repo, head FROM projects ORDER BY id")
    else:
        rows = await conn.fetch(
            "SELECT id, name, repo, head FROM projects WHERE id = ANY($1::text[]) ORDER BY id", list(ids)
        )
    return [ProjectRow(**dict(r)) for r in rows]


async def head(conn: asyncpg.Connection, project_id: str) -> int | None:
    """The project's latest seq, or None when there is no such project."""
    value: int | None = await conn.fetchval("SELECT head FROM projects WHERE id = $1", project_id)
    return value


@dataclass(frozen=True, slots=True)
class Bounds:
    """What a project's log holds: the seqs `oldest` to `head` (none when oldest > head). `oldest` is
    the low watermark: 1 until events are pruned, then the oldest seq kept."""

    oldest: int
    head: int


async def bounds(conn: asyncpg.Connection, project_id: str) -> Bounds | None:
    """The project's oldest kept seq and head, read together (one row, one snapshot); None when there is
    no such project."""
    row = await conn.fetchrow("SELECT oldest, head FROM projects WHERE id = $1", project_id)
    return None if row is None else Bounds(row["oldest"], row["head"])


def truncated(after: int, oldest: int) -> bool:
    """Whether a read of the events after `after` would miss some that were pruned: the one rule of
    `history_truncated` (docs/protocol.md §7.4). Starting right before the oldest kept event
    (after = oldest - 1) misses nothing; with oldest 1 nothing is ever truncated."""
    return after < oldest - 1


class HistoryTruncated(Exception):
    """A read would start below the oldest event the log keeps (`truncated`). The client reloads the
    project's state (which is at `head` when this was answered) and resumes after its seq."""

    def __init__(self, after: int, oldest: int, head: int) -> None:
        super().__init__(
            f"the events after {after} are no longer kept (the oldest kept is {oldest}): "
            f"reload the project's state (it is at seq {head}) and resume after its seq"
        )
        self.after = after
        self.oldest = oldest
        self.head = head


async def heads(conn: asyncpg.Connection, project_ids: Sequence[str]) -> dict[str, int]:
    """The latest seq of each of these projects that exists, in one query."""
    rows = await conn.fetch("SELECT id, head FROM projects WHERE id = ANY($1::text[])", list(project_ids))
    return {row["id"]: row["head"] for row in rows}


# --- appending ---------------------------------------------------------------------------------------


def subject(type: str, data: Mapping[str, Any]) -> list[Any] | None:
    """What an event is the latest word on, as a JSON array; None for a type without one.

    An agent run by `runId`; a pull request by repository (case-insensitively, as GitHub names
    them) and `number`; a validation by `name` and `headSha` (absent is a subject of its own). The
    project state keeps the latest event per (type, subject), and a client folding live events
    must key them the same way (docs/protocol.md). `data` is validated event data.
    """
    if type == "agent_run_progress":
        return [data["runId"]]
    if type == "pr_notification":
        return [data["repo"].lower(), data["number"]]
    if type == "validation_update":
        return [data["name"], data.get("headSha")]
    return None


# `subject` in SQL, hashed as the append statement hashes it (sha-256 of the canonical jsonb text), for the
# folds that run in the database (state.py's stretches). It must agree with `subject`: the tests of the
# state at a seq compare a fold by each.
SUBJECT_HASH_SQL = """sha256(convert_to(CASE type
    WHEN 'agent_run_progress' THEN jsonb_build_array(data -> 'runId')
    WHEN 'pr_notification' THEN jsonb_build_array(lower(data ->> 'repo'), data -> 'number')
    WHEN 'validation_update' THEN jsonb_build_array(data -> 'name', data -> 'headSha')
END::text, 'UTF8'))"""


# The wire timestamp (format_timestamp) as PostgreSQL spells it: both truncate to the millisecond.
_TIMESTAMP = """to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"')"""

# One statement, so one round trip and one atomic unit: take the seq and extend the chain (the canonical
# form's pieces $6 and $7 around the seq and the time, audit.pieces), insert the event, make it the
# latest of its subject ($5, absent for types without one), and notify. The subject is hashed from its
# canonical jsonb text (see tables.py); seqs only grow, so the guard on the update never fires in
# practice, but it keeps the state from ever moving back.
_APPEND = f"""
WITH next AS (
    UPDATE projects SET head = head + 1, last_hash = sha256(
        last_hash || $6::bytea
        || convert_to((head + 1)::text || '{audit.MIDDLE.decode()}' || {_TIMESTAMP}, 'UTF8')
        || $7::bytea
    ) WHERE id = $1 RETURNING head, last_hash
), event AS (
    INSERT INTO events (project_id, seq, message_id, type, data, hash)
    SELECT $1, next.head, $2, $3, $4::jsonb, next.last_hash FROM next
    RETURNING seq, created_at, data, hash
), id AS (
    INSERT INTO event_ids (project_id, message_id, seq) SELECT $1, $2, seq FROM event
), latest AS (
    INSERT INTO project_state (project_id, type, subject, seq)
    SELECT $1, $3, sha256(convert_to($5::jsonb::text, 'UTF8')), seq FROM event WHERE $5::jsonb IS NOT NULL
    ON CONFLICT (project_id, type, subject) DO UPDATE SET seq = excluded.seq
    WHERE project_state.seq < excluded.seq
)
SELECT seq, created_at, data::text AS data, hash,
    CASE WHEN $8::bool THEN pg_notify('{NOTIFY_CHANNEL}', $1 || ':' || seq) END
FROM event
"""

_EVENT_COLUMNS = "project_id, seq, message_id, type, data::text AS data, created_at, hash"


async def append(
    conn: asyncpg.Connection,
    *,
    project_id: str,
    type: str,
    data: dict[str, Any],
    message_id: str | None = None,
    notify: bool = True,
) -> tuple[StoredEvent, bool]:
    """Append one event; returns it and whether it is new. `notify` False: no NOTIFY (the wake-up bus's
    relay polls the heads instead, bus.py).

    Atomic: the seq, the row, the project state and the NOTIFY commit together or not at all. When the
    connection is in a transaction, the event commits with it (and the caller's transaction stays
    usable after a duplicate). `data` must already be validated for `type`.
    """
    message_id = message_id or str(uuid.uuid4())
    payload = orjson.dumps(data).decode()
    about = subject(type, data)
    before, after = audit.pieces(project_id=project_id, message_id=message_id, type=type, data=data)
    about_json = None if about is None else orjson.dumps(about).decode()
    args = (project_id, message_id, type, payload, about_json, before, after, notify)
    try:
        row = await _append_row(conn, args)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "event_ids_pkey":
            raise
        # The statement failed as a whole, so the head it incremented was rolled back with it.
        original = await get_by_message_id(conn, project_id, message_id)
        if original is None:  # pragma: no cover - the row we collided with cannot vanish from a log
            raise
        return original, False
    if row is None:
        raise ProjectNotFound(project_id)
    # The stored form (jsonb orders keys its own way), so every later read encodes to the same bytes.
    event = StoredEvent(project_id, row["seq"], message_id, type, row["data"], row["created_at"], row["hash"])
    return event, True


async def _append_row(conn: asyncpg.Connection, args: tuple[Any, ...]) -> asyncpg.Record | None:
    for attempt in (1, 2):
        try:
            if conn.is_in_transaction():
                async with conn.transaction():  # a savepoint
                    return await conn.fetchrow(_APPEND, *args)
            return await conn.fetchrow(_APPEND, *args)
        except asyncpg.CheckViolationError as exc:
            if attempt == 2 or not partitions.no_partition(exc):
                raise
            # The append outran the partitions made ahead (partitions.keep_ahead): make the next one.
            await partitions.extend(conn, args[0], upto=(await head(conn, args[0]) or 0) + 1)
    raise AssertionError("unreachable")


async def get_by_message_id(conn: asyncpg.Connection, project_id: str, message_id: str) -> StoredEvent | None:
    row = await conn.fetchrow(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE project_id = $1"
        " AND seq = (SELECT seq FROM event_ids WHERE project_id = $1 AND message_id = $2)",
        project_id,
        message_id,
    )
    return StoredEvent(**dict(row)) if row else None


# --- appending in groups ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Append:
    """One append of a batch: the arguments of `append`."""

    project_id: str
    type: str
    data: dict[str, Any]
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))


# Lock the batch's projects in id order (so that two batches sharing projects wait for each other rather
# than deadlock), reading their heads and last hashes, and the time the events will carry: appends to
# these projects are now serialized behind this one.
_LOCK = f"""
SELECT id, head, last_hash, {_TIMESTAMP} AS now FROM projects WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE
"""

# With the locks held, every earlier append to these projects has committed, so this sees them all.
_EXISTING = f"""
SELECT {_EVENT_COLUMNS} FROM events
WHERE (project_id, seq) IN (
    SELECT project_id, seq FROM event_ids
    WHERE (project_id, message_id) IN (SELECT * FROM unnest($1::text[], $2::text[]))
)
"""

# The rest of the batch in one statement: the events (seqs and hashes computed by the caller, contiguous
# after the locked heads), the new heads and last hashes, the latest event of each subject (the last one
# of the batch wins, as it would have appended one by one), and one NOTIFY per project with its new head.
_APPEND_MANY = f"""
WITH new AS (
    SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bytea[])
        AS n(project_id, seq, message_id, type, data, subject, hash)
), event AS (
    INSERT INTO events (project_id, seq, message_id, type, data, hash)
    SELECT project_id, seq, message_id, type, data::jsonb, hash FROM new
    RETURNING project_id, seq, created_at, data::text AS data, hash
), id AS (
    INSERT INTO event_ids (project_id, message_id, seq) SELECT project_id, message_id, seq FROM new
), head AS (
    UPDATE projects SET head = h.head, last_hash = h.last_hash
    FROM unnest($8::text[], $9::bigint[], $10::bytea[]) AS h(id, head, last_hash) WHERE projects.id = h.id
), latest AS (
    INSERT INTO project_state (project_id, type, subject, seq)
    SELECT DISTINCT ON (project_id, type, hash) project_id, type, hash, seq
    FROM (SELECT project_id, type, sha256(convert_to(subject::jsonb::text, 'UTF8')) AS hash, seq
          FROM new WHERE subject IS NOT NULL) AS s
    ORDER BY project_id, type, hash, seq DESC
    ON CONFLICT (project_id, type, subject) DO UPDATE SET seq = excluded.seq
    WHERE project_state.seq < excluded.seq
), notify AS (
    SELECT count(pg_notify('{NOTIFY_CHANNEL}', h.id || ':' || h.head)) AS n
    FROM unnest($8::text[], $9::bigint[]) AS h(id, head) WHERE $11::bool
)
SELECT event.project_id, event.seq, event.created_at, event.data, event.hash, notify.n FROM event, notify
"""


async def append_many(
    conn: asyncpg.Connection, appends: Sequence[Append], *, notify: bool = True
) -> list[tuple[StoredEvent, bool] | ProjectNotFound]:
    """Append a batch, over any number of projects, in one transaction; per append, in order: the
    event and whether it is new (as `append` returns them), or ProjectNotFound.

    The guarantees of `append`, for the batch as a whole: each project's new events take the next seqs
    in the batch's order, contiguous after the head; the events, heads, project state and NOTIFYs (one
    per project, with its new head) commit together or not at all; a messageId already in the log, or
    earlier in the batch, appends nothing and yields the original event. `data` must be validated.
    Opens its own transaction: `conn` must not be in one. `notify` as for `append`.
    """
    try:
        return await _append_many(conn, appends, notify)
    except asyncpg.CheckViolationError as exc:
        if not partitions.no_partition(exc):
            raise
    # The batch outran the partitions made ahead (partitions.keep_ahead): make what it needs, and again.
    for project_id in sorted({a.project_id for a in appends}):
        upto = (await head(conn, project_id) or 0) + sum(1 for a in appends if a.project_id == project_id)
        await partitions.extend(conn, project_id, upto=upto)
    return await _append_many(conn, appends, notify)


async def _append_many(
    conn: asyncpg.Connection, appends: Sequence[Append], notify: bool
) -> list[tuple[StoredEvent, bool] | ProjectNotFound]:
    results: list[tuple[StoredEvent, bool] | ProjectNotFound | None] = [None] * len(appends)
    async with conn.transaction():
        locked = await conn.fetch(_LOCK, sorted({a.project_id for a in appends}))
        heads: dict[str, int] = {r["id"]: r["head"] for r in locked}
        chain: dict[str, bytes] = {r["id"]: r["last_hash"] for r in locked}
        now = locked[0]["now"].encode() if locked else b""
        known = [a for a in appends if a.project_id in heads]
        rows = await conn.fetch(_EXISTING, [a.project_id for a in known], [a.message_id for a in known])
        existing = {(r["project_id"], r["message_id"]): StoredEvent(**dict(r)) for r in rows}
        fresh: dict[tuple[str, str], int] = {}  # (project, messageId) -> index of its new event
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [])
        for i, a in enumerate(appends):
            key = (a.project_id, a.message_id)
            if a.project_id not in heads:
                results[i] = ProjectNotFound(a.project_id)
            elif key in existing:
                results[i] = (existing[key], False)
            elif key not in fresh:
                fresh[key] = i
                seq = heads[a.project_id] = heads[a.project_id] + 1
                about = subject(a.type, a.data)
                before, after = audit.pieces(project_id=a.project_id, message_id=a.message_id, type=a.type, data=a.data)
                digest = chain[a.project_id] = audit.link(
                    chain[a.project_id], b"%b%d%b%b%b" % (before, seq, audit.MIDDLE, now, after)
                )
                for column, value in zip(
                    columns,
                    (a.project_id, seq, a.message_id, a.type, orjson.dumps(a.data).decode(),
                     None if about is None else orjson.dumps(about).decode(), digest),
                    strict=True,
                ):  # fmt: skip
                    column.append(value)
        if fresh:
            moved = sorted({appends[i].project_id for i in fresh.values()})
            rows = await conn.fetch(
                _APPEND_MANY, *columns, moved, [heads[p] for p in moved], [chain[p] for p in moved], notify
            )
            stored = {(r["project_id"], r["seq"]): r for r in rows}
            new_events: dict[tuple[str, str], StoredEvent] = {}
            for project_id, seq, message_id, type_ in zip(*columns[:4], strict=True):
                row = stored[(project_id, seq)]
                # The stored form of data, as `append` returns it, so every read encodes the same bytes.
                new_events[(project_id, message_id)] = StoredEvent(
                    project_id, seq, message_id, type_, row["data"], row["created_at"], row["hash"]
                )
            for i, a in enumerate(appends):
                if results[i] is None:
                    key = (a.project_id, a.message_id)
                    results[i] = (new_events[key], fresh[key] == i)  # a repeat within the batch: not new
    return [r for r in results if r is not None]


Outcome = tuple[StoredEvent, bool] | Exception  # of one append in a batch: the event and whether new, or why not


def _refused(exc: BaseException) -> bool:
    """An error about the statement (or a lock it waited for), not about the database being reachable."""
    return isinstance(exc, asyncpg.PostgresError) and not isinstance(exc, UNAVAILABLE_ERRORS)


async def _append_one(conn: asyncpg.Connection, a: Append, notify: bool) -> Outcome:
    try:
        return await append(
            conn, project_id=a.project_id, type=a.type, data=a.data, message_id=a.message_id, notify=notify
        )
    except ProjectNotFound as exc:
        return exc
    except asyncpg.PostgresError as exc:
        if not _refused(exc):
            raise
        if isinstance(exc, BUSY_ERRORS):  # its project's row is held elsewhere: this one waits, not others
            return DatabaseBusy(str(exc))
        refused: Exception = exc  # asyncpg's exceptions are untyped
        return refused


ConnectionFactory = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


def unknown(exc: Exception, message_id: str) -> Exception:
    """`exc` as what an append under `message_id` should raise: a connection lost after the append
    was sent leaves its outcome unknown, which says so and names the messageId to retry with."""
    if isinstance(exc, ConnectionLost) and not isinstance(exc, OutcomeUnknown):
        return OutcomeUnknown(message_id, str(exc))
    return exc


@dataclass(eq=False)
class _Pending:
    append: Append
    future: asyncio.Future[tuple[StoredEvent, bool]]


class Appender:
    """Group commit for this process's appends: `append` has the contract of the function `append`,
    but the appends that arrive while a transaction is committing are written together by the next
    one (`append_many`): one transaction, one statement and one NOTIFY per project for the lot. An
    append waits for no timer, only for the commit in progress, if any; alone, it is written at once.

    Every append has its messageId before the first attempt (`Append` makes one when the caller gave
    none). When no connection can be had, each append of the batch fails with DatabaseUnavailable:
    nothing was written. When the connection is lost (or a statement times out) once the batch was
    sent, the transaction may have committed without the reply arriving: each append fails with
    OutcomeUnknown, naming its messageId, and a retry with it appends at most once. When PostgreSQL
    refuses the batch's statement itself, its appends are retried one by one, so that one append the
    database refuses fails alone and the others are written.
    """

    def __init__(
        self,
        connection: ConnectionFactory,
        *,
        max_batch: int = 1000,
        writers: int = 1,
        notify: Callable[[], bool] = lambda: True,
    ) -> None:
        self._connection = connection
        self.notify = notify  # asked at each transaction: whether its appends NOTIFY (bus.py)
        self.max_batch = max_batch
        self.writers = writers  # transactions in flight at once (more was slower here: smaller batches)
        self._queue: list[_Pending] = []
        self._flushers: set[asyncio.Task[None]] = set()
        self.batches = 0  # transactions written, for the benchmarks and /metrics
        self.appended = 0

    async def append(
        self, *, project_id: str, type: str, data: dict[str, Any], message_id: str | None = None
    ) -> tuple[StoredEvent, bool]:
        """Append one event (see the module function `append`); raises ProjectNotFound."""
        return await self.submit(project_id=project_id, type=type, data=data, message_id=message_id)

    def submit(
        self, *, project_id: str, type: str, data: dict[str, Any], message_id: str | None = None
    ) -> asyncio.Future[tuple[StoredEvent, bool]]:
        """`append` without waiting: queue the append now and return the future of its outcome. Appends
        submitted one after another are written in that order (the futures resolve in that order too),
        so one caller's appends to a project take increasing seqs."""
        a = Append(project_id, type, data, message_id) if message_id else Append(project_id, type, data)
        pending = _Pending(a, asyncio.get_running_loop().create_future())
        traces.publish(a.project_id, a.message_id, pending.future)
        self._queue.append(pending)
        if len(self._flushers) < self.writers:
            self._flushers.add(asyncio.create_task(self._flush()))
        return pending.future

    async def _flush(self) -> None:
        try:
            await self._drain()
        finally:
            # Leave the set in the same step as the last look at the queue, so an append submitted
            # after that look finds no flusher and starts one. (A done-callback runs a step later: an
            # append submitted in between would wait for a flusher that had already finished.)
            self._flushers.discard(cast("asyncio.Task[None]", asyncio.current_task()))

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            try:
                outcomes = await self._write([p.append for p in batch])
            except asyncio.CancelledError:  # shutting down: its callers must not wait forever
                for p in batch:
                    p.future.cancel()
                raise
            except Exception as exc:  # the batch's error is each append's error
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(unknown(exc, p.append.message_id))
                continue
            self.batches += 1
            for p, outcome in zip(batch, outcomes, strict=True):
                if p.future.done():  # its caller went away
                    continue
                if isinstance(outcome, Exception):
                    p.future.set_exception(outcome)
                else:
                    self.appended += outcome[1]
                    p.future.set_result(outcome)

    async def _write(self, appends: list[Append]) -> list[Outcome]:
        notify = self.notify()
        async with self._connection() as conn:
            if len(appends) > 1:
                try:
                    return list(await append_many(conn, appends, notify=notify))
                except asyncpg.PostgresError as exc:
                    if not _refused(exc):
                        raise
                    # Something in the batch (the project locks rule out a collision with another
                    # appender): find it by appending one by one, so that only it fails.
                    logger.warning("a batch of %d was refused (%s); appending one by one", len(appends), exc)
            return [await _append_one(conn, a, notify) for a in appends]  # alone: one statement, one round trip

    async def close(self) -> None:
        """Let the transactions in progress finish (their callers get their answers)."""
        if self._flushers:
            await asyncio.wait(self._flushers)


# --- reading -----------------------------------------------------------------------------------------


async def read_after(conn: asyncpg.Connection, project_id: str, after: int, limit: int) -> list[StoredEvent]:
    """Up to `limit` events with seq > `after`, in seq order.

    Because seq order is commit order, what this returns is always a contiguous run: a reader never
    sees seq n+1 before seq n has committed.
    """
    rows = await conn.fetch(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE project_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        project_id,
        after,
        limit,
    )
    return [StoredEvent(**dict(r)) for r in rows]


@dataclass(frozen=True, slots=True)
class Run:
    """Events read in seq order, and whether the read stopped at one of its limits (more may follow).

    `oldest` and `head` are the project's as the same statement saw them: when `truncated(after,
    oldest)`, events after `after` were pruned and the run skips them (the reader must not deliver
    it as if contiguous). A prune deletes and raises `oldest` in one transaction, so one statement
    sees both or neither."""

    events: list[StoredEvent]
    full: bool
    oldest: int = 1
    head: int = 0


# Bounded in bytes as well as in events: the running total of the events' JSON sizes, in seq order,
# computed as the index is scanned (the LIMIT stops the scan). An event is in the run if the run held
# fewer than $4 bytes before it, so a run has at least one event, however large. The project's row comes
# along (one row of NULL events when the run is empty), for its watermark.
_READ_RUN = f"""
SELECT p.oldest, p.head AS project_head, page.* FROM projects p LEFT JOIN LATERAL (
    SELECT * FROM (
        SELECT {_EVENT_COLUMNS}, sum(octet_length(data::text)) OVER (ORDER BY seq ROWS UNBOUNDED PRECEDING) AS upto
        FROM events WHERE project_id = $1 AND seq > $2 ORDER BY seq LIMIT $3
    ) AS page
    WHERE upto - octet_length(data) < $4
) AS page ON true
WHERE p.id = $1
ORDER BY page.seq
"""


async def read_run(conn: asyncpg.Connection, project_id: str, after: int, *, max_events: int, max_bytes: int) -> Run:
    """The events with seq > `after`, in seq order, as many as fit in `max_events` and in `max_bytes`
    of JSON (at least one): `read_after` for readers whose memory must stay bounded (a page of large
    events held for a slow client would otherwise be the whole page)."""
    rows = await conn.fetch(_READ_RUN, project_id, after, max_events, max_bytes)
    if not rows:  # no such project (any more): nothing to read
        return Run([], full=False)
    oldest, head = rows[0]["oldest"], rows[0]["project_head"]
    if rows[0]["seq"] is None:
        return Run([], full=False, oldest=oldest, head=head)
    events = [
        StoredEvent(r["project_id"], r["seq"], r["message_id"], r["type"], r["data"], r["created_at"], r["hash"])
        for r in rows
    ]
    full = len(rows) == max_events or rows[-1]["upto"] >= max_bytes
    return Run(events, full=full, oldest=oldest, head=head)


# What `subject` matches, by type: one arm per kind of subject, each served by a partial index of its own
# (tables.py) whose leading columns are the project and the value, then seq, so that each arm is an ordered
# index scan that stops at the page's LIMIT, however many events the subject has. The arms are disjoint (by
# type, and the number arm leaves out what the headSha arm found), so no event comes twice.
_SUBJECT_ARMS: tuple[tuple[frozenset[str], str, bool], ...] = (
    # (the types it can match, its condition on $k, whether only a decimal number can match it)
    (frozenset({"agent_run_progress"}), "type = 'agent_run_progress' AND data ->> 'runId' = $k", False),
    (
        frozenset({"pr_notification", "validation_update"}),
        "type IN ('pr_notification', 'validation_update') AND data ->> 'headSha' = $k",
        False,
    ),
    (
        frozenset({"pr_notification", "validation_update"}),
        "type IN ('pr_notification', 'validation_update') AND coalesce(data ->> 'number', data ->> 'prNumber') = $k "
        "AND (data ->> 'headSha') IS DISTINCT FROM $k",
        True,
    ),
)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which events a history read or an export wants, besides their seq range (docs/protocol.md §7.3).

    `since` (inclusive) and `until` (exclusive) bound `created_at`; to filter on the wire's
    `timestamp`, which is `created_at` cut to the millisecond, pass them rounded up to the next
    millisecond (`timestamp >= t` exactly when `created_at >= ceil_ms(t)`). `subject` is a run id, a
    pull-request number or a head sha: `data.runId` of agent runs, `data.number` of pull requests and
    `data.prNumber` of validations, `data.headSha` of both."""

    type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    subject: str | None = None


SeqRange = tuple[int, int | None]  # lo < seq <= hi; hi None: to the end of the log
WHOLE_LOG: tuple[SeqRange, ...] = ((0, None),)

# Where a time window's events can be: the stretches of the log (state.py summarizes every 10,000 events
# with the span of their created_at) whose events all precede `since`, or all follow `until`, are left out;
# the tail after the last stretch is always searched. Stretches are written in order from seq 1, so every
# stretch before the first one that reaches `since` lies wholly before it, and every stretch after the
# last one that starts before `until` wholly after it.
_SPANS = """
SELECT coalesce(max(last_seq), 0) AS summarized,
       min(first_seq) FILTER (WHERE last_at >= $2) - 1 AS lo,
       max(last_seq) FILTER (WHERE first_at < $3) AS hi
FROM log_stretches WHERE project_id = $1
"""


async def seq_ranges(conn: asyncpg.Connection, project_id: str, where: Filter) -> tuple[SeqRange, ...]:
    """The seq ranges that can hold the events of `where`'s time window: at most two, and the whole log
    without one. A time filter alone reads the log in seq order from where the window starts (the
    planner cannot know that created_at follows seq); these bounds let it start there, and stop."""
    if where.since is None and where.until is None:
        return WHOLE_LOG
    row = await conn.fetchrow(_SPANS, project_id, where.since, where.until)
    summarized: int = row["summarized"]
    lo: int = 0 if where.since is None else (summarized if row["lo"] is None else row["lo"])
    if where.until is None:
        return ((lo, None),)
    hi: int = row["hi"] or 0
    if hi >= summarized:  # the window reaches the tail
        return ((lo, None),)
    ranges: list[SeqRange] = [(lo, hi)] if lo < hi else []
    return (*ranges, (max(lo, summarized), None))


def _page_query(
    project_id: str,
    *,
    after: int,
    before: int | None,
    where: Filter,
    ranges: Sequence[SeqRange],
    order: Literal["asc", "desc"],
    limit: int,
) -> tuple[str, list[Any]]:
    """The query for up to `limit` events of `project_id` with after < seq < before that `where`
    wants, within `ranges` (from `seq_ranges`), in `order` of seq; and its arguments.

    Each (subject arm, range) is a branch of its own, ordered and limited: an index scan in seq order
    that stops after `limit` rows. A plain UNION ALL of the branches, ordered outside, would not do:
    PostgreSQL then reads every matching row of every branch and sorts them (it does not merge the
    branches' index orders), which for a subject with 100,000 events, or a day of the log, is the lot."""
    args: list[Any] = [project_id, after]
    clauses = ["project_id = $1", "seq > $2"]
    for value, clause in (
        (before, "seq < $"),
        (where.type, "type = $"),
        (where.since, "created_at >= $"),
        (where.until, "created_at < $"),
    ):
        if value is not None:
            args.append(value)
            clauses.append(f"{clause}{len(args)}")
    common = " AND ".join(clauses)

    bounds: list[str] = []
    for lo, hi in ranges:
        bound = ""
        if lo > 0:
            args.append(lo)
            bound += f" AND seq > ${len(args)}"
        if hi is not None:
            args.append(hi)
            bound += f" AND seq <= ${len(args)}"
        bounds.append(bound)
    conditions = [""]
    if where.subject is not None:
        args.append(where.subject)
        key = f"${len(args)}"
        conditions = [
            " AND " + condition.replace("$k", key)
            for types, condition, numeric in _SUBJECT_ARMS
            if (where.type is None or where.type in types) and (not numeric or where.subject.isdecimal())
        ]
    args.append(limit)
    tail = f"ORDER BY seq {'DESC' if order == 'desc' else 'ASC'} LIMIT ${len(args)}"
    branches = [
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE {common}{bound}{condition} {tail}"
        for condition in conditions
        for bound in bounds
    ]
    if not branches:  # nothing of this type can have this subject
        return f"SELECT {_EVENT_COLUMNS} FROM events WHERE project_id = $1 AND seq > $2 AND false", args[:2]
    if len(branches) == 1:
        return branches[0], args
    return "SELECT * FROM (" + " UNION ALL ".join(f"({b})" for b in branches) + f") AS matching {tail}", args


async def read_page(
    conn: asyncpg.Connection,
    project_id: str,
    *,
    after: int = 0,
    before: int | None = None,
    limit: int = 100,
    where: Filter = Filter(),
    order: Literal["asc", "desc"] = "asc",
    ranges: Sequence[SeqRange] | None = None,
) -> tuple[list[StoredEvent], int | None]:
    """One page of history with after < seq < before, of the events `where` wants, and the `next`
    cursor of docs/protocol.md §3.

    `next` is the seq of the last event returned when more events match beyond it: the `after` (asc)
    or `before` (desc) of the next page. One extra row is read to know. The filters are part of the
    query, so paging with `next` and the same filters reads every matching event once. `ranges`: the
    `seq_ranges` of `where`, when the caller already has them (an export reading page after page).
    """
    if ranges is None:
        ranges = await seq_ranges(conn, project_id, where)
    query, args = _page_query(
        project_id, after=after, before=before, where=where, ranges=ranges, order=order, limit=limit + 1
    )
    rows = await conn.fetch(query, *args)
    events = [StoredEvent(**dict(r)) for r in rows[:limit]]
    next_cursor = events[-1].seq if len(rows) > limit else None
    return events, next_cursor


async def read_seqs(conn: asyncpg.Connection, project_id: str, seqs: Sequence[int]) -> list[StoredEvent]:
    """The events of `project_id` at these seqs (those the log holds), in seq order: one lookup by key each."""
    rows = await conn.fetch(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE project_id = $1 AND seq = ANY($2::bigint[]) ORDER BY seq",
        project_id,
        list(seqs),
    )
    return [StoredEvent(**dict(r)) for r in rows]
