"""The `/ws` transport over real sockets: handshake, auth, frames, error frames, close codes (docs/protocol.md §4)."""

from __future__ import annotations

import json
import time
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from service.session import Session
from tests.conftest import RunningServer, make_settings, start_server, stop_server, timeout
from tests.helpers import RUN, WsClient, closed_with, create, open_client, publish, seqs_of


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

    def broken(session: Session, message: dict[str, Any]) -> None:
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


async def test_a_busy_pool_is_answered_busy_not_unreachable(database_url: str, tmp_path: Any) -> None:
    """When every pooled connection stays in use past the timeout (a burst of thousands of subscribes on a
    small pool), the subscribe is answered `unavailable` saying the database is busy, not unreachable: the
    operator looks at the pool and the load, not at the network; the connection stays open and a retry
    succeeds once a connection is free."""
    server, task = await start_server(make_settings(database_url, tmp_path, pool_size=1, db_timeout_s=1.0))
    try:
        async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers()) as http:
            await create(http, "p")
        ws = await open_client(server)
        pool = server.app_runtime().database.pool
        held = await pool.acquire()
        try:
            await ws.send(type="subscribe", projectId="p")
            error = await ws.expect("error", wait=10)
            assert (error["code"], error["ref"]) == ("unavailable", "p")
            assert "busy" in error["message"] and "unreachable" not in error["message"], error
        finally:
            await pool.release(held)
        assert (await ws.subscribe("p"))["type"] == "subscribed"
        await ws.ws.close()
    finally:
        await stop_server(server, task)
