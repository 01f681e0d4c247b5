"""The state snapshot at a million events: `GET /api/projects/{id}/state` latency, and what keeping
the state costs an append.

    .venv/bin/python bench/snapshot.py [--events 1000000] [--requests 300] [--database-url URL]

Without --database-url (or DATABASE_URL) it runs on an embedded PostgreSQL in a temporary directory.
Steps, each timed:

1. A fresh database at revision 0001 (no state table); one project whose log is bulk-inserted with
   generate_series: 60% agent runs over 20,000 runIds, 15% pull-request events over 5,000 PRs, 25%
   validations over 10 checks x 3,000 head SHAs (about 55,000 subjects in all).
2. Appends at 0001 with the statement as it was before the state (the baseline).
3. The upgrade to head: migration 0002 folds the million events into `project_state`.
4. Appends at head, alternating the old statement and `log.append` (which also keeps the state).
5. A real uvicorn serving the app; sequential GETs of the state with limit 50 and 1000; p50/p99.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import httpx
import orjson
import uvicorn

from service import auth, db, eventlog, state
from service.app import create_app, server_config
from service.config import load_settings

SECRET = "bench-secret-Zq4Wm8Rt2Yp6Ks1Lx9Vb3Nc7Hd5Fj0Ga"
PROJECT = "big"

_BULK = """
INSERT INTO events (project_id, seq, message_id, type, data, created_at)
SELECT $1, g, 'bulk-' || g, kind.type,
    CASE kind.type
    WHEN 'agent_run_progress' THEN jsonb_build_object(
        'runId', 'run-' || mod(hashint4(g)::bigint + 2147483648, 20000),
        'status', (ARRAY['queued', 'running', 'succeeded'])[g % 3 + 1],
        'progress', g % 101, 'step', 'step ' || g % 7)
    WHEN 'pr_notification' THEN jsonb_build_object(
        'action', 'synchronize', 'number', mod(hashint4(-g)::bigint + 2147483648, 5000) + 1,
        'title', 'A pull request ' || g,
        'url', 'https://github.com/octo/demo/pull/' || g % 5000, 'repo', 'octo/demo', 'headSha', md5(g::text))
    ELSE jsonb_build_object(
        'name', 'check ' || mod(hashint4(g + 1)::bigint + 2147483648, 10), 'status', 'completed',
        'conclusion', 'success', 'headSha', md5(mod(hashint4(g + 2)::bigint + 2147483648, 3000)::text),
        'url', 'https://ci.example/' || g)
    END,
    now() - make_interval(secs => $2 - g)
FROM generate_series(1, $2) AS g
CROSS JOIN LATERAL (
    SELECT CASE WHEN g % 20 < 12 THEN 'agent_run_progress' WHEN g % 20 < 15 THEN 'pr_notification'
                ELSE 'validation_update' END AS type
) AS kind
"""

# The append statement before the project state (revision 0001), for the baseline. At head the events
# table also needs a hash (the audit chain, revision 0006): the baseline there writes a placeholder one,
# so that it still measures what keeping the state costs, not the chain (bench/audit.py measures that).
_APPEND_BEFORE = f"""
WITH next AS (
    UPDATE projects SET head = head + 1 WHERE id = $1 RETURNING head
)
INSERT INTO events (project_id, seq, message_id, type, data)
SELECT $1, next.head, $2, $3, $4::jsonb FROM next
RETURNING seq, created_at, data::text AS data, pg_notify('{eventlog.NOTIFY_CHANNEL}', $1 || ':' || seq)
"""
_APPEND_BEFORE_AT_HEAD = _APPEND_BEFORE.replace(
    "INSERT INTO events (project_id, seq, message_id, type, data)\nSELECT $1, next.head, $2, $3, $4::jsonb",
    "INSERT INTO events (project_id, seq, message_id, type, data, hash)\n"
    "SELECT $1, next.head, $2, $3, $4::jsonb, sha256(convert_to($2, 'UTF8'))",
)
assert _APPEND_BEFORE_AT_HEAD != _APPEND_BEFORE


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    p50 = ordered[len(ordered) // 2]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, mean {statistics.mean(ordered) * 1000:.2f} ms"


def random_event(rnd: random.Random) -> tuple[str, dict[str, object]]:
    roll = rnd.random()
    if roll < 0.6:
        run = f"run-{rnd.randrange(20000)}"
        return "agent_run_progress", {"runId": run, "status": "running", "progress": rnd.randrange(101)}
    if roll < 0.75:
        number = rnd.randrange(1, 5001)
        return "pr_notification", {
            "action": "opened",
            "number": number,
            "title": "t",
            "url": "u",
            "repo": "octo/demo",
        }
    return "validation_update", {"name": f"check {rnd.randrange(10)}", "status": "queued", "headSha": "abc"}


async def time_appends(
    conn: asyncpg.Connection, count: int, append: Callable[[str, dict[str, object]], Awaitable[object]]
) -> list[float]:
    rnd = random.Random(1)
    samples = []
    for _ in range(count):
        kind, data = random_event(rnd)
        started = time.perf_counter()
        await append(kind, data)
        samples.append(time.perf_counter() - started)
    return samples


async def run(admin_url: str, events: int, requests: int, appends: int) -> None:
    name = f"herald_bench_{os.getpid()}"
    admin = await asyncpg.connect(db.asyncpg_dsn(admin_url))
    await admin.execute(f'CREATE DATABASE "{name}"')
    url = db.with_database(admin_url, name)
    try:
        await asyncio.to_thread(db.migrate, url, "0001")
        conn = await asyncpg.connect(db.asyncpg_dsn(url))
        try:
            await bench(conn, url, events, requests, appends)
        finally:
            await conn.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def bench(conn: asyncpg.Connection, url: str, events: int, requests: int, appends: int) -> None:
    # At revision 0001: the columns of that revision only (eventlog.create_project writes later ones).
    await conn.execute("INSERT INTO projects (id, name, repo) VALUES ($1, 'A big project', 'octo/demo')", PROJECT)
    started = time.perf_counter()
    await conn.execute(_BULK, PROJECT, events)
    await conn.execute("UPDATE projects SET head = $2 WHERE id = $1", PROJECT, events)
    await conn.execute("VACUUM ANALYZE events")
    print(f"bulk insert of {events:,} events: {time.perf_counter() - started:.1f} s")

    statement = _APPEND_BEFORE

    async def append_before(kind: str, data: dict[str, object]) -> object:
        payload = orjson.dumps(data).decode()
        return await conn.fetchrow(statement, PROJECT, os.urandom(8).hex(), kind, payload)

    async def append_now(kind: str, data: dict[str, object]) -> object:
        return await eventlog.append(conn, project_id=PROJECT, type=kind, data=data)

    await time_appends(conn, appends // 4, append_before)  # warm-up
    before = await time_appends(conn, appends, append_before)
    print(f"append at 0001 (no state), {appends} sequential: {percentiles(before)}")

    started = time.perf_counter()
    await asyncio.to_thread(db.migrate, url)
    print(f"migrations to head (0002 folds the log into project_state): {time.perf_counter() - started:.1f} s")
    statement = _APPEND_BEFORE_AT_HEAD
    await conn.execute("VACUUM ANALYZE project_state")
    subjects = await conn.fetchval("SELECT count(*) FROM project_state WHERE project_id = $1", PROJECT)
    print(f"subjects in the state: {subjects:,}")

    # At head, the two statements in alternating rounds, so that a noisy neighbour hits both alike.
    await time_appends(conn, appends // 4, append_now)
    rounds: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(4):
        rounds["without"] += await time_appends(conn, appends // 4, append_before)
        rounds["with"] += await time_appends(conn, appends // 4, append_now)
    print(f"append at head, without the state (old statement), {appends} sequential: {percentiles(rounds['without'])}")
    print(f"append at head, keeping the state (log.append), {appends} sequential: {percentiles(rounds['with'])}")

    reads = []
    for _ in range(requests):
        started = time.perf_counter()
        await state.read(conn, PROJECT)
        reads.append(time.perf_counter() - started)
    print(f"state.read (limit 50), in-process: {percentiles(reads)}")

    with tempfile.TemporaryDirectory() as data_dir:
        settings = load_settings(database_url=url, secret=SECRET, data_dir=Path(data_dir))
        app = create_app(settings, frontend_dist=None)
        server = uvicorn.Server(server_config(app, settings, host="127.0.0.1", port=0, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        while not server.started:
            if serving.done():
                serving.result()
                raise RuntimeError("the server exited during start-up")
            await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        token = auth.issue(SECRET, user="bench", projects="*", scopes=("subscribe",))
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {token}"}
            ) as client:
                for limit in (state.DEFAULT_LIMIT, state.MAX_LIMIT):
                    path = f"/api/projects/{PROJECT}/state?limit={limit}"
                    for _ in range(20):
                        await client.get(path)
                    samples = []
                    size = 0
                    for _ in range(requests):
                        started = time.perf_counter()
                        response = await client.get(path)
                        samples.append(time.perf_counter() - started)
                        assert response.status_code == 200, response.text
                        size = len(response.content)
                    print(f"GET /state?limit={limit} ({size / 1024:.0f} KiB), {requests} sequential: ", end="")
                    print(percentiles(samples))
        finally:
            server.should_exit = True
            await serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--appends", type=int, default=2000)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    args = parser.parse_args()
    if args.database_url:
        asyncio.run(run(args.database_url, args.events, args.requests, args.appends))
        return
    with tempfile.TemporaryDirectory() as directory:
        embedded = db.start_embedded(Path(directory), database="postgres")
        try:
            asyncio.run(run(embedded.url, args.events, args.requests, args.appends))
        finally:
            embedded.stop()


if __name__ == "__main__":
    main()
