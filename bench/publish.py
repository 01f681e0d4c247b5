"""Publish throughput: durable events/s over HTTP (one event per request, and batches of `--batch` per
request) and over WebSocket publish messages, to one project and spread over 100 projects,
synchronous_commit on, every seq guarantee on.

    .venv/bin/python bench/publish.py [--cases http:1,http:100,batch:1,batch:100,ws:1,ws:100]
        [--duration 10] [--concurrency 64] [--batch 100] [--connections 32] [--window 4]
        [--herald-env HERALD_POOL_SIZE=20]

Each case gets a fresh database and a fresh server. Afterwards the log itself is checked: in every
project the seqs are exactly 1..head (no gap, no duplicate), the head equals the number of publishes
the client saw acknowledged, and each acknowledged seq was handed out once (the client checks that).
Alongside, the floor of the database: single-row insert+NOTIFY transactions/s, and plain inserts/s,
from 64 concurrent asyncpg connections (the ceilings quoted in the issue). Results:
bench/results/publish.json.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from harness import (
    Database,
    common_arguments,
    create_project,
    database,
    herald,
    load,
    profile,
    run_client,
    token,
    write_results,
)

from service import db


async def check_log(url: str) -> dict[str, Any]:
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        rows = await conn.fetch(
            """SELECT p.id, p.head, count(e.seq) AS n, coalesce(min(e.seq), 0) AS lo, coalesce(max(e.seq), 0) AS hi
               FROM projects p LEFT JOIN events e ON e.project_id = p.id GROUP BY p.id, p.head"""
        )
    finally:
        await conn.close()
    contiguous = all(r["n"] == r["head"] and r["hi"] == r["head"] and (r["n"] == 0 or r["lo"] == 1) for r in rows)
    return {"projects": len(rows), "events": sum(r["n"] for r in rows), "contiguous": contiguous,
            "heads": {r["id"]: r["head"] for r in rows}}  # fmt: skip


async def one_case(database_: Database, via: str, projects: int, args: argparse.Namespace, log_dir: Path) -> Any:
    async with database_.fresh() as url:
        server = herald(url, log_dir, **args.env)
        await asyncio.to_thread(server.start)
        try:
            ids = ["bench"] if projects == 1 else [f"bench-{i}" for i in range(projects)]
            for pid in ids:
                await create_project(server.url, pid)
            load_start = load()
            cpu0 = server.cpu_seconds()
            wall0 = time.monotonic()
            profiler: list[subprocess.Popen[bytes]] = []

            def on_phase(phase: dict[str, Any]) -> None:
                if args.profile is not None and phase["phase"] == "measuring":
                    profiler.append(profile(server, args.profile / f"profile-publish-{via}-{projects}"))
                elif phase["phase"] == "done":
                    for p in profiler:
                        p.send_signal(signal.SIGINT)
                        p.wait()

            result = await asyncio.to_thread(
                run_client,
                "publish.js",
                {
                    "url": server.url, "token": token(("publish",)), "via": via, "projects": projects,
                    "concurrency": args.concurrency, "batch": args.batch, "connections": args.connections,
                    "window": args.window,
                    "duration": args.duration,
                },
                on_phase=on_phase,
            )  # fmt: skip
            result["server"] = {"cpu_share": round((server.cpu_seconds() - cpu0) / (time.monotonic() - wall0), 3)}
        finally:
            await asyncio.to_thread(server.stop)
        log = await check_log(url)
        heads = log.pop("heads")
        result["log"] = log
        result["log"]["heads_match_acks"] = all(heads.get(p, 0) == n for p, n in result["heads"].items())
        result["load"] = {"start": load_start, "end": load()}
        return result


async def floor(database_: Database, seconds: float, connections: int = 64) -> dict[str, Any]:
    """What PostgreSQL itself does on this machine: one-row transactions from many connections."""
    out: dict[str, Any] = {}
    async with database_.fresh() as url:
        conns = [await asyncpg.connect(db.asyncpg_dsn(url)) for _ in range(connections)]
        try:
            await conns[0].execute("CREATE TABLE floor_t (id bigserial PRIMARY KEY, v text)")
            for name, sql in (
                ("insert_per_s", "INSERT INTO floor_t (v) VALUES ('x')"),
                ("insert_notify_per_s", "INSERT INTO floor_t (v) VALUES ('x'); SELECT pg_notify('floor', 'x')"),
            ):
                done = 0
                deadline = time.monotonic() + seconds

                async def lane(c: asyncpg.Connection, sql: str = sql, deadline: float = deadline) -> None:
                    nonlocal done
                    while time.monotonic() < deadline:
                        await c.execute(sql)  # one implicit transaction per call
                        done += 1

                started = time.monotonic()
                await asyncio.gather(*(lane(c) for c in conns))
                out[name] = round(done / (time.monotonic() - started))
        finally:
            for c in conns:
                await c.close()
    out["connections"] = connections
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="http:1,http:100,batch:1,batch:100,ws:1,ws:100", help="VIA:PROJECTS,...")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--concurrency", type=int, default=64, help="http: requests in flight")
    parser.add_argument("--batch", type=int, default=100, help="batch: events per request")
    parser.add_argument("--connections", type=int, default=32, help="ws: sockets")
    parser.add_argument("--window", type=int, default=32, help="ws: publishes in flight per socket")
    parser.add_argument("--floor-seconds", type=float, default=5, help="0 skips the database floor")
    parser.add_argument("--herald-env", default="", help="extra environment for Herald, K=V,K=V")
    parser.add_argument("--profile", type=Path, help="py-spy each case's server into this directory")
    common_arguments(parser)
    args = parser.parse_args()
    args.env = dict(kv.split("=", 1) for kv in args.herald_env.split(",") if kv)
    runs = []
    with database(args.database_url) as database_, tempfile.TemporaryDirectory(prefix="herald-publish-") as logs:
        for case in args.cases.split(","):
            via, projects = case.split(":")
            result = asyncio.run(one_case(database_, via, int(projects), args, Path(logs)))
            runs.append(result)
            lat = result["latencyMs"]
            print(
                f"{via:5} projects={projects:<4} {result['eventsPerS']:8,.0f} events/s  p50 {lat['p50']} ms "
                f"p99 {lat['p99']} ms  failed {result['failed']}  log contiguous {result['log']['contiguous']} "
                f"acks contiguous {result['ackedSeqsContiguous']}  server cpu {result['server']['cpu_share']} "
                f"load {result['load']['end'][0]}",
                flush=True,
            )
        floor_result = asyncio.run(floor(database_, args.floor_seconds)) if args.floor_seconds > 0 else None
        if floor_result:
            print(f"database floor: {floor_result}")
        path = write_results(args.results, "publish", database_, runs, herald_env=args.env, floor=floor_result)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
