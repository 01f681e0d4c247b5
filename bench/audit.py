"""What the audit chain costs and how fast an auditor's tools run (docs/benchmarks.md, "Audit").

    .venv/bin/python bench/audit.py chain --sides without=REF,chain=REF,now=. [--rounds 3] [--cases ws:1,batch:1,http:1]
    .venv/bin/python bench/audit.py read [--events 1000000]

`chain`: publish throughput of several versions of the service in one run (each side a commit,
extracted with `git archive`, or `.` for this working tree): say the last commit without the chain, the
first with it, and now. The sides alternate case by case, round after round, in a rotating order, each
on a fresh database and a fresh server (bench/publish.py's cases), so drift in the machine's load falls
on all of them; costs are relative to the first side.

`read`: a log of `--events` events with a valid chain loaded into one project (COPY, not the API: a
million appends would measure the append), then, against a real server: the verify endpoint (events/s,
and the server's RSS before and after: constant memory), `herald audit verify` (the CLI, its own
process), and the ndjson and CSV exports read to the end (events/s, MB/s, RSS).
Results: bench/results/audit-chain.json, audit-read.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

import httpx
import psutil
from harness import (
    ROOT,
    SECRET,
    Database,
    common_arguments,
    create_project,
    database,
    herald,
    seed_log,
    token,
    write_results,
)

PROJECT = "audit"


def checkout(ref: str, into: Path) -> Path:
    """`git archive REF` unpacked into `into`: the service as it was at REF."""
    blob = subprocess.run(["git", "archive", ref], cwd=ROOT, capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into


def publish_args(args: argparse.Namespace) -> argparse.Namespace:
    # The socket's inbound limit (500 messages/s per connection) would cap the fastest side at 16,000/s
    # over 32 sockets: raised, so the sides differ by what they do per event, not by the limiter.
    return argparse.Namespace(
        concurrency=64,
        batch=100,
        connections=32,
        window=32,
        duration=args.duration,
        profile=None,
        env={"HERALD_WS_RATE": "1000000"},
    )


async def chain_cost(database_: Database, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    import publish  # bench/publish.py: the same cases, the same checks of the log afterwards

    sides: dict[str, Path | None] = {}
    for part in args.sides.split(","):
        name, ref = part.split("=", 1)
        sides[name] = None if ref == "." else checkout(ref, Path(tempfile.mkdtemp(prefix=f"herald-{name}-")))
    refs = dict(part.split("=", 1) for part in args.sides.split(","))
    names = list(sides)
    cases = [(c.split(":")[0], int(c.split(":")[1])) for c in args.cases.split(",")]
    runs: dict[str, dict[str, list[float]]] = {f"{v}:{p}": {n: [] for n in names} for v, p in cases}
    for round_ in range(args.rounds):
        for via, projects in cases:
            # A rotating order, so no side always runs first on a warmer (or more tired) machine.
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                root = sides[name]
                if root is not None:
                    os.environ["BENCH_HERALD_ROOT"] = str(root)
                try:
                    result = await publish.one_case(database_, via, projects, publish_args(args), logs)
                finally:
                    os.environ.pop("BENCH_HERALD_ROOT", None)
                assert result["log"]["contiguous"] and result["log"]["heads_match_acks"], result
                assert result["failed"] == 0, result["failures"]
                runs[f"{via}:{projects}"][name].append(result["eventsPerS"])
                print(f"round {round_ + 1} {via}:{projects} {name:8} {result['eventsPerS']:9,.0f} events/s", flush=True)
    summary: dict[str, Any] = {}
    for case, by_side in runs.items():
        medians = {name: statistics.median(values) for name, values in by_side.items()}
        first = medians[names[0]]
        summary[case] = {
            name: {
                "perS": [round(v) for v in by_side[name]],
                "median": round(medians[name]),
                "costPercent": round(100 * (first - medians[name]) / first, 1),
            }
            for name in names
        }
        print(case + ": " + ", ".join(f"{n} {medians[n]:,.0f} ({summary[case][n]['costPercent']}%)" for n in names))
    return {"sides": refs, "rounds": args.rounds, "durationS": args.duration, "cases": summary}


def rss_mib(pid: int) -> float:
    return round(psutil.Process(pid).memory_info().rss / 2**20, 1)


async def reads(database_: Database, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"events": args.events}
    async with database_.fresh() as url:
        started = time.monotonic()
        await seed_log(url, PROJECT, args.events)
        out["loadS"] = round(time.monotonic() - started, 1)
        server = herald(url, logs)
        await asyncio.to_thread(server.start)
        try:
            await create_project(server.url, "warm")  # first request paths warmed
            headers = {"Authorization": f"Bearer {token(('admin',))}"}
            async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=600) as client:
                before = rss_mib(server.pid)
                started = time.monotonic()
                r = await client.get(f"/api/projects/{PROJECT}/audit/verify")
                seconds = time.monotonic() - started
                body = r.json()
                assert body.get("ok") is True and body["head"] == args.events, body
                out["verifyHttp"] = {
                    "seconds": round(seconds, 2),
                    "eventsPerS": round(args.events / seconds),
                    "rssMiB": {"before": before, "after": rss_mib(server.pid)},
                }
                print(f"verify (HTTP): {args.events:,} events in {seconds:.1f} s, {args.events / seconds:,.0f}/s, "
                      f"server RSS {before} -> {rss_mib(server.pid)} MiB", flush=True)  # fmt: skip
                for fmt in ("ndjson", "csv"):
                    before, peak, size, lines = rss_mib(server.pid), 0.0, 0, 0
                    started = time.monotonic()
                    async with client.stream("GET", f"/api/projects/{PROJECT}/export", params={"format": fmt}) as resp:
                        if resp.status_code != 200:
                            out[f"export_{fmt}"] = {"status": resp.status_code}
                            print(f"export {fmt}: {resp.status_code} (not available in this build)")
                            continue
                        async for chunk in resp.aiter_bytes():
                            size += len(chunk)
                            lines += chunk.count(b"\n")
                            if lines % 100_000 < chunk.count(b"\n") + 1:
                                peak = max(peak, rss_mib(server.pid))
                    seconds = time.monotonic() - started
                    expected = args.events + (1 if fmt == "csv" else 0)  # the CSV header
                    assert lines == expected, (fmt, lines)
                    out[f"export_{fmt}"] = {
                        "seconds": round(seconds, 2),
                        "eventsPerS": round(args.events / seconds),
                        "mbPerS": round(size / 1e6 / seconds, 1),
                        "bytes": size,
                        "rssMiB": {"before": before, "peak": max(peak, rss_mib(server.pid))},
                    }
                    peak = out[f"export_{fmt}"]["rssMiB"]["peak"]
                    print(f"export {fmt}: {args.events / seconds:,.0f} events/s, {size / 1e6 / seconds:.1f} MB/s, "
                          f"server RSS {before} -> peak {peak} MiB", flush=True)  # fmt: skip
        finally:
            await asyncio.to_thread(server.stop)
        environment = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
        environment.update(DATABASE_URL=url, HERALD_SECRET=SECRET)
        started = time.monotonic()
        cli = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "service", "audit", "verify", PROJECT],
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
        )
        seconds = time.monotonic() - started
        assert cli.returncode == 0, cli.stdout + cli.stderr
        out["verifyCli"] = {"seconds": round(seconds, 2), "eventsPerS": round(args.events / seconds)}
        print(f"verify (CLI, start-up included): {seconds:.1f} s, {args.events / seconds:,.0f}/s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    chain = sub.add_parser("chain", help="publish throughput of several versions side by side, in one run")
    chain.add_argument("--sides", required=True, help="NAME=REF,... (REF a git commit, or . for this tree)")
    chain.add_argument("--rounds", type=int, default=3)
    chain.add_argument("--cases", default="ws:1,batch:1,http:1", help="VIA:PROJECTS,... (bench/publish.py)")
    chain.add_argument("--duration", type=float, default=10, help="seconds measured per case")
    common_arguments(chain)
    read = sub.add_parser("read", help="verify and export speed over a long log")
    read.add_argument("--events", type=int, default=1_000_000)
    common_arguments(read)
    args = parser.parse_args()
    name = f"audit-{args.what}"
    with database(args.database_url) as database_, tempfile.TemporaryDirectory(prefix="herald-audit-") as logs:
        work = chain_cost if args.what == "chain" else reads
        result = asyncio.run(work(database_, args, Path(logs)))
        path = write_results(args.results, name, database_, [result])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
