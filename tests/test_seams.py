"""The seams around the log (docs/delivery.md, "Seams"): a commit whose reply never came, a poisoned
ack, acks at a clean disconnect, a busy row, readiness. Each against a real uvicorn and PostgreSQL;
the network failure comes from a real TCP proxy (tests/proxy.py) between the service and the database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from herald_client import Publisher

from service import db
from tests.conftest import RunningServer, make_settings, start_server, stop_server, timeout
from tests.helpers import RUN, create, open_client, publish, wait_until
from tests.proxy import ReplyDroppingProxy


@pytest.fixture
async def proxied(database_url: str, tmp_path: Path) -> AsyncIterator[tuple[RunningServer, ReplyDroppingProxy]]:
    """A service whose every database connection goes through the reply-dropping proxy."""
    async with ReplyDroppingProxy(database_url) as proxy:
        running, task = await start_server(make_settings(proxy.url, tmp_path))
        try:
            yield running, proxy
        finally:
            await stop_server(running, task)


async def stored(database_url: str, project_id: str) -> list[dict[str, Any]]:
    """The project's log, read directly (not through the proxy)."""
    conn = await asyncpg.connect(db.asyncpg_dsn(database_url))
    try:
        rows = await conn.fetch(
            "SELECT seq, message_id, data::text AS data FROM events WHERE project_id = $1 ORDER BY seq", project_id
        )
    finally:
        await conn.close()
    return [{"seq": r["seq"], "messageId": r["message_id"], "data": json.loads(r["data"])} for r in rows]


# --- a commit whose reply never came (§7.2) ----------------------------------------------------------


async def test_an_unknown_commit_names_its_message_id_and_a_retry_appends_nothing(
    proxied: tuple[RunningServer, ReplyDroppingProxy], database_url: str
) -> None:
    """The append reaches PostgreSQL and commits, its reply is lost: the publisher (which sent no
    messageId) gets 503 saying it may have been written, with the messageId the service used; the
    log holds the event once, and the retry with that messageId answers the original (200)."""
    running, proxy = proxied
    async with httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=timeout(10)) as http:
        await create(http, "p")
        proxy.drop_reply_to(b"lost-reply-1")
        body = {"type": "agent_run_progress", "data": {**RUN, "runId": "lost-reply-1"}}
        r = await http.post("/api/projects/p/events", json=body)
        assert r.status_code == 503 and proxy.dropped == 1, r.text
        answer = r.json()
        assert answer["error"] == "unavailable" and "may have been written" in answer["message"]
        message_id = answer["messageId"]
        assert r.headers["retry-after"] == "1"
        log = await stored(database_url, "p")
        assert [e["messageId"] for e in log] == [message_id]  # it was written, under that id
        retry = await http.post("/api/projects/p/events", json={**body, "messageId": message_id})
        assert retry.status_code == 200 and retry.json()["seq"] == log[0]["seq"], retry.text
        assert len(await stored(database_url, "p")) == 1


async def test_an_unknown_commit_over_the_socket_refers_to_the_message_id(
    proxied: tuple[RunningServer, ReplyDroppingProxy], database_url: str
) -> None:
    """Over the WebSocket the `error` frame's `ref` is the messageId the service used (the client
    sent none), and publishing again with it is answered with the original seq."""
    running, proxy = proxied
    async with httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=timeout(10)) as http:
        await create(http, "p")
    ws = await open_client(running)
    proxy.drop_reply_to(b"lost-reply-2")
    await ws.send(type="agent_run_progress", projectId="p", data={**RUN, "runId": "lost-reply-2"})
    error = await ws.expect("error", wait=15)
    assert error["code"] == "unavailable" and "may have been written" in error["message"]
    message_id = error["ref"]
    assert message_id not in (None, "p")
    log = await stored(database_url, "p")
    assert [e["messageId"] for e in log] == [message_id]
    await ws.send(type="agent_run_progress", projectId="p", messageId=message_id, data={**RUN, "runId": "lost-reply-2"})
    published = await ws.expect("published")
    assert published["messageId"] == message_id and published["seq"] == log[0]["seq"]
    assert len(await stored(database_url, "p")) == 1
    await ws.ws.close()


async def test_the_publisher_through_lost_replies_appends_each_event_once(
    proxied: tuple[RunningServer, ReplyDroppingProxy], database_url: str
) -> None:
    """The Python Publisher, publishing 30 events while the network drops the replies of five of
    their commits: the log holds each event exactly once, in order of publishing."""
    running, proxy = proxied
    async with httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=timeout(10)) as http:
        await create(http, "p")
    for i in (3, 7, 12, 20, 29):
        proxy.drop_reply_to(f'"run-{i:02d}"'.encode())
    async with Publisher(running.base_url, running.token(), deadline_s=timeout(60)) as publisher:
        for i in range(30):
            await publisher.progress("p", run_id=f"run-{i:02d}", status="running", progress=i)
    assert proxy.dropped == 5
    log = await stored(database_url, "p")
    assert [e["data"]["runId"] for e in log] == [f"run-{i:02d}" for i in range(30)]
    assert len({e["messageId"] for e in log}) == 30


# --- acks: no row can hold the others back; a clean close persists them first --------------------------


async def test_a_poisoned_ack_cannot_hold_back_the_others(
    server: RunningServer, client: httpx.AsyncClient, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An ack PostgreSQL refuses (a user holding U+0000, as an older version let through) sits in the
    buffer beside a real client's ack: the real one is persisted within a second anyway, and the
    refused one is logged and dropped instead of failing every flush forever."""
    await create(client, "p")
    await publish(client, "p", 3)
    acks = server.app_runtime().acks
    acks.add(project_id="p", user="poison\x00ed", client_id="c", seq=1)
    ws = await open_client(server, client_id="good")
    await ws.subscribe("p", after=0)
    await ws.events("p", 3)
    await ws.send(type="ack", projectId="p", seq=3)
    conn = await asyncpg.connect(db.asyncpg_dsn(database_url))
    try:

        async def cursor() -> int | None:
            value: int | None = await conn.fetchval(
                "SELECT seq FROM cursors WHERE project_id = 'p' AND client_id = 'good'"
            )
            return value

        deadline = asyncio.get_running_loop().time() + timeout(1.5)
        while await cursor() != 3:
            assert asyncio.get_running_loop().time() < deadline, "the good ack was not persisted within 1.5 s"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()
    await wait_until(lambda: acks.pending == 0, 3, "the poisoned ack to be dropped")
    assert "dropping an ack the database refuses" in caplog.text
    await ws.ws.close()


async def test_acks_at_a_clean_close_are_persisted_before_the_close_completes(
    database_url: str, tmp_path: Path
) -> None:
    """Twenty times: read on instance A, ack, close cleanly, and resume at once on instance B without
    a position: B starts right after the ack every time (docs/protocol.md §6: after a clean
    disconnect nothing acked comes again)."""
    a, a_task = await start_server(make_settings(database_url, tmp_path / "a"))
    b, b_task = await start_server(make_settings(database_url, tmp_path / "b"))
    try:
        async with httpx.AsyncClient(base_url=a.base_url, headers=a.headers(), timeout=timeout(10)) as http:
            await create(http, "p")
            acked = 0
            for _ in range(20):
                await publish(http, "p", 2)
                on_a = await open_client(a, client_id="laptop")
                start = await on_a.subscribe("p", after=acked) if acked == 0 else await on_a.subscribe("p")
                assert start["after"] == acked
                got = await on_a.events("p", 2)
                acked = got[-1]["seq"]
                await on_a.send(type="ack", projectId="p", seq=acked)
                await on_a.ws.close()
                on_b = await open_client(b, client_id="laptop")
                assert (await on_b.subscribe("p"))["after"] == acked
                await on_b.ws.close()
    finally:
        await stop_server(a, a_task)
        await stop_server(b, b_task)


# --- a busy database is busy, not unreachable -----------------------------------------------------------


async def test_a_locked_project_is_busy_and_does_not_stall_the_others(
    server: RunningServer, client: httpx.AsyncClient, database_url: str
) -> None:
    """While a transaction elsewhere holds project p's row, twelve batch publishes into p answer 503
    saying the database is busy (not unreachable) within a few seconds, holding at most two pooled
    connections; meanwhile reads of q answer promptly and /healthz stays ok; once the lock is gone, p
    takes publishes again."""
    await create(client, "p", "q")
    await publish(client, "q", 1)
    locker = await asyncpg.connect(db.asyncpg_dsn(database_url))
    batch = {"events": [{"type": "agent_run_progress", "data": RUN}]}
    try:
        lock = locker.transaction()
        await lock.start()
        await locker.execute("SELECT head FROM projects WHERE id = 'p' FOR UPDATE")
        publishes = [asyncio.create_task(client.post("/api/projects/p/events/batch", json=batch)) for _ in range(12)]
        await asyncio.sleep(0.2)  # let them reach the lock
        for _ in range(5):
            started = asyncio.get_running_loop().time()
            r = await client.get("/api/projects/q/events?after=0")
            assert r.status_code == 200 and len(r.json()["events"]) == 1
            assert asyncio.get_running_loop().time() - started < timeout(0.5)
        assert (await client.get("/healthz")).status_code == 200
        answers = await asyncio.wait_for(asyncio.gather(*publishes), timeout(20))
        assert all(r.status_code == 503 for r in answers), [r.status_code for r in answers]
        assert all("busy" in r.json()["message"] and "unreachable" not in r.json()["message"] for r in answers)
        assert all(r.headers.get("retry-after") for r in answers)
        await lock.rollback()
    finally:
        await locker.close()
    r = await client.post("/api/projects/p/events/batch", json=batch)
    assert r.status_code == 201, r.text


# --- readiness ---------------------------------------------------------------------------------------


async def test_readyz_says_when_live_delivery_is_degraded(
    proxied: tuple[RunningServer, ReplyDroppingProxy],
) -> None:
    """/readyz is 200 while the database answers and the LISTEN connection is up; when the LISTEN
    connection is cut and cannot come back, /readyz is 503 naming it while /healthz (liveness) stays
    200; once it is back, /readyz is 200 again."""
    running, proxy = proxied
    async with httpx.AsyncClient(base_url=running.base_url, timeout=timeout(10)) as http:
        await wait_until_ok(http, "/readyz")
        proxy.refusing = True
        assert proxy.cut(b"herald listener") == 1
        deadline = asyncio.get_running_loop().time() + timeout(10)
        while (r := await http.get("/readyz")).status_code != 503:
            assert asyncio.get_running_loop().time() < deadline, r.text
            await asyncio.sleep(0.05)
        assert r.json()["error"] == "unavailable" and "LISTEN" in r.json()["message"]
        assert (await http.get("/healthz")).status_code == 200
        proxy.refusing = False
        await wait_until_ok(http, "/readyz", wait=15)


async def wait_until_ok(http: httpx.AsyncClient, path: str, wait: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout(wait)
    while (r := await http.get(path)).status_code != 200:
        assert asyncio.get_running_loop().time() < deadline, r.text
        await asyncio.sleep(0.05)


# --- a slow reader is served from the log --------------------------------------------------------------


async def test_a_reader_at_80_percent_of_the_publish_rate_gets_every_event_and_stays(
    database_url: str, tmp_path: Path
) -> None:
    """20,000 events published at about 4,000/s while a client reads at about 80% of that, far past
    its byte budget: it is never closed, and receives every event once, in order (docs/protocol.md
    §7.1: the log is its buffer)."""
    settings = make_settings(database_url, tmp_path, ws_outbox_bytes=256 * 1024, ws_stall_s=2)
    running, task = await start_server(settings)
    try:
        async with httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=timeout(20)) as http:
            await create(http, "p")
            reader = await open_client(running, client_id="slow", max_queue=8)
            await reader.subscribe("p")
            total, per_batch = 20_000, 400

            async def produce() -> None:
                body = {"events": [{"type": "agent_run_progress", "data": RUN} for _ in range(per_batch)]}
                for _ in range(total // per_batch):
                    started = asyncio.get_running_loop().time()
                    r = await http.post("/api/projects/p/events/batch", json=body)
                    assert r.status_code == 201, r.text
                    # 400 events per 0.1 s: about 4,000/s
                    await asyncio.sleep(max(0.0, 0.1 - (asyncio.get_running_loop().time() - started)))

            async def consume() -> list[int]:
                seqs: list[int] = []
                while len(seqs) < total:
                    message = json.loads(await asyncio.wait_for(reader.ws.recv(), timeout(20)))
                    if "seq" in message and "data" in message:
                        seqs.append(message["seq"])
                        if len(seqs) % 16 == 0:
                            await asyncio.sleep(0.005)  # about 3,200/s at most: 80% of the publishers
                return seqs

            seqs, _ = await asyncio.gather(consume(), produce())
            assert seqs == list(range(1, total + 1))
            assert reader.ws.close_code is None
            await reader.ws.close()
    finally:
        await stop_server(running, task)
