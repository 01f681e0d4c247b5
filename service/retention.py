"""Retention: how much of each project's log is kept, and the prune that applies it.

A project's policy keeps the latest `keep_events` events, or the events at most `keep_days` days old,
or (both unset, the default) everything. `prune` raises the project's low watermark (`oldest`) to what
the policy keeps, after archiving what falls below it, in one transaction that also records the chain's
hash there (`pruned_hash`), so a reader sees both or neither (docs/delivery.md, "Pruning"). Then every
partition of the log wholly below the watermark is dropped (partitions.drop_below): no DELETE.

Some events below the watermark stay, outside the log a reader can reach: those that make up the state
at the watermark (each subject's latest event up to it, and the latest notifications; KEPT), because
the state snapshot and the state at any later seq read them (state.py), and the rest of a partition that
reaches above the watermark, until a later prune passes it whole. Every read starts at the watermark,
and the audit verifies from it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from . import archive, cursors, partitions, state, webhooks
from .config import Settings
from .eventlog import SUBJECT_HASH_SQL, ConnectionFactory

logger = logging.getLogger("herald.retention")

MAX_KEEP_DAYS = 36_500
NOTIFICATIONS_KEPT = state.MAX_LIMIT  # the longest notification list a snapshot can ask for


@dataclass(frozen=True, slots=True)
class Policy:
    """How much of a project's log to keep; both None: forever."""

    keep_days: int | None = None
    keep_events: int | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.keep_days is not None:
            return {"keepDays": self.keep_days}
        if self.keep_events is not None:
            return {"keepEvents": self.keep_events}
        return {"forever": True}


async def set_policy(conn: asyncpg.Connection, project_id: str, policy: Policy) -> bool:
    """Set the project's policy (the next prune applies it); False when there is no such project."""
    status: str = await conn.execute(
        "UPDATE projects SET keep_days = $2, keep_events = $3 WHERE id = $1",
        project_id,
        policy.keep_days,
        policy.keep_events,
    )
    return status != "UPDATE 0"


async def policy(conn: asyncpg.Connection, project_id: str) -> Policy | None:
    row = await conn.fetchrow("SELECT keep_days, keep_events FROM projects WHERE id = $1", project_id)
    return None if row is None else Policy(row["keep_days"], row["keep_events"])


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one prune removed from the log: the seqs `first` to `last`, archived to `archive` if any;
    `deleted` rows left the database with `partitions` dropped partitions (rows below the watermark in a
    partition that also holds kept seqs wait for a later prune; those the state reads stay, unreadable)."""

    project_id: str
    first: int
    last: int
    archive: Path | None
    deleted: int
    partitions: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "projectId": self.project_id,
            "first": self.first,
            "last": self.last,
            "archive": None if self.archive is None else str(self.archive),
            "deleted": self.deleted,
            "partitions": self.partitions,
        }


# The seqs below the watermark ($2) that the state reads: each subject's latest event up to it (so the
# state at any seq from the watermark on, and the current state through project_state, find theirs), and
# the latest notifications up to it (the snapshot's notification list). partitions.drop_below keeps them.
KEPT = f"""
SELECT seq FROM project_state WHERE project_id = $1 AND seq < $2
UNION
(SELECT DISTINCT ON (type, subject) seq
 FROM (SELECT type, seq, {SUBJECT_HASH_SQL} AS subject FROM events
       WHERE project_id = $1 AND seq < $2 AND type IN ({", ".join(f"'{t}'" for t in state.LATEST)})) AS keyed
 ORDER BY type, subject, seq DESC)
UNION
(SELECT seq FROM events WHERE project_id = $1 AND seq < $2 AND type = '{state.NOTIFICATION_TYPE}'
 ORDER BY seq DESC LIMIT {NOTIFICATIONS_KEPT})
"""

_LOCK = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))"
_UNLOCK = "SELECT pg_advisory_unlock(hashtextextended($1, 0))"


async def target(conn: asyncpg.Connection, project_id: str, *, now: datetime) -> tuple[int, int] | None:
    """The project's watermark now and the one its policy asks for (never lower); None: no such project."""
    row = await conn.fetchrow("SELECT oldest, head, keep_days, keep_events FROM projects WHERE id = $1", project_id)
    if row is None:
        return None
    oldest: int = row["oldest"]
    wanted = oldest
    if row["keep_events"] is not None:
        wanted = max(wanted, row["head"] - row["keep_events"] + 1)
    if row["keep_days"] is not None:
        # created_at is the appending transaction's start, so it can run slightly out of seq order: the
        # first seq of the recent events keeps every later one, whatever its time.
        cutoff = now - timedelta(days=row["keep_days"])
        first_recent = await conn.fetchval(
            "SELECT min(seq) FROM events WHERE project_id = $1 AND seq >= $2 AND created_at >= $3",
            project_id,
            oldest,
            cutoff,
        )
        wanted = max(wanted, row["head"] + 1 if first_recent is None else first_recent)
    return oldest, wanted


async def prune(conn: asyncpg.Connection, project_id: str, *, archive: Path | None, now: datetime) -> Pruned | None:
    """Apply the project's policy now: None when nothing is to be pruned, or another prune of the same
    project is under way (an advisory lock, so instances never prune one project at once).

    With `archive`, the events leaving the log are first written to their archive file there; a failure
    to archive prunes nothing. Then one transaction raises the watermark and records the chain's hash at
    the new `oldest - 1`, and the partitions wholly below it are dropped, but for the rows the state reads
    (partitions.drop_below). The ack ledger, cursors and project_state are untouched. Whole stretches of
    the log are summarized first (state.summarize), as the state at a seq reads their summaries once
    their events are gone."""
    key = f"herald-prune:{project_id}"
    if not await conn.fetchval(_LOCK, key):
        return None
    try:
        bounds = await target(conn, project_id, now=now)
        if bounds is None:
            return None
        first, new_oldest = bounds
        if new_oldest <= first:
            # Nothing new to prune; partitions an earlier prune found too busy to drop go now.
            dropped = await partitions.drop_below(conn, project_id, first, KEPT)
            if not dropped.partitions:
                return None
            return Pruned(project_id, first, first - 1, None, dropped.rows - dropped.kept, dropped.partitions)
        last = new_oldest - 1
        await state.summarize(conn, project_id, upto=last)
        written = None if archive is None else await archive_range(conn, archive, project_id, first, last)
        async with conn.transaction():
            # The same lock as summarize: the watermark never rises past a stretch while it is summarized.
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"herald-stretches:{project_id}"
            )
            await state.summarize(conn, project_id, upto=last)
            pruned_hash = await conn.fetchval(
                "SELECT hash FROM events WHERE project_id = $1 AND seq = $2", project_id, last
            )
            await conn.execute(
                "UPDATE projects SET oldest = $2, pruned_hash = $3 WHERE id = $1 AND oldest < $2",
                project_id,
                new_oldest,
                pruned_hash,
            )
        # Below the raised watermark nothing is read but what KEPT names: whole partitions there go.
        dropped = await partitions.drop_below(conn, project_id, new_oldest, KEPT)
        return Pruned(project_id, first, last, written, dropped.rows - dropped.kept, dropped.partitions)
    finally:
        await conn.fetchval(_UNLOCK, key)


async def archive_range(conn: asyncpg.Connection, root: Path, project_id: str, first: int, last: int) -> Path:
    return await archive.write(conn, root, project_id, first, last)


async def prune_all(
    conn: asyncpg.Connection, *, archive: Path | None, now: datetime, project_id: str | None = None
) -> list[Pruned]:
    """Prune every project that has a policy (or only `project_id`); what was pruned."""
    if project_id is None:
        ids = [
            r["id"]
            for r in await conn.fetch(
                "SELECT id FROM projects WHERE keep_days IS NOT NULL OR keep_events IS NOT NULL ORDER BY id"
            )
        ]
    else:
        ids = [project_id]
    done = []
    for pid in ids:
        pruned = await prune(conn, pid, archive=archive, now=now)
        if pruned is not None:
            done.append(pruned)
    return done


@dataclass(frozen=True, slots=True)
class Housekeeping:
    """What the prune's schedule also forgets (docs/operations.md): cursors of clients not seen for
    `cursor_ttl` (HERALD_CURSOR_TTL_DAYS), and webhook delivery records older than `webhook_dedupe`
    (HERALD_WEBHOOK_DEDUPE_DAYS, longer than GitHub's redelivery window)."""

    cursor_ttl: timedelta
    webhook_dedupe: timedelta

    @classmethod
    def of(cls, settings: Settings) -> Housekeeping:
        return cls(timedelta(days=settings.cursor_ttl_days), timedelta(days=settings.webhook_dedupe_days))

    async def run(self, conn: asyncpg.Connection) -> dict[str, int]:
        return {
            "cursors": await cursors.prune_stale(conn, older_than=self.cursor_ttl),
            "deliveries": await webhooks.prune_deliveries(conn, older_than=self.webhook_dedupe),
        }


async def keep_pruning(
    connection: ConnectionFactory,
    *,
    archive: Path | None,
    interval_s: float,
    housekeeping: Housekeeping | None = None,
    on_pruned: Callable[[Pruned], None] = lambda _: None,
) -> None:
    """Every `interval_s`, prune every project by its policy and do the housekeeping, until cancelled.
    Every instance runs this; the advisory lock of `prune` lets one of them prune each project (the
    housekeeping's deletes are idempotent, so instances doing it together only repeat each other)."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with connection() as conn:
                for pruned in await prune_all(conn, archive=archive, now=await conn.fetchval("SELECT now()")):
                    logger.info("pruned %s", pruned.to_dict())
                    on_pruned(pruned)
                if housekeeping is not None:
                    forgotten = await housekeeping.run(conn)
                    if any(forgotten.values()):
                        logger.info("housekeeping forgot %s", forgotten)
        except Exception as exc:  # the database is down, or the archive unwritable: the next round tries again
            logger.warning("pruning failed, will retry: %s", exc)
