"""The event log on a real PostgreSQL: contiguous per-project seqs, commit order, idempotency."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from service import db
from service import log as event_log

from .conftest import timeout

RUN = {"runId": "r1", "status": "running", "progress": 10}


async def make_projects(conn: asyncpg.Connection, *ids: str) -> None:
    for pid in ids:
        await event_log.create_project(conn, id=pid, name=pid.upper(), repo=None)


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
                event, created = await event_log.append(
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
            assert await event_log.head(c, project) == 8 * per_publisher


async def test_rolled_back_append_leaves_no_gap(conn: asyncpg.Connection) -> None:
    """An append whose transaction rolls back gives its seq back: the next append takes it."""
    await make_projects(conn, "a")
    await event_log.append(conn, project_id="a", type="agent_run_progress", data=RUN)
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            event, _ = await event_log.append(conn, project_id="a", type="agent_run_progress", data=RUN)
            assert event.seq == 2
            raise RuntimeError("abort")
    event, _ = await event_log.append(conn, project_id="a", type="agent_run_progress", data=RUN)
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
        first, _ = await event_log.append(c1, project_id="a", type="agent_run_progress", data=RUN, message_id="m1")
        second = asyncio.create_task(
            event_log.append(c2, project_id="a", type="agent_run_progress", data=RUN, message_id="m2")
        )
        await asyncio.sleep(timeout(0.3))
        assert not second.done(), "an append to the same project must wait for the open one"
        other, _ = await asyncio.wait_for(
            event_log.append(c3, project_id="b", type="agent_run_progress", data=RUN), timeout(2)
        )
        assert other.seq == 1
        # The reader sees nothing of project a yet: the open append is invisible and blocks the next.
        assert await event_log.read_after(c3, "a", 0, 10) == []
        await tx.commit()
        second_event, _ = await asyncio.wait_for(second, timeout(5))
        assert (first.seq, second_event.seq) == (1, 2)
        assert [e.message_id for e in await event_log.read_after(c3, "a", 0, 10)] == ["m1", "m2"]
    finally:
        for c in (c1, c2, c3):
            await c.close()


async def test_repeated_message_id_returns_original(conn: asyncpg.Connection) -> None:
    """Publishing a messageId again appends nothing and returns the original event."""
    await make_projects(conn, "a")
    first, created = await event_log.append(conn, project_id="a", type="agent_run_progress", data=RUN, message_id="x")
    assert created
    again, created_again = await event_log.append(
        conn, project_id="a", type="agent_run_progress", data={**RUN, "progress": 99}, message_id="x"
    )
    assert not created_again
    assert again == first
    assert await seqs(conn, "a") == [1]
    assert await event_log.head(conn, "a") == 1
    # The same messageId in another project is another event.
    await make_projects(conn, "b")
    other, created_other = await event_log.append(
        conn, project_id="b", type="agent_run_progress", data=RUN, message_id="x"
    )
    assert created_other and other.seq == 1


async def test_concurrent_duplicates_append_once(pool: asyncpg.Pool) -> None:
    """8 concurrent publishes of one messageId: exactly one appends, all return that event, no gap."""
    async with pool.acquire() as c:
        await make_projects(c, "a")
    for round_ in range(5):

        async def publish(round_: int = round_) -> tuple[event_log.StoredEvent, bool]:
            async with pool.acquire() as c:
                return await event_log.append(
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
        await event_log.append(conn, project_id="a", type="agent_run_progress", data=RUN, message_id="x")
        _, created = await event_log.append(conn, project_id="a", type="agent_run_progress", data=RUN, message_id="x")
        assert not created
        event, _ = await event_log.append(conn, project_id="a", type="agent_run_progress", data=RUN, message_id="y")
        assert event.seq == 2
    assert await seqs(conn, "a") == [1, 2]


async def test_append_to_missing_project_raises_and_writes_nothing(conn: asyncpg.Connection) -> None:
    """No project, no event, no head."""
    with pytest.raises(event_log.ProjectNotFound):
        await event_log.append(conn, project_id="nope", type="agent_run_progress", data=RUN)
    assert await conn.fetchval("SELECT count(*) FROM events") == 0


async def test_append_notifies_only_on_commit(database_url: str) -> None:
    """The NOTIFY (`project:seq`) is sent with the commit, and not at all for a rolled-back append."""
    dsn = db.asyncpg_dsn(database_url)
    listener, writer = await asyncpg.connect(dsn), await asyncpg.connect(dsn)
    received: asyncio.Queue[str] = asyncio.Queue()
    try:
        await listener.add_listener(event_log.NOTIFY_CHANNEL, lambda *args: received.put_nowait(args[3]))
        await make_projects(writer, "a")
        with pytest.raises(RuntimeError):
            async with writer.transaction():
                await event_log.append(writer, project_id="a", type="agent_run_progress", data=RUN)
                raise RuntimeError("abort")
        await event_log.append(writer, project_id="a", type="agent_run_progress", data=RUN)
        assert await asyncio.wait_for(received.get(), timeout(5)) == "a:1"
        await asyncio.sleep(0.1)
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
        await event_log.append(conn, project_id="a", type=kind, data=data)

    events, nxt = await event_log.read_page(conn, "a", limit=4)
    assert [e.seq for e in events] == [1, 2, 3, 4] and nxt == 4
    events, nxt = await event_log.read_page(conn, "a", after=8, limit=4)
    assert [e.seq for e in events] == [9, 10] and nxt is None
    events, nxt = await event_log.read_page(conn, "a", after=6, limit=4)
    assert [e.seq for e in events] == [7, 8, 9, 10] and nxt is None
    events, nxt = await event_log.read_page(conn, "a", order="desc", limit=3)
    assert [e.seq for e in events] == [10, 9, 8] and nxt == 8
    events, nxt = await event_log.read_page(conn, "a", order="desc", before=8, limit=3)
    assert [e.seq for e in events] == [7, 6, 5] and nxt == 5
    events, nxt = await event_log.read_page(conn, "a", after=2, before=7)
    assert [e.seq for e in events] == [3, 4, 5, 6] and nxt is None
    events, nxt = await event_log.read_page(conn, "a", type="validation_update", limit=3)
    assert [e.seq for e in events] == [2, 4, 6] and nxt == 6
    events, nxt = await event_log.read_page(conn, "a", type="validation_update", after=6, limit=3)
    assert [e.seq for e in events] == [8, 10] and nxt is None
