"""Durable cursors (service/cursors.py): where a client resumes; acks persist, never go back (docs/protocol.md §6)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from service import cursors, eventlog
from service.config import Settings
from tests.conftest import RunningServer, make_settings, start_server, stop_server, timeout
from tests.helpers import RUN, WsClient, create, open_client, publish, seqs_of, stream

# --- where a subscription starts: resume_point ---------------------------------------------------------


def test_resume_point_explicit_after_wins_over_the_cursor() -> None:
    """An explicit `after` is where the subscription starts, whatever the cursor; `after=0` replays all."""
    assert cursors.resume_point(after=3, cursor=5, head=10) == 3
    assert cursors.resume_point(after=7, cursor=5, head=10) == 7
    assert cursors.resume_point(after=0, cursor=5, head=10) == 0
    assert cursors.resume_point(after=3, cursor=None, head=10) == 3


def test_resume_point_after_equal_to_the_head_gets_new_events_only() -> None:
    """`after` equal to the head is allowed: the subscription starts at the head."""
    assert cursors.resume_point(after=10, cursor=None, head=10) == 10
    assert cursors.resume_point(after=10, cursor=4, head=10) == 10
    assert cursors.resume_point(after=0, cursor=None, head=0) == 0


def test_resume_point_after_beyond_the_head_is_refused() -> None:
    """`after` beyond the head raises PositionBeyondHead naming both, with or without a cursor."""
    with pytest.raises(cursors.PositionBeyondHead) as info:
        cursors.resume_point(after=11, cursor=None, head=10)
    assert (info.value.seq, info.value.head) == (11, 10)
    with pytest.raises(cursors.PositionBeyondHead):
        cursors.resume_point(after=11, cursor=4, head=10)
    with pytest.raises(cursors.PositionBeyondHead):
        cursors.resume_point(after=1, cursor=None, head=0)


def test_resume_point_from_the_cursor_alone() -> None:
    """Without `after`, the subscription starts right after the durable cursor."""
    assert cursors.resume_point(after=None, cursor=4, head=10) == 4
    assert cursors.resume_point(after=None, cursor=0, head=10) == 0
    assert cursors.resume_point(after=None, cursor=10, head=10) == 10


def test_resume_point_caps_a_cursor_beyond_the_head() -> None:
    """A cursor beyond the head (a log restored from an older backup) starts at the head."""
    assert cursors.resume_point(after=None, cursor=12, head=10) == 10
    assert cursors.resume_point(after=None, cursor=3, head=0) == 0


def test_resume_point_without_after_or_cursor_is_the_head() -> None:
    """With neither `after` nor a cursor, the subscription starts at the head: new events only."""
    assert cursors.resume_point(after=None, cursor=None, head=10) == 10
    assert cursors.resume_point(after=None, cursor=None, head=0) == 0


# --- acks: the durable cursor only moves forward -------------------------------------------------------


async def test_advance_only_moves_forward_and_stops_at_the_head(conn: asyncpg.Connection) -> None:
    """`advance` keeps max(cursor, seq); a seq beyond the head (AckBeyondHead) or a missing project
    (ProjectNotFound) is refused and leaves the cursor as it was."""
    await eventlog.create_project(conn, id="a", name="A", repo=None)
    for _ in range(5):
        await eventlog.append(conn, project_id="a", type="agent_run_progress", data=RUN)
    key: dict[str, Any] = {"project_id": "a", "user": "u", "client_id": "c"}
    assert await cursors.get(conn, **key) is None
    assert await cursors.advance(conn, **key, seq=3) == 3
    assert await cursors.advance(conn, **key, seq=1) == 3
    assert await cursors.get(conn, **key) == 3
    with pytest.raises(cursors.AckBeyondHead) as info:
        await cursors.advance(conn, **key, seq=6)
    assert (info.value.seq, info.value.head) == (6, 5)
    with pytest.raises(eventlog.ProjectNotFound):
        await cursors.advance(conn, project_id="nope", user="u", client_id="c", seq=0)
    assert await cursors.advance(conn, **key, seq=5) == 5
    assert await cursors.get(conn, **key) == 5


def test_held_acks_keep_the_highest_per_cursor() -> None:
    """The AckBuffer holds, per (project, user, clientId), the highest ack seen: a late, older ack changes nothing."""

    def no_database() -> Any:
        raise AssertionError("nothing is persisted here")

    acks = cursors.AckBuffer(no_database)
    acks.add(project_id="a", user="u", client_id="c", seq=3)
    acks.add(project_id="a", user="u", client_id="c", seq=1)
    acks.add(project_id="a", user="u", client_id="d", seq=2)
    assert acks.peek(project_id="a", user="u", client_id="c") == 3
    assert acks.peek(project_id="a", user="u", client_id="d") == 2
    assert acks.peek(project_id="b", user="u", client_id="c") is None
    assert acks.pending == 2


# --- over real sockets ----------------------------------------------------------------------------------


async def test_resume_from_acked_cursor(server: RunningServer, client: httpx.AsyncClient) -> None:
    """Ack, disconnect, more events, reconnect with the same clientId and no `after`: exactly the
    events after the ack. `after=0` replays everything; a new client starts at the head."""
    await create(client, "a")
    first = await open_client(server, client_id="laptop")
    await first.subscribe("a")
    await publish(client, "a", 5)
    assert seqs_of(await first.events("a", 5)) == [1, 2, 3, 4, 5]
    await first.send(type="ack", projectId="a", seq=3)
    await first.ws.close()  # a clean disconnect persists the ack at once
    await publish(client, "a", 2)

    again = await open_client(server, client_id="laptop")
    assert (await again.subscribe("a"))["after"] == 3
    assert seqs_of(await again.events("a", 4)) == [4, 5, 6, 7]
    assert await again.silence(0.2) == []
    assert (await again.subscribe("a", after=0))["after"] == 0
    assert seqs_of(await again.events("a", 7)) == list(range(1, 8))
    await again.ws.close()

    stranger = await open_client(server, client_id="phone")
    assert await stranger.subscribe("a") == {"type": "subscribed", "projectId": "a", "after": 7, "head": 7}
    assert await stranger.silence(0.2) == []
    await publish(client, "a", 1)
    assert seqs_of(await stranger.events("a", 1)) == [8]
    await stranger.ws.close()


async def test_acks_persist_within_a_second(server: RunningServer, client: httpx.AsyncClient, ws: WsClient) -> None:
    """An ack reaches the durable cursor within 1 s without a disconnect, and never moves it back."""
    await create(client, "a")
    await ws.subscribe("a")
    await publish(client, "a", 3)
    await ws.events("a", 3)
    await ws.send(type="ack", projectId="a", seq=2)
    await ws.send(type="ack", projectId="a", seq=1)
    deadline = time.monotonic() + timeout(1.5)
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = (await client.get("/api/projects/a/cursors")).json()["cursors"]
        if rows:
            break
        await asyncio.sleep(0.05)
    assert [(c["clientId"], c["seq"]) for c in rows] == [("tab-1", 2)]


async def test_shutdown_flushes_cursors_and_closes_clients(tmp_path: Any, database_url: str) -> None:
    """At shutdown pending acks are persisted and clients are told to reconnect (1001/1012)."""
    settings: Settings = make_settings(database_url, tmp_path)
    running, task = await start_server(settings)
    http = httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=timeout(10))
    await create(http, "a")
    await publish(http, "a", 4)
    ws = await open_client(running, client_id="desk")
    await ws.subscribe("a", after=0)
    await ws.events("a", 4)
    await ws.send(type="ack", projectId="a", seq=4)
    await asyncio.sleep(timeout(0.05))
    await http.aclose()
    await stop_server(running, task)
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await ws.recv(5)
    assert info.value.rcvd is not None and info.value.rcvd.code in (1001, 1012)

    running, task = await start_server(settings)
    try:
        ws = await open_client(running, client_id="desk")
        assert (await ws.subscribe("a"))["after"] == 4
        await ws.ws.close()
    finally:
        await stop_server(running, task)


async def test_switching_between_websocket_and_sse_keeps_one_cursor(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """A client that acks over the WebSocket and then streams over SSE (acking over HTTP), then goes
    back to the WebSocket, continues from one cursor with no gap."""
    await create(client, "p")
    await publish(client, "p", 3)
    ws = await open_client(server, client_id="tab")
    await ws.subscribe("p", after=0)
    assert seqs_of(await ws.events("p", 3)) == [1, 2, 3]
    await ws.send(type="ack", projectId="p", seq=3)
    await ws.ws.close()  # acks are persisted at disconnect
    await publish(client, "p", 2)
    async with stream(client, "/api/projects/p/stream?clientId=tab") as s:
        assert [m.id for m in await s.events(2)] == ["4", "5"]
        assert (await client.post("/api/projects/p/ack", json={"clientId": "tab", "seq": 5})).status_code == 200
    await publish(client, "p", 1)
    ws = await open_client(server, client_id="tab")
    assert (await ws.subscribe("p"))["after"] == 5
    assert seqs_of(await ws.events("p", 1)) == [6]
    await ws.ws.close()


# --- the ack ledger (docs/protocol.md §7.3) ------------------------------------------------------------------


async def ledger(conn: asyncpg.Connection) -> list[tuple[str, str, int]]:
    rows = await conn.fetch('SELECT "user", client_id, seq FROM ack_ledger ORDER BY acked_at, "user", client_id, seq')
    return [(r["user"], r["client_id"], r["seq"]) for r in rows]


async def test_the_ledger_records_each_advance_of_a_cursor_and_nothing_else(pool: asyncpg.Pool) -> None:
    """Every write of a cursor (an HTTP ack, a flush of held acks) records a ledger row for each cursor it
    created or moved, with the cursor's new seq; an ack that moves nothing, or is refused, records none."""
    async with pool.acquire() as conn:
        await eventlog.create_project(conn, id="a", name="A", repo=None)
        for _ in range(9):
            await eventlog.append(conn, project_id="a", type="agent_run_progress", data=RUN)
        key: dict[str, Any] = {"project_id": "a", "user": "u", "client_id": "c"}
        await cursors.advance(conn, **key, seq=0)
        await cursors.advance(conn, **key, seq=3)
        await cursors.advance(conn, **key, seq=2)
        await cursors.advance(conn, **key, seq=3)
        with pytest.raises(cursors.AckBeyondHead):
            await cursors.advance(conn, **key, seq=10)
        assert await ledger(conn) == [("u", "c", 0), ("u", "c", 3)]

    acks = cursors.AckBuffer(pool.acquire)
    acks.add(project_id="a", user="u", client_id="c", seq=1)  # behind its cursor: nothing moves
    acks.add(project_id="a", user="u", client_id="d", seq=4)  # a new cursor
    acks.add(project_id="a", user="v", client_id="c", seq=9)
    await acks.flush()
    acks.add(project_id="a", user="u", client_id="c", seq=6)
    acks.add(project_id="a", user="u", client_id="d", seq=4)  # where it is
    await acks.flush()
    async with pool.acquire() as conn:
        assert (await ledger(conn))[2:] == [("u", "d", 4), ("v", "c", 9), ("u", "c", 6)]
        assert await cursors.get(conn, **key) == 6
        reached = await cursors.reached(conn, "a", 4)
        assert [(r.user, r.client_id, r.seq) for r in reached] == [("u", "d", 4), ("v", "c", 9), ("u", "c", 6)]
        assert [(r.user, r.client_id, r.seq) for r in await cursors.reached(conn, "a", 7)] == [("v", "c", 9)]
        first = (await cursors.reached(conn, "a", 2))[0]
        assert (first.user, first.client_id, first.seq) == ("u", "c", 3)


async def test_two_instances_flushing_one_cursor_at_once_record_each_advance_once(pool: asyncpg.Pool) -> None:
    """Two flushes of the same cursor racing (one waits for the other's commit): the one that finds the
    cursor already where it acks records nothing; the one that moves it further records that move."""
    async with pool.acquire() as conn:
        await eventlog.create_project(conn, id="a", name="A", repo=None)
        for _ in range(9):
            await eventlog.append(conn, project_id="a", type="agent_run_progress", data=RUN)
        await cursors.advance(conn, project_id="a", user="u", client_id="c", seq=1)
    for racing_seq, expected in ((5, [1, 5]), (7, [1, 5, 7])):
        async with pool.acquire() as first, pool.acquire() as second:
            async with first.transaction():
                await cursors.advance_many(first, [("a", "u", "c", 5)])
                waiting = asyncio.create_task(cursors.advance_many(second, [("a", "u", "c", racing_seq)]))
                await asyncio.sleep(timeout(0.2))
                assert not waiting.done()  # it waits for the cursor's lock
            assert await waiting == {("a", "u", "c"): racing_seq}
            assert [seq for _, _, seq in await ledger(first)] == expected
