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
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg
import orjson

from .messages import format_timestamp

NOTIFY_CHANNEL = "herald_events"


class ProjectNotFound(Exception):
    pass


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

    def encode(self) -> bytes:
        """The event's wire JSON (PROTOCOL.md §2). Encode once, send to many."""
        return orjson.dumps(
            {
                "type": self.type,
                "projectId": self.project_id,
                "seq": self.seq,
                "messageId": self.message_id,
                "timestamp": format_timestamp(self.created_at),
                "data": orjson.Fragment(self.data),
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


async def create_project(conn: asyncpg.Connection, *, id: str, name: str, repo: str | None) -> ProjectRow:
    try:
        row = await conn.fetchrow(
            "INSERT INTO projects (id, name, repo) VALUES ($1, $2, $3) RETURNING id, name, repo, head",
            id,
            name,
            repo,
        )
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name == "projects_repo_key":
            raise RepoTaken(repo) from None
        raise ProjectExists(id) from None
    return ProjectRow(**dict(row))


async def get_project(conn: asyncpg.Connection, project_id: str) -> ProjectRow | None:
    row = await conn.fetchrow("SELECT id, name, repo, head FROM projects WHERE id = $1", project_id)
    return ProjectRow(**dict(row)) if row else None


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


# One statement, so one round trip and one atomic unit: take the seq, insert the event, make it the
# latest of its subject ($5, absent for types without one), and notify. The subject is hashed from its
# canonical jsonb text (see tables.py); seqs only grow, so the guard on the update never fires in
# practice, but it keeps the state from ever moving back.
_APPEND = f"""
WITH next AS (
    UPDATE projects SET head = head + 1 WHERE id = $1 RETURNING head
), event AS (
    INSERT INTO events (project_id, seq, message_id, type, data)
    SELECT $1, next.head, $2, $3, $4::jsonb FROM next
    RETURNING seq, created_at, data
), latest AS (
    INSERT INTO project_state (project_id, type, subject, seq)
    SELECT $1, $3, sha256(convert_to($5::jsonb::text, 'UTF8')), seq FROM event WHERE $5::jsonb IS NOT NULL
    ON CONFLICT (project_id, type, subject) DO UPDATE SET seq = excluded.seq
    WHERE project_state.seq < excluded.seq
)
SELECT seq, created_at, data::text AS data, pg_notify('{NOTIFY_CHANNEL}', $1 || ':' || seq) FROM event
"""

_EVENT_COLUMNS = "project_id, seq, message_id, type, data::text AS data, created_at"


async def append(
    conn: asyncpg.Connection,
    *,
    project_id: str,
    type: str,
    data: dict[str, Any],
    message_id: str | None = None,
) -> tuple[StoredEvent, bool]:
    """Append one event; returns it and whether it is new.

    Atomic: the seq, the row, the project state and the NOTIFY commit together or not at all. When the
    connection is in a transaction, the event commits with it (and the caller's transaction stays
    usable after a duplicate). `data` must already be validated for `type`.
    """
    message_id = message_id or str(uuid.uuid4())
    payload = orjson.dumps(data).decode()
    about = subject(type, data)
    args = (project_id, message_id, type, payload, None if about is None else orjson.dumps(about).decode())
    try:
        if conn.is_in_transaction():
            async with conn.transaction():  # a savepoint
                row = await conn.fetchrow(_APPEND, *args)
        else:
            row = await conn.fetchrow(_APPEND, *args)
    except asyncpg.UniqueViolationError as exc:
        if exc.constraint_name != "events_message_id_key":
            raise
        # The statement failed as a whole, so the head it incremented was rolled back with it.
        original = await get_by_message_id(conn, project_id, message_id)
        if original is None:  # pragma: no cover - the row we collided with cannot vanish from a log
            raise
        return original, False
    if row is None:
        raise ProjectNotFound(project_id)
    # The stored form (jsonb orders keys its own way), so every later read encodes to the same bytes.
    event = StoredEvent(project_id, row["seq"], message_id, type, row["data"], row["created_at"])
    return event, True


async def get_by_message_id(conn: asyncpg.Connection, project_id: str, message_id: str) -> StoredEvent | None:
    row = await conn.fetchrow(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE project_id = $1 AND message_id = $2",
        project_id,
        message_id,
    )
    return StoredEvent(**dict(row)) if row else None


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


async def read_page(
    conn: asyncpg.Connection,
    project_id: str,
    *,
    after: int = 0,
    before: int | None = None,
    limit: int = 100,
    type: str | None = None,
    order: Literal["asc", "desc"] = "asc",
) -> tuple[list[StoredEvent], int | None]:
    """One page of history with after < seq < before, and the `next` cursor of PROTOCOL.md §3.

    `next` is the seq of the last event returned when more events match beyond it: the `after` (asc)
    or `before` (desc) of the next page. One extra row is read to know.
    """
    clauses = ["project_id = $1", "seq > $2"]
    args: list[Any] = [project_id, after]
    if before is not None:
        args.append(before)
        clauses.append(f"seq < ${len(args)}")
    if type is not None:
        args.append(type)
        clauses.append(f"type = ${len(args)}")
    args.append(limit + 1)
    direction = "DESC" if order == "desc" else "ASC"
    rows = await conn.fetch(
        f"SELECT {_EVENT_COLUMNS} FROM events WHERE {' AND '.join(clauses)} "
        f"ORDER BY seq {direction} LIMIT ${len(args)}",
        *args,
    )
    events = [StoredEvent(**dict(r)) for r in rows[:limit]]
    next_cursor = events[-1].seq if len(rows) > limit else None
    return events, next_cursor
