"""The auditor's reads over a real uvicorn (docs/protocol.md §7.3): the `audit` scope, history filters,
export, the ack ledger and the state at a seq."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil
import pytest

from service import auth, db, state
from service.eventlog import StoredEvent
from tests.conftest import SECRET, RunningServer, ServiceProcess, make_settings, start_server, stop_server, timeout
from tests.helpers import create, fill, open_client, publish
from tests.test_state import Stream, stored

MiB = 2**20


def assert_error(r: httpx.Response, status: int, code: str, field: str | None = None) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code, body
    if field is not None:
        assert body.get("field") == field, body


async def pages(client: httpx.AsyncClient, pid: str, **params: Any) -> list[dict[str, Any]]:
    """Every event history answers for `params`, page after page by `next`."""
    events: list[dict[str, Any]] = []
    bound: dict[str, Any] = {}
    while True:
        r = await client.get(f"/api/projects/{pid}/events", params={**params, **bound})
        assert r.status_code == 200, r.text
        body = r.json()
        events += body["events"]
        if body["next"] is None:
            return events
        bound = {"before" if params.get("order") == "desc" else "after": body["next"]}


# --- the scope -----------------------------------------------------------------------------------------------


async def test_an_audit_token_reads_and_never_writes_streams_or_acks(
    server: RunningServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """A token with `audit` alone, as `token --scopes audit` prints it: history, export, the ack ledger
    and the state (now and at a seq) answer 200; publishing (single and batch), acking over HTTP, SSE
    streams, and subscribe, ack and publish over the WebSocket are forbidden. A subscriber reads history
    and the state, but not the audit's export, ledger or past states."""
    await create(client, "p")
    await publish(client, "p", 3)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "HERALD_PREVIOUS_SECRETS")}
    env.update(HERALD_SECRET=SECRET, HERALD_DATA_DIR=str(tmp_path))
    printed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", "token", "--user", "auditor", "--projects", "p", "--scopes", "audit"],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert printed.returncode == 0, printed.stderr
    token = printed.stdout.strip()
    assert auth.verify(SECRET, token).scopes == {"audit"}
    audit = server.headers(token)

    for path in ("events", "export", "acks?seq=1", "state", "state?at=2"):
        r = await client.get(f"/api/projects/p/{path}", headers=audit)
        assert r.status_code == 200, (path, r.text)
    one = {"type": "agent_run_progress", "data": {"runId": "r", "status": "running", "progress": 1}}
    for path, body in (("events", one), ("events/batch", {"events": [one]}), ("ack", {"clientId": "c", "seq": 1})):
        assert_error(await client.post(f"/api/projects/p/{path}", json=body, headers=audit), 403, "forbidden")
    for url in ("/api/projects/p/stream", "/api/stream?projects=p"):
        assert_error(await client.get(url, headers=audit), 403, "forbidden")

    ws = await open_client(server, token=token, client_id="auditor-tab")
    for message in (
        {"type": "subscribe", "projectId": "p"},
        {"type": "ack", "projectId": "p", "seq": 1},
        {**one, "projectId": "p"},
    ):
        await ws.send(**message)
        error = await ws.expect("error")
        assert (error["code"], error["ref"]) == ("forbidden", "p"), error
    await ws.ws.close()

    subscriber = server.headers(server.token(projects=["p"], scopes=("subscribe",)))
    for path in ("events", "state"):
        assert (await client.get(f"/api/projects/p/{path}", headers=subscriber)).status_code == 200
    for path in ("export", "acks?seq=1", "state?at=2"):
        assert_error(await client.get(f"/api/projects/p/{path}", headers=subscriber), 403, "forbidden")
    elsewhere = server.headers(server.token(projects=["q"], scopes=("audit",)))
    assert_error(await client.get("/api/projects/p/export", headers=elsewhere), 403, "forbidden")


# --- history filters -------------------------------------------------------------------------------------------


def timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


async def test_history_filters_by_time_and_subject_and_pages_by_next(client: httpx.AsyncClient) -> None:
    """since (inclusive) and until (exclusive) compare with the events' `timestamp`, to the millisecond,
    in any ISO 8601 spelling; subject matches runId, number, prNumber and headSha; the filters combine
    with type, after/before and both orders, and paging by `next` yields exactly the filtered events."""
    await create(client, "p")
    published = []
    for data, kind in [
        ({"runId": "r1", "status": "running", "progress": 1}, "agent_run_progress"),
        ({"runId": "7", "status": "running", "progress": 2}, "agent_run_progress"),
        (
            {"action": "opened", "number": 7, "title": "t", "url": "u", "repo": "octo/demo", "headSha": "abc"},
            "pr_notification",
        ),
        ({"name": "ci", "status": "queued", "prNumber": 7, "headSha": "def"}, "validation_update"),
        ({"name": "ci", "status": "queued", "headSha": "abc"}, "validation_update"),
        ({"runId": "r1", "status": "succeeded", "progress": 100}, "agent_run_progress"),
    ]:
        for _ in range(2):
            r = await client.post("/api/projects/p/events", json={"type": kind, "data": data})
            assert r.status_code == 201, r.text
            published.append(r.json())
            await asyncio.sleep(0.003)  # distinct milliseconds

    def seqs(events: list[dict[str, Any]]) -> list[int]:
        return [e["seq"] for e in events]

    third = datetime.fromisoformat(published[2]["timestamp"])
    ninth = datetime.fromisoformat(published[8]["timestamp"])
    window = [e["seq"] for e in published if third <= datetime.fromisoformat(e["timestamp"]) < ninth]
    assert window == list(range(3, 9))
    for since, until in (
        (published[2]["timestamp"], published[8]["timestamp"]),
        (third.astimezone(timezone(timedelta(hours=2))).isoformat(), ninth.isoformat()),  # another offset
        (timestamp(third).removesuffix("Z"), timestamp(ninth).removesuffix("Z")),  # no offset: UTC
        # a bound inside a millisecond counts as that millisecond's end: a timestamp is cut to the ms
        (timestamp(third - timedelta(milliseconds=1))[:-1] + "0001Z", timestamp(ninth)[:-1] + "0001Z"),
    ):
        got = await pages(client, "p", since=since, until=until, limit=2)
        assert seqs(got) == window, (since, until)

    assert seqs(await pages(client, "p", subject="r1", limit=1)) == [1, 2, 11, 12]
    assert seqs(await pages(client, "p", subject="7")) == [3, 4, 5, 6, 7, 8]  # runId "7", PR 7, prNumber 7
    assert seqs(await pages(client, "p", subject="7", type="validation_update")) == [7, 8]
    assert seqs(await pages(client, "p", subject="abc", order="desc", limit=3)) == [10, 9, 6, 5]
    assert seqs(await pages(client, "p", subject="abc", since=published[6]["timestamp"])) == [9, 10]
    assert seqs(await pages(client, "p", subject="abc", after=5, before=10)) == [6, 9]
    assert seqs(await pages(client, "p", subject="nobody")) == []

    for params, field in (
        ({"since": "yesterday"}, "since"),
        ({"until": "2026-13-01T00:00:00Z"}, "until"),
        ({"since": "2026-01-01T00:00:00 02:00"}, "since"),  # a `+` sent unencoded arrives as a space
        ({"subject": ""}, "subject"),
        ({"subject": "x" * 201}, "subject"),
        ({"subject": "a\x00b"}, "subject"),
    ):
        assert_error(await client.get("/api/projects/p/events", params=params), 422, "invalid_data", field)
    r = await client.get("/api/projects/p/events", params={"subject": "x" * 200})
    assert r.status_code == 200 and r.json() == {"events": [], "next": None}


# --- export ----------------------------------------------------------------------------------------------------


async def test_export_is_the_history_of_the_same_filters_in_ndjson_and_csv(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """Both formats hold exactly the events history pages through for the same filters, in seq order:
    ndjson one event's JSON per line, CSV a header and one row per event (data as its JSON, hash in
    hex), with their media types and an attachment filename. An unknown format is 422."""
    await create(client, "p")
    stream = Stream(11, runs=4, prs=3)
    batch = []
    for _ in range(2600):
        kind, data, message_id = stream.event()
        batch.append({"type": kind, "data": data, "messageId": message_id})
    for first in range(0, len(batch), 1000):
        r = await client.post("/api/projects/p/events/batch", json={"events": batch[first : first + 1000]})
        assert r.status_code in (200, 201), r.text
    head = (await client.get("/api/projects")).json()["projects"][0]["head"]
    audit = server.headers(server.token(projects=["p"], scopes=("audit",)))
    middle = (await client.get("/api/projects/p/events", params={"after": head // 2, "limit": 1})).json()
    for filters in (
        {},
        {"type": "pr_notification"},
        {"subject": "run-1", "after": 100},
        {"subject": "abc", "before": head - 5},
        {"since": middle["events"][0]["timestamp"]},
    ):
        expected = await pages(client, "p", **filters, limit=1000)
        r = await client.get("/api/projects/p/export", params=filters, headers=audit)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/x-ndjson"
        assert r.headers["content-disposition"] == 'attachment; filename="p-events.ndjson"'
        assert r.text.endswith("\n") or not expected
        assert [json.loads(line) for line in r.text.splitlines()] == expected, filters

        r = await client.get("/api/projects/p/export", params={**filters, "format": "csv"}, headers=audit)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "text/csv; charset=utf-8"
        assert r.headers["content-disposition"] == 'attachment; filename="p-events.csv"'
        rows = list(csv.reader(io.StringIO(r.text, newline="")))
        assert rows[0] == ["seq", "timestamp", "type", "messageId", "hash", "data"]
        assert [json.loads(row[5]) for row in rows[1:]] == [e["data"] for e in expected], filters
        assert [row[:5] for row in rows[1:]] == [
            [str(e["seq"]), e["timestamp"], e["type"], e["messageId"], e["hash"]] for e in expected
        ], filters

    assert_error(await client.get("/api/projects/p/export", params={"format": "xml"}), 422, "invalid_data", "format")
    assert_error(await client.get("/api/projects/nope/export"), 404, "not_found")


async def test_exporting_100000_events_to_a_slow_reader_keeps_the_server_memory_flat(
    database_url: str, tmp_path: Path
) -> None:
    """A `serve` process exports a 100,000-event log to a client reading at 8 MB/s: every event arrives,
    in order, and the server's RSS grows by less than 30 MiB, since it reads a page only when the
    previous one has been sent (unbuffered, the log would be ~25 MB of bytes and far more as rows)."""
    conn = await asyncpg.connect(db.asyncpg_dsn(database_url))
    try:
        await conn.execute("INSERT INTO projects (id, name) VALUES ('big', 'big'), ('warm', 'warm')")
        await fill(conn, "big", 100_000, start=datetime(2026, 12, 1, tzinfo=UTC), step_s=0.01)
        await fill(conn, "warm", 10, start=datetime(2026, 12, 1, tzinfo=UTC))
    finally:
        await conn.close()
    proc = ServiceProcess(tmp_path / "svc", database_url)
    await asyncio.to_thread(proc.start)
    try:
        assert proc.proc is not None
        process = psutil.Process(proc.proc.pid)
        headers = {"Authorization": f"Bearer {auth.issue(SECRET, user='auditor', projects='*', scopes=['audit'])}"}
        async with httpx.AsyncClient(base_url=proc.base_url, headers=headers, timeout=timeout(60)) as http:
            for fmt in ("ndjson", "csv"):  # the first requests' one-time costs (imports, caches), before measuring
                assert (await http.get("/api/projects/warm/export", params={"format": fmt})).status_code == 200
            await asyncio.sleep(0.5)
            before = peak = process.memory_info().rss
            expected, received, buffered = 1, 0, b""
            started = time.monotonic()
            async with http.stream("GET", "/api/projects/big/export") as r:
                assert r.status_code == 200
                async for chunk in r.aiter_raw():
                    buffered += chunk
                    *lines, buffered = buffered.split(b"\n")
                    for line in lines:
                        assert orjson.loads(line)["seq"] == expected
                        expected += 1
                    received += len(chunk)
                    peak = max(peak, process.memory_info().rss)
                    # 8 MB/s: a slow downloader, far slower than the server reads the log
                    await asyncio.sleep(max(0.0, started + received / 8e6 - time.monotonic()))
            assert buffered == b"" and expected == 100_001
        grown = peak - before
        print(f"\nexport of 100,000 events ({received / 1e6:.1f} MB in {time.monotonic() - started:.1f} s): "
              f"server RSS {before / MiB:.1f} MiB, peak +{grown / MiB:.1f} MiB")  # fmt: skip
        assert grown < 30 * MiB, f"RSS grew {grown / MiB:.1f} MiB"
    finally:
        await asyncio.to_thread(proc.stop)


# --- the ack ledger ------------------------------------------------------------------------------------------


async def test_the_ack_ledger_answers_for_a_client_that_moved_between_instances(
    server: RunningServer, client: httpx.AsyncClient, database_url: str, tmp_path: Path
) -> None:
    """A client acks 3 on one instance, resumes on another (after its cursor) and acks 7: the ledger says
    it reached 2 and 3 with the first advance, 4 to 7 with the second, later; 8 by nobody yet. A seq
    beyond the head, negative, missing, or too long is 422."""
    await create(client, "p")
    await publish(client, "p", 8)
    other, task = await start_server(make_settings(database_url, tmp_path / "b"))
    try:
        token = server.token(user="alice", projects=["p"], scopes=("subscribe",))

        async def cursor() -> int | None:
            rows = (await client.get("/api/projects/p/cursors")).json()["cursors"]
            return next((c["seq"] for c in rows if c["clientId"] == "tab-1"), None)

        first = await open_client(server, token=token, client_id="tab-1")
        await first.subscribe("p", after=0)
        await first.events("p", 8)
        await first.send(type="ack", projectId="p", seq=3)
        await asyncio.sleep(0.1)
        await first.ws.close()
        await wait_for_cursor(cursor, 3)

        second = await open_client(other, token=token, client_id="tab-1")
        assert (await second.subscribe("p"))["after"] == 3  # resumed after its cursor, on the other instance
        assert [e["seq"] for e in await second.events("p", 5)] == [4, 5, 6, 7, 8]
        await second.send(type="ack", projectId="p", seq=7)
        await asyncio.sleep(0.1)
        await second.ws.close()
        await wait_for_cursor(cursor, 7)
    finally:
        await stop_server(other, task)

    audit = server.headers(server.token(user="auditor", projects=["p"], scopes=("audit",)))

    async def acks(seq: Any) -> httpx.Response:
        return await client.get("/api/projects/p/acks", params={"seq": seq}, headers=audit)

    early = (await acks(2)).json()["acks"]
    assert early == (await acks(3)).json()["acks"]
    assert [(a["user"], a["clientId"], a["seq"]) for a in early] == [("alice", "tab-1", 3)]
    late = (await acks(4)).json()["acks"]
    assert late == (await acks(7)).json()["acks"]
    assert [(a["user"], a["clientId"], a["seq"]) for a in late] == [("alice", "tab-1", 7)]
    assert early[0]["ackedAt"] < late[0]["ackedAt"]  # the same ISO 8601 form: text order is time order
    assert (await acks(8)).json() == {"acks": []}
    assert (await acks(0)).json()["acks"] == early
    for bad in (9, -1, "1" * 19, "x"):
        assert_error(await acks(bad), 422, "invalid_data", "seq")
    assert_error(await client.get("/api/projects/p/acks", headers=audit), 422, "invalid_data", "seq")


async def wait_for_cursor(cursor: Any, seq: int) -> None:
    """Until the durable cursor is at `seq` (a closing connection flushes its acks)."""
    deadline = time.monotonic() + timeout(10)
    while await cursor() != seq:
        assert time.monotonic() < deadline, f"the cursor did not reach {seq}"
        await asyncio.sleep(0.05)


# --- the state at a seq ----------------------------------------------------------------------------------------


async def test_the_state_at_a_seq_is_the_fold_of_the_events_up_to_it(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`/state?at=N` answers the fold of events 1..N with seq N (stretches of 25 events here, so the
    answers cross several), for several N and limits, the same again after more events were appended;
    N beyond the head is 422; N equal to the head is the current state."""
    monkeypatch.setattr(state, "STRETCH", 25)
    await create(client, "p")
    stream = Stream(21, runs=9, prs=4)

    async def append(count: int) -> list[StoredEvent]:
        batch = []
        for _ in range(count):
            kind, data, message_id = stream.event()
            batch.append({"type": kind, "data": data, "messageId": message_id})
        r = await client.post("/api/projects/p/events/batch", json={"events": batch})
        assert r.status_code in (200, 201), r.text
        return [stored(e) for e in await pages(client, "p", limit=1000)]

    async def check(log: list[StoredEvent], ats: list[int]) -> None:
        for at in ats:
            for limit in (1, 4, 50):
                r = await client.get("/api/projects/p/state", params={"at": at, "limit": limit})
                assert r.status_code == 200, r.text
                expected = state.fold("p", [e for e in log if e.seq <= at], limit=limit)
                assert r.json() == orjson.loads(expected.encode()), (at, limit)
                assert r.json()["seq"] == at

    log = await append(180)
    head = log[-1].seq
    await check(log, [0, 1, 24, 25, 26, 99, head - 1, head])
    log = await append(120)
    await check(log, [1, 26, head, head + 1, log[-1].seq])
    now = (await client.get("/api/projects/p/state", params={"limit": 4})).json()
    assert (await client.get("/api/projects/p/state", params={"at": log[-1].seq, "limit": 4})).json() == now
    assert_error(await client.get("/api/projects/p/state", params={"at": log[-1].seq + 1}), 422, "invalid_data", "at")
    assert_error(await client.get("/api/projects/p/state", params={"at": -1}), 422, "invalid_data", "at")
    assert_error(await client.get("/api/projects/nope/state", params={"at": 0}), 404, "not_found")
