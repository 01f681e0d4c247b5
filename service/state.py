"""The project state: what a dashboard shows, folded from the log.

A snapshot is a set of events: the latest event of each agent run, pull request and validation (by
`eventlog.subject`), most recently updated first, and the latest pull-request events as a notification
feed, each list at most `limit` long, together with `seq`, the log position it reflects. `fold` is
its definition over the events themselves; `read` serves it from `project_state`, which the append
statement keeps current, so reading it costs the same at a million events as at ten.

Because a snapshot is made of events, folding a snapshot's events together with the events after
its `seq` gives the fold of the whole log: a client loads a snapshot, subscribes with `after = seq`,
and applies live events as they come, missing nothing and receiving nothing twice.

The state as of an earlier seq (`read_at`, for auditors) is the fold of the events up to it. Folding a
million events takes seconds, so the log is summarized off the hot path, in stretches of `STRETCH`
events (`summarize`, kept current by `keep_summaries`): for each stretch, the latest event of each
subject within it. The state at N is then the fold of the events after the last stretch boundary up to
N, followed by a walk back through the stretches' subjects until each list is full (docs/delivery.md,
"The auditor's reads").
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import orjson

from . import eventlog
from .eventlog import SUBJECT_HASH_SQL, ConnectionFactory, Filter, StoredEvent

logger = logging.getLogger("herald.state")

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000

# The event type whose latest event per subject fills each list of the snapshot.
LATEST: dict[str, str] = {
    "agent_run_progress": "agent_runs",
    "pr_notification": "pull_requests",
    "validation_update": "validations",
}
NOTIFICATION_TYPE = "pr_notification"


@dataclass(frozen=True, slots=True)
class Snapshot:
    """A project's state as of `seq`: every list holds events, newest first."""

    project_id: str
    seq: int
    agent_runs: tuple[StoredEvent, ...] = ()
    pull_requests: tuple[StoredEvent, ...] = ()
    validations: tuple[StoredEvent, ...] = ()
    notifications: tuple[StoredEvent, ...] = ()

    def encode(self) -> bytes:
        """The `ProjectState` body (docs/protocol.md); each item is encoded as the event it is."""

        def items(events: tuple[StoredEvent, ...]) -> list[orjson.Fragment]:
            return [orjson.Fragment(e.encode()) for e in events]

        return orjson.dumps(
            {
                "projectId": self.project_id,
                "seq": self.seq,
                "agentRuns": items(self.agent_runs),
                "pullRequests": items(self.pull_requests),
                "validations": items(self.validations),
                "notifications": items(self.notifications),
            }
        )


def fold(project_id: str, events: Iterable[StoredEvent], *, limit: int = DEFAULT_LIMIT) -> Snapshot:
    """The snapshot of a project whose log is `events` (in any order; a seq seen twice counts once).

    The definition that `read` must agree with, and what a client does with live events.
    """
    latest: dict[tuple[str, str], StoredEvent] = {}
    notifications: dict[int, StoredEvent] = {}
    seq = 0
    for event in sorted(events, key=lambda e: e.seq):
        seq = max(seq, event.seq)
        about = eventlog.subject(event.type, orjson.loads(event.data))
        if about is not None:
            latest[(event.type, orjson.dumps(about).decode())] = event
        if event.type == NOTIFICATION_TYPE:
            notifications[event.seq] = event
    lists: dict[str, list[StoredEvent]] = {name: [] for name in LATEST.values()}
    for (type, _), event in latest.items():
        lists[LATEST[type]].append(event)

    def newest(events: Iterable[StoredEvent]) -> tuple[StoredEvent, ...]:
        return tuple(sorted(events, key=lambda e: e.seq, reverse=True)[:limit])

    return Snapshot(
        project_id,
        seq,
        agent_runs=newest(lists["agent_runs"]),
        pull_requests=newest(lists["pull_requests"]),
        validations=newest(lists["validations"]),
        notifications=newest(notifications.values()),
    )


# One statement, so one MVCC snapshot: the head and every event read are of the same committed state,
# and since seq order is commit order that state is exactly the events with seq <= head. Each list is a
# backward scan of an index (project_state_recent, events_pr_notifications) that stops after $2 rows;
# then each item's event is looked up by primary key. (The LIMIT 1 keeps that lookup a per-item
# subquery: as a plain join, the planner may hash or merge-join a long stretch of the log instead.)
_READ = f"""
WITH latest AS (
    SELECT kind.list, recent.seq
    FROM unnest($3::text[], $4::text[]) AS kind(type, list)
    CROSS JOIN LATERAL (
        SELECT seq FROM project_state WHERE project_id = $1 AND type = kind.type ORDER BY seq DESC LIMIT $2
    ) AS recent
    UNION ALL
    (
        SELECT 'notifications', seq FROM events
        WHERE project_id = $1 AND type = '{NOTIFICATION_TYPE}' ORDER BY seq DESC LIMIT $2
    )
)
SELECT projects.head, latest.list, event.*
FROM projects
LEFT JOIN latest ON true
LEFT JOIN LATERAL (
    SELECT seq, message_id, type, data::text AS data, created_at, hash FROM events
    WHERE project_id = $1 AND seq = latest.seq LIMIT 1
) AS event ON true
WHERE projects.id = $1
ORDER BY latest.list, latest.seq DESC
"""


async def read(conn: asyncpg.Connection, project_id: str, *, limit: int = DEFAULT_LIMIT) -> Snapshot | None:
    """The project's snapshot, or None when there is no such project. Equal to `fold` of its log."""
    rows = await conn.fetch(_READ, project_id, limit, list(LATEST), list(LATEST.values()))
    if not rows:
        return None
    lists: dict[str, list[StoredEvent]] = {name: [] for name in (*LATEST.values(), "notifications")}
    for row in rows:
        if row["list"] is None:  # a project with no events of these types
            continue
        event = StoredEvent(
            project_id, row["seq"], row["message_id"], row["type"], row["data"], row["created_at"], row["hash"]
        )
        lists[row["list"]].append(event)
    return Snapshot(
        project_id,
        rows[0]["head"],
        agent_runs=tuple(lists["agent_runs"]),
        pull_requests=tuple(lists["pull_requests"]),
        validations=tuple(lists["validations"]),
        notifications=tuple(lists["notifications"]),
    )


# --- the state at a seq ------------------------------------------------------------------------------

STRETCH = 10_000  # events per summarized stretch of a log; stretch k holds seqs (k-1)*STRETCH+1 .. k*STRETCH
_WALK_PAGE = 1000

# One stretch, (first - 1, last]: its time span (for history's time filters, eventlog.seq_ranges) and the
# latest event of each subject within it, keyed by its hashed subject as in project_state.
_SUMMARIZE = f"""
WITH stretch AS (
    SELECT type, seq, data, created_at FROM events WHERE project_id = $1 AND seq > $2 AND seq <= $3
), span AS (
    INSERT INTO log_stretches (project_id, first_seq, last_seq, first_at, last_at)
    SELECT $1, $2 + 1, $3, min(created_at), max(created_at) FROM stretch
    ON CONFLICT DO NOTHING
)
INSERT INTO stretch_latest (project_id, type, seq, subject)
SELECT DISTINCT ON (type, subject) $1, type, seq, subject
FROM (SELECT type, seq, {SUBJECT_HASH_SQL} AS subject FROM stretch WHERE type = ANY($4::text[])) AS keyed
ORDER BY type, subject, seq DESC
ON CONFLICT DO NOTHING
"""


async def summarize(conn: asyncpg.Connection, project_id: str, *, upto: int) -> int:
    """Summarize every whole stretch of the project's log up to seq `upto` (and the head) that is not
    summarized yet, in order, one transaction each; returns the last summarized seq.

    Stretches are only ever written in order from seq 1, under a per-project lock that every instance
    takes, so the summaries are contiguous (eventlog.seq_ranges and `read_at` rely on it). Off the hot
    path: appends never wait for it."""
    while True:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"herald-stretches:{project_id}"
            )
            row = await conn.fetchrow(
                "SELECT head, (SELECT coalesce(max(last_seq), 0) FROM log_stretches WHERE project_id = $1) AS done "
                "FROM projects WHERE id = $1",
                project_id,
            )
            if row is None:
                return 0
            done: int = row["done"]
            if done + STRETCH > min(upto, row["head"]):
                return done
            await conn.execute(_SUMMARIZE, project_id, done, done + STRETCH, list(LATEST))


_BEHIND = """
SELECT id, head FROM projects p
WHERE head >= $1 + coalesce((SELECT max(last_seq) FROM log_stretches s WHERE s.project_id = p.id), 0)
ORDER BY id
"""


async def keep_summaries(connection: ConnectionFactory, *, interval_s: float = 5.0) -> None:
    """Every `interval_s`, summarize the stretches every project's log has completed, until cancelled.
    Every instance runs this; the per-project lock of `summarize` lets one of them do each stretch."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            async with connection() as conn:
                for row in await conn.fetch(_BEHIND, STRETCH):
                    await summarize(conn, row["id"], upto=row["head"])
        except Exception as exc:  # the database is down, or busy: the next round tries again
            logger.warning("summarizing the logs failed, will retry: %s", exc)


_LATEST_WITHIN = f"""
SELECT DISTINCT ON (type, subject) type, subject, seq
FROM (SELECT type, seq, {SUBJECT_HASH_SQL} AS subject FROM events
      WHERE project_id = $1 AND seq > $2 AND seq <= $3 AND type = ANY($4::text[])) AS keyed
ORDER BY type, subject, seq DESC
"""

_WALK = """
SELECT subject, seq FROM stretch_latest WHERE project_id = $1 AND type = $2 AND seq <= $3
ORDER BY seq DESC LIMIT $4
"""


async def read_at(conn: asyncpg.Connection, project_id: str, at: int, *, limit: int = DEFAULT_LIMIT) -> Snapshot:
    """The project's snapshot as of seq `at`: `fold` of its events 1..at, with `seq` = at. The caller
    checks that oldest - 1 <= at <= head (the log below the head never changes, so neither does the
    answer; below the watermark a prune removed events the stretches point at, retention.py).

    The latest event of each subject up to `at` is found newest first: the events after the last
    stretch boundary, folded here (fewer than STRETCH), then each stretch's subjects from the newest
    back, until `limit` subjects are found or the log's start is reached. The first time a subject is
    met is its latest event; the subjects met first are the most recently updated."""
    base = at // STRETCH * STRETCH
    await summarize(conn, project_id, upto=base)
    recent: dict[str, list[tuple[bytes, int]]] = {type: [] for type in LATEST}
    for row in await conn.fetch(_LATEST_WITHIN, project_id, base, at, list(LATEST)):
        recent[row["type"]].append((row["subject"], row["seq"]))
    chosen: dict[str, list[int]] = {}
    for type, found in recent.items():
        latest = dict(sorted(found, key=lambda item: item[1], reverse=True)[:limit])
        bound = base
        while len(latest) < limit and bound > 0:
            rows = await conn.fetch(_WALK, project_id, type, bound, _WALK_PAGE)
            for row in rows:
                latest.setdefault(row["subject"], row["seq"])
                if len(latest) == limit:
                    break
            bound = rows[-1]["seq"] - 1 if len(rows) == _WALK_PAGE else 0
        chosen[type] = list(latest.values())
    events = {
        e.seq: e for e in await eventlog.read_seqs(conn, project_id, [s for seqs in chosen.values() for s in seqs])
    }
    notifications, _ = await eventlog.read_page(
        conn, project_id, before=at + 1, limit=limit, where=Filter(type=NOTIFICATION_TYPE), order="desc"
    )
    lists = {LATEST[type]: tuple(events[s] for s in seqs) for type, seqs in chosen.items()}
    return Snapshot(
        project_id,
        at,
        agent_runs=lists["agent_runs"],
        pull_requests=lists["pull_requests"],
        validations=lists["validations"],
        notifications=tuple(notifications),
    )
