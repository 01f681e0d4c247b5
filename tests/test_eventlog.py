"""The event log on a real PostgreSQL: contiguous per-project seqs, commit order, idempotency."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import asyncpg
import orjson
import pytest

from service import db, eventlog, state
from service.db import DatabaseUnavailable

from .conftest import timeout
from .helpers import fill

RUN = {"runId": "r1", "status": "running", "progress": 10}


async def make_projects(conn: asyncpg.Connection, *ids: str) -> None:
    for pid in ids:
        await eventlog.create_project(conn, id=pid, name=pid.upper(), repo=None)


async def seqs(conn: asyncpg.Connection, project_id: str) -> list[int]:
    rows = await conn.fetch("SELECT seq FROM events WHERE project_id = $1 ORDER BY seq", project_id)
    return [r["seq"] for r in rows]


async def test_concurrent_publishers_get_contiguous_seqs_per_project(pool: asyncpg.Pool) -> None:
    """16 concurrent publishers over 2 projects: each project's seqs are exactly 1..N, no duplicates."""
    async with pool.acquire() as c:
        await make_projects(c, "a", "b")

    per_publisher = 25

    async def publisher(i: int) -> list[tuple[str, int]]:
        project = "a" if i % 2 else "b"
        got = []
        for n in range(per_publisher):
            async with pool.acquire() as c:
                event, created = await eventlog.append(
                    c, project_id=project, type="agent_run_progress", data=RUN, message_id=f"p{i}-{n}"
                )
            assert created
            got.append((project, event.seq))
        return got

    results = await asyncio.gather(*(publisher(i) for i in range(16)))
    async with pool.acquire() as c:
        for project in ("a", "b"):
            expected = list(range(1, 8 * per_publisher + 1))
            assert await seqs(c, project) == expected
            assert sorted(s for r in results for p, s in r if p == project) == expected
            assert await eventlog.head(c, project) == 8 * per_publisher


async def test_rolled_back_append_leaves_no_gap(conn: asyncpg.Connection) -> None:
    """An append whose transaction rolls back gives its seq back: the next append takes it."""
    await make_projects(conn, "a")
    await eventlog.append(conn, project_id="a", type="agent_run_progress", data=RUN)
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            event, _ = await eventlog.append(conn, project_id="a", type="agent_run_progress", data=RUN)
            assert event.seq == 2
            raise RuntimeError("abort")
    event, _ = await eventlog.append(conn, project_id="a", type="agent_run_progress", data=RUN)
    assert event.seq == 2
    assert await seqs(conn, "a") == [1, 2]


async def test_open_append_blocks_same_project_but_not_others(database_url: str) -> None:
    """Commit order = seq order: a second append to a project waits for the first to commit; another
    project's append does not wait; afterwards both read back in seq order with no skip."""
    dsn = db.asyncpg_dsn(database_url)
    c1, c2, c3 = [await asyncpg.connect(dsn) for _ in range(3)]
    try:
        await make_projects(c1, "a", "b")
        tx = c1.transaction()
        await tx.start()
        first, _ = await eventlog.append(c1, project_id="a", type="agent_run_progress", data=RUN, message_id="m1")
        second = asyncio.create_task(
            eventlog.append(c2, project_id="a", type="agent_run_progress", data=RUN, message_id="m2")
        )
        await asyncio.sleep(timeout(0.3))
        assert not second.done(), "an append to the same project must wait for the open one"
        other, _ = await asyncio.wait_for(
            eventlog.append(c3, project_id="b", type="agent_run_progress", data=RUN), timeout(2)
        )
        assert other.seq == 1
        # The reader sees nothing of project a yet: the open append is invisible and blocks the next.
        assert await eventlog.read_after(c3, "a", 0, 10) == []
        await tx.commit()
        second_event, _ = await asyncio.wait_for(second, timeout(5))
        assert (first.seq, second_event.seq) == (1, 2)
        assert [e.message_id for e in await eventlog.read_after(c3, "a", 0, 10)] == ["m1", "m2"]
    finally:
        for c in (c1, c2, c3):
            await c.close()


async def test_repeated_message_id_returns_original(conn: asyncpg.Connection) -> None:
    """Publishing a messageId again appends nothing and returns the original event."""
    await make_projects(conn, "a")
    first, created = await eventlog.append(conn, project_id="a", type="agent_run_progress", data=RUN, message_id="x")
    assert created
    again, created_again = await eventlog.append(
        conn, project_id="a", type="agent_run_progress", data={**RUN, "progress": 99}, message_id="x"
    )
    assert not created_again
    assert again == first
    assert await seqs(conn, "a") == [1]
    assert await eventlog.head(conn, "a") == 1
    # The same messageId in another project is another event.
    await make_projects(conn, "b")
    other, created_other = await eventlog.append(
        conn, project_id="b", type="agent_run_progress", data=RUN, message_id="x"
    )
    assert created_other and other.seq == 1


async def test_concurrent_duplicates_append_once(pool: asyncpg.Pool) -> None:
    """8 concurrent publishes of one messageId: exactly one appends, all return that event, no gap."""
    async with pool.acquire() as c:
        await make_projects(c, "a")
    for round_ in range(5):

        async def publish(round_: int = round_) -> tuple[eventlog.StoredEvent, bool]:
            async with pool.acquire() as c:
                return await eventlog.append(
                    c, project_id="a", type="agent_run_progress", data=RUN, message_id=f"dup-{round_}"
                )

        results = await asyncio.gather(*(publish() for _ in range(8)))
        assert sum(created for _, created in results) == 1
        assert len({e.seq for e, _ in results}) == 1
    async with pool.acquire() as c:
        assert await seqs(c, "a") == [1, 2, 3, 4, 5]


async def test_duplicate_inside_a_transaction_keeps_it_usable(conn: asyncpg.Connection) -> None:
    """A duplicate inside the caller's transaction is absorbed by a savepoint; the transaction goes on."""
    await make_projects(conn, "a")
    async with conn.transaction():
        await eventlog.append(conn, project_id="a", type="agent_run_progress", data=RUN, message_id="x")
        _, created = await eventlog.append(conn, project_id="a", type="agent_run_progress", data=RUN, message_id="x")
        assert not created
        event, _ = await eventlog.append(conn, project_id="a", type="agent_run_progress", data=RUN, message_id="y")
        assert event.seq == 2
    assert await seqs(conn, "a") == [1, 2]


async def test_append_to_missing_project_raises_and_writes_nothing(conn: asyncpg.Connection) -> None:
    """No project, no event, no head."""
    with pytest.raises(eventlog.ProjectNotFound):
        await eventlog.append(conn, project_id="nope", type="agent_run_progress", data=RUN)
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_append_notifies_only_on_commit(database_url: str) -> None:
    """The NOTIFY (`project:seq`) is sent with the commit, and not at all for a rolled-back append."""
    dsn = db.asyncpg_dsn(database_url)
    listener, writer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    received: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(eventlog.NOTIFY_CHANNEL, lambda *args: received.put_nowait(args[3]))
        await make_projects(writer, "a")
        with pytest.raises(RuntimeError):
            async with writer.transaction():
                await eventlog.append(writer, project_id="a", type="agent_run_progress", data=RUN)
                raise RuntimeError("abort")
        await eventlog.append(writer, project_id="a", type="agent_run_progress", data=RUN)
        assert await asyncio.wait_for(received.get(), timeout(5)) == "a:1"
        await asyncio.sleep(timeout(0.1))
        assert received.empty()
    finally:
        await listener.close()
        await writer.close()


async def test_read_page_orders_filters_and_pages(conn: asyncpg.Connection) -> None:
    """after/before bounds, type filter, both orders, and `next` exactly when more events match."""
    await make_projects(conn, "a")
    for i in range(1, 11):
        kind = "agent_run_progress" if i % 2 else "validation_update"
        data = RUN if i % 2 else {"name": "ci", "status": "queued"}
        await eventlog.append(conn, project_id="a", type=kind, data=data)

    events, nxt = await eventlog.read_page(conn, "a", limit=4)
    assert [e.seq for e in events] == [1, 2, 3, 4] and nxt == 4
    events, nxt = await eventlog.read_page(conn, "a", after=8, limit=4)
    assert [e.seq for e in events] == [9, 10] and nxt is None
    events, nxt = await eventlog.read_page(conn, "a", after=6, limit=4)
    assert [e.seq for e in events] == [7, 8, 9, 10] and nxt is None
    events, nxt = await eventlog.read_page(conn, "a", order="desc", limit=3)
    assert [e.seq for e in events] == [10, 9, 8] and nxt == 8
    events, nxt = await eventlog.read_page(conn, "a", order="desc", before=8, limit=3)
    assert [e.seq for e in events] == [7, 6, 5] and nxt == 5
    events, nxt = await eventlog.read_page(conn, "a", after=2, before=7)
    assert [e.seq for e in events] == [3, 4, 5, 6] and nxt is None
    events, nxt = await eventlog.read_page(conn, "a", where=eventlog.Filter(type="validation_update"), limit=3)
    assert [e.seq for e in events] == [2, 4, 6] and nxt == 6
    events, nxt = await eventlog.read_page(conn, "a", where=eventlog.Filter(type="validation_update"), after=6, limit=3)
    assert [e.seq for e in events] == [8, 10] and nxt is None


# --- group commit: append_many and the Appender ------------------------------------------------------------


def batch(project_id: str, n: int, prefix: str = "m") -> list[eventlog.Append]:
    return [eventlog.Append(project_id, "agent_run_progress", {**RUN, "progress": i}, f"{prefix}{i}") for i in range(n)]


async def test_group_commit_keeps_seqs_contiguous_under_concurrency(pool: asyncpg.Pool) -> None:
    """Two appenders (two processes' worth) and plain appends race over 3 projects: every project's
    seqs are exactly 1..N, each append got the seq the log holds for its messageId, and appends were
    grouped (far fewer transactions than appends)."""
    async with pool.acquire() as c:
        await make_projects(c, "a", "b", "c")
    appenders = [eventlog.Appender(pool.acquire), eventlog.Appender(pool.acquire)]

    async def via_appender(i: int) -> tuple[str, str, int]:
        project, message_id = "abc"[i % 3], f"g{i}"
        event, created = await appenders[i % 2].append(
            project_id=project, type="agent_run_progress", data=RUN, message_id=message_id
        )
        assert created
        return project, message_id, event.seq

    async def one_by_one(i: int) -> tuple[str, str, int]:
        project, message_id = "abc"[i % 3], f"s{i}"
        async with pool.acquire() as c:
            event, _ = await eventlog.append(
                c, project_id=project, type="agent_run_progress", data=RUN, message_id=message_id
            )
        return project, message_id, event.seq

    results = await asyncio.gather(*(via_appender(i) for i in range(900)), *(one_by_one(i) for i in range(60)))
    async with pool.acquire() as c:
        for project in "abc":
            rows = await c.fetch("SELECT seq, message_id FROM events WHERE project_id = $1 ORDER BY seq", project)
            assert [r["seq"] for r in rows] == list(range(1, 321))
            assert await eventlog.head(c, project) == 320
            log = {r["message_id"]: r["seq"] for r in rows}
            assert {m: s for p, m, s in results if p == project} == log
    assert sum(a.appended for a in appenders) == 900
    assert sum(a.batches for a in appenders) < 300, "concurrent appends should share transactions"


async def test_append_many_is_append_one_by_one(conn: asyncpg.Connection) -> None:
    """A batch leaves the log and the project state exactly as the same appends made one by one would,
    subjects repeated inside the batch included (the last one wins)."""
    await make_projects(conn, "a", "b")
    appends = [
        eventlog.Append("x", "agent_run_progress", {"runId": f"r{i % 3}", "status": "running", "progress": i}, f"m{i}")
        for i in range(9)
    ] + [eventlog.Append("x", "validation_update", {"name": "ci", "status": "queued"}, "v1")]
    outcomes = await eventlog.append_many(conn, [eventlog.Append("a", a.type, a.data, a.message_id) for a in appends])
    for a in appends:
        await eventlog.append(conn, project_id="b", type=a.type, data=a.data, message_id=a.message_id)
    assert [o[0].seq for o in outcomes if not isinstance(o, Exception)] == list(range(1, 11))
    assert all(not isinstance(o, Exception) and o[1] for o in outcomes)

    async def snapshot(project: str) -> tuple[list[Any], list[Any]]:
        events = await conn.fetch(
            "SELECT seq, message_id, type, data FROM events WHERE project_id = $1 ORDER BY seq", project
        )
        state = await conn.fetch(
            "SELECT type, subject, seq FROM project_state WHERE project_id = $1 ORDER BY type, subject", project
        )
        return [tuple(r) for r in events], [tuple(r) for r in state]

    assert await snapshot("a") == await snapshot("b")
    assert [o[0].data for o in outcomes if not isinstance(o, Exception)] == [
        e.data for e in await eventlog.read_after(conn, "a", 0, 100)
    ]


async def test_append_many_dedupes_against_the_log_and_within_the_batch(conn: asyncpg.Connection) -> None:
    """A messageId already in the log, or earlier in the batch, appends nothing and yields the original."""
    await make_projects(conn, "a")
    first, _ = await eventlog.append(conn, project_id="a", type="agent_run_progress", data=RUN, message_id="old")
    outcomes = await eventlog.append_many(
        conn,
        [
            eventlog.Append("a", "agent_run_progress", RUN, "new"),
            eventlog.Append("a", "agent_run_progress", {**RUN, "progress": 99}, "old"),
            eventlog.Append("a", "agent_run_progress", {**RUN, "progress": 98}, "new"),
            eventlog.Append("a", "agent_run_progress", RUN, "newer"),
        ],
    )
    pairs = [(o[0].message_id, o[0].seq, o[1]) for o in outcomes if not isinstance(o, Exception)]
    assert pairs == [("new", 2, True), ("old", 1, False), ("new", 2, False), ("newer", 3, True)]
    assert outcomes[1] == (first, False)
    assert await seqs(conn, "a") == [1, 2, 3]


async def test_append_many_rolled_back_leaves_no_gap(conn: asyncpg.Connection) -> None:
    """A batch whose transaction rolls back takes nothing with it: heads, events and state are as
    before, and the next append takes the next seq."""
    await make_projects(conn, "a", "b")
    await eventlog.append(conn, project_id="a", type="agent_run_progress", data=RUN)
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            await eventlog.append_many(conn, batch("a", 5) + batch("b", 3))
            raise RuntimeError("abort")
    assert (await eventlog.head(conn, "a"), await eventlog.head(conn, "b")) == (1, 0)
    assert await conn.fetchval("SELECT count(*) FROM project_state WHERE project_id = 'b'") == 0
    outcomes = await eventlog.append_many(conn, batch("a", 2) + batch("b", 1))
    assert [o[0].seq for o in outcomes if not isinstance(o, Exception)] == [2, 3, 1]
    assert await seqs(conn, "a") == [1, 2, 3]


async def test_append_many_fails_only_the_appends_to_a_missing_project(conn: asyncpg.Connection) -> None:
    """An append to a project that does not exist gets ProjectNotFound; the rest of the batch commits."""
    await make_projects(conn, "a")
    outcomes = await eventlog.append_many(conn, batch("a", 1) + batch("nope", 1) + batch("a", 1, prefix="n"))
    assert isinstance(outcomes[1], eventlog.ProjectNotFound)
    assert [o[0].seq for o in outcomes if not isinstance(o, Exception)] == [1, 2]
    assert await conn.fetchval("SELECT count(*) FROM events WHERE project_id = 'nope'") == 0


async def test_append_many_notifies_once_per_project_on_commit(database_url: str) -> None:
    """One NOTIFY per project of the batch, carrying its new head, sent with the commit only."""
    dsn = db.asyncpg_dsn(database_url)
    listener, writer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    received: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(eventlog.NOTIFY_CHANNEL, lambda *args: received.put_nowait(args[3]))
        await make_projects(writer, "a", "b")
        with pytest.raises(RuntimeError):
            async with writer.transaction():
                await eventlog.append_many(writer, batch("a", 3))
                raise RuntimeError("abort")
        await eventlog.append_many(writer, batch("a", 3) + batch("b", 2))
        got = {await asyncio.wait_for(received.get(), timeout(5)) for _ in range(2)}
        assert got == {"a:3", "b:2"}
        await asyncio.sleep(timeout(0.1))
        assert received.empty()
    finally:
        await listener.close()
        await writer.close()


async def test_appender_fails_a_batch_as_a_whole_and_recovers(pool: asyncpg.Pool) -> None:
    """When the database is unreachable, every append of the batch gets the error and nothing is
    written; the next appends go through."""
    async with pool.acquire() as c:
        await make_projects(c, "a")
    broken = True

    @contextlib.asynccontextmanager
    async def connection() -> AsyncIterator[asyncpg.Connection]:
        if broken:
            raise DatabaseUnavailable("down")
        async with pool.acquire() as c:
            yield c

    appender = eventlog.Appender(connection)
    outcomes = await asyncio.gather(
        *(appender.append(project_id="a", type="agent_run_progress", data=RUN) for _ in range(5)),
        return_exceptions=True,
    )
    assert all(isinstance(o, DatabaseUnavailable) for o in outcomes)
    broken = False
    events = await asyncio.gather(
        *(appender.append(project_id="a", type="agent_run_progress", data=RUN) for _ in range(5))
    )
    assert sorted(e.seq for e, _ in events) == [1, 2, 3, 4, 5]


async def test_appender_fails_only_the_append_the_database_refuses(
    pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    """An append PostgreSQL refuses (here U+0000, which jsonb cannot hold; validation keeps it out of
    real publishes) fails alone: the others of its batch are written, contiguous, in order."""
    async with pool.acquire() as c:
        await make_projects(c, "a")
    appender = eventlog.Appender(pool.acquire)
    bad = {"runId": "r\x00", "status": "running"}
    outcomes = await asyncio.gather(
        *(
            appender.append(project_id="a", type="agent_run_progress", data=bad if i == 2 else RUN, message_id=f"m{i}")
            for i in range(5)
        ),
        return_exceptions=True,
    )
    assert "a batch of 5 was refused" in caplog.text  # they went as one batch first
    assert isinstance(outcomes[2], asyncpg.PostgresError), outcomes[2]
    written = [o for o in outcomes if not isinstance(o, BaseException)]
    assert [(e.message_id, e.seq, new) for e, new in written] == [
        ("m0", 1, True),
        ("m1", 2, True),
        ("m3", 3, True),
        ("m4", 4, True),
    ]
    async with pool.acquire() as c:
        assert await c.fetchval("SELECT head FROM projects WHERE id = 'a'") == 4
        assert [r["message_id"] for r in await c.fetch("SELECT message_id FROM events ORDER BY seq")] == [
            "m0", "m1", "m3", "m4"
        ]  # fmt: skip


async def test_appender_starts_a_flush_for_an_append_that_arrives_as_the_last_one_ends(pool: asyncpg.Pool) -> None:
    """An append submitted after a flush's last look at its queue, but before that flush's task is
    done, is written (it once waited forever: the finished flusher still counted as running)."""
    async with pool.acquire() as c:
        await make_projects(c, "a")
    later: list[asyncio.Future[tuple[eventlog.StoredEvent, bool]]] = []

    @contextlib.asynccontextmanager
    async def connection() -> AsyncIterator[asyncpg.Connection]:
        async with pool.acquire() as c:
            yield c
        if not later:  # the first flush is about to finish: an append arrives in the very next step
            asyncio.get_running_loop().call_soon(
                lambda: later.append(appender.submit(project_id="a", type="agent_run_progress", data=RUN))
            )

    appender = eventlog.Appender(connection)
    first, _ = await appender.append(project_id="a", type="agent_run_progress", data=RUN)
    await asyncio.sleep(0)
    assert first.seq == 1 and len(later) == 1
    second, new = await asyncio.wait_for(later[0], timeout(5))
    assert (second.seq, new) == (2, True)
    await appender.close()


# --- history filters (docs/protocol.md §7.3) ------------------------------------------------------------------


def wanted(event: eventlog.StoredEvent, where: eventlog.Filter) -> bool:
    """The filters' definition, event by event (times on whole seconds here, so the millisecond cut of
    `timestamp` does not matter)."""
    data = orjson.loads(event.data)
    if where.type is not None and event.type != where.type:
        return False
    if where.since is not None and event.created_at < where.since:
        return False
    if where.until is not None and event.created_at >= where.until:
        return False
    if where.subject is None:
        return True
    if event.type == "agent_run_progress":
        return bool(data["runId"] == where.subject)
    number = data.get("number" if event.type == "pr_notification" else "prNumber")
    return where.subject in (data.get("headSha"), None if number is None else str(number))


async def read_all(conn: asyncpg.Connection, where: eventlog.Filter, order: Literal["asc", "desc"]) -> list[int]:
    """Every seq history answers for `where`, page after page by `next` (pages of 997)."""
    got: list[int] = []
    bound: dict[str, int] = {}
    while True:
        events, next_cursor = await eventlog.read_page(conn, "a", limit=997, where=where, order=order, **bound)
        got += [e.seq for e in events]
        if next_cursor is None:
            return got
        bound = {"after": next_cursor} if order == "asc" else {"before": next_cursor}


async def test_history_filters_select_exactly_the_events_they_name_and_page(conn: asyncpg.Connection) -> None:
    """On a summarized log of 25,000 events whose times go backwards now and then: every filter, and
    their combinations, pages (asc and desc, by `next`) through exactly the events its definition
    selects; time windows are read within the stretches that can hold them, not across the whole log."""
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    await make_projects(conn, "a", "b")
    await fill(conn, "b", 2000, start=t0)
    await fill(conn, "a", 25_000, start=t0, disorder_s=4000)
    assert await state.summarize(conn, "a", upto=25_000) == 20_000
    events = await eventlog.read_after(conn, "a", 0, 100_000)

    def at(seconds: int) -> datetime:
        return t0 + timedelta(seconds=seconds)

    middle = eventlog.Filter(since=at(5000), until=at(8600))  # also holds events 9970, 10967, 11964
    cases = [
        eventlog.Filter(),
        eventlog.Filter(type="pr_notification"),
        middle,
        eventlog.Filter(since=at(24_000)),
        eventlog.Filter(until=at(1500)),
        eventlog.Filter(since=at(9990), until=at(10_010)),  # across a stretch boundary
        eventlog.Filter(since=at(21_000), until=at(22_000)),  # in the tail, after the last stretch
        eventlog.Filter(since=at(30_000)),
        eventlog.Filter(since=at(8000), until=at(7000)),
        eventlog.Filter(subject="run-7"),
        eventlog.Filter(subject="7"),  # pull request 7 and validations of it
        eventlog.Filter(subject="sha-3"),  # pull requests and validations at that sha
        eventlog.Filter(subject="7", type="validation_update"),
        eventlog.Filter(subject="run-7", type="pr_notification"),
        eventlog.Filter(subject="sha-3", since=at(12_000), until=at(15_000)),
        eventlog.Filter(subject="nothing"),
        eventlog.Filter(type="validation_update", since=at(3000), until=at(23_000)),
    ]
    for where in cases:
        expected = [e.seq for e in events if wanted(e, where)]
        assert await read_all(conn, where, "asc") == expected, where
        assert await read_all(conn, where, "desc") == expected[::-1], where
    assert {9970, 10_967, 11_964} <= {e.seq for e in events if wanted(e, middle)}  # displaced into it
    # Stretch 1 is events 1-10,000 (times 0-9,999 s, and a few displaced earlier), stretch 2 is 10,001-20,000
    # (times 6,967-20,000 s), and the tail after it is unsummarized: always searched.
    ranges = {
        (1500, None): ((0, None),),
        (None, 1500): ((0, 10_000), (20_000, None)),
        (12_000, 13_000): ((10_000, None),),
        (24_000, None): ((20_000, None),),
        (21_000, 22_000): ((20_000, None),),
    }
    for (since, until), expected_ranges in ranges.items():
        window = eventlog.Filter(since=None if since is None else at(since), until=None if until is None else at(until))
        assert await eventlog.seq_ranges(conn, "a", window) == expected_ranges, (since, until)
    assert await eventlog.seq_ranges(conn, "a", eventlog.Filter(subject="7")) == eventlog.WHOLE_LOG
