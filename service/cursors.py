"""Durable per-client cursors: how far each (user, clientId) has acknowledged each project, and where
a client that comes back resumes.

A cursor only moves forward (an ack is cumulative, and an older ack arriving late changes nothing).
A client that resumes without an explicit position starts right after its cursor (`resume_point`,
the one place that rule lives). See docs/delivery.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from . import db
from .db import BUSY_ERRORS, UNAVAILABLE_ERRORS
from .eventlog import HistoryTruncated, ProjectNotFound, truncated
from .eventlog import head as project_head
from .messages import format_timestamp

logger = logging.getLogger("herald.cursors")


class PositionBeyondHead(Exception):
    """A subscription asked to start after a seq the project has not reached."""

    def __init__(self, seq: int, head: int) -> None:
        super().__init__(f"position {seq} is beyond the project's head {head}")
        self.seq = seq
        self.head = head


def resume_point(*, after: int | None, cursor: int | None, head: int, oldest: int = 1) -> int:
    """Where a subscription starts: the seq after which its events follow (docs/protocol.md §4, §5).

    After the position the client asked for (`after`, or SSE's `Last-Event-ID`), which may not be
    beyond the head (PositionBeyondHead); else after the client's durable cursor (capped at the head,
    a guard: acks are checked against the head, so only a log restored from an older backup could be
    behind its cursors); else at the head, so that a client with no position and no cursor gets new
    events only. A start below the oldest event the log keeps (`oldest`, the low watermark) would skip
    pruned events: it raises eventlog.HistoryTruncated instead, whichever way it was chosen (§7.4).
    """
    if after is not None:
        if after > head:
            raise PositionBeyondHead(after, head)
        start = after
    elif cursor is not None:
        start = min(cursor, head)
    else:
        start = head
    if truncated(start, oldest):
        raise HistoryTruncated(start, oldest, head)
    return start


class AckBeyondHead(Exception):
    """The ack names a seq the project has not reached."""

    def __init__(self, seq: int, head: int) -> None:
        super().__init__(f"seq {seq} is beyond the project's head {head}")
        self.seq = seq
        self.head = head


@dataclass(frozen=True, slots=True)
class Found:
    """What a subscription's start is decided from, read in one statement (`find_start`).

    `cursor` is the stored durable cursor (None: none, or not asked for) and `cursor_hash` the hash it
    recorded at its ack (None: acked before migration 0011). `log_hash` is the audit chain's hash at the
    position to check, `after` if given, else the stored cursor's seq: None when there is nothing to
    compare (no position, seq 0, beyond the head, or a pruned event).
    """

    head: int
    oldest: int
    cursor: int | None
    cursor_hash: bytes | None
    log_hash: bytes | None


# The project's bounds, the client's stored cursor (when $5) and the chain's hash at the position to check
# ($4, else the cursor's seq): at the head the project's row has it (last_hash); elsewhere one probe of the
# log's primary key (none for a pruned event: nothing to compare).
# The event is named by `project_id = $1`, not by the outer row's id: the planner prunes the log's partitions
# only by what it knows when planning, and locks every partition it kept, so a correlated `p.id` would lock
# every partition of every project (and a few subscribes at once would exhaust the server's lock table).
_FIND_START = """
SELECT p.head, p.oldest, c.seq AS cursor, c.hash AS cursor_hash,
    CASE WHEN at.seq IS NULL OR at.seq <= 0 OR at.seq > p.head THEN NULL
         WHEN at.seq = p.head THEN p.last_hash
         ELSE (SELECT e.hash FROM events e WHERE e.project_id = $1 AND e.seq = at.seq)
    END AS log_hash
FROM projects p
LEFT JOIN cursors c ON $5 AND c.project_id = p.id AND c."user" = $2 AND c.client_id = $3
CROSS JOIN LATERAL (SELECT COALESCE($4::bigint, c.seq) AS seq) AS at
WHERE p.id = $1
"""


async def find_start(
    conn: asyncpg.Connection, *, project_id: str, user: str, client_id: str, cursor: bool, after: int | None
) -> Found | None:
    """Read what a subscription's start is decided from (`Found`) in one round trip; None when there is
    no such project. `cursor`: read the client's stored cursor too."""
    row = await conn.fetchrow(_FIND_START, project_id, user, client_id, after, cursor)
    return None if row is None else Found(**dict(row))


@dataclass(frozen=True, slots=True)
class CursorRow:
    client_id: str
    user: str
    seq: int
    updated_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "clientId": self.client_id,
            "user": self.user,
            "seq": self.seq,
            "updatedAt": format_timestamp(self.updated_at),
        }


# Acks (project, user, client, seq, hash), one per cursor, in one statement (each cursor keeps the audit
# chain's hash of the event at its seq: the one the client sent with its ack, else the log's, read here; a
# re-ack of the same seq keeps the first one, even if a failover has reissued that seq since): lock the
# cursors that exist (in key order, so two flushes sharing cursors wait rather than deadlock), move each
# to max(cursor, seq) unless seq is beyond the head (refused on arrival; the check stays as a guard), and
# write an ack_ledger row for each cursor that moved or was created, with its new seq. The log's hash is read
# with `project_id = ANY($1)` beside the correlated match, so that planning prunes the log to the partitions
# of the acked projects (as _FIND_START explains). Locking first makes
# "moved" exact: `before` holds each cursor as it is when this statement owns it, even when another
# instance's flush committed a move of it meanwhile. The INSERT reads `before`, so its rows are locked
# before any is written.
_ADVANCE = """
WITH acked AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bytea[])
        AS a(project_id, "user", client_id, seq, hash)
), before AS (
    SELECT c.project_id, c."user", c.client_id, c.seq FROM cursors c
    JOIN acked USING (project_id, "user", client_id)
    ORDER BY c.project_id, c."user", c.client_id
    FOR UPDATE OF c
), moved AS (
    INSERT INTO cursors AS c (project_id, "user", client_id, seq, updated_at, hash)
    SELECT a.project_id, a."user", a.client_id, a.seq, now(),
        COALESCE(a.hash, (SELECT e.hash FROM events e
                          WHERE e.project_id = ANY($1::text[]) AND e.project_id = a.project_id AND e.seq = a.seq))
    FROM acked a JOIN projects p ON p.id = a.project_id AND p.head >= a.seq
    LEFT JOIN before b USING (project_id, "user", client_id)
    ORDER BY a.project_id, a."user", a.client_id
    ON CONFLICT (project_id, "user", client_id)
    DO UPDATE SET seq = GREATEST(c.seq, EXCLUDED.seq), updated_at = EXCLUDED.updated_at,
        hash = CASE WHEN EXCLUDED.seq > c.seq OR (c.hash IS NULL AND EXCLUDED.seq = c.seq) THEN EXCLUDED.hash
                    ELSE c.hash END
    RETURNING c.project_id, c."user", c.client_id, c.seq
), ledger AS (
    INSERT INTO ack_ledger (project_id, "user", client_id, seq, acked_at)
    SELECT m.project_id, m."user", m.client_id, m.seq, now()
    FROM moved m LEFT JOIN before b USING (project_id, "user", client_id)
    WHERE b.seq IS NULL OR m.seq > b.seq
)
SELECT project_id, "user", client_id, seq FROM moved
"""


async def advance_many(
    conn: asyncpg.Connection,
    acks: Iterable[tuple[str, str, str, int]],
    hashes: Mapping[tuple[str, str, str], bytes] | None = None,
) -> dict[tuple[str, str, str], int]:
    """Persist a batch of (project_id, user, client_id, seq) acks, at most one per cursor, in one
    statement (one round trip, one transaction): the cursors and their ack_ledger rows commit together.
    `hashes`: the event's hash as the client has it, per cursor (else the log's is kept). Returns each
    cursor as it is afterwards; an ack beyond the head (or of no project) is left out."""
    rows = sorted(acks)
    columns: tuple[list[Any], ...] = ([], [], [], [], [])
    for row in rows:
        for column, value in zip(columns, (*row, (hashes or {}).get(row[:3])), strict=True):
            column.append(value)
    result = await conn.fetch(_ADVANCE, *columns)
    return {(r["project_id"], r["user"], r["client_id"]): r["seq"] for r in result}


async def advance(conn: asyncpg.Connection, *, project_id: str, user: str, client_id: str, seq: int) -> int:
    """Move the cursor to max(cursor, seq) and return it, with its ledger row when it moved. Raises
    AckBeyondHead when seq > head."""
    moved = await advance_many(conn, [(project_id, user, client_id, seq)])
    value = moved.get((project_id, user, client_id))
    if value is not None:
        return value
    head = await project_head(conn, project_id)
    if head is None:
        raise ProjectNotFound(project_id)
    raise AckBeyondHead(seq, head)


async def get(conn: asyncpg.Connection, *, project_id: str, user: str, client_id: str) -> int | None:
    value: int | None = await conn.fetchval(
        'SELECT seq FROM cursors WHERE project_id = $1 AND "user" = $2 AND client_id = $3',
        project_id,
        user,
        client_id,
    )
    return value


async def list_for_project(conn: asyncpg.Connection, project_id: str) -> list[CursorRow]:
    rows = await conn.fetch(
        'SELECT client_id, "user", seq, updated_at FROM cursors WHERE project_id = $1 ORDER BY "user", client_id',
        project_id,
    )
    return [CursorRow(**dict(r)) for r in rows]


@dataclass(frozen=True, slots=True)
class Reached:
    """From the ack ledger: a client whose cursor reached a seq, and the advance that first did."""

    user: str
    client_id: str
    seq: int  # the cursor after that advance
    acked_at: datetime

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "clientId": self.client_id,
            "seq": self.seq,
            "ackedAt": format_timestamp(self.acked_at),
        }


# The clients whose cursor is at seq or beyond, each with its first ledger row at seq or beyond: one probe
# of ack_ledger_client per client. Cursors only move forward, so that row is when the cursor got there.
_REACHED = """
SELECT c."user", c.client_id, first.seq, first.acked_at
FROM cursors c
CROSS JOIN LATERAL (
    SELECT l.seq, l.acked_at FROM ack_ledger l
    WHERE l.project_id = c.project_id AND l."user" = c."user" AND l.client_id = c.client_id AND l.seq >= $2
    ORDER BY l.seq LIMIT 1
) AS first
WHERE c.project_id = $1 AND c.seq >= $2
ORDER BY first.acked_at, c."user", c.client_id
"""


async def reached(conn: asyncpg.Connection, project_id: str, seq: int) -> list[Reached]:
    """Every (user, clientId) whose acks reached `seq` or beyond, in the order they got there."""
    return [Reached(**dict(r)) for r in await conn.fetch(_REACHED, project_id, seq)]


async def prune_stale(conn: asyncpg.Connection, *, older_than: timedelta) -> int:
    """Delete the cursors of clients not seen for longer than `older_than` (HERALD_CURSOR_TTL_DAYS): those
    whose last ack, moving the cursor or not, is older (`updated_at`). Returns how many were deleted.

    A client is seen when it acks, so a cursor pruned here is one nobody has acked for that long. When its
    client comes back it has no cursor, and resumes as a client never seen does (`resume_point`): after
    the `after` it sends, else from the head. The ack ledger is untouched: it still answers who reached
    which seq, and when, for every client ever seen. Deletes in batches, each its own statement
    (db.delete_in_batches); an ack landing meanwhile keeps its cursor (the age is checked again on the
    locked row)."""
    return await db.delete_in_batches(
        conn,
        "DELETE FROM cursors WHERE ctid = ANY(ARRAY(SELECT ctid FROM cursors "
        "WHERE updated_at < now() - $1::interval LIMIT $2)) AND updated_at < now() - $1::interval",
        older_than,
    )


class AckBuffer:
    """Acks held in memory and persisted in batches: within `interval_s`, at disconnect, at shutdown.

    Acks can arrive for every event; writing each would cost a transaction per event per client.
    Holding the highest seq per cursor and writing them together costs one round trip per interval.
    docs/protocol.md §6: after a crash, events acked in that last interval may come again (dedupe by seq
    absorbs them); after a clean disconnect or shutdown, nothing acked comes again.
    """

    def __init__(self, connection: Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]) -> None:
        self._connection = connection
        self._pending: dict[tuple[str, str, str], int] = {}
        self._hashes: dict[tuple[str, str, str], bytes] = {}  # of the pending seq, as the client sent it
        self._lock = asyncio.Lock()

    def add(self, *, project_id: str, user: str, client_id: str, seq: int, hash: bytes | None = None) -> None:
        key = (project_id, user, client_id)
        if seq > self._pending.get(key, -1):
            self._pending[key] = seq
            if hash is None:
                self._hashes.pop(key, None)
            else:
                self._hashes[key] = hash

    def peek(self, *, project_id: str, user: str, client_id: str) -> int | None:
        """The highest ack not yet persisted for this cursor, if any."""
        return self._pending.get((project_id, user, client_id))

    async def cursor(self, conn: asyncpg.Connection, *, project_id: str, user: str, client_id: str) -> int | None:
        """The cursor as this process knows it: the durable one, or a newer ack not yet persisted."""
        stored = await get(conn, project_id=project_id, user=user, client_id=client_id)
        pending = self.peek(project_id=project_id, user=user, client_id=client_id)
        candidates = [v for v in (stored, pending) if v is not None]
        return max(candidates) if candidates else None

    async def find_start(
        self, conn: asyncpg.Connection, *, project_id: str, user: str, client_id: str, cursor: bool, after: int | None
    ) -> tuple[Found | None, int | None]:
        """`find_start`, and the cursor as this process knows it (a newer ack not yet persisted included;
        None when `cursor` is false). The check stays at the stored cursor, whose hash is known."""
        found = await find_start(
            conn, project_id=project_id, user=user, client_id=client_id, cursor=cursor, after=after
        )
        if found is None or not cursor:
            return found, None
        pending = self.peek(project_id=project_id, user=user, client_id=client_id)
        candidates = [v for v in (found.cursor, pending) if v is not None]
        return found, max(candidates) if candidates else None

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def flush(self, keys: Callable[[tuple[str, str, str]], bool] | None = None) -> None:
        """Persist pending acks (those matching `keys`, or all).

        An ack stays pending (and `peek` sees it) until its write has landed, so a client resuming on
        this process meanwhile resumes after it. When the database is unreachable, every ack stays
        pending for the next flush and the error propagates. When PostgreSQL refuses the batch, the
        acks are written one by one, so a row it refuses cannot hold the others back: the refused one
        is logged and dropped (retrying it could only be refused again)."""
        async with self._lock:
            batch = {k: v for k, v in self._pending.items() if keys is None or keys(k)}
            if not batch:
                return
            rows = [(*k, v) for k, v in batch.items()]
            hashes = {k: h for k in batch if (h := self._hashes.get(k)) is not None}
            async with self._connection() as conn:
                try:
                    await advance_many(conn, rows, hashes)
                except asyncpg.PostgresError as exc:
                    if isinstance(exc, UNAVAILABLE_ERRORS + BUSY_ERRORS):  # kept for the next flush
                        raise
                    logger.warning("persisting %d acks as one batch was refused (%s); one by one", len(rows), exc)
                    for row in rows:
                        try:
                            await advance_many(conn, [row], hashes)
                        except asyncpg.PostgresError as refused:
                            if isinstance(refused, UNAVAILABLE_ERRORS + BUSY_ERRORS):
                                raise
                            logger.error("dropping an ack the database refuses: %r (%s)", row, refused)
            for k, v in batch.items():  # landed: forget them, unless a newer ack came meanwhile
                if self._pending.get(k) == v:
                    del self._pending[k]
                    self._hashes.pop(k, None)

    async def flush_client(self, user: str, client_id: str) -> None:
        await self.flush(lambda k: k[1] == user and k[2] == client_id)

    async def run(self, interval_s: float = 0.5) -> None:
        """Flush every `interval_s` until cancelled (then flush once more)."""
        try:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.flush()
                except Exception as exc:  # the database is down: keep the acks, try next tick
                    logger.warning("persisting acks failed, will retry: %s", exc)
        finally:
            with contextlib.suppress(Exception):
                await self.flush()
