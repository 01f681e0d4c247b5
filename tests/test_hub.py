"""The hub's fan-out (service/hub.py, feed.py): per project, in order, to every client (docs/protocol.md §6)."""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed

from tests.conftest import RunningServer, make_settings, start_server, stop_server, timeout
from tests.helpers import RUN, WsClient, create, open_client, publish, seqs_of, wait_until


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


async def test_stalled_client_closed_4429_others_unaffected(tmp_path: Any, database_url: str) -> None:
    """A client that stops reading is closed with 4429 once it has taken no bytes for the stall time,
    while a normal client keeps receiving promptly; the stalled one resumes from its cursor and loses
    nothing."""
    settings = make_settings(database_url, tmp_path, ws_outbox_bytes=256 * 1024, ws_stall_s=1.5)
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
        # The kernel's socket buffers took megabytes before the service's own filled: the stall clock
        # runs from the last byte they took, and the client is closed once it has run out.
        (stalled,) = [c for c in running.app_runtime().hub.clients if c.client_id == "slow"]
        await wait_until(lambda: stalled.close_code == 4429, 15, "the stalled client to be closed")
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


async def test_a_slow_reader_is_never_closed_the_log_is_its_buffer(tmp_path: Any, database_url: str) -> None:
    """A client that keeps reading, slower than events arrive and far past its byte budget, is never
    closed for it: it falls back to reading from the log at its own pace and gets every event, in
    order, once (docs/protocol.md §7.1, slow clients)."""
    settings = make_settings(database_url, tmp_path, ws_outbox_bytes=256 * 1024, ws_stall_s=1.5)
    running, task = await start_server(settings)
    http = httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=timeout(10))
    try:
        await create(http, "a")
        slow = await open_client(running, client_id="slow", max_queue=4)
        await slow.subscribe("a")
        total, big = 400, "x" * 8000  # 3.2 MB: twelve budgets' worth

        async def read_slowly() -> list[int]:
            seqs: list[int] = []
            while len(seqs) < total:
                message = json.loads(await asyncio.wait_for(slow.ws.recv(), timeout(20)))
                if "seq" in message and "data" in message:
                    seqs.append(message["seq"])
                    await asyncio.sleep(0.004)  # about 2 MB/s: behind the publishers, never stopped
            return seqs

        reader = asyncio.create_task(read_slowly())
        await asyncio.gather(*(publish(http, "a", total // 8, message=big) for _ in range(8)))
        assert await reader == list(range(1, total + 1))
        assert slow.ws.close_code is None  # still open
        await slow.ws.close()
    finally:
        await http.aclose()
        await stop_server(running, task)
