"""What a prune of a long log costs: the flat table's DELETE against the partitioned log's drop
(docs/benchmarks.md, "Retention"; docs/delivery.md, "Partitions").

    .venv/bin/python bench/retention.py --sides flat=REF,partitioned=. [--events 1000000] [--keep 1000]

Each side (a commit, extracted with `git archive`, or `.` for this tree) gets a fresh database migrated
by its own code, one project created by its own code, and `--events` events loaded by SQL (agent-run
progress over 1,000 runs, about 200 bytes of data each, as the demo writes them; the chain's hashes are
not computed: a prune does not read them). Then, timed: the side's own `retention.prune` with
`keepEvents = --keep`, with no archive (the archive's cost is the same gzip writing for both sides and
is measured apart, `--archive`); then a plain `VACUUM` of the events (what the DELETE leaves to
autovacuum: dead rows to be reclaimed), and the table's size before and after. Results:
bench/results/retention.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import asyncpg
from audit import checkout
from harness import ROOT, SECRET, common_arguments, database, write_results

from service import db

# Run inside a side's tree (its own `service` package) with: URL EVENTS KEEP ARCHIVE_DIR|-
SIDE = r"""
import asyncio, json, sys, time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from service import db, eventlog, retention

url, events, keep, archive = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]


async def main() -> None:
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        await eventlog.create_project(conn, id="p", name="p", repo=None)
        partitioned = await conn.fetchval("SELECT to_regclass('log_partitions') IS NOT NULL")
        if partitioned:
            from service import partitions
            await partitions.extend(conn, "p", upto=events)
        began = time.perf_counter()
        await conn.execute(
            "INSERT INTO events (project_id, seq, message_id, type, data, created_at, hash)"
            " SELECT 'p', g, 'm-' || g, 'agent_run_progress',"
            " jsonb_build_object('runId', 'run-' || (g % 1000), 'status', 'running', 'progress', g % 100,"
            "   'step', 'step ' || g, 'message', repeat('x', 120)),"
            " now() - make_interval(secs => ($1 - g) / 100.0), sha256(int8send(g))"
            " FROM generate_series(1, $1) AS g",
            events,
        )
        if partitioned:
            await conn.execute(
                "INSERT INTO event_ids SELECT 'p', 'm-' || g, g FROM generate_series(1, $1) AS g", events
            )
        await conn.execute(
            "INSERT INTO project_state (project_id, type, subject, seq)"
            " SELECT 'p', 'agent_run_progress',"
            " sha256(convert_to(jsonb_build_array('run-' || (g % 1000))::text, 'UTF8')), g"
            " FROM generate_series($1 - 999, $1) AS g",
            events,
        )
        await conn.execute("UPDATE projects SET head = $1, keep_events = $2 WHERE id = 'p'", events, keep)
        loaded = time.perf_counter() - began
        await conn.execute("VACUUM ANALYZE events")
        size = (
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint FROM pg_class c"
            " WHERE c.relkind = 'r' AND (c.relname = 'events' OR c.relname LIKE 'events\_%')"
        )
        before = await conn.fetchval(size)
        began = time.perf_counter()
        root = None if archive == "-" else Path(archive)
        pruned = await retention.prune(conn, "p", archive=root, now=datetime.now(UTC))
        prune_s = time.perf_counter() - began
        after_prune = await conn.fetchval(size)
        began = time.perf_counter()
        await conn.execute("VACUUM events")
        vacuum_s = time.perf_counter() - began
        after_vacuum = await conn.fetchval(size)
        left = await conn.fetchval("SELECT count(*) FROM events WHERE project_id = 'p'")
        print(json.dumps({
            "loadS": round(loaded, 2), "pruneS": round(prune_s, 3), "vacuumS": round(vacuum_s, 3),
            "pruned": pruned.to_dict() if pruned else None, "rowsLeft": left, "partitioned": partitioned,
            "bytesBefore": before, "bytesAfterPrune": after_prune, "bytesAfterVacuum": after_vacuum,
        }))
    finally:
        await conn.close()


asyncio.run(main())
"""


async def fresh_database(admin_url: str, name: str) -> str:
    conn = await asyncpg.connect(db.asyncpg_dsn(admin_url))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return db.with_database(admin_url, name)


def run_side(root: Path, url: str, args: argparse.Namespace, archive: Path | None) -> dict[str, Any]:
    subprocess.run([sys.executable, "-m", "service", "migrate"], cwd=root, env=_env(url), check=True)
    out = subprocess.run(
        [sys.executable, "-c", SIDE, url, str(args.events), str(args.keep), str(archive or "-")],
        cwd=root,
        env=_env(url),
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise SystemExit(out.stderr)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _env(url: str) -> dict[str, str]:
    import os

    return {**os.environ, "DATABASE_URL": url, "HERALD_SECRET": SECRET, "PYTHONPATH": ""}


def run(args: argparse.Namespace) -> None:
    with database(args.database_url) as db_:
        runs = []
        for round_ in range(args.rounds):
            for part in args.sides.split(","):
                name, ref = part.split("=", 1)
                root = ROOT if ref == "." else checkout(ref, Path(tempfile.mkdtemp(prefix=f"herald-{name}-")))
                url = asyncio.run(fresh_database(db_.admin_url, f"bench_retention_{name}"))
                archive = Path(tempfile.mkdtemp(prefix="herald-archive-")) if args.archive else None
                result = run_side(root, url, args, archive)
                result.update(side=name, ref=ref, round=round_ + 1, archive=args.archive)
                runs.append(result)
                print(
                    f"round {round_ + 1} {name:12} prune {result['pruneS']:7.2f} s, vacuum {result['vacuumS']:6.2f} s,"
                    f" {result['bytesBefore'] / 2**20:7.1f} MiB -> {result['bytesAfterPrune'] / 2**20:7.1f}"
                    f" -> {result['bytesAfterVacuum'] / 2**20:7.1f} MiB, {result['rowsLeft']} rows left",
                    flush=True,
                )
        path = write_results(args.results, "retention", db_, runs, events=args.events, keep=args.keep, sides=args.sides)
        print(f"results: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", default="flat=e7bf7a8,partitioned=.")
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--keep", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--archive", action="store_true", help="archive the pruned events too")
    common_arguments(parser)
    run(parser.parse_args())


if __name__ == "__main__":
    main()
