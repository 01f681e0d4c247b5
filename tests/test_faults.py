"""Guarantees under faults (PROTOCOL.md §6): several instances on one database, every database
connection of the service cut while publishing and delivering."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import httpx

from service import db
from tests.api.test_websocket import create, open_client, publish, seqs_of
from tests.conftest import RunningServer, make_settings, start_server, stop_server, timeout


async def test_two_instances_behave_as_one(server: RunningServer, database_url: str, tmp_path: Path) -> None:
    """A client on instance A receives events published through B, and resumes on B from the cursor
    it left on A."""
    other, task = await start_server(make_settings(database_url, tmp_path / "b"))
    a = httpx.AsyncClient(base_url=server.base_url, headers=server.headers(), timeout=timeout(10))
    b = httpx.AsyncClient(base_url=other.base_url, headers=other.headers(), timeout=timeout(10))
    try:
        await create(a, "p")
        on_a = await open_client(server, client_id="roamer")
        await on_a.subscribe("p")
        started = time.monotonic()
        await publish(b, "p", 5)
        assert seqs_of(await on_a.events("p", 5)) == [1, 2, 3, 4, 5]
        assert time.monotonic() - started < timeout(2)
        await on_a.send(type="ack", projectId="p", seq=4)
        await on_a.ws.close()
        await publish(a, "p", 2)
        on_b = await open_client(other, client_id="roamer")
        assert (await on_b.subscribe("p"))["after"] == 4
        assert seqs_of(await on_b.events("p", 3)) == [5, 6, 7]
        await on_b.ws.close()
    finally:
        await a.aclose()
        await b.aclose()
        await stop_server(other, task)


async def test_all_connections_cut_while_publishing(
    server: RunningServer, client: httpx.AsyncClient, database_url: str
) -> None:
    """pg_terminate_backend of the listener and the whole pool, repeatedly, while a producer publishes
    and a client is subscribed: each publish is either durable (201) or a prompt 503, and the client
    receives every durable event once, in order, without reconnecting."""
    await create(client, "p")
    ws = await open_client(server)
    await ws.subscribe("p")
    durable: list[int] = []
    failures = 0
    stop = asyncio.Event()

    async def producer() -> None:
        """Publishes m1, m2, ...; after a 503 it retries the same messageId, as a producer must (the
        outcome of a publish cut mid-commit is unknown to it; the messageId makes the retry safe)."""
        nonlocal failures
        n = 0
        while not stop.is_set():
            n += 1
            while True:
                started = time.monotonic()
                r = await client.post(
                    "/api/projects/p/events",
                    json={
                        "type": "agent_run_progress",
                        "messageId": f"m{n}",
                        "data": {"runId": "r", "status": "running", "progress": 1},
                    },
                )
                assert time.monotonic() - started < timeout(6), "a publish hung during the outage"
                if r.status_code in (200, 201):
                    durable.append(r.json()["seq"])
                    break
                assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
                failures += 1

    task = asyncio.create_task(producer())
    admin = await asyncpg.connect(db.asyncpg_dsn(database_url))
    try:
        for _ in range(5):
            await asyncio.sleep(0.3)
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        await asyncio.sleep(0.5)
    finally:
        stop.set()
        await task
        await admin.close()
    assert durable, "nothing was published"
    assert durable == list(range(1, len(durable) + 1))
    got = await ws.events("p", len(durable), wait=10)
    assert seqs_of(got) == durable
    assert await ws.silence(0.3) == []
    await ws.ws.close()
