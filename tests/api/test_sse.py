"""SSE streams over real sockets (docs/protocol.md §5): resume points, live events, keep-alives, errors, shutdown.

Also the multi-project stream's position vector, and 4429 for a reader that stops reading.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import RunningServer, make_settings, start_server, stop_server, timeout
from tests.helpers import create, publish, stream, wait_until


async def test_live_events_headers_and_ids(client: httpx.AsyncClient) -> None:
    """A stream from the head gets live events as `id: seq`, `event: type`, `data: event JSON`, with
    the headers of §5."""
    await create(client, "p")
    await publish(client, "p", 2)
    async with stream(client, "/api/projects/p/stream") as s:
        headers = s.response.headers
        assert headers["content-type"].startswith("text/event-stream")
        assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
        await publish(client, "p", 2)
        got = await s.events(2)
    assert [m.id for m in got] == ["3", "4"]
    assert [m.event for m in got] == ["agent_run_progress"] * 2
    assert [m.json["seq"] for m in got] == [3, 4] and got[0].json["projectId"] == "p"


async def test_resume_points(server: RunningServer, client: httpx.AsyncClient) -> None:
    """Last-Event-ID wins over `after`, `after` over the cursor, the cursor over the head; an HTTP ack
    moves the cursor a later stream resumes from."""
    await create(client, "p")
    await publish(client, "p", 6)
    async with stream(client, "/api/projects/p/stream?after=1", headers={"Last-Event-ID": "4"}) as s:
        assert [m.id for m in await s.events(2)] == ["5", "6"]
    async with stream(client, "/api/projects/p/stream?after=2&clientId=tab") as s:
        assert [m.id for m in await s.events(4)] == ["3", "4", "5", "6"]
    r = await client.post("/api/projects/p/ack", json={"clientId": "tab", "seq": 3})
    assert r.status_code == 200, r.text
    async with stream(client, "/api/projects/p/stream?clientId=tab") as s:
        assert [m.id for m in await s.events(3)] == ["4", "5", "6"]
    async with stream(client, "/api/projects/p/stream?clientId=someone-else") as s:  # no cursor: the head
        await publish(client, "p")
        assert [m.id for m in await s.events(1)] == ["7"]


async def test_keepalive_comment_and_token_in_query(database_url: str, tmp_path: Path) -> None:
    """With HERALD_SSE_KEEPALIVE_MS=200 a quiet stream gets a comment line at least that often; the
    token may come as `?token=` (EventSource cannot send headers)."""
    running, task = await start_server(make_settings(database_url, tmp_path, sse_keepalive_ms=200))
    try:
        async with httpx.AsyncClient(base_url=running.base_url, headers=running.headers()) as admin:
            await create(admin, "p")
        async with (
            httpx.AsyncClient(base_url=running.base_url) as anonymous,
            stream(anonymous, f"/api/projects/p/stream?token={running.token()}") as s,
        ):
            started = time.monotonic()
            lines = []
            async with asyncio.timeout(timeout(3)):
                async for line in s._lines:
                    lines.append(line)
                    if lines.count(": keep-alive") == 3:
                        break
            assert time.monotonic() - started < timeout(1.5)
    finally:
        await stop_server(running, task)


async def test_errors(server: RunningServer, client: httpx.AsyncClient) -> None:
    """A non-integer Last-Event-ID is 400, a missing or bad token 401, another's project 403, an
    unknown one 404, a position beyond the head 422; nothing streams on an error."""
    await create(client, "p")

    async def status(url: str, headers: dict[str, str] | None = None, **kw: Any) -> tuple[int, str]:
        r = await client.get(url, headers=headers, **kw)
        return r.status_code, r.json()["error"]

    assert await status("/api/projects/p/stream", {"Last-Event-ID": "x7"}) == (400, "invalid_cursor")
    assert await status("/api/projects/p/stream", {"Last-Event-ID": "-1"}) == (400, "invalid_cursor")
    assert await status("/api/stream?projects=p", {"Last-Event-ID": "p:x"}) == (400, "invalid_cursor")
    assert await status("/api/projects/p/stream", {"Authorization": "Bearer nope"}) == (401, "unauthorized")
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        r = await anonymous.get("/api/projects/p/stream")
        assert (r.status_code, r.json()["error"]) == (401, "unauthorized")
        r = await anonymous.get("/api/projects/p/stream?token=garbage")
        assert r.status_code == 401
    other = {"Authorization": f"Bearer {server.token(projects=['q'], scopes=('subscribe',))}"}
    assert await status("/api/projects/p/stream", other) == (403, "forbidden")
    assert await status("/api/projects/nope/stream") == (404, "not_found")
    assert await status("/api/projects/p/stream?after=5") == (422, "invalid_cursor")
    assert await status("/api/stream?projects=p,nope") == (404, "not_found")
    assert await status("/api/stream?projects=p,bad%20id") == (422, "invalid_data")
    assert await status("/api/projects/p/stream?clientId=%07") == (422, "invalid_data")
    assert (await client.get("/api/projects/p/events")).json()["events"] == []


async def test_multi_project_stream_resumes_from_its_vector(client: httpx.AsyncClient) -> None:
    """One stream for two projects: each `id:` is the position vector after the event, and handing
    the last one back as Last-Event-ID resumes both projects exactly; `after=` works the same."""
    await create(client, "a", "b")
    await publish(client, "a", 2)
    await publish(client, "b", 1)
    async with stream(client, "/api/stream?projects=a,b&after=a:0,b:0") as s:
        got = await s.events(3)
        assert sorted((m.json["projectId"], m.json["seq"]) for m in got) == [("a", 1), ("a", 2), ("b", 1)]
        assert got[-1].id == "a:2,b:1"
        vector = got[-1].id
    await publish(client, "b", 2)
    await publish(client, "a", 1)
    assert vector is not None
    async with stream(client, "/api/stream?projects=a,b", headers={"Last-Event-ID": vector}) as s:
        got = await s.events(3)
        assert [(m.json["projectId"], m.json["seq"]) for m in got if m.json["projectId"] == "b"] == [("b", 2), ("b", 3)]
        assert [m.json["seq"] for m in got if m.json["projectId"] == "a"] == [3]
        assert got[-1].id == "a:3,b:3"
        assert await s.ended(0.3) is False  # nothing more, and still open


async def test_shutdown_ends_streams_promptly(database_url: str, tmp_path: Path) -> None:
    """Stopping the server with two streams open ends them at once and exits well inside uvicorn's
    graceful timeout (which would otherwise wait on them)."""
    running, task = await start_server(make_settings(database_url, tmp_path))
    async with httpx.AsyncClient(base_url=running.base_url, headers=running.headers()) as admin:
        await create(admin, "p")
        async with (
            stream(admin, "/api/projects/p/stream") as one,
            stream(admin, "/api/stream?projects=p") as two,
        ):
            started = time.monotonic()
            stopping = asyncio.create_task(stop_server(running, task))
            assert await one.ended(2) and await two.ended(2)
            assert one.comments[-1].startswith("closed 1001") and two.comments[-1].startswith("closed 1001")
            await stopping
            assert time.monotonic() - started < timeout(2)


async def test_a_stream_that_stops_reading_is_closed_4429_and_resumes(database_url: str, tmp_path: Path) -> None:
    """A reader that stops reading is ended with the comment `closed 4429` once it has taken nothing
    for the stall time, like a stalled WebSocket; reconnecting with its Last-Event-ID gets the rest,
    nothing lost."""
    settings = make_settings(database_url, tmp_path, ws_outbox_bytes=256 * 1024, ws_stall_s=1.5)
    running, task = await start_server(settings)
    try:
        async with httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=timeout(10)) as h:
            await create(h, "a")
            async with stream(h, "/api/projects/a/stream?after=0") as slow:
                total = 800
                await asyncio.gather(*(publish(h, "a", 100, message="x" * 8000) for _ in range(total // 100)))
                (stalled,) = running.app_runtime().hub.clients
                await wait_until(lambda: stalled.close_code == 4429, 15, "the stalled stream to be closed")
                seqs: list[int] = []
                with pytest.raises(EOFError):
                    while True:
                        seqs.append((await slow.next(10)).json["seq"])
                assert slow.comments[-1].startswith("closed 4429")
            assert seqs == list(range(1, len(seqs) + 1)) and len(seqs) < total
            async with stream(h, "/api/projects/a/stream", headers={"Last-Event-ID": str(seqs[-1])}) as resumed:
                rest = await resumed.events(total - seqs[-1], wait=20)
            assert [m.json["seq"] for m in rest] == list(range(seqs[-1] + 1, total + 1))
    finally:
        await stop_server(running, task)
