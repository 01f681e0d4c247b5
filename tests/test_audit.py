"""The audit chain (service/audit.py, docs/protocol.md "Audit"): every event's hash, recomputed here as an
outside tool would (the reference RFC 8785 library over the event as served, nothing of Herald's), and an
auditor's verify naming the first bad seq after an attacker with database access changed, deleted or
reordered rows, over HTTP and the CLI, with and without a signed checkpoint.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from service import audit, db
from service.messages import format_timestamp
from tests.conftest import RunningServer, scratch_database, timeout
from tests.helpers import RUN, cli, create, open_client, publish, recompute, stream


async def history(client: httpx.AsyncClient, pid: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/projects/{pid}/events", params={"limit": 1000})
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


async def verify(client: httpx.AsyncClient, pid: str) -> dict[str, Any]:
    r = await client.get(f"/api/projects/{pid}/audit/verify")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# --- the canonical form ------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=2000, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=8))
def test_canonical_data_is_rfc8785_for_any_json_object(data: dict[str, Any]) -> None:
    """The fast path writes exactly the bytes of the reference JCS library, for every JSON object:
    control characters, non-BMP keys, integral floats, tiny and huge numbers, nesting."""
    assert audit.canonical_data(data) == rfc8785.dumps(data)


def test_canonical_form_is_jcs_of_the_event_without_its_hash() -> None:
    """`canonical` (and so the SQL that splices seq and time into `pieces`) is JCS of the wire event."""
    event = {
        "type": "agent_run_progress",
        "projectId": "p.1",
        "seq": 12,
        "messageId": 'm "ü" \u2028 \U0001f600',
        "timestamp": "2026-12-02T07:00:00.123Z",
        "data": {"runId": "r", "status": "running", "progress": 42.5, "step": "\x01\t"},
    }
    fields = {
        "project_id": "p.1",
        "seq": 12,
        "message_id": event["messageId"],
        "type": "agent_run_progress",
        "timestamp": "2026-12-02T07:00:00.123Z",
        "data": event["data"],
    }
    assert audit.canonical(**fields) == rfc8785.dumps(event)


# --- every event carries its hash, over every transport --------------------------------------------------


async def test_every_event_carries_the_chain_over_http_websocket_and_sse(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """Single appends (SQL computes the hash), batches and pipelined socket publishes (the group commit
    computes it), all chain into one log that an outside tool recomputes from the wire; the same hash
    arrives over history, the WebSocket and SSE."""
    await create(client, "p")
    ws = await open_client(server)
    await ws.subscribe("p", after=0)
    await publish(client, "p", 3, step="ü \U0001f600 \x01", progress=33.25)
    batch = [{"type": "agent_run_progress", "data": {**RUN, "progress": float(i)}} for i in range(5)]
    r = await client.post("/api/projects/p/events/batch", json={"events": batch})
    assert r.status_code == 201, r.text
    for i in range(20):  # pipelined: the group commit writes several per transaction
        await ws.send(type="agent_run_progress", projectId="p", data={**RUN, "progress": i % 100, "step": f"s{i}"})
    pr = {"action": "opened", "number": 7, "title": "T", "url": "https://x/7", "repo": "o/r", "headSha": "abc"}
    r = await client.post("/api/projects/p/events", json={"type": "pr_notification", "data": pr})
    assert r.status_code == 201, r.text

    events = await history(client, "p")
    assert [e["seq"] for e in events] == list(range(1, 30))
    assert [e["hash"] for e in events] == recompute(events)
    answer = r.json()  # the publish answer carries it too
    assert answer["hash"] == events[answer["seq"] - 1]["hash"]

    live = await ws.events("p", 29)
    assert [e["hash"] for e in live] == [e["hash"] for e in events]
    async with stream(client, "/api/projects/p/stream?after=0") as sse:
        streamed: list[dict[str, Any]] = []
        while len(streamed) < 29:
            message = await sse.next()
            if message.data:
                streamed.append(message.json)
    assert streamed == events
    await ws.ws.close()

    assert await verify(client, "p") == {"ok": True, "head": 29, "hash": events[-1]["hash"]}


async def test_verify_of_an_empty_log_and_of_a_missing_project(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    await create(client, "empty")
    assert await verify(client, "empty") == {"ok": True, "head": 0, "hash": "0" * 64}
    r = await client.get("/api/projects/nope/audit/verify")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


async def test_verify_needs_the_audit_scope(server: RunningServer, client: httpx.AsyncClient) -> None:
    """An auditor verifies; a subscriber or publisher cannot, nor a token for another project."""
    await create(client, "p")
    for token in (server.token(scopes=("subscribe", "publish")), server.token(projects=["other"])):
        r = await client.get("/api/projects/p/audit/verify", headers=server.headers(token))
        assert r.status_code == 403 and r.json()["error"] == "forbidden"
    auditor = server.token(user="auditor", projects=["p"], scopes=("audit",))
    r = await client.get("/api/projects/p/audit/verify", headers=server.headers(auditor))
    assert r.status_code == 200 and r.json() == {"ok": True, "head": 0, "hash": "0" * 64}


# --- an attacker with database access ---------------------------------------------------------------------


async def tampered(server: RunningServer, sql: str, *args: Any) -> None:
    conn = await asyncpg.connect(db.asyncpg_dsn(server.settings.database_url or ""))
    try:
        await conn.execute(sql, *args)
    finally:
        await conn.close()


async def test_a_changed_event_is_named_over_http_and_the_cli(server: RunningServer, client: httpx.AsyncClient) -> None:
    await create(client, "p")
    await publish(client, "p", 8)
    ok = await asyncio.to_thread(cli, server, "audit", "verify", "p")
    assert ok.returncode == 0 and "intact through seq 8" in ok.stdout, ok.stdout + ok.stderr

    await tampered(server, """UPDATE events SET data = jsonb_set(data, '{progress}', '99') WHERE seq = 5""")
    body = await verify(client, "p")
    assert body["ok"] is False and body["firstBad"] == 5, body
    bad = await asyncio.to_thread(cli, server, "audit", "verify", "p")
    assert bad.returncode == 1 and "broken at seq 5" in bad.stdout, bad.stdout + bad.stderr


async def test_a_deleted_event_is_named(server: RunningServer, client: httpx.AsyncClient) -> None:
    await create(client, "p")
    await publish(client, "p", 6)
    await tampered(server, "DELETE FROM events WHERE project_id = 'p' AND seq = 4")
    body = await verify(client, "p")
    assert body == {"ok": False, "firstBad": 4, "reason": "seq 4 is missing from the log"}
    bad = await asyncio.to_thread(cli, server, "audit", "verify", "p")
    assert bad.returncode == 1 and "broken at seq 4" in bad.stdout


async def test_a_deleted_tail_is_named(server: RunningServer, client: httpx.AsyncClient) -> None:
    """The last events deleted (and nothing else): the head on the project row still tells."""
    await create(client, "p")
    await publish(client, "p", 6)
    await tampered(server, "DELETE FROM events WHERE project_id = 'p' AND seq >= 5")
    body = await verify(client, "p")
    assert body["ok"] is False and body["firstBad"] == 5, body


async def test_two_swapped_events_are_named_at_the_lower_seq(server: RunningServer, client: httpx.AsyncClient) -> None:
    await create(client, "p")
    for i in range(6):
        await publish(client, "p", 1, progress=i * 10)
    for move in ("seq = 99999 WHERE seq = 2", "seq = 2 WHERE seq = 5", "seq = 5 WHERE seq = 99999"):
        await tampered(server, f"UPDATE events SET {move} AND project_id = 'p'")
    body = await verify(client, "p")
    assert body["ok"] is False and body["firstBad"] == 2, body
    bad = await asyncio.to_thread(cli, server, "audit", "verify", "p")
    assert bad.returncode == 1 and "broken at seq 2" in bad.stdout


async def rehash(server: RunningServer, project_id: str) -> None:
    """What a careful attacker does after changing a row: recompute every hash after it, and the project's
    last hash, so the chain alone verifies again."""
    conn = await asyncpg.connect(db.asyncpg_dsn(server.settings.database_url or ""))
    try:
        previous = audit.GENESIS
        rows = await conn.fetch(
            "SELECT seq, message_id, type, data::text AS data, created_at FROM events WHERE project_id = $1 "
            "ORDER BY seq",
            project_id,
        )
        for row in rows:
            previous = audit.link(
                previous,
                audit.canonical(
                    project_id=project_id,
                    seq=row["seq"],
                    message_id=row["message_id"],
                    type=row["type"],
                    timestamp=format_timestamp(row["created_at"]),
                    data=json.loads(row["data"]),
                ),
            )
            await conn.execute(
                "UPDATE events SET hash = $1 WHERE project_id = $2 AND seq = $3", previous, project_id, row["seq"]
            )
        await conn.execute("UPDATE projects SET last_hash = $1 WHERE id = $2", previous, project_id)
    finally:
        await conn.close()


async def test_a_checkpoint_taken_before_a_rewrite_fails_after_it(
    server: RunningServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """The attacker rewrites seq 3 and recomputes every hash: the chain verifies, the receipt does not."""
    await create(client, "p")
    await publish(client, "p", 5)
    taken = await asyncio.to_thread(cli, server, "audit", "checkpoint", "p")
    assert taken.returncode == 0, taken.stderr
    receipt = json.loads(taken.stdout)
    assert receipt["projectId"] == "p" and receipt["seq"] == 5
    assert receipt["hash"] == (await history(client, "p"))[-1]["hash"]
    path = tmp_path / "receipt.json"
    path.write_text(taken.stdout)
    await publish(client, "p", 2)  # the log goes on: the receipt still holds for its seq
    good = await asyncio.to_thread(cli, server, "audit", "verify", "p", "--checkpoint", str(path))
    assert good.returncode == 0, good.stdout + good.stderr

    await tampered(server, """UPDATE events SET data = jsonb_set(data, '{status}', '"failed"') WHERE seq = 3""")
    await rehash(server, "p")
    assert (await verify(client, "p"))["ok"] is True  # the chain alone cannot tell
    bad = await asyncio.to_thread(cli, server, "audit", "verify", "p", "--checkpoint", str(path))
    assert bad.returncode == 1 and "broken at seq 5" in bad.stdout and "checkpoint" in bad.stdout, bad.stdout


async def test_a_forged_or_foreign_checkpoint_is_refused(
    server: RunningServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A receipt whose hash or seq was edited, or signed by another key, proves nothing: exit 2."""
    await create(client, "p")
    await publish(client, "p", 3)
    receipt = json.loads((await asyncio.to_thread(cli, server, "audit", "checkpoint", "p")).stdout)
    key = json.loads((await asyncio.to_thread(cli, server, "audit", "key")).stdout)
    assert key["keyId"] == receipt["keyId"] and key["algorithm"] == "Ed25519"
    for forged in ({**receipt, "seq": 2}, {**receipt, "hash": "0" * 64}, {**receipt, "keyId": "0" * 16}):
        path = tmp_path / "forged.json"
        path.write_text(json.dumps(forged))
        result = await asyncio.to_thread(cli, server, "audit", "verify", "p", "--checkpoint", str(path))
        assert result.returncode == 2 and "checkpoint" in result.stderr, result.stderr


async def test_no_checkpoint_is_signed_for_a_broken_chain(server: RunningServer, client: httpx.AsyncClient) -> None:
    await create(client, "p")
    await publish(client, "p", 3)
    await tampered(server, "DELETE FROM events WHERE project_id = 'p' AND seq = 2")
    result = await asyncio.to_thread(cli, server, "audit", "checkpoint", "p")
    assert result.returncode == 1 and result.stdout == "" and "seq 2" in result.stderr


# --- existing logs -----------------------------------------------------------------------------------------


async def test_the_migration_chains_a_log_written_before_the_chain(pg_url: str) -> None:
    """A database at 0005 with events in two projects, upgraded: every event has the hash an outside
    tool computes from the wire form, and appends after the upgrade continue the chain."""
    async with scratch_database(pg_url) as url:
        await asyncio.to_thread(db.migrate, url, "0005")
        conn = await asyncpg.connect(db.asyncpg_dsn(url))
        try:
            await conn.execute("INSERT INTO projects (id, name, head) VALUES ('a', 'A', 1200), ('b', 'B', 2)")
            await conn.execute(
                """INSERT INTO events (project_id, seq, message_id, type, data)
                   SELECT 'a', n, 'm' || n, 'agent_run_progress',
                          jsonb_build_object('runId', 'r' || (n % 7), 'status', 'running', 'progress', n % 100 + 0.5)
                   FROM generate_series(1, 1200) AS n"""
            )
            await conn.execute(
                """INSERT INTO events (project_id, seq, message_id, type, data) VALUES
                   ('b', 1, 'x', 'agent_run_progress', '{"runId": "é", "status": "queued", "progress": 0}'),
                   ('b', 2, 'y', 'agent_run_progress', '{"runId": "é", "status": "running", "progress": 50.0}')"""
            )
        finally:
            await conn.close()
        await asyncio.to_thread(db.migrate, url)
        pool = await db.create_pool(url, size=2, timeout=10)
        try:
            async with pool.acquire() as conn:
                for pid, head in (("a", 1200), ("b", 2)):
                    rows = await conn.fetch(
                        "SELECT seq, message_id, type, data::text AS data, created_at, hash FROM events "
                        "WHERE project_id = $1 ORDER BY seq",
                        pid,
                    )
                    wire = [
                        {
                            "type": r["type"],
                            "projectId": pid,
                            "seq": r["seq"],
                            "messageId": r["message_id"],
                            "timestamp": format_timestamp(r["created_at"]),
                            "data": json.loads(r["data"]),
                        }
                        for r in rows
                    ]
                    assert [r["hash"].hex() for r in rows] == recompute(wire)
                    verdict = await audit.verify(conn, pid)
                    assert verdict.ok and verdict.head == head
                from service import eventlog

                await eventlog.append(conn, project_id="b", type="agent_run_progress", data=dict(RUN))
                verdict = await audit.verify(conn, "b")
                assert verdict.ok and verdict.head == 3
        finally:
            await pool.close()


async def test_verify_reads_a_snapshot_while_appends_go_on(server: RunningServer, client: httpx.AsyncClient) -> None:
    """Appends during a verify neither wait for it nor make it report a break."""
    await create(client, "p")
    batch = [{"type": "agent_run_progress", "data": {**RUN, "progress": i % 100}} for i in range(1000)]
    for _ in range(5):
        r = await client.post("/api/projects/p/events/batch", json={"events": batch})
        assert r.status_code == 201
    verifying = asyncio.create_task(client.get("/api/projects/p/audit/verify"))
    await publish(client, "p", 20)
    r = await asyncio.wait_for(verifying, timeout(30))
    body = r.json()
    assert body["ok"] is True and body["head"] >= 5000, body
