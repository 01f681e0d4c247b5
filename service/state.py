"""The project state: what a dashboard shows, folded from the log.

A snapshot is a set of events: the latest event of each agent run, pull request and validation (by
`eventlog.subject`), most recently updated first, and the latest pull-request events as a notification
feed, each list at most `limit` long, together with `seq`, the log position it reflects. `fold` is
its definition over the events themselves; `read` serves it from `project_state`, which the append
statement keeps current, so reading it costs the same at a million events as at ten.

Because a snapshot is made of events, folding a snapshot's events together with the events after
its `seq` gives the fold of the whole log: a client loads a snapshot, subscribes with `after = seq`,
and applies live events as they come, missing nothing and receiving nothing twice.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import orjson

from . import eventlog
from .eventlog import StoredEvent

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
