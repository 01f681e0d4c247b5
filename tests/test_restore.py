"""Restoring an archive (service/archive.py `restore`, `python -m service archive restore`) as an operator
does it: a project pruned into an archive, the archive re-imported into a fresh, empty database; the
restored log serves exactly the events the original served before the prune (seq, messageId, type, data,
timestamp and hash), folds into the same state, and `audit verify` finds it intact. An archive that was
tampered with, or a project whose events overlap it, is refused with nothing written.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from service import db
from tests.conftest import SECRET, RunningServer, make_settings, scratch_database, start_server, stop_server, timeout
from tests.helpers import ROOT, cli, create, generated


def cli_on(database_url: str, data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGS` against `database_url` (tests.helpers.cli for a database no server runs on)."""
    env = {**os.environ, "DATABASE_URL": database_url, "HERALD_SECRET": SECRET, "HERALD_DATA_DIR": str(data_dir)}
    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


async def publish_mixed(client: httpx.AsyncClient, pid: str, count: int) -> None:
    """`count` events of the three state types over a few subjects (tests.helpers.generated), the runs'
    progress fractional."""
    for g in range(1, count + 1):
        kind, data = generated(g)
        if kind == "agent_run_progress":
            data["progress"] = g + 0.5
        r = await client.post(f"/api/projects/{pid}/events", json={"type": kind, "data": data})
        assert r.status_code == 201, r.text


async def history(client: httpx.AsyncClient, pid: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/projects/{pid}/events", params={"limit": 1000, "after": 0})
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


async def pruned_into_archive(server: RunningServer, client: httpx.AsyncClient, root: Path) -> dict[str, Any]:
    """Project p with 30 events, pruned to its last 6 into `root` by the CLI: what the server served before
    the prune (its history, and its state as of seq 24, the last archived one, and as of seq 10)."""
    await create(client, "p")
    await publish_mixed(client, "p", 30)
    before = await history(client, "p")
    r = await client.get("/api/projects/p/state", params={"at": 24})
    assert r.status_code == 200, r.text
    earlier = await client.get("/api/projects/p/state", params={"at": 10})
    assert earlier.status_code == 200, earlier.text
    done = await asyncio.to_thread(cli, server, "project", "retention", "p", "--keep-events", "6")
    assert done.returncode == 0, done.stderr
    done = await asyncio.to_thread(cli, server, "prune", "--archive", str(root), "--project", "p")
    assert done.returncode == 0, done.stderr
    assert (json.loads(done.stdout)["first"], json.loads(done.stdout)["last"]) == (1, 24)
    return {"history": before, "state": r.json(), "state_at_10": earlier.json()}


async def test_a_restored_archive_serves_the_pruned_events_exactly_and_verifies(
    server: RunningServer, client: httpx.AsyncClient, pg_url: str, tmp_path: Path
) -> None:
    """Restore into a fresh, unmigrated database: the command migrates it and creates the project; the
    archive's lines are what history served before the prune, the restored service serves them again byte
    for byte with the same state, `audit verify` is intact, and the log goes on from the archive's head."""
    root = tmp_path / "archive"
    original = await pruned_into_archive(server, client, root)
    with gzip.open(root / "p" / "p.000000000001-000000000024.ndjson.gz", "rt", encoding="utf-8") as lines:
        archived = [json.loads(line) for line in lines]
    assert archived == original["history"][:24]

    async with scratch_database(pg_url) as fresh:
        data_dir = tmp_path / "restored"
        done = await asyncio.to_thread(cli_on, fresh, data_dir, "archive", "restore", str(root), "--project", "p")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"projectId": "p", "first": 1, "last": 24, "created": True}

        done = await asyncio.to_thread(cli_on, fresh, data_dir, "audit", "verify", "p")
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"intact through seq 24 (hash {archived[-1]['hash']})" in done.stdout

        running, task = await start_server(make_settings(fresh, data_dir))
        try:
            async with httpx.AsyncClient(
                base_url=running.base_url, headers=running.headers(), timeout=timeout(10)
            ) as restored:
                assert await history(restored, "p") == archived
                r = await restored.get("/api/projects/p/state")
                assert r.status_code == 200 and r.json() == original["state"], r.text
                r = await restored.get("/api/projects/p/state", params={"at": 10})
                assert r.status_code == 200 and r.json() == original["state_at_10"], r.text
                r = await restored.get("/api/projects/p/audit/verify")
                assert r.json() == {"ok": True, "head": 24, "hash": archived[-1]["hash"]}, r.text
                # The chain goes on from the restored head: a new event is seq 25 and still verifies.
                r = await restored.post("/api/projects/p/events", json={"type": "agent_run_progress", "data": {
                    "runId": "after", "status": "running", "progress": 1}})  # fmt: skip
                assert r.status_code == 201 and r.json()["seq"] == 25, r.text
        finally:
            await stop_server(running, task)
        done = await asyncio.to_thread(cli_on, fresh, data_dir, "audit", "verify", "p")
        assert done.returncode == 0 and "intact through seq 25" in done.stdout, done.stdout + done.stderr


async def test_a_tampered_archive_or_an_overlapping_project_is_refused_with_nothing_written(
    server: RunningServer, client: httpx.AsyncClient, pg_url: str, tmp_path: Path
) -> None:
    """One archived line altered: restore exits 1 naming its seq, and the fresh database holds no project p
    (the project it created is rolled back with the events before that line). Restored once, a second
    restore of the same archive overlaps the project's events: refused, the log unchanged."""
    root = tmp_path / "archive"
    await pruned_into_archive(server, client, root)
    file = root / "p" / "p.000000000001-000000000024.ndjson.gz"
    lines = gzip.decompress(file.read_bytes()).splitlines(keepends=True)
    event = json.loads(lines[9])
    assert event["seq"] == 10
    event["data"]["status"] = "tampered"
    tampered = tmp_path / "tampered"
    (tampered / "p").mkdir(parents=True)
    (tampered / "p" / file.name).write_bytes(
        gzip.compress(b"".join([*lines[:9], json.dumps(event).encode() + b"\n", *lines[10:]]))
    )

    async with scratch_database(pg_url) as fresh:
        data_dir = tmp_path / "restored"
        done = await asyncio.to_thread(cli_on, fresh, data_dir, "archive", "restore", str(tampered), "--project", "p")
        assert done.returncode == 1, done.stdout + done.stderr
        assert "seq 10" in done.stderr and "does not continue the chain" in done.stderr, done.stderr
        assert done.stdout == ""
        conn = await asyncpg.connect(db.asyncpg_dsn(fresh))
        try:
            assert await conn.fetchval("SELECT count(*) FROM projects") == 0
            assert await conn.fetchval("SELECT count(*) FROM events") == 0

            done = await asyncio.to_thread(cli_on, fresh, data_dir, "archive", "restore", str(root), "--project", "p")
            assert done.returncode == 0, done.stderr
            done = await asyncio.to_thread(cli_on, fresh, data_dir, "archive", "restore", str(root), "--project", "p")
            assert done.returncode == 1 and "overlap" in done.stderr, done.stdout + done.stderr
            assert await conn.fetchval("SELECT head FROM projects WHERE id = 'p'") == 24
            assert await conn.fetchval("SELECT count(*) FROM events") == 24
        finally:
            await conn.close()


async def test_restore_refuses_an_archive_that_does_not_begin_where_the_project_ends(
    server: RunningServer, client: httpx.AsyncClient, pg_url: str, template_db: str, tmp_path: Path
) -> None:
    """Into a project with fewer events than the archive skips (a gap): refused, nothing written; so are no
    archive at all for the project, another project's archive, and an archive with a line missing or not
    JSON (no project created)."""
    root = tmp_path / "archive"
    await pruned_into_archive(server, client, root)
    later = tmp_path / "later"
    (later / "q").mkdir(parents=True)
    lines = gzip.decompress((root / "p" / "p.000000000001-000000000024.ndjson.gz").read_bytes()).splitlines()
    # The archive of another project, renamed, begins at seq 5: where the fresh project q has nothing before.
    (later / "q" / "q.000000000005-000000000024.ndjson.gz").write_bytes(gzip.compress(b"\n".join(lines[4:])))
    await create(client, "q")
    done = await asyncio.to_thread(cli, server, "archive", "restore", str(later), "--project", "q")
    assert done.returncode == 1 and "seqs 1 to 4 would be missing" in done.stderr, done.stderr
    done = await asyncio.to_thread(cli, server, "archive", "restore", str(tmp_path / "none"), "--project", "q")
    assert done.returncode == 1 and "no archive of project 'q'" in done.stderr, done.stderr
    # Another project's archive under this one's name: refused at its first line.
    (tmp_path / "renamed" / "r").mkdir(parents=True)
    (tmp_path / "renamed" / "r" / "r.000000000001-000000000024.ndjson.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    done = await asyncio.to_thread(cli, server, "archive", "restore", str(tmp_path / "renamed"), "--project", "r")
    assert done.returncode == 1 and "seq 1 in r.000000000001-000000000024.ndjson.gz is an event of 'p'" in done.stderr
    # A line missing from the middle, and a line that is not JSON: refused, naming the seq or the file.
    holed, garbled = tmp_path / "holed", tmp_path / "garbled"
    for root_of, body in ((holed, [*lines[:6], *lines[7:]]), (garbled, [*lines[:6], b"{not json", *lines[7:]])):
        (root_of / "p").mkdir(parents=True)
        (root_of / "p" / "p.000000000001-000000000024.ndjson.gz").write_bytes(gzip.compress(b"\n".join(body)))
    async with scratch_database(pg_url, template_db) as fresh:
        done = await asyncio.to_thread(cli_on, fresh, tmp_path, "archive", "restore", str(holed), "--project", "p")
        assert done.returncode == 1 and "seq 7 of 'p' is missing" in done.stderr, done.stderr
        done = await asyncio.to_thread(cli_on, fresh, tmp_path, "archive", "restore", str(garbled), "--project", "p")
        assert done.returncode == 1 and "a line of p.000000000001-000000000024" in done.stderr, done.stderr
        conn = await asyncpg.connect(db.asyncpg_dsn(fresh))
        try:
            assert await conn.fetchval("SELECT count(*) FROM projects") == 0
        finally:
            await conn.close()
    r = await client.get("/api/projects")
    assert {p["id"]: p["head"] for p in r.json()["projects"]} == {"p": 30, "q": 0}
