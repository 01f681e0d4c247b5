"""Bytes per event: what a log of typical events costs on disk, in the database and in the archive.

    .venv/bin/python bench/sizing.py [--events 100000] [--database-url URL]

With --database-url (an admin URL of a PostgreSQL server; or DATABASE_URL) it works in a database of its
own, created and dropped; without, on an embedded PostgreSQL in a temporary directory. One project gets
`--events` events shaped as the demo publishes them (service/demo.py: agent runs stepping through their
tasks, pull requests opened, pushed to, reviewed and merged, four checks queued, running and completed on
each head commit), appended through the service's own batch append (eventlog.append_many, 1,000 per
transaction: hashes, project state and all). Then, after VACUUM ANALYZE, it prints as JSON: the events
table's heap, indexes and TOAST, in bytes and per event; the project state's; and the gzip archive of the
whole log (archive.write), per event. docs/operations.md ("Sizing") quotes a run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg

from service import archive, db, eventlog
from service.demo import AUTHORS, CHECKS, PR_TITLES, TASKS

PROJECT = "sizing"
REPO = "acme/web"
BATCH = 1000


def demo_events(rng: random.Random) -> Iterator[tuple[str, dict[str, Any]]]:
    """An endless stream of (type, data) as the demo's stories interleave them: about one pull request
    for every agent run."""
    runs = prs = 0
    while True:
        runs += 1
        run_id = f"run-{rng.randrange(1000, 9999)}-{runs}"
        task, steps = rng.choice(TASKS)
        yield "agent_run_progress", {"runId": run_id, "status": "queued", "progress": 0, "step": "Waiting for a worker",
                                     "message": task}  # fmt: skip
        for i, step in enumerate(steps):
            for part in range(rng.randint(1, 3)):
                progress = round(100 * (i + (part + 1) / 4) / len(steps), 1)
                yield "agent_run_progress", {"runId": run_id, "status": "running", "progress": progress, "step": step,
                                             "message": task}  # fmt: skip
        yield "agent_run_progress", {"runId": run_id, "status": "succeeded", "progress": 100, "step": "Done",
                                     "message": task}  # fmt: skip
        prs += 1
        title, author = rng.choice(PR_TITLES), rng.choice(AUTHORS)
        pr = {"number": prs, "title": title, "url": f"https://github.com/{REPO}/pull/{prs}", "repo": REPO,
              "author": author}  # fmt: skip
        sha = f"{rng.getrandbits(160):040x}"
        for action in ("opened", "synchronize", "review_submitted", "merged"):
            if action == "synchronize":
                sha = f"{rng.getrandbits(160):040x}"
            yield "pr_notification", {"action": action, **pr, "headSha": sha}
            if action in ("opened", "synchronize"):
                for name in CHECKS:
                    url = f"https://github.com/{REPO}/actions/runs/{rng.randrange(10**9, 10**10)}"
                    base = {"name": name, "prNumber": prs, "headSha": sha, "url": url}
                    yield "validation_update", {**base, "status": "queued"}
                    yield "validation_update", {**base, "status": "in_progress"}
                    yield "validation_update", {**base, "status": "completed", "conclusion": "success"}


async def measure(url: str, events: int, work_dir: Path) -> dict[str, Any]:
    await db.migrate_async(url)
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        await eventlog.create_project(conn, id=PROJECT, name="Sizing", repo=REPO)
        stream = demo_events(random.Random(7))
        kinds: dict[str, int] = {}
        done = 0
        while done < events:
            batch = []
            for _ in range(min(BATCH, events - done)):
                kind, data = next(stream)
                kinds[kind] = kinds.get(kind, 0) + 1
                batch.append(eventlog.Append(PROJECT, kind, data, message_id=str(uuid.uuid4())))
            await eventlog.append_many(conn, batch)
            done += len(batch)
        await conn.execute("VACUUM ANALYZE events")
        await conn.execute("VACUUM ANALYZE project_state")
        # The log's partitions (pg_partition_tree; the partitioned table itself holds nothing) and the
        # messageIds that moved out of it with partitioning (event_ids): what an event costs in all.
        sizes = await conn.fetchrow(
            "WITH parts AS (SELECT relid FROM pg_partition_tree('events') WHERE isleaf"
            " UNION ALL SELECT 'event_ids'::regclass)"
            " SELECT (SELECT sum(pg_relation_size(relid))::bigint FROM parts) AS heap,"
            " (SELECT sum(pg_indexes_size(relid))::bigint FROM parts) AS indexes,"
            " (SELECT sum(pg_total_relation_size(relid))::bigint FROM parts) AS total,"
            " pg_total_relation_size('project_state') AS state, "
            "(SELECT avg(pg_column_size(e.*)) FROM events e) AS row_bytes, "
            "(SELECT avg(octet_length(data::text)) FROM events) AS data_bytes"
        )
        file = await archive.write(conn, work_dir / "archive", PROJECT, 1, events)
        archived = file.stat().st_size
    finally:
        await conn.close()
    total = sizes["total"]
    return {
        "events": events,
        "types": kinds,
        "avg_data_json_bytes": round(float(sizes["data_bytes"]), 1),
        "avg_row_bytes": round(float(sizes["row_bytes"]), 1),
        "events_heap_bytes": sizes["heap"],
        "events_index_bytes": sizes["indexes"],
        "events_toast_bytes": total - sizes["heap"] - sizes["indexes"],
        "events_total_bytes": total,
        "bytes_per_event": round(total / events, 1),
        "heap_bytes_per_event": round(sizes["heap"] / events, 1),
        "index_bytes_per_event": round(sizes["indexes"] / events, 1),
        "project_state_bytes": sizes["state"],
        "archive_bytes": archived,
        "archive_bytes_per_event": round(archived / events, 1),
    }


async def run(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    admin = args.database_url or os.environ.get("DATABASE_URL")
    embedded = None
    if admin is None:
        embedded = await asyncio.to_thread(db.start_embedded, work_dir / "data", "postgres")
        admin = embedded.url
    name = f"herald_sizing_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(db.asyncpg_dsn(admin))
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    try:
        return await measure(db.with_database(admin, name), args.events, work_dir)
    finally:
        conn = await asyncpg.connect(db.asyncpg_dsn(admin))
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.close()
        if embedded is not None:
            embedded.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--database-url", help="an admin URL of a PostgreSQL server (default: embedded)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="herald-sizing-") as tmp:
        print(json.dumps(asyncio.run(run(args, Path(tmp))), indent=2))


if __name__ == "__main__":
    main()
