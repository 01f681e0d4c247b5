"""Retention (service/retention.py, service/archive.py, docs/protocol.md §7.4) as an operator meets it: a
policy set, events published, a prune with an archive; then the archive holds exactly the pruned events
with their hashes (recomputed here with the reference RFC 8785 library), the chain verifies across the
archive and the live log, reads below the watermark are `history_truncated`, and the state and the ack
ledger are as they were.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service import archive, db, partitions, retention
from service.config import Settings
from tests.conftest import RunningServer, make_settings, start_server, stop_server, timeout
from tests.helpers import cli, create, fill, generated, publish, recompute, wait_until


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Partitions of 5 seqs, so that the prunes of these short logs drop whole partitions."""
    return make_settings(database_url, tmp_path, partition_events=5)


async def publish_mixed(client: httpx.AsyncClient, pid: str, start: int, count: int) -> None:
    """`count` events of the three state types over a few subjects (tests.helpers.generated)."""
    for g in range(start, start + count):
        kind, data = generated(g)
        r = await client.post(f"/api/projects/{pid}/events", json={"type": kind, "data": data})
        assert r.status_code == 201, r.text


async def history(client: httpx.AsyncClient, pid: str, **params: Any) -> list[dict[str, Any]]:
    r = await client.get(f"/api/projects/{pid}/events", params={"limit": 1000, **params})
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


async def connect(server: RunningServer) -> asyncpg.Connection:
    return await asyncpg.connect(db.asyncpg_dsn(server.settings.database_url or ""))


async def set_policy(client: httpx.AsyncClient, pid: str, body: dict[str, Any]) -> None:
    r = await client.put(f"/api/projects/{pid}/retention", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == body


def archived(path: Path) -> list[dict[str, Any]]:
    with gzip.open(path, "rt", encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


async def test_the_cli_prunes_into_an_archive_that_continues_into_the_live_log(
    server: RunningServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """`project retention` and `prune --archive`: the archive holds exactly seqs 1..8 as history served them,
    hashes included and recomputable; the live log verifies from the watermark, and `audit verify --archive`
    verifies the whole chain."""
    await create(client, "p")
    await publish_mixed(client, "p", 1, 12)
    before = await history(client, "p")
    done = await asyncio.to_thread(cli, server, "project", "retention", "p", "--keep-events", "4")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"id": "p", "retention": {"keepEvents": 4}}

    root = tmp_path / "archive"
    done = await asyncio.to_thread(cli, server, "prune", "--archive", str(root), "--project", "p")
    assert done.returncode == 0, done.stderr
    file = root / "p" / "p.000000000001-000000000008.ndjson.gz"
    line = json.loads(done.stdout)
    assert (line["projectId"], line["first"], line["last"], line["archive"]) == ("p", 1, 8, str(file))
    assert sorted(os.listdir(root / "p")) == [file.name]  # no temporary file left behind

    events = archived(file)
    assert events == before[:8]
    assert [e["hash"] for e in events] == recompute(events)
    assert await history(client, "p") == before[8:]
    assert [e["hash"] for e in before[8:]] == recompute(before[8:], bytes.fromhex(events[-1]["hash"]))

    r = await client.get("/api/projects/p/audit/verify")
    assert r.status_code == 200 and r.json() == {"ok": True, "head": 12, "hash": before[-1]["hash"]}, r.text
    done = await asyncio.to_thread(cli, server, "audit", "verify", "p", "--archive", str(root))
    assert done.returncode == 0 and "intact through seq 12" in done.stdout, done.stdout + done.stderr

    # A second prune appends the next file; the archive stays one chain.
    await publish_mixed(client, "p", 13, 3)
    done = await asyncio.to_thread(cli, server, "prune", "--archive", str(root))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["archive"] == str(root / "p" / "p.000000000009-000000000011.ndjson.gz")
    done = await asyncio.to_thread(cli, server, "audit", "verify", "p", "--archive", str(root))
    assert done.returncode == 0 and "intact through seq 15" in done.stdout, done.stdout + done.stderr


async def test_verify_with_the_archive_names_an_altered_line_and_a_missing_file(
    server: RunningServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """An archived line changed, a file gone: `audit verify --archive` exits 1 naming the first bad seq."""
    await create(client, "p")
    await publish_mixed(client, "p", 1, 10)
    await set_policy(client, "p", {"keepEvents": 3})
    root = tmp_path / "archive"
    conn = await connect(server)
    try:
        pruned = await retention.prune(conn, "p", archive=root, now=datetime.now(UTC))
    finally:
        await conn.close()
    assert pruned is not None and (pruned.first, pruned.last) == (1, 7) and pruned.archive is not None

    lines = gzip.decompress(pruned.archive.read_bytes()).splitlines(keepends=True)
    event = json.loads(lines[4])
    assert event["seq"] == 5
    event["data"]["status"] = "tampered"
    altered = tmp_path / "altered"
    (altered / "p").mkdir(parents=True)
    body = b"".join([*lines[:4], json.dumps(event).encode() + b"\n", *lines[5:]])
    (altered / "p" / pruned.archive.name).write_bytes(gzip.compress(body))
    done = await asyncio.to_thread(cli, server, "audit", "verify", "p", "--archive", str(altered))
    assert done.returncode == 1 and "broken at seq 5" in done.stdout, done.stdout + done.stderr

    done = await asyncio.to_thread(cli, server, "audit", "verify", "p", "--archive", str(tmp_path / "none"))
    assert done.returncode == 1 and "broken at seq 1" in done.stdout, done.stdout + done.stderr

    done = await asyncio.to_thread(cli, server, "audit", "verify", "p", "--archive", str(root))
    assert done.returncode == 0, done.stdout + done.stderr


async def test_verify_after_a_prune_still_names_a_tampered_kept_event(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """The live log verifies from the watermark after a prune without an archive, and a kept event changed
    in the database is named; an event left below the watermark for the state is not part of the chain."""
    await create(client, "p")
    await publish(client, "p", 20)  # one agent run's progress
    await set_policy(client, "p", {"keepEvents": 5})
    conn = await connect(server)
    try:
        pruned = await retention.prune(conn, "p", archive=None, now=datetime.now(UTC))
        assert pruned is not None and (pruned.first, pruned.last, pruned.archive) == (1, 15, None)
        below = await conn.fetchval("SELECT count(*) FROM events WHERE project_id = 'p' AND seq < 16")
        assert (below, pruned.deleted) == (1, 14)  # the run's latest event up to the watermark stays
        r = await client.get("/api/projects/p/audit/verify")
        assert r.json()["ok"] is True and r.json()["head"] == 20, r.text
        await conn.execute("UPDATE events SET data = data || '{\"x\": 1}' WHERE project_id = 'p' AND seq = 18")
        r = await client.get("/api/projects/p/audit/verify")
        assert r.json()["ok"] is False and r.json()["firstBad"] == 18, r.text
    finally:
        await conn.close()


async def test_reads_below_the_watermark_are_truncated_and_the_state_and_acks_survive(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """After a prune: history below the watermark answers 410 history_truncated, and so does state?at below
    oldest - 1; /state and the state at oldest - 1 and later are exactly as before; the ack ledger still
    answers for a pruned seq."""
    await create(client, "p")
    await publish_mixed(client, "p", 1, 60)
    r = await client.post("/api/projects/p/ack", json={"clientId": "c1", "seq": 5})
    assert r.status_code == 200, r.text
    states = {}
    for params in ({"limit": 1000}, {"limit": 1000, "at": 50}, {"limit": 1000, "at": 57}):
        r = await client.get("/api/projects/p/state", params=params)
        assert r.status_code == 200, r.text
        states[params.get("at")] = r.json()

    await set_policy(client, "p", {"keepEvents": 10})
    conn = await connect(server)
    try:
        assert await retention.prune(conn, "p", archive=None, now=datetime.now(UTC)) is not None
    finally:
        await conn.close()

    for params in ({"limit": 1000}, {"limit": 1000, "at": 50}, {"limit": 1000, "at": 57}):
        r = await client.get("/api/projects/p/state", params=params)
        assert r.status_code == 200, r.text
        assert r.json() == states[params.get("at")], params
    r = await client.get("/api/projects/p/state", params={"at": 49})
    assert r.status_code == 410 and r.json()["error"] == "history_truncated", r.text
    assert (r.json()["oldest"], r.json()["stateSeq"]) == (51, 60)
    r = await client.get("/api/projects/p/events", params={"after": 10})
    assert r.status_code == 410 and r.json()["error"] == "history_truncated", r.text
    assert [e["seq"] for e in await history(client, "p")] == list(range(51, 61))
    assert [e["seq"] for e in await history(client, "p", order="desc")] == list(range(60, 50, -1))

    r = await client.get("/api/projects/p/acks", params={"seq": 3})
    assert r.status_code == 200, r.text
    assert [(a["clientId"], a["seq"]) for a in r.json()["acks"]] == [("c1", 5)]


async def test_keep_days_takes_the_first_recent_seq_and_never_moves_back(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """keep_days: the watermark becomes the smallest seq of an event at most D days old, even when an
    older event follows it (created_at out of seq order); a looser policy later moves nothing back."""
    await create(client, "p")
    await publish_mixed(client, "p", 1, 10)
    now = datetime.now(UTC)
    conn = await connect(server)
    try:
        await conn.execute(
            "UPDATE events SET created_at = $1 WHERE project_id = 'p' AND seq <= 7", now - timedelta(days=10)
        )
        await conn.execute(
            "UPDATE events SET created_at = $1 WHERE project_id = 'p' AND seq = 5", now - timedelta(days=1)
        )
        await set_policy(client, "p", {"keepDays": 7})
        pruned = await retention.prune(conn, "p", archive=None, now=now)
        assert pruned is not None and (pruned.first, pruned.last) == (1, 4)
        assert await conn.fetchval("SELECT oldest FROM projects WHERE id = 'p'") == 5

        await set_policy(client, "p", {"keepDays": 30})
        assert await retention.prune(conn, "p", archive=None, now=now) is None
        await set_policy(client, "p", {"forever": True})
        assert await retention.prune(conn, "p", archive=None, now=now + timedelta(days=365)) is None
        assert await conn.fetchval("SELECT oldest FROM projects WHERE id = 'p'") == 5

        # Every event older than the policy: everything goes, and the chain still joins at the head.
        await set_policy(client, "p", {"keepDays": 1})
        pruned = await retention.prune(conn, "p", archive=None, now=now + timedelta(days=30))
        assert pruned is not None and (pruned.first, pruned.last) == (5, 10)
        row = await conn.fetchrow("SELECT oldest, head, pruned_hash = last_hash AS joined FROM projects WHERE id = 'p'")
        assert (row["oldest"], row["head"], row["joined"]) == (11, 10, True)
    finally:
        await conn.close()


async def test_two_concurrent_prunes_of_one_project_prune_once(
    server: RunningServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Two prunes of one project at once (two instances): one prunes and archives, the other does nothing;
    while another session holds the project's prune lock, a prune does nothing."""
    await create(client, "p")
    await publish_mixed(client, "p", 1, 30)
    await set_policy(client, "p", {"keepEvents": 10})
    first, second, holder = await connect(server), await connect(server), await connect(server)
    try:
        key = "herald-prune:p"
        assert await holder.fetchval("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key)
        assert await retention.prune(first, "p", archive=tmp_path, now=datetime.now(UTC)) is None
        assert await holder.fetchval("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key)

        results = await asyncio.gather(
            retention.prune(first, "p", archive=tmp_path, now=datetime.now(UTC)),
            retention.prune(second, "p", archive=tmp_path, now=datetime.now(UTC)),
        )
        done = [r for r in results if r is not None]
        assert len(done) == 1 and (done[0].first, done[0].last) == (1, 20)
        assert [f.path.name for f in archive.files(tmp_path, "p")] == ["p.000000000001-000000000020.ndjson.gz"]
        assert sorted(os.listdir(tmp_path / "p")) == ["p.000000000001-000000000020.ndjson.gz"]
        assert (await archive.verify(first, "p", tmp_path)).ok
    finally:
        for conn in (first, second, holder):
            await conn.close()


async def test_the_retention_call_is_for_admins_and_checks_its_body(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """PUT /api/projects/{id}/retention: the policy back; 422 for anything but exactly one valid field; 403
    without admin; 404 for no such project."""
    await create(client, "p")
    for body in ({"keepDays": 3}, {"keepEvents": 1000}, {"forever": True}):
        await set_policy(client, "p", body)
    for body in (
        {},
        {"keepDays": 0},
        {"keepEvents": -1},
        {"forever": False},
        {"keepDays": 1, "keepEvents": 2},
        {"keepDays": "3"},
        {"keep": 3},
        [1],
    ):
        r = await client.put("/api/projects/p/retention", json=body)
        assert r.status_code == 422 and r.json()["error"] == "invalid_data", (body, r.text)
    reader = server.headers(server.token(scopes=("subscribe", "publish", "audit")))
    r = await client.put("/api/projects/p/retention", json={"keepDays": 3}, headers=reader)
    assert r.status_code == 403, r.text
    r = await client.put("/api/projects/nope/retention", json={"keepDays": 3})
    assert r.status_code == 404, r.text


async def test_the_service_prunes_on_its_schedule_into_its_data_dir(database_url: str, tmp_path: Path) -> None:
    """HERALD_PRUNE_INTERVAL_S: the running service prunes by itself, archiving under <data dir>/archive by
    default, so nothing leaves the log unarchived."""
    settings = make_settings(database_url, tmp_path, prune_interval_s=0.2)
    running, task = await start_server(settings)
    try:
        async with httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=10) as client:
            await create(client, "p")
            await publish_mixed(client, "p", 1, 6)
            await set_policy(client, "p", {"keepEvents": 2})
            file = tmp_path / "archive" / "p" / "p.000000000001-000000000004.ndjson.gz"
            await wait_until(file.exists, timeout(10), "the scheduled prune's archive")
            assert [e["seq"] for e in archived(file)] == [1, 2, 3, 4]
            # The archive is whole before the watermark moves (the prune's next step): wait for that too.
            deadline = asyncio.get_running_loop().time() + timeout(10)
            while (seqs := [e["seq"] for e in await history(client, "p")]) != [5, 6]:
                assert asyncio.get_running_loop().time() < deadline, f"the log still reads {seqs}"
                await asyncio.sleep(0.05)
    finally:
        await stop_server(running, task)


async def test_an_export_a_prune_overtakes_is_cut_short_not_holed(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """An export under way when a prune passes it: the transfer is aborted (the client sees it cut short),
    rather than ending as if whole with the pruned events missing."""
    await create(client, "p")
    conn = await connect(server)
    try:
        # Past its first partition, this project's log goes on in partitions of 50,000, not of 5.
        await partitions.extend(conn, "p", upto=100_005, size=50_000)
        await fill(conn, "p", 100_000, start=datetime.now(UTC) - timedelta(hours=2))
        await set_policy(client, "p", {"keepEvents": 10})
        with pytest.raises(httpx.RemoteProtocolError):
            async with client.stream("GET", "/api/projects/p/export") as r:
                assert r.status_code == 200
                chunks = r.aiter_raw()
                await anext(chunks)
                assert await retention.prune(conn, "p", archive=None, now=datetime.now(UTC)) is not None
                async for _ in chunks:
                    pass
    finally:
        await conn.close()


async def test_checkpoints_taken_before_a_prune_still_check_out(
    server: RunningServer, client: httpx.AsyncClient, tmp_path: Path
) -> None:
    """Receipts at seqs a prune removed: `audit verify --archive` checks them against the archive; without the
    archive, the one at oldest - 1 is checked against the hash the live chain starts from, and a rewritten
    `pruned_hash` is named there."""
    await create(client, "p")
    receipts = []
    for count in (5, 3):
        await publish_mixed(client, "p", len(receipts) * 5 + 1, count)
        done = await asyncio.to_thread(cli, server, "audit", "checkpoint", "p")
        assert done.returncode == 0, done.stderr
        receipts.append(tmp_path / f"receipt-{len(receipts)}.json")
        receipts[-1].write_text(done.stdout)
    await publish_mixed(client, "p", 20, 4)
    await set_policy(client, "p", {"keepEvents": 4})
    root = tmp_path / "archive"
    done = await asyncio.to_thread(cli, server, "prune", "--archive", str(root))
    assert done.returncode == 0 and json.loads(done.stdout)["last"] == 8, done.stdout + done.stderr

    checks = [arg for receipt in receipts for arg in ("--checkpoint", str(receipt))]
    for extra in ([], ["--archive", str(root)]):
        done = await asyncio.to_thread(cli, server, "audit", "verify", "p", *checks, *extra)
        assert done.returncode == 0 and "intact through seq 12" in done.stdout, done.stdout + done.stderr

    conn = await connect(server)
    try:
        await conn.execute("UPDATE projects SET pruned_hash = $1 WHERE id = 'p'", bytes(32))
    finally:
        await conn.close()
    done = await asyncio.to_thread(cli, server, "audit", "verify", "p", *checks)
    assert done.returncode == 1 and "broken at seq 8" in done.stdout, done.stdout + done.stderr
    done = await asyncio.to_thread(cli, server, "audit", "verify", "p", "--archive", str(root))
    assert done.returncode == 1 and "broken at seq 8" in done.stdout, done.stdout + done.stderr
