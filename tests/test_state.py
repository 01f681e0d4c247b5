"""The project state snapshot (service/state.py, docs/protocol.md §8): the fold of the log up to its seq.

It is served by `GET /api/projects/{id}/state`, so that snapshot + subscribe(after = seq) misses nothing.
"""

from __future__ import annotations

import asyncio
import random
import time
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from service import db, eventlog, state
from service.eventlog import StoredEvent
from service.messages import ProjectState, event_data, json_schema
from tests.conftest import RunningServer, timeout
from tests.helpers import create, open_client

RUN_STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
REPOS = ("octo/demo", "Octo/Demo", "octo/other")  # the first two are one repository
CHECKS = ("ci / tests", "lint", "déploiement ✓", "n" * 300)
SHAS = (None, "", "abc", "def", "f" * 3000)  # absent, empty and very long are subjects of their own


class Stream:
    """A seeded random stream of valid events over a few subjects, with repeated messageIds."""

    def __init__(self, seed: int, runs: int = 12, prs: int = 6) -> None:
        self.rnd = random.Random(seed)
        self.runs = runs
        self.prs = prs
        self.sent: list[str] = []

    def event(self) -> tuple[str, dict[str, Any], str]:
        """(type, data, messageId); one in ten repeats an earlier messageId with other data."""
        rnd = self.rnd
        kind = rnd.choice(("agent_run_progress", "agent_run_progress", "pr_notification", "validation_update"))
        raw: dict[str, Any]
        if kind == "agent_run_progress":
            # Statuses and progress jump about: the latest event wins, whatever it says.
            raw = {
                "runId": f"run-{rnd.randrange(self.runs)}",
                "status": rnd.choice(RUN_STATUSES),
                "progress": rnd.choice((0, 12.5, 50, 100)),
                "step": rnd.choice((None, "build", "test")),
            }
        elif kind == "pr_notification":
            number = rnd.randrange(1, self.prs + 1)
            raw = {
                "action": rnd.choice(("opened", "synchronize", "merged", "review_submitted")),
                "number": number,
                "title": f"PR {number}",
                "url": f"https://github.com/octo/demo/pull/{number}",
                "repo": rnd.choice(REPOS),
                "headSha": rnd.choice(SHAS[1:4]),
            }
        else:
            raw = {
                "name": rnd.choice(CHECKS),
                "status": rnd.choice(("queued", "in_progress", "completed")),
                "conclusion": rnd.choice((None, "success", "failure")),
                "headSha": rnd.choice(SHAS),
            }
        if self.sent and rnd.random() < 0.1:
            message_id = rnd.choice(self.sent)
        else:
            message_id = f"m{len(self.sent)}"
            self.sent.append(message_id)
        return kind, event_data(kind, raw), message_id


async def append(conn: asyncpg.Connection, project_id: str, stream: Stream) -> None:
    kind, data, message_id = stream.event()
    await eventlog.append(conn, project_id=project_id, type=kind, data=data, message_id=message_id)


async def whole_log(conn: asyncpg.Connection, project_id: str) -> list[StoredEvent]:
    return await eventlog.read_after(conn, project_id, 0, 1_000_000)


async def assert_state_is_fold(conn: asyncpg.Connection, project_id: str) -> None:
    events = await whole_log(conn, project_id)
    for limit in (1, 3, state.DEFAULT_LIMIT, state.MAX_LIMIT):
        snapshot = await state.read(conn, project_id, limit=limit)
        assert snapshot == state.fold(project_id, events, limit=limit), limit  # seq included: head = last seq


# --- the table against the fold -------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_snapshot_equals_fold_of_the_log(pool: asyncpg.Pool, seed: int) -> None:
    """A random stream (repeated messageIds, rolled-back appends, concurrent publishers, long and
    absent keys): after every few appends, the snapshot read from the table equals the fold of the
    whole log, for several limits; another project's events never leak in."""
    async with pool.acquire() as conn:
        for pid in ("a", "b"):
            await eventlog.create_project(conn, id=pid, name=pid, repo=None)
        stream = Stream(seed)
        for step in range(120):
            if stream.rnd.random() < 0.05:
                with pytest.raises(RuntimeError):
                    async with conn.transaction():
                        await append(conn, "a", stream)
                        raise RuntimeError("roll back: neither the event nor its state remains")
            else:
                await append(conn, stream.rnd.choice(("a", "a", "b")), stream)
            if step % 15 == 0:
                await assert_state_is_fold(conn, "a")

    async def publisher(i: int) -> None:
        own = Stream(seed * 100 + i, runs=4, prs=3)  # few subjects: the publishers fight over them
        for _ in range(25):
            async with pool.acquire() as conn:
                await append(conn, "a", own)

    await asyncio.gather(*(publisher(i) for i in range(4)))
    async with pool.acquire() as conn:
        for pid in ("a", "b"):
            await assert_state_is_fold(conn, pid)


async def test_fold_definition(conn: asyncpg.Connection) -> None:
    """What the fold keeps: per subject the latest event, newest first; repos case-insensitively;
    absent and empty headSha apart; the latest pull-request events as notifications; `limit`."""
    await eventlog.create_project(conn, id="a", name="a", repo=None)

    async def put(kind: str, **data: Any) -> int:
        event, _ = await eventlog.append(conn, project_id="a", type=kind, data=event_data(kind, data))
        return event.seq

    pr = {"action": "opened", "title": "t", "url": "u"}
    run = {"status": "running", "progress": 5}
    await put("agent_run_progress", runId="r1", **run)  # 1
    await put("agent_run_progress", runId="r2", **run)  # 2
    await put("agent_run_progress", runId="r1", status="queued", progress=0)  # 3: r1 goes "back"; still latest
    await put("pr_notification", number=7, repo="octo/demo", **pr)  # 4
    await put("pr_notification", number=7, repo="Octo/Demo", **pr)  # 5: the same pull request
    await put("pr_notification", number=7, repo="octo/other", **pr)  # 6: another repository's #7
    await put("validation_update", name="ci", status="queued")  # 7
    await put("validation_update", name="ci", status="queued", headSha="")  # 8
    await put("validation_update", name="ci", status="completed", headSha="abc")  # 9
    await put("validation_update", name="ci", status="queued")  # 10: replaces 7

    snapshot = await state.read(conn, "a")
    assert snapshot is not None and snapshot.seq == 10
    assert [e.seq for e in snapshot.agent_runs] == [3, 2]
    assert [e.seq for e in snapshot.pull_requests] == [6, 5]
    assert [e.seq for e in snapshot.validations] == [10, 9, 8]
    assert [e.seq for e in snapshot.notifications] == [6, 5, 4]
    assert snapshot.agent_runs[0].data == '{"runId": "r1", "status": "queued", "progress": 0}'
    small = await state.read(conn, "a", limit=2)
    assert small is not None
    assert [[e.seq for e in items] for items in (small.validations, small.notifications)] == [[10, 9], [6, 5]]
    assert snapshot == state.fold("a", await whole_log(conn, "a"))


async def test_types_without_a_subject_only_move_seq(conn: asyncpg.Connection) -> None:
    """An event of a type with no subject appends as before: no state row, and the snapshot's seq moves."""
    await eventlog.create_project(conn, id="a", name="a", repo=None)
    run = {"runId": "r", "status": "queued", "progress": 0}
    await eventlog.append(conn, project_id="a", type="agent_run_progress", data=run)
    await eventlog.append(conn, project_id="a", type="other", data={"x": 1})
    assert await conn.fetchval("SELECT count(*) FROM project_state") == 1
    snapshot = await state.read(conn, "a")
    assert snapshot is not None and snapshot.seq == 2 and [e.seq for e in snapshot.agent_runs] == [1]
    assert snapshot == state.fold("a", await whole_log(conn, "a"))
    assert await state.read(conn, "nope") is None
    await eventlog.create_project(conn, id="empty", name="empty", repo=None)
    assert await state.read(conn, "empty") == state.Snapshot("empty", 0)


async def test_snapshot_seq_matches_its_contents_under_concurrent_appends(pool: asyncpg.Pool) -> None:
    """Snapshots taken while 3 publishers append are each exactly the fold of the events <= its seq."""
    async with pool.acquire() as conn:
        await eventlog.create_project(conn, id="a", name="a", repo=None)
    done = asyncio.Event()

    async def publisher(i: int) -> None:
        stream = Stream(i, runs=3, prs=2)
        for _ in range(40):
            async with pool.acquire() as conn:
                await append(conn, "a", stream)
        done.set()

    publishers = [asyncio.create_task(publisher(i)) for i in range(3)]
    snapshots: list[state.Snapshot] = []
    async with pool.acquire() as conn:
        async with asyncio.timeout(timeout(30)):
            while not done.is_set():
                snapshot = await state.read(conn, "a", limit=5)
                assert snapshot is not None
                snapshots.append(snapshot)
                await asyncio.sleep(0.002)
        await asyncio.gather(*publishers)
        events = await whole_log(conn, "a")
    assert len({s.seq for s in snapshots}) > 1
    for snapshot in snapshots:
        assert snapshot == state.fold("a", events[: snapshot.seq], limit=5)


# --- the migration ----------------------------------------------------------------------------------------


async def assert_one_row_per_subject(conn: asyncpg.Connection) -> None:
    """As many state rows as subjects in the log, by log.subject: a hash computed by the migration's SQL
    that differed from the one the append statement computes would leave a second row for a subject."""
    rows = await conn.fetch("SELECT project_id, type, data::text AS data FROM events")
    subjects = {(r["project_id"], r["type"], str(eventlog.subject(r["type"], orjson.loads(r["data"])))) for r in rows}
    assert await conn.fetchval("SELECT count(*) FROM project_state") == len(subjects)


async def test_migration_folds_an_existing_log_and_rolls_back(empty_database_url: str) -> None:
    """Upgrading a database that already holds events fills the state from the log (the SQL subject
    agrees with log.subject byte for byte: later appends replace, never duplicate); downgrading drops
    the table and index and keeps the log; upgrading again rebuilds the same state."""
    url = empty_database_url
    await asyncio.to_thread(db.migrate, url, "0001")
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        for pid in ("a", "b"):
            await conn.execute("INSERT INTO projects (id, name) VALUES ($1, $1)", pid)
        stream = Stream(7)
        seen: set[tuple[str, str]] = set()
        for _ in range(150):  # appended as the 0001 statement did
            kind, data, message_id = stream.event()
            pid = stream.rnd.choice(("a", "b"))
            if (pid, message_id) in seen:
                continue
            seen.add((pid, message_id))
            await conn.execute(
                "WITH next AS (UPDATE projects SET head = head + 1 WHERE id = $1 RETURNING head) "
                "INSERT INTO events (project_id, seq, message_id, type, data) "
                "SELECT $1, head, $2, $3, $4::jsonb FROM next",
                pid,
                message_id,
                kind,
                orjson.dumps(data).decode(),
            )
        await asyncio.to_thread(db.migrate, url)
        for pid in ("a", "b"):
            await assert_state_is_fold(conn, pid)
        await assert_one_row_per_subject(conn)
        for _ in range(60):  # the same subjects again, now through log.append
            await append(conn, "a", stream)
        await assert_one_row_per_subject(conn)
        await assert_state_is_fold(conn, "a")
        before = {pid: await state.read(conn, pid) for pid in ("a", "b")}

        await asyncio.to_thread(db.downgrade, url, "0001")
        rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        tables = {r["tablename"] for r in rows}
        assert "project_state" not in tables and {"projects", "events", "cursors"} <= tables
        assert await conn.fetchval("SELECT count(*) FROM pg_indexes WHERE indexname = 'events_pr_notifications'") == 0
        await asyncio.to_thread(db.migrate, url)
        assert {pid: await state.read(conn, pid) for pid in ("a", "b")} == before
    finally:
        await conn.close()


# --- over HTTP and the WebSocket -----------------------------------------------------------------------------


def stored(event: dict[str, Any]) -> StoredEvent:
    """An event as received on the wire, in the log's form (for folding)."""
    return StoredEvent(
        event["projectId"],
        event["seq"],
        event["messageId"],
        event["type"],
        orjson.dumps(event["data"]).decode(),
        datetime.fromisoformat(event["timestamp"]),
        bytes.fromhex(event["hash"]),
    )


def as_snapshot(body: dict[str, Any]) -> state.Snapshot:
    def items(name: str) -> tuple[StoredEvent, ...]:
        return tuple(stored(e) for e in body[name])

    return state.Snapshot(
        body["projectId"],
        body["seq"],
        agent_runs=items("agentRuns"),
        pull_requests=items("pullRequests"),
        validations=items("validations"),
        notifications=items("notifications"),
    )


def snapshot_events(snapshot: state.Snapshot) -> list[StoredEvent]:
    return [*snapshot.agent_runs, *snapshot.pull_requests, *snapshot.validations, *snapshot.notifications]


async def history(client: httpx.AsyncClient, project_id: str) -> list[StoredEvent]:
    events: list[StoredEvent] = []
    after: int | None = 0
    while after is not None:
        page = (await client.get(f"/api/projects/{project_id}/events", params={"after": after, "limit": 1000})).json()
        events += [stored(e) for e in page["events"]]
        after = page["next"]
    return events


async def test_snapshot_then_subscribe_misses_nothing(server: RunningServer, client: httpx.AsyncClient) -> None:
    """While 3 producers publish: GET the state, then subscribe with after = its seq. Exactly the
    events after seq arrive, in order; folding the snapshot's events with them equals the fold of the
    whole log and the state read afterwards (repeated, with a small and a large limit)."""
    await create(client, "a")
    rnd = random.Random(5)
    for round_, limit in enumerate((3, 1000, 2, 50)):
        streams = [Stream(round_ * 10 + i, runs=5, prs=3) for i in range(3)]

        async def produce(stream: Stream, prefix: str) -> None:
            for _ in range(20):
                kind, data, message_id = stream.event()
                body = {"type": kind, "data": data, "messageId": f"{prefix}-{message_id}"}
                r = await client.post("/api/projects/a/events", json=body)
                assert r.status_code in (200, 201), r.text

        producing = asyncio.gather(*(produce(s, str(round_)) for s in streams))
        await asyncio.sleep(rnd.random() * 0.05)
        r = await client.get("/api/projects/a/state", params={"limit": limit})
        assert r.status_code == 200, r.text
        snapshot = as_snapshot(ProjectState.model_validate(r.json()).model_dump(by_alias=True))
        subscriber = await open_client(server)
        assert (await subscriber.subscribe("a", after=snapshot.seq))["after"] == snapshot.seq
        await producing
        head = (await client.get("/api/projects")).json()["projects"][0]["head"]
        received = [stored(e) for e in await subscriber.events("a", head - snapshot.seq)]
        assert [e.seq for e in received] == list(range(snapshot.seq + 1, head + 1))
        await subscriber.ws.close()

        whole = state.fold("a", await history(client, "a"), limit=limit)
        assert state.fold("a", snapshot_events(snapshot) + received, limit=limit) == whole
        after = await client.get("/api/projects/a/state", params={"limit": limit})
        assert as_snapshot(after.json()) == whole


async def test_state_endpoint_shape_and_errors(server: RunningServer, client: httpx.AsyncClient) -> None:
    """The body's shape; 401 without a token, 403 for another project or without subscribe, 404 for
    a missing project (with `*`), 422 for a limit out of range; listed in the OpenAPI and JSON schemas."""
    await create(client, "a", "b")
    r = await client.get("/api/projects/a/state")
    assert r.status_code == 200 and r.json() == {
        "projectId": "a",
        "seq": 0,
        "agentRuns": [],
        "pullRequests": [],
        "validations": [],
        "notifications": [],
    }
    run = {"runId": "r1", "status": "running", "progress": 5}
    published = (await client.post("/api/projects/a/events", json={"type": "agent_run_progress", "data": run})).json()
    body = (await client.get("/api/projects/a/state")).json()
    assert body["seq"] == 1 and body["agentRuns"] == [published]

    def status(r: httpx.Response) -> tuple[int, str]:
        return r.status_code, r.json()["error"]

    assert status(await client.get("/api/projects/a/state", headers={"Authorization": ""})) == (401, "unauthorized")
    other = server.headers(server.token(projects=["b"], scopes=("subscribe",)))
    assert status(await client.get("/api/projects/a/state", headers=other)) == (403, "forbidden")
    publisher = server.headers(server.token(projects=["a"], scopes=("publish",)))
    assert status(await client.get("/api/projects/a/state", headers=publisher)) == (403, "forbidden")
    reader = server.headers(server.token(projects=["a"], scopes=("subscribe",)))
    assert (await client.get("/api/projects/a/state", headers=reader)).status_code == 200
    assert status(await client.get("/api/projects/ghost/state")) == (404, "not_found")
    for bad in (0, state.MAX_LIMIT + 1, "x"):
        r = await client.get("/api/projects/a/state", params={"limit": bad})
        assert status(r) == (422, "invalid_data") and r.json()["field"] == "limit"
    openapi = (await client.get("/api/openapi.json")).json()
    assert "/api/projects/{project_id}/state" in openapi["paths"]
    assert "ProjectState" in json_schema()["$defs"]


# --- the state at a seq (the audit's point-in-time state) ----------------------------------------------------


async def append_stream(conn: asyncpg.Connection, project_id: str, stream: Stream, count: int) -> None:
    """`count` events of `stream`, in batches (repeated messageIds append nothing)."""
    appends = []
    for _ in range(count):
        kind, data, message_id = stream.event()
        appends.append(eventlog.Append(project_id, kind, data, message_id))
    for first in range(0, len(appends), 200):
        await eventlog.append_many(conn, appends[first : first + 200])


async def assert_read_at_is_fold(conn: asyncpg.Connection, project_id: str, ats: list[int]) -> None:
    events = await whole_log(conn, project_id)
    for at in ats:
        for limit in (1, 3, 7, state.DEFAULT_LIMIT, state.MAX_LIMIT):
            expected = state.fold(project_id, [e for e in events if e.seq <= at], limit=limit)
            assert await state.read_at(conn, project_id, at, limit=limit) == expected, (at, limit)


@pytest.mark.parametrize("seed", [4, 5])
async def test_state_at_a_seq_equals_the_fold_of_the_events_up_to_it(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    """With stretches of 40 events and walk pages of 7 (so that the walk back crosses stretches and
    pages): the state at N equals the fold of events 1..N for N at, around and between stretch
    boundaries, for several limits; and again, for old and new N, after more events were appended."""
    monkeypatch.setattr(state, "STRETCH", 40)
    monkeypatch.setattr(state, "_WALK_PAGE", 7)
    for pid in ("a", "b"):
        await eventlog.create_project(conn, id=pid, name=pid, repo=None)
    stream = Stream(seed, runs=30, prs=8)
    await append_stream(conn, "a", stream, 400)
    await append_stream(conn, "b", Stream(seed + 10), 100)  # another project's stretches never leak in
    head = await eventlog.head(conn, "a")
    assert head is not None and head > 300
    await assert_read_at_is_fold(conn, "a", [0, 1, 2, 39, 40, 41, 79, 80, 200, 281, head - 1, head])
    assert await conn.fetchval("SELECT max(last_seq) FROM log_stretches WHERE project_id = 'a'") == head // 40 * 40

    await append_stream(conn, "a", stream, 300)
    new_head = await eventlog.head(conn, "a")
    assert new_head is not None and new_head > head
    await assert_read_at_is_fold(conn, "a", [1, 41, head, head + 1, new_head - 39, new_head])
    assert await state.read_at(conn, "a", new_head, limit=50) == await state.read(conn, "a", limit=50)


async def test_stretches_are_written_in_order_once_and_skip_the_incomplete_one(
    conn: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`summarize` writes each whole stretch once, from seq 1 on, each with its events' time span and
    the latest event of each subject within it; the stretch still filling is left for later."""
    monkeypatch.setattr(state, "STRETCH", 10)
    await eventlog.create_project(conn, id="a", name="a", repo=None)
    await append_stream(conn, "a", Stream(9, runs=3, prs=2), 25)
    head = await eventlog.head(conn, "a")
    assert head is not None and 20 <= head < 30
    assert await state.summarize(conn, "a", upto=head) == 20
    assert await state.summarize(conn, "a", upto=head) == 20  # nothing more to do
    spans = await conn.fetch("SELECT * FROM log_stretches WHERE project_id = 'a' ORDER BY last_seq")
    events = await whole_log(conn, "a")
    for span, first in zip(spans, (1, 11), strict=True):
        stretch = [e for e in events if first <= e.seq < first + 10]
        assert (span["first_seq"], span["last_seq"]) == (first, first + 9)
        assert (span["first_at"], span["last_at"]) == (
            min(e.created_at for e in stretch),
            max(e.created_at for e in stretch),
        )
        latest = await conn.fetch(
            "SELECT seq FROM stretch_latest WHERE project_id = 'a' AND seq BETWEEN $1 AND $2 ORDER BY seq",
            first,
            first + 9,
        )
        folded = state.fold("a", stretch, limit=state.MAX_LIMIT)
        items = folded.agent_runs + folded.pull_requests + folded.validations
        assert [r["seq"] for r in latest] == sorted(e.seq for e in items)


async def test_keep_summaries_catches_up_in_the_background(database_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The background task summarizes what every project's log has completed, and keeps doing it."""
    monkeypatch.setattr(state, "STRETCH", 10)
    pool = await db.create_pool(database_url, size=2, timeout=10)
    database = db.Database(pool, timeout=10)
    task = asyncio.create_task(state.keep_summaries(database.connection, interval_s=0.05))
    try:
        async with database.connection() as conn:
            await eventlog.create_project(conn, id="a", name="a", repo=None)
            await append_stream(conn, "a", Stream(3), 35)
            head = await eventlog.head(conn, "a")
            assert head is not None
            deadline = time.monotonic() + timeout(10)
            while await conn.fetchval("SELECT max(last_seq) FROM log_stretches") != head // 10 * 10:
                assert time.monotonic() < deadline, "the stretches were not summarized"
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await database.close()
