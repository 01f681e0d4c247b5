"""The listener wakes the hub reliably: after its connection is killed, and when a NOTIFY is lost."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import asyncpg
import httpx

from service import audit, db
from service.messages import format_timestamp
from tests.conftest import RunningServer, timeout
from tests.helpers import create, open_client, publish, seqs_of


async def test_listener_reconnects_and_rereads(
    server: RunningServer, client: httpx.AsyncClient, database_url: str
) -> None:
    """pg_terminate_backend of the LISTEN connection: events published meanwhile still arrive, in
    order, without the client reconnecting."""
    await create(client, "a")
    ws = await open_client(server)
    await ws.subscribe("a")
    listener = server.app_runtime().listener
    await asyncio.wait_for(listener.connected.wait(), timeout(5))
    reconnects = listener.reconnects
    admin = await asyncpg.connect(db.asyncpg_dsn(database_url))
    try:
        pid = await admin.fetchval(
            "SELECT pid FROM pg_stat_activity "
            "WHERE application_name = 'herald listener' AND datname = current_database()"
        )
        assert pid is not None
        await admin.execute("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()
    await publish(client, "a", 5)
    assert seqs_of(await ws.events("a", 5)) == [1, 2, 3, 4, 5]
    async with asyncio.timeout(timeout(10)):
        while listener.reconnects == reconnects or not listener.connected.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    await publish(client, "a", 1)
    assert seqs_of(await ws.events("a", 1)) == [6]
    await ws.ws.close()


async def test_lost_notify_is_covered_by_the_safety_reread(
    server: RunningServer, client: httpx.AsyncClient, database_url: str
) -> None:
    """An event appended without its NOTIFY (as if the notification were lost) is delivered by the
    periodic re-read within its interval."""
    await create(client, "a")
    ws = await open_client(server)
    await ws.subscribe("a")
    writer = await asyncpg.connect(db.asyncpg_dsn(database_url))
    try:
        async with writer.transaction():  # an append as the log writes it, chain included, but no NOTIFY
            seq = await writer.fetchval("UPDATE projects SET head = head + 1 WHERE id = 'a' RETURNING head")
            data, at = {"runId": "r", "status": "queued", "progress": 0}, datetime.now(UTC)
            digest = audit.link(
                audit.GENESIS,
                audit.canonical(
                    project_id="a", seq=seq, message_id="silent", type="agent_run_progress",
                    timestamp=format_timestamp(at), data=data,
                ),
            )  # fmt: skip
            await writer.execute(
                "INSERT INTO events (project_id, seq, message_id, type, data, created_at, hash) "
                "VALUES ('a', $1, 'silent', 'agent_run_progress', $2::jsonb, $3, $4)",
                seq,
                json.dumps(data),
                at,
                digest,
            )
            await writer.execute("UPDATE projects SET last_hash = $1 WHERE id = 'a'", digest)
    finally:
        await writer.close()
    got = await ws.events("a", 1, wait=timeout(2.0) + 2)
    assert got[0]["messageId"] == "silent" and got[0]["seq"] == 1
    await ws.ws.close()
