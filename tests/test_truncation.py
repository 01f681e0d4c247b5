"""The low watermark (docs/protocol.md §7.4): every read that starts below the oldest event kept answers
`history_truncated` with `oldest` and `stateSeq`, over every transport, and nothing else breaks.

A prune is simulated as an operator would see one: the events below K deleted and `projects.oldest`
set to K in one transaction, straight in PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from service import db
from service.auth import Principal
from service.connection import Client, Frame, Outbox
from service.cursors import resume_point
from service.eventlog import HistoryTruncated, truncated
from service.frames import EncodedEvent
from service.hub import Hub
from tests.conftest import RunningServer, timeout
from tests.helpers import Message, create, open_client, publish, seqs_of, stream, wait_until

HEAD = 10
OLDEST = 6  # events 1..5 pruned: after = 5 misses nothing, after = 4 misses seq 5


async def prune(database_url: str, project_id: str, oldest: int) -> None:
    """What a prune does: drop the events below `oldest` and raise the watermark, in one transaction."""
    conn = await asyncpg.connect(db.asyncpg_dsn(database_url))
    try:
        async with conn.transaction():
            await conn.execute("DELETE FROM events WHERE project_id = $1 AND seq < $2", project_id, oldest)
            await conn.execute("UPDATE projects SET oldest = $2 WHERE id = $1", project_id, oldest)
    finally:
        await conn.close()


async def ack(client: httpx.AsyncClient, project_id: str, client_id: str, seq: int) -> None:
    r = await client.post(f"/api/projects/{project_id}/ack", json={"clientId": client_id, "seq": seq})
    assert r.status_code == 200, r.text


@pytest.fixture
async def pruned(client: httpx.AsyncClient, server: RunningServer) -> httpx.AsyncClient:
    """Project `p` with 10 events of which 1..5 are pruned; project `q` with 3 events, never pruned.
    Durable cursors of alice on `p`: `below` at 3, `edge` at 5 (exactly oldest - 1); both acked before
    the prune, as a client that went away would have."""
    await create(client, "p", "q")
    await publish(client, "p", HEAD)
    await publish(client, "q", 3)
    await ack(client, "p", "below", 3)
    await ack(client, "p", "edge", OLDEST - 1)
    await prune(server.settings.database_url, "p", OLDEST)
    return client


def refusal(message: dict[str, Any], oldest: int = OLDEST) -> dict[str, Any]:
    """An error body with its (free) message checked for substance and set aside."""
    assert "reload" in message["message"] and f"oldest kept is {oldest}" in message["message"], message
    return {k: v for k, v in message.items() if k != "message"}


# --- the rule ------------------------------------------------------------------------------------------


def test_the_rule_and_the_resume_point() -> None:
    """Truncated exactly when after < oldest - 1; with oldest 1 never; the resume point applies it
    whichever way the start was chosen (after, cursor, head)."""
    assert truncated(4, 6) and not truncated(5, 6) and not truncated(9, 6)
    assert not truncated(0, 1)
    with pytest.raises(HistoryTruncated) as info:
        resume_point(after=4, cursor=None, head=10, oldest=6)
    assert (info.value.oldest, info.value.head) == (6, 10)
    with pytest.raises(HistoryTruncated):
        resume_point(after=None, cursor=3, head=10, oldest=6)
    assert resume_point(after=None, cursor=5, head=10, oldest=6) == 5
    assert resume_point(after=None, cursor=None, head=10, oldest=6) == 10
    assert resume_point(after=None, cursor=None, head=10, oldest=11) == 10  # everything pruned: new events only


# --- WebSocket -----------------------------------------------------------------------------------------


async def test_websocket_subscribe_below_the_watermark(pruned: httpx.AsyncClient, server: RunningServer) -> None:
    """`subscribe` with an `after` below answers the error frame and subscribes nothing; the connection
    then serves other projects, and `p` from exactly oldest - 1."""
    ws = await open_client(server, client_id="fresh")
    await ws.send(type="subscribe", projectId="p", after=OLDEST - 2)
    error = await ws.expect("error")
    assert refusal(error) == {
        "type": "error",
        "code": "history_truncated",
        "ref": "p",
        "oldest": OLDEST,
        "stateSeq": HEAD,
    }
    assert await ws.silence(0.3) == []  # no subscription: no events of p
    assert (await ws.subscribe("q", after=0))["head"] == 3
    assert seqs_of(await ws.events("q", 3)) == [1, 2, 3]
    assert await ws.subscribe("p", after=OLDEST - 1) == {
        "type": "subscribed",
        "projectId": "p",
        "after": OLDEST - 1,
        "head": HEAD,
    }
    assert seqs_of(await ws.events("p", HEAD - OLDEST + 1)) == list(range(OLDEST, HEAD + 1))
    await publish(pruned, "p")
    assert seqs_of(await ws.events("p", 1)) == [HEAD + 1]
    await ws.ws.close()


async def test_websocket_durable_cursor(pruned: httpx.AsyncClient, server: RunningServer) -> None:
    """Resuming from a cursor below is refused the same way; a cursor at exactly oldest - 1 resumes;
    no cursor starts at the head; `/state` is at the `stateSeq` the error named."""
    below = await open_client(server, client_id="below")
    await below.send(type="subscribe", projectId="p")
    error = await below.expect("error")
    assert refusal(error) == {
        "type": "error",
        "code": "history_truncated",
        "ref": "p",
        "oldest": OLDEST,
        "stateSeq": HEAD,
    }
    state = (await pruned.get("/api/projects/p/state")).json()
    assert state["seq"] == error["stateSeq"]
    # The client reloads the state and subscribes after its seq; acking the new position is fine.
    assert (await below.subscribe("p", after=state["seq"]))["after"] == HEAD
    await below.send(type="ack", projectId="p", seq=HEAD)
    assert await below.silence(0.3) == []
    await below.ws.close()

    edge = await open_client(server, client_id="edge")
    assert (await edge.subscribe("p"))["after"] == OLDEST - 1
    assert seqs_of(await edge.events("p", HEAD - OLDEST + 1)) == list(range(OLDEST, HEAD + 1))
    await edge.ws.close()

    nobody = await open_client(server, client_id="nobody")
    assert (await nobody.subscribe("p"))["after"] == HEAD
    await nobody.ws.close()


# --- SSE -----------------------------------------------------------------------------------------------


def sse_refusal(message: Message, project_id: str = "p") -> dict[str, Any]:
    assert message.event == "error" and message.id is None, message
    return refusal(message.json) | {"_project": project_id}


EXPECTED_SSE = {"error": "history_truncated", "projectId": "p", "oldest": OLDEST, "stateSeq": HEAD, "_project": "p"}


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("", {"Last-Event-ID": str(OLDEST - 2)}),
        (f"?after={OLDEST - 2}", {}),
        ("?clientId=below", {}),
    ],
    ids=["last-event-id", "after", "cursor"],
)
async def test_sse_one_project(
    pruned: httpx.AsyncClient, server: RunningServer, query: str, headers: dict[str, str]
) -> None:
    """A resume point below (Last-Event-ID, after, the cursor): `event: error` with the body, then the
    stream ends."""
    async with stream(pruned, f"/api/projects/p/stream{query}", headers=headers) as s:
        assert sse_refusal(await s.next()) == EXPECTED_SSE
        assert await s.ended()


async def test_sse_one_project_from_the_edge(pruned: httpx.AsyncClient) -> None:
    """Last-Event-ID at exactly oldest - 1, and the cursor there, stream the kept events."""
    async with stream(pruned, "/api/projects/p/stream", headers={"Last-Event-ID": str(OLDEST - 1)}) as s:
        assert [m.id for m in await s.events(HEAD - OLDEST + 1)] == [str(n) for n in range(OLDEST, HEAD + 1)]
    async with stream(pruned, "/api/projects/p/stream?clientId=edge") as s:
        assert [m.id for m in await s.events(HEAD - OLDEST + 1)] == [str(n) for n in range(OLDEST, HEAD + 1)]


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("", {"Last-Event-ID": f"p:{OLDEST - 2},q:0"}),
        (f"&after=p:{OLDEST - 2},q:0", {}),
        ("&clientId=below", {}),
    ],
    ids=["last-event-id", "after", "cursor"],
)
async def test_sse_several_projects(
    pruned: httpx.AsyncClient, server: RunningServer, query: str, headers: dict[str, str]
) -> None:
    """The multi-project stream: the truncated project's `event: error`, then the stream ends (its
    position vector could not resume that project); the same stream from a good vector works."""
    async with stream(pruned, f"/api/stream?projects=p,q{query}", headers=headers) as s:
        assert sse_refusal(await s.next()) == EXPECTED_SSE
        assert await s.ended()
    async with stream(pruned, "/api/stream?projects=p,q", headers={"Last-Event-ID": f"p:{OLDEST - 1},q:0"}) as s:
        got = await s.events(HEAD - OLDEST + 1 + 3)
        assert sorted((m.json["projectId"], m.json["seq"]) for m in got) == sorted(
            [("p", n) for n in range(OLDEST, HEAD + 1)] + [("q", n) for n in (1, 2, 3)]
        )


# --- HTTP history and export ---------------------------------------------------------------------------


async def test_history(pruned: httpx.AsyncClient) -> None:
    """An explicit `after` below: 410 with oldest and stateSeq. Without one, the kept events; a
    newest-first page works; an `after` at oldest - 1 works; a project never pruned is whole."""
    r = await pruned.get("/api/projects/p/events", params={"after": OLDEST - 2})
    assert r.status_code == 410
    assert refusal(r.json()) == {"error": "history_truncated", "oldest": OLDEST, "stateSeq": HEAD}
    r = await pruned.get("/api/projects/p/events", params={"after": 0, "order": "desc"})
    assert r.status_code == 410
    r = await pruned.get("/api/projects/p/events")
    assert r.status_code == 200 and seqs_of(r.json()["events"]) == list(range(OLDEST, HEAD + 1))
    assert r.json()["next"] is None
    r = await pruned.get("/api/projects/p/events", params={"order": "desc", "limit": 3})
    assert seqs_of(r.json()["events"]) == [10, 9, 8] and r.json()["next"] == 8
    r = await pruned.get("/api/projects/p/events", params={"order": "desc", "before": 8})
    assert seqs_of(r.json()["events"]) == [7, 6] and r.json()["next"] is None
    r = await pruned.get("/api/projects/p/events", params={"after": OLDEST - 1, "limit": 2})
    assert seqs_of(r.json()["events"]) == [6, 7] and r.json()["next"] == 7
    r = await pruned.get("/api/projects/q/events", params={"after": 0})
    assert seqs_of(r.json()["events"]) == [1, 2, 3]
    # Acks are not reads: a cursor may sit anywhere up to the head.
    await ack(pruned, "p", "late", 2)


async def test_export(pruned: httpx.AsyncClient) -> None:
    """Export follows history: an explicit `after` below is 410; without one, the kept events."""
    r = await pruned.get("/api/projects/p/export", params={"after": 1})
    assert r.status_code == 410
    assert refusal(r.json()) == {"error": "history_truncated", "oldest": OLDEST, "stateSeq": HEAD}
    r = await pruned.get("/api/projects/p/export")
    assert r.status_code == 200
    assert [orjson.loads(line)["seq"] for line in r.text.splitlines()] == list(range(OLDEST, HEAD + 1))
    r = await pruned.get("/api/projects/p/export", params={"after": OLDEST - 1, "format": "csv"})
    assert r.status_code == 200 and len(r.text.strip().splitlines()) == 1 + HEAD - OLDEST + 1


async def test_a_project_never_pruned_is_never_truncated(client: httpx.AsyncClient, server: RunningServer) -> None:
    """oldest = 1: after = 0 works everywhere, the cursor at 0 too."""
    await create(client, "whole")
    await publish(client, "whole", 2)
    assert (await client.get("/api/projects/whole/events", params={"after": 0})).status_code == 200
    assert (await client.get("/api/projects/whole/export", params={"after": 0})).status_code == 200
    ws = await open_client(server)
    assert (await ws.subscribe("whole", after=0))["after"] == 0
    assert seqs_of(await ws.events("whole", 2)) == [1, 2]
    await ws.ws.close()
    async with stream(client, "/api/projects/whole/stream", headers={"Last-Event-ID": "0"}) as s:
        assert len(await s.events(2)) == 2


# --- a prune that overtakes a catch-up -------------------------------------------------------------------


class PausedTransport:
    """A client transport that takes nothing until `resume`, and records what it was sent."""

    def __init__(self) -> None:
        self.sent: list[Frame] = []
        self.gate = asyncio.Event()

    async def send(self, frame: Frame) -> None:
        await self.gate.wait()
        self.sent.append(frame)

    def send_now(self, frames: Sequence[Frame]) -> bool:
        return False

    async def close(self, code: int, reason: str) -> None:
        return None

    def buffered(self) -> int:
        return 0


@contextlib.asynccontextmanager
async def hub_on(database_url: str) -> AsyncIterator[Hub]:
    pool = await db.create_pool(database_url, size=4, timeout=10)

    @contextlib.asynccontextmanager
    async def connection() -> AsyncIterator[asyncpg.Connection]:
        async with pool.acquire() as conn:
            yield conn

    hub = Hub(connection, page_size=1000)
    try:
        yield hub
    finally:
        await hub.close()
        await pool.close()


async def test_a_prune_overtaking_a_catch_up_ends_it(client: httpx.AsyncClient, server: RunningServer) -> None:
    """A subscriber catching up from 0, paused by a client that takes nothing, when a prune drops
    events it has not read yet: once it reads on, it gets the events it was sent so far (contiguous),
    then the `history_truncated` error frame, and the subscription ends; none is skipped silently."""
    await create(client, "slow")
    await publish(client, "slow", 60)
    async with hub_on(server.settings.database_url) as hub:
        transport = PausedTransport()
        principal = Principal(user="alice", projects=None, scopes=frozenset({"admin"}), expires_at=2e9)
        paused = Client(transport, principal, "paused", Outbox(4000))  # pages of ~1000 bytes: a few events
        hub.add_client(paused)
        sub = hub.connect(paused, "slow", after=0, head=60)
        paused.writer = asyncio.create_task(paused.write())
        await wait_until(lambda: not paused.outbox._room.is_set(), 5, "the catch-up to wait for room")
        assert sub.position < 30
        await prune(server.settings.database_url, "slow", 40)
        transport.gate.set()
        await wait_until(
            lambda: transport.sent and not isinstance(transport.sent[-1], EncodedEvent), 5, "the error frame"
        )
        *events, last = transport.sent
        assert all(isinstance(e, EncodedEvent) for e in events)
        seqs = [e.seq for e in events if isinstance(e, EncodedEvent)]
        assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < 39
        assert isinstance(last, str)
        assert refusal(orjson.loads(last), oldest=40) == {
            "type": "error",
            "code": "history_truncated",
            "ref": "slow",
            "oldest": 40,
            "stateSeq": 60,
        }
        assert "slow" not in paused.subscriptions and hub.projects() == []
        await asyncio.sleep(timeout(0.2))
        assert transport.sent[-1] is last  # nothing after it
        paused.close(1000, "done")
        await paused.writer


async def test_a_prune_past_what_the_process_delivered_ends_live_subscriptions(
    client: httpx.AsyncClient, server: RunningServer
) -> None:
    """A live subscriber at the feed's `delivered`, when events were appended and then pruned before
    the feed read them (here: a hub with no listener, woken by hand): the pump's read notices the
    watermark and ends the subscription with the error frame instead of delivering a gap."""
    await create(client, "live")
    await publish(client, "live", 5)
    async with hub_on(server.settings.database_url) as hub:
        transport = PausedTransport()
        transport.gate.set()
        principal = Principal(user="alice", projects=None, scopes=frozenset({"admin"}), expires_at=2e9)
        reader = Client(transport, principal, "reader", Outbox(1024 * 1024))
        hub.add_client(reader)
        sub = hub.connect(reader, "live", after=5, head=5)
        reader.writer = asyncio.create_task(reader.write())
        await wait_until(lambda: sub.live, 5, "the subscription to go live")
        await publish(client, "live", 55)  # this hub hears nothing of them
        await prune(server.settings.database_url, "live", 40)
        hub.wake("live")
        await wait_until(lambda: bool(transport.sent), 5, "the error frame")
        (frame,) = transport.sent
        assert isinstance(frame, str)
        assert refusal(orjson.loads(frame), oldest=40) == {
            "type": "error",
            "code": "history_truncated",
            "ref": "live",
            "oldest": 40,
            "stateSeq": 60,
        }
        assert "live" not in reader.subscriptions and hub.projects() == []
        reader.close(1000, "done")
        await reader.writer
