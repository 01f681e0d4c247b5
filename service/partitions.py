"""Where the log lives: `events` is partitioned by (project_id, seq) into ranges of each project's seqs.

Why ranges of seqs, one project at a time (docs/delivery.md, "Partitions"): a retention policy is a
project's (its latest N events, or its last D days), and whichever it is, what it drops is a prefix of
that project's seqs, below the low watermark. With each project's log in ranges of seqs (100,000 by
default, HERALD_PARTITION_EVENTS for projects created from then on), dropping that prefix is detaching
and dropping whole tables: no DELETE of events, no dead rows, no vacuum. Partitions by time would hold
every project's events of a day together, so one project kept forever would pin them all. The primary
key (project_id, seq) already contains the partition key, so the log stays gap-free and unique per
project at the database's level. The one constraint PostgreSQL cannot keep on a partitioned table,
messageId unique per project, is the primary key of `event_ids`.

A project's partitions are created ahead of its head, by `extend` (when the project is created, every
few seconds from the running service, and by an append that finds no partition for its seq, which then
retries). They are attached with ATTACH PARTITION, which takes a lock that neither reads nor appends
wait for. Dropping is `drop_below`: every partition wholly below the watermark is replaced, in one short
transaction, by one partition holding only the rows the state still reads there (retention.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import asyncpg

logger = logging.getLogger("herald.partitions")

DEFAULT_EVENTS = 100_000  # seqs per partition unless the project was created with another size
# How long the swap of `drop_below` may queue for the log (holding up every statement behind it) before
# it lets go and tries again, and how many times, before it leaves the partitions to the next prune.
LOCK_TIMEOUT_MS = 200
SWAP_ATTEMPTS = 8


def table_name(project_id: str, first: int, *, kept: bool = False) -> str:
    """The partition's table: a digest of the project id (ids may be 64 characters, names only 63
    bytes) and its first seq; a kept partition by its last."""
    digest = hashlib.sha256(project_id.encode()).hexdigest()[:16]
    return f"events_{digest}_{'k' if kept else ''}{first}"


def is_partition(name: str) -> bool:
    """Whether a table of the schema is one of the log's partitions (the schema check skips them)."""
    return name.startswith("events_") and name.rsplit("_", 1)[-1].lstrip("k").isdigit()


def _literal(value: str) -> str:
    # DDL takes no parameters; project ids are [A-Za-z0-9_.-] anyway, and quotes are doubled regardless.
    return "'" + value.replace("'", "''") + "'"


def _bounds(project_id: str, first: int, last: int) -> str:
    return f"FOR VALUES FROM ({_literal(project_id)}, {first}) TO ({_literal(project_id)}, {last + 1})"


_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
_RECORD = "INSERT INTO log_partitions (project_id, first_seq, last_seq, name, kept) VALUES ($1, $2, $3, $4, $5)"
Connect = Callable[[], AbstractAsyncContextManager[asyncpg.Connection]]


@dataclass(frozen=True, slots=True)
class Partition:
    project_id: str
    first: int
    last: int
    name: str
    kept: bool


async def partitions(conn: asyncpg.Connection, project_id: str) -> list[Partition]:
    rows = await conn.fetch(
        "SELECT project_id, first_seq, last_seq, name, kept FROM log_partitions WHERE project_id = $1 "
        "ORDER BY first_seq",
        project_id,
    )
    return [Partition(r["project_id"], r["first_seq"], r["last_seq"], r["name"], r["kept"]) for r in rows]


async def extend(conn: asyncpg.Connection, project_id: str, *, upto: int, size: int | None = None) -> int:
    """Make sure the project's partitions reach seq `upto`, creating the next ranges as needed, of `size`
    seqs each (by default, as many as the project's last partition holds); the number created.

    One transaction per partition (or the caller's), each under a per-project lock, so that instances
    never create the same range twice and a long way to go never holds many locks at once."""
    created = 0
    while True:
        async with conn.transaction():
            await conn.execute(_LOCK, f"herald-partitions:{project_id}")
            last = await conn.fetchrow(
                "SELECT first_seq, last_seq FROM log_partitions WHERE project_id = $1 AND NOT kept"
                " ORDER BY first_seq DESC LIMIT 1",
                project_id,
            )
            end = 0 if last is None else last["last_seq"]
            if end >= upto:
                return created
            first = end + 1
            span = size or (DEFAULT_EVENTS if last is None else last["last_seq"] - last["first_seq"] + 1)
            name = table_name(project_id, first)
            # Created apart and then attached: CREATE TABLE … PARTITION OF would lock the whole log against
            # reads and appends, ATTACH PARTITION takes a lock that neither waits for.
            await conn.execute(f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS)")
            await conn.execute(
                f"ALTER TABLE events ATTACH PARTITION {name} {_bounds(project_id, first, first + span - 1)}"
            )
            await conn.execute(_RECORD, project_id, first, first + span - 1, name, False)
            created += 1


# Projects whose partitions end less than one partition ahead of their head (a project gets its first
# partition when it is created; one without, from an older version, gets it from its first append).
_SHORT = """
SELECT p.id, p.head + (l.last_seq - l.first_seq + 1) AS upto
FROM projects p
JOIN LATERAL (
    SELECT first_seq, last_seq FROM log_partitions WHERE project_id = p.id AND NOT kept ORDER BY first_seq DESC LIMIT 1
) AS l ON true
WHERE l.last_seq < p.head + (l.last_seq - l.first_seq + 1)
ORDER BY p.id
"""


async def extend_all(conn: asyncpg.Connection) -> int:
    """Keep every project's partitions one whole partition ahead of its head (up to two after this)."""
    created = 0
    for row in await conn.fetch(_SHORT):
        created += await extend(conn, row["id"], upto=row["upto"])
    return created


async def keep_ahead(connection: Connect, *, interval_s: float = 2.0) -> None:
    """Every `interval_s`, `extend_all`, until cancelled. Every instance runs it; the lock of `extend`
    keeps them from creating a range twice. An append never waits for this: one that outruns it creates
    what it needs itself (eventlog.append_many)."""
    while True:
        try:
            async with connection() as conn:
                await extend_all(conn)
        except Exception as exc:  # the database is down, or busy: the next round tries again
            logger.warning("creating the log's next partitions failed, will retry: %s", exc)
        await asyncio.sleep(interval_s)


def no_partition(exc: BaseException) -> bool:
    """Whether an insert failed because no partition holds its seq yet."""
    return isinstance(exc, asyncpg.CheckViolationError) and "no partition of relation" in str(exc)


@dataclass(frozen=True, slots=True)
class Dropped:
    """What `drop_below` did: `partitions` tables dropped, holding `rows` events, `kept` of them moved."""

    partitions: int
    rows: int
    kept: int


async def drop_below(conn: asyncpg.Connection, project_id: str, oldest: int, kept_seqs: str) -> Dropped:
    """Drop every partition of the project wholly below seq `oldest` (the watermark, already raised), in
    one short transaction that replaces them by a single partition holding only the rows the state still
    reads there: `kept_seqs`, a query with $1 = project id and $2 = oldest giving their seqs
    (retention.py). Readers see the old partitions or the new one, never neither.

    The swap's lock on the log (DETACH PARTITION takes the strongest) is held for milliseconds, and asked
    for with a short lock_timeout: when a long reader holds the log, the swap gives up and the next prune
    tries again. Nothing readable is lost meanwhile: the watermark hides what is below it either way.
    Also forgets the messageIds of the dropped events (event_ids)."""
    below = [p for p in await partitions(conn, project_id) if p.last < oldest]
    if not any(not p.kept for p in below):
        return Dropped(0, 0, 0)
    first, last = below[0].first, below[-1].last
    name = table_name(project_id, last, kept=True)
    await conn.execute(f"DROP TABLE IF EXISTS {name}")  # left by a swap that did not finish
    await conn.execute(f"CREATE TABLE {name} (LIKE events INCLUDING DEFAULTS)")
    kept: int = await conn.fetchval(
        f"WITH moved AS (INSERT INTO {name} SELECT * FROM events WHERE project_id = $1 AND seq BETWEEN $3 AND $4"
        f" AND seq IN ({kept_seqs}) RETURNING 1) SELECT count(*) FROM moved",
        project_id,
        oldest,
        first,
        last,
    )
    rows: int = await conn.fetchval(
        "SELECT count(*) FROM events WHERE project_id = $1 AND seq BETWEEN $2 AND $3", project_id, first, last
    )
    # The new partition's check constraint is its bound, so ATTACH needs no scan to validate it.
    await conn.execute(
        f"ALTER TABLE {name} ADD CONSTRAINT {name}_bound CHECK (project_id = {_literal(project_id)}"
        f" AND seq BETWEEN {first} AND {last})"
    )
    # One message of statements, one implicit transaction: the server runs the swap without waiting for this
    # process between statements, so the log's strongest lock is held for the swap's own milliseconds,
    # however busy this process is.
    swap = "; ".join(
        [
            *(f"ALTER TABLE events DETACH PARTITION {p.name}" for p in below),
            f"ALTER TABLE events ATTACH PARTITION {name} {_bounds(project_id, first, last)}",
            *(f"DROP TABLE {p.name}" for p in below),
            f"DELETE FROM log_partitions WHERE project_id = {_literal(project_id)}"
            f" AND first_seq BETWEEN {first} AND {last}",
            "INSERT INTO log_partitions (project_id, first_seq, last_seq, name, kept)"
            f" VALUES ({_literal(project_id)}, {first}, {last}, {_literal(name)}, true)",
        ]
    )
    await conn.execute(f"SET lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
    try:
        for attempt in range(SWAP_ATTEMPTS):
            try:
                await conn.execute(swap)
                break
            except asyncpg.LockNotAvailableError:
                await asyncio.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
        else:
            await conn.execute(f"DROP TABLE IF EXISTS {name}")
            logger.info("the log of %s was busy; its partitions below %d are dropped next time", project_id, oldest)
            return Dropped(0, 0, 0)
    finally:
        await conn.execute("RESET lock_timeout")
    await conn.execute("DELETE FROM event_ids WHERE project_id = $1 AND seq BETWEEN $2 AND $3", project_id, first, last)
    previously_kept = sum(1 for p in below if p.kept)
    return Dropped(len(below) - previously_kept, rows, kept)
