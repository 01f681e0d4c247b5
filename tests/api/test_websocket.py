"""`/ws` over real sockets against a real uvicorn and PostgreSQL (PROTOCOL.md §4 and §6)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.api.websocket import Session
from service.config import Settings
from tests.conftest import RunningServer, make_settings, start_server, stop_server, timeout

RUN = {"runId": "r1", "status": "running", "progress": 5}


class WsClient:
    """A protocol-level test client: sends frames, collects what arrives, by kind."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, wait: float = 5) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout(wait))
        message: dict[str, Any] = json.loads(raw)
        return message

    async def expect(self, kind: str, wait: float = 5) -> dict[str, Any]:
        """The next message that is not a ping, which must be of `kind`."""
        while True:
            message = await self.recv(wait)
            if message["type"] != "ping":
                assert message["type"] == kind, message
                return message

    async def events(self, project_id: str, count: int, wait: float = 10) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout(wait)
        while len(got) < count:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message.get("projectId") == project_id and "seq" in message and "data" in message:
                got.append(message)
        return got

    async def silence(self, wait: float = 0.3) -> list[dict[str, Any]]:
        """Whatever non-ping messages arrive within `wait` seconds."""
        got = []
        try:
            while True:
                message = await self.recv(wait)
                if message["type"] != "ping":
                    got.append(message)
        except TimeoutError:
            return got

    async def subscribe(self, project_id: str, after: int | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe", "projectId": project_id}
        if after is not None:
            message["after"] = after
        await self.ws.send(json.dumps(message))
        return await self.expect("subscribed")


async def open_client(
    server: RunningServer, token: str | None = None, client_id: str | None = None, **kw: Any
) -> WsClient:
    url = server.ws_url + (f"?clientId={client_id}" if client_id else "")
    ws = await connect(url, **kw)
    client = WsClient(ws)
    await client.send(type="auth", token=token or server.token())
    client.welcome = await client.expect("welcome")
    return client


@pytest.fixture
async def ws(server: RunningServer) -> AsyncIterator[WsClient]:
    client = await open_client(server, client_id="tab-1")
    yield client
    await client.ws.close()


async def create(client: httpx.AsyncClient, *ids: str) -> None:
    for pid in ids:
        r = await client.post("/api/projects", json={"id": pid, "name": pid})
        assert r.status_code == 201, r.text


async def publish(client: httpx.AsyncClient, pid: str, n: int = 1, **data: Any) -> list[int]:
    seqs = []
    for _ in range(n):
        r = await client.post(
            f"/api/projects/{pid}/events", json={"type": "agent_run_progress", "data": {**RUN, **data}}
        )
        assert r.status_code == 201, r.text
        seqs.append(r.json()["seq"])
    return seqs


def seqs_of(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


async def test_welcome_and_two_projects_without_cross_talk(client: httpx.AsyncClient, ws: WsClient) -> None:
    """One connection, two projects: each gets its own events, in order, and nothing of the other."""
    assert ws.welcome["clientId"] == "tab-1" and ws.welcome["heartbeatMs"] == 15000 and ws.welcome["connectionId"]
    await create(client, "a", "b")
    assert await ws.subscribe("a") == {"type": "subscribed", "projectId": "a", "after": 0, "head": 0}
    assert (await ws.subscribe("b"))["head"] == 0
    await publish(client, "a", 2)
    await publish(client, "b", 1)
    await publish(client, "a", 1)
    got = await ws.events("a", 3)
    assert seqs_of(got) == [1, 2, 3] and all(e["projectId"] == "a" for e in got)
    assert got[0]["type"] == "agent_run_progress" and got[0]["data"] == RUN and got[0]["timestamp"].endswith("Z")


async def test_thirty_concurrent_publishes_arrive_in_order(client: httpx.AsyncClient, ws: WsClient) -> None:
    """30 concurrent publishes arrive as 1..30, in order, once each."""
    await create(client, "a")
    await ws.subscribe("a")
    await asyncio.gather(*(publish(client, "a") for _ in range(30)))
    assert seqs_of(await ws.events("a", 30)) == list(range(1, 31))
    assert await ws.silence(0.3) == []


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
    cursors: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        cursors = (await client.get("/api/projects/a/cursors")).json()["cursors"]
        if cursors:
            break
        await asyncio.sleep(0.05)
    assert [(c["clientId"], c["seq"]) for c in cursors] == [("tab-1", 2)]


async def test_seam_between_catch_up_and_live(client: httpx.AsyncClient, server: RunningServer) -> None:
    """Subscribing while events are published fast: every subscriber sees a contiguous run with no
    gap and no duplicate across the catch-up/live hand-over (repeated)."""
    await create(client, "a")
    await publish(client, "a", 20)
    for _ in range(15):
        sub = await open_client(server)
        after = random.randint(0, 15)

        async def burst() -> None:  # 3 concurrent producers, 10 events each, racing the subscribe
            await asyncio.gather(*(publish(client, "a", 10) for _ in range(3)))

        producing = asyncio.create_task(burst())
        await asyncio.sleep(random.random() * 0.02)
        await sub.subscribe("a", after=after)
        await producing
        head = (await client.get("/api/projects")).json()["projects"][0]["head"]
        got = await sub.events("a", head - after)
        assert seqs_of(got) == list(range(after + 1, head + 1))
        assert await sub.silence(0.05) == []
        await sub.ws.close()


async def test_two_hundred_clients_receive_every_event(client: httpx.AsyncClient, server: RunningServer) -> None:
    """200 concurrent clients on one project all receive every event, in order."""
    await create(client, "a")
    clients = await asyncio.gather(*(open_client(server) for _ in range(200)))
    await asyncio.gather(*(c.subscribe("a") for c in clients))
    await publish(client, "a", 10)
    results = await asyncio.gather(*(c.events("a", 10, wait=20) for c in clients))
    assert all(seqs_of(r) == list(range(1, 11)) for r in results)
    await asyncio.gather(*(c.ws.close() for c in clients))


async def test_unsubscribe_and_resubscribe(client: httpx.AsyncClient, ws: WsClient) -> None:
    """No event follows `unsubscribed`; subscribing again restarts from the new point."""
    await create(client, "a")
    await ws.subscribe("a")
    await ws.send(type="unsubscribe", projectId="a")
    assert await ws.expect("unsubscribed") == {"type": "unsubscribed", "projectId": "a"}
    await publish(client, "a", 2)
    assert await ws.silence(0.3) == []
    assert (await ws.subscribe("a", after=1))["after"] == 1
    assert seqs_of(await ws.events("a", 1)) == [2]


async def test_publish_over_the_socket(server: RunningServer, client: httpx.AsyncClient, ws: WsClient) -> None:
    """Event-shaped messages are appended and answered by `published`, idempotently; errors name the ref."""
    await create(client, "a")
    await ws.subscribe("a")
    await ws.send(type="agent_run_progress", projectId="a", data=RUN, messageId="m1")
    messages = [await ws.recv(), await ws.recv()]
    published = next(m for m in messages if m["type"] == "published")
    assert published == {"type": "published", "projectId": "a", "messageId": "m1", "seq": 1}
    assert any(m.get("seq") == 1 and m["type"] == "agent_run_progress" for m in messages)
    await ws.send(type="agent_run_progress", projectId="a", data=RUN, messageId="m1")
    assert await ws.expect("published") == published
    await ws.send(type="agent_run_progress", projectId="a", data={**RUN, "progress": "5"}, messageId="m2")
    error = await ws.expect("error")
    assert error["code"] == "invalid_data" and error["ref"] == "m2" and "data.progress" in error["message"]
    await ws.send(type="agent_run_progress", projectId="ghost", data=RUN)
    assert (await ws.expect("error"))["code"] == "not_found"

    reader = await open_client(server, token=server.token(projects=["a"], scopes=("subscribe",)))
    await reader.send(type="agent_run_progress", projectId="a", data=RUN, messageId="m3")
    assert await reader.expect("error") == {
        "type": "error",
        "code": "forbidden",
        "message": "this token may not publish to 'a'",
        "ref": "m3",
    }
    await reader.ws.close()
    page = (await client.get("/api/projects/a/events")).json()
    assert [e["messageId"] for e in page["events"]] == ["m1"]


async def test_every_error_code_keeps_the_connection(server: RunningServer, client: httpx.AsyncClient) -> None:
    """Each recoverable error of §4 answers an `error` frame; the connection keeps working."""
    await create(client, "a", "b")
    await publish(client, "a", 2)
    ws = await open_client(server, token=server.token(projects=["a", "ghost"], scopes=("subscribe", "publish")))

    async def expect_error(code: str, ref: str | None, **message: Any) -> None:
        await ws.send(**message)
        error = await ws.expect("error")
        assert (error["code"], error["ref"]) == (code, ref), error

    await ws.ws.send("{not json")
    assert (await ws.expect("error"))["code"] == "invalid_frame"
    await ws.ws.send(b"\x00binary")
    assert (await ws.expect("error"))["code"] == "invalid_frame"
    await ws.ws.send("[1,2]")
    assert (await ws.expect("error"))["code"] == "invalid_frame"
    await expect_error("invalid_frame", None, kind="subscribe")
    await expect_error("unknown_type", "a", type="teleport", projectId="a")
    await expect_error("invalid_frame", "a", type="subscribe", projectId="a", after="1")
    await expect_error("invalid_frame", "a", type="subscribe", projectId="a", after=-1)
    await expect_error("invalid_data", "a", type="validation_update", projectId="a", data={"name": "x"})
    await expect_error("forbidden", "b", type="subscribe", projectId="b")
    await expect_error("not_found", "ghost", type="subscribe", projectId="ghost")
    await expect_error("invalid_cursor", "a", type="subscribe", projectId="a", after=3)
    await expect_error("not_subscribed", "a", type="ack", projectId="a", seq=1)
    await ws.subscribe("a", after=2)
    await expect_error("invalid_ack", "a", type="ack", projectId="a", seq=3)
    await ws.send(type="ping", ts=12.5)
    assert await ws.expect("pong") == {"type": "pong", "ts": 12.5}
    await publish(client, "a", 1)
    assert seqs_of(await ws.events("a", 1)) == [3]
    await ws.ws.close()


async def test_auth_failures_close_4401(server: RunningServer, client: httpx.AsyncClient) -> None:
    """Missing, late, bad or expired tokens close with 4401 and nothing is sent before auth."""

    async def closed_with(ws: ClientConnection) -> int | None:
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await asyncio.wait_for(ws.recv(), timeout(8))
        return info.value.rcvd.code if info.value.rcvd else None

    async with connect(server.ws_url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "projectId": "a"}))
        assert await closed_with(ws) == 4401
    async with connect(server.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": "garbage"}))
        assert await closed_with(ws) == 4401
    async with connect(server.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": server.token(ttl_s=1, now=1000)}))
        assert await closed_with(ws) == 4401
    async with connect(server.ws_url + "?token=garbage") as ws:
        assert await closed_with(ws) == 4401
    started = time.monotonic()
    async with connect(server.ws_url) as ws:  # says nothing: closed after 5 s
        assert await closed_with(ws) == 4401
    assert 4.5 <= time.monotonic() - started < timeout(8)
    # A token that expires while connected closes the connection with 4401 at expiry.
    async with connect(server.ws_url + "?token=" + server.token(ttl_s=2)) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        assert await closed_with(ws) == 4401
    assert (await client.get("/healthz")).status_code == 200


async def test_foreign_origin_refused_and_own_origin_allowed(server: RunningServer) -> None:
    """A browser Origin that is neither the service's own nor allowed is refused at the handshake (403)."""
    with pytest.raises(InvalidStatus) as info:
        await connect(server.ws_url, origin="https://evil.example")  # type: ignore[arg-type]
    assert info.value.response.status_code == 403
    own = server.base_url
    ws = await connect(server.ws_url + "?token=" + server.token(), origin=own)  # type: ignore[arg-type]
    assert json.loads(await ws.recv())["type"] == "welcome"
    await ws.close()


async def test_message_over_64_kib_closes_1009(server: RunningServer, ws: WsClient) -> None:
    """A message over 64 KiB closes the connection with 1009; the server keeps serving others."""
    await ws.ws.send(json.dumps({"type": "ping", "pad": "x" * 70_000}))
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    other = await open_client(server)
    await other.send(type="ping", ts=1)
    assert (await other.expect("pong"))["ts"] == 1
    await other.ws.close()


async def test_a_crash_handling_a_message_closes_1001_and_is_logged(
    server: RunningServer, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A bug in a handler (injected: `ping` raises) is logged at ERROR and closes that connection with
    1001, which the contract says to retry, after the answers already queued; others are served."""
    await create(client, "p1")
    crashing = await open_client(server)
    await crashing.send(type="subscribe", projectId="p1")
    await crashing.expect("subscribed")

    async def broken(session: Session, message: dict[str, Any]) -> None:
        raise RuntimeError("injected bug")

    monkeypatch.setitem(Session.handlers, "ping", broken)
    await crashing.send(type="ping", ts=1)
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await crashing.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1001, info.value
    assert "failed handling a message" in caplog.text and "injected bug" in caplog.text
    monkeypatch.undo()
    other = await open_client(server)
    await other.send(type="ping", ts=2)
    assert (await other.expect("pong"))["ts"] == 2
    await other.ws.close()


async def test_rate_limit(tmp_path: Any, database_url: str) -> None:
    """Past the inbound rate: `rate_limited` errors, then persistently: close 1008."""
    settings = make_settings(database_url, tmp_path, ws_rate=5, ws_burst=5)
    running, task = await start_server(settings)
    try:
        ws = await open_client(running)
        for _ in range(10):
            await ws.send(type="ping", ts=1)
        kinds = [m["type"] if m["type"] != "error" else m["code"] for m in await ws.silence(0.3)]
        assert kinds.count("pong") == 5 and kinds.count("rate_limited") == 5
        with pytest.raises(ConnectionClosed) as info:
            for _ in range(200):
                await ws.send(type="ping", ts=1)
            while True:
                await ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1008
    finally:
        await stop_server(running, task)


async def test_heartbeat_timeout_4408(tmp_path: Any, database_url: str) -> None:
    """The server pings every heartbeatMs; a client that sends nothing for 2 intervals is closed with 4408."""
    settings = make_settings(database_url, tmp_path, heartbeat_ms=300)
    running, task = await start_server(settings)
    try:
        ws = await open_client(running)
        assert ws.welcome["heartbeatMs"] == 300
        ping = await ws.recv(2)
        assert ping["type"] == "ping" and isinstance(ping["ts"], int)
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await ws.recv(3)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4408
        # A client that answers stays connected.
        alive = await open_client(running)
        for _ in range(6):
            message = await alive.recv(2)
            if message["type"] == "ping":
                await alive.send(type="pong", ts=message["ts"])
        await alive.send(type="ping", ts=7)
        assert (await alive.expect("pong"))["ts"] == 7
        await alive.ws.close()
    finally:
        await stop_server(running, task)


async def test_slow_client_closed_4429_others_unaffected(tmp_path: Any, database_url: str) -> None:
    """A client that never reads is closed with 4429 (after what was queued) while a normal client
    keeps receiving promptly; the slow one resumes from its cursor and loses nothing."""
    settings = make_settings(database_url, tmp_path, ws_outbox=16)
    running, task = await start_server(settings)
    http = httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=timeout(10))
    try:
        await create(http, "a")
        slow = await open_client(running, client_id="slow", max_queue=1)
        await slow.subscribe("a")
        fast = await open_client(running)
        await fast.subscribe("a")
        big = "x" * 8000
        latencies = []
        for i in range(800):
            started = time.monotonic()
            await publish(http, "a", message=big)
            got = await fast.events("a", 1)
            latencies.append(time.monotonic() - started)
            assert got[0]["seq"] == i + 1
        assert max(latencies) < timeout(1.0)
        received = []
        with pytest.raises(ConnectionClosed) as info:
            while True:
                message = json.loads(await asyncio.wait_for(slow.ws.recv(), timeout(10)))
                if "seq" in message and "data" in message:
                    received.append(message["seq"])
        assert info.value.rcvd is not None and info.value.rcvd.code == 4429
        assert received == list(range(1, len(received) + 1)) and len(received) < 800
        resumed = await open_client(running, client_id="slow")
        await resumed.subscribe("a", after=received[-1])
        rest = await resumed.events("a", 800 - received[-1], wait=20)
        assert seqs_of(rest) == list(range(received[-1] + 1, 801))
        await resumed.ws.close()
        await fast.ws.close()
    finally:
        await http.aclose()
        await stop_server(running, task)


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
    await asyncio.sleep(0.05)
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


async def test_metrics(server: RunningServer, client: httpx.AsyncClient, ws: WsClient) -> None:
    """/metrics (admin) reports connections, subscriptions, sends and the latency histogram."""
    await create(client, "a")
    await ws.subscribe("a")
    await publish(client, "a", 3)
    await ws.events("a", 3)
    text = (await client.get("/metrics")).text
    assert "herald_connections 1.0" in text and "herald_subscriptions 1.0" in text
    assert "herald_messages_sent_total 3.0" in text
    assert 'herald_project_head{project="a"} 3.0' in text
    assert "herald_publish_to_send_seconds_count 3.0" in text
    reader = server.headers(server.token(scopes=("subscribe",)))
    assert (await client.get("/metrics", headers=reader)).status_code == 403


def test_websockets_version() -> None:
    """The test client speaks the protocol the tests assume."""
    assert int(websockets.__version__.split(".")[0]) >= 13


async def test_database_outage_over_the_socket(
    server: RunningServer, client: httpx.AsyncClient, pg_url: str, database_url: str
) -> None:
    """While the database is unreachable, publish and subscribe answer `unavailable` error frames and
    the connection stays open; once it is back, the same publish succeeds and is delivered."""
    from urllib.parse import urlsplit

    import asyncpg

    from service import db

    await create(client, "a", "b")
    ws = await open_client(server)
    await ws.subscribe("a")
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(db.asyncpg_dsn(pg_url))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        await ws.send(type="agent_run_progress", projectId="a", data=RUN, messageId="m1")
        error = await ws.expect("error", wait=10)
        assert (error["code"], error["ref"]) == ("unavailable", "m1")
        await ws.send(type="subscribe", projectId="b")
        error = await ws.expect("error", wait=10)
        assert (error["code"], error["ref"]) == ("unavailable", "b")
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    await ws.send(type="agent_run_progress", projectId="a", data=RUN, messageId="m1")
    messages = [await ws.recv(), await ws.recv()]
    assert {m["type"] for m in messages} == {"published", "agent_run_progress"}
    assert all(m.get("seq") == 1 for m in messages)
    await ws.ws.close()
