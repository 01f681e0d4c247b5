"""Catch-up: how long a client 100,000 events behind takes to be current.

    .venv/bin/python bench/catchup.py [--events 100000] [--repeat 3]

A fresh database gets one project whose log is bulk-inserted with its chain (agent_run_progress events of the same
size as the fan-out benchmark's); a fresh server starts on it; one WebSocket client subscribes with
`after: 0` and reads until the head, checking every seq arrives once, in order. The server is warm
for every repeat but the first (PostgreSQL's cache too). Results: bench/results/catchup.json.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from pathlib import Path
from typing import Any

from harness import (
    PROJECT,
    Database,
    common_arguments,
    create_project,
    database,
    herald,
    load,
    run_client,
    seed_log,
    token,
    write_results,
)


def bulk(seq: int) -> dict[str, Any]:
    """The data of each bulk event: the size of a typical progress report."""
    return {"runId": "bench", "status": "running", "progress": 50, "step": str(seq), "message": "x" * 60}


async def measure(args: argparse.Namespace, database_: Database, logs: str) -> list[dict[str, Any]]:
    runs: list[dict[str, Any]] = []
    async with database_.fresh() as url:
        server = herald(url, Path(logs), **args.env)
        await asyncio.to_thread(server.start)
        try:
            await create_project(server.url)
            await seed_log(url, PROJECT, args.events, data=bulk)
            for i in range(args.repeat):
                result = await asyncio.to_thread(
                    run_client,
                    "catchup.js",
                    {"url": server.url, "token": token(("subscribe",)), "project": PROJECT, "head": args.events},
                )
                result["load"] = load()
                result["warm"] = i > 0
                result["server_rss_mib"] = round(server.rss() / 2**20, 1)
                runs.append(result)
                print(
                    f"{args.events:,} behind: current in {result['seconds']:.2f} s "
                    f"({result['eventsPerS']:,.0f} events/s, {result['mibPerS']:.1f} MiB/s), "
                    f"complete {result['complete']}, load {result['load'][0]}",
                    flush=True,
                )
        finally:
            await asyncio.to_thread(server.stop)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--herald-env", default="", help="extra environment for Herald, K=V,K=V")
    common_arguments(parser)
    args = parser.parse_args()
    args.env = dict(kv.split("=", 1) for kv in args.herald_env.split(",") if kv)
    with database(args.database_url) as database_, tempfile.TemporaryDirectory(prefix="herald-catchup-") as logs:
        runs = asyncio.run(measure(args, database_, logs))
        path = write_results(args.results, "catchup", database_, runs, events=args.events, herald_env=args.env)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
