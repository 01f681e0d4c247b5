"""Memory: server RSS per idle connection, and RSS through a sustained load.

    .venv/bin/python bench/memory.py idle [--targets herald,socketio,broadcast] [--clients 1000,5000]
    .venv/bin/python bench/memory.py sustained [--minutes 10] [--clients 1000] [--rate 10]

idle: a fresh server; one client connects and leaves (so lazily built state exists), RSS is read; then N
  clients connect (Herald: each subscribed to the project) and stay idle; RSS is read again after a
  few seconds. (RSS after - RSS before) / N is the cost of one idle connection.
sustained: N clients subscribed while the producer publishes R events/s for M minutes; the server's RSS
  is sampled every 5 s, with the interval's latency from the client. Flat means: after the first
  minute, RSS grows by less than 5%. Results: bench/results/memory-idle.json, memory-sustained.json.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from fanout import start_target
from harness import PROJECT, Database, common_arguments, database, load, run_client, token, write_results


def target_options(kind: str, server_url: str) -> dict[str, Any]:
    options: dict[str, Any] = {"target": kind, "url": server_url, "project": PROJECT}
    if kind == "herald":
        options["token"] = token(("subscribe", "publish"))
    return options


def idle(database_: Database, kind: str, clients: int, settle_s: float, log_dir: Path) -> dict[str, Any]:
    async def with_db() -> dict[str, Any]:
        async with database_.fresh() as url:
            return await asyncio.to_thread(idle_on, kind, url, clients, settle_s, log_dir)

    return asyncio.run(with_db()) if kind == "herald" else idle_on(kind, None, clients, settle_s, log_dir)


def idle_on(kind: str, url: str | None, clients: int, settle_s: float, log_dir: Path) -> dict[str, Any]:
    server = start_target(kind, url, log_dir, {})
    try:
        run_client("fanout.js", {**target_options(kind, server.url), "clients": 1, "mode": "idle"})
        time.sleep(1)
        before = server.rss()
        marks: dict[str, int] = {}

        def on_phase(phase: dict[str, Any]) -> None:
            if phase["phase"] == "connected":
                time.sleep(settle_s)
                marks["after"] = server.rss()

        result = run_client(
            "fanout.js",
            {**target_options(kind, server.url), "clients": clients, "mode": "idle", "idle": 0.1},
            on_phase=on_phase,
        )
    finally:
        server.stop()
    per = (marks["after"] - before) / max(1, result["ready"])
    return {
        "target": kind,
        "clients": clients,
        "ready": result["ready"],
        "rss_before_mib": round(before / 2**20, 1),
        "rss_after_mib": round(marks["after"] / 2**20, 1),
        "kib_per_connection": round(per / 1024, 1),
        "load": load(),
    }


def sustained(database_: Database, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    async def with_db() -> dict[str, Any]:
        async with database_.fresh() as url:
            return await asyncio.to_thread(sustained_on, url, args, log_dir)

    return asyncio.run(with_db())


def sustained_on(url: str, args: argparse.Namespace, log_dir: Path) -> dict[str, Any]:
    server = start_target("herald", url, log_dir, args.env)
    samples: list[dict[str, Any]] = []
    intervals: list[dict[str, Any]] = []
    started = time.monotonic()
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(5):
            samples.append({"t": round(time.monotonic() - started, 1), "rss_mib": round(server.rss() / 2**20, 1),
                            "load": load()[0]})  # fmt: skip

    def on_phase(phase: dict[str, Any]) -> None:
        if phase["phase"] == "interval":
            intervals.append({"t": round(time.monotonic() - started, 1), "delivered": phase["delivered"],
                              "p99_ms": phase["latency"]["p99"], "p50_ms": phase["latency"]["p50"]})  # fmt: skip

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    try:
        result = run_client(
            "fanout.js",
            {**target_options("herald", server.url), "clients": args.clients, "mode": "latency", "rate": args.rate,
             "duration": args.minutes * 60, "warmup": 2, "reportEvery": 30},
            on_phase=on_phase,
        )  # fmt: skip
    finally:
        stop.set()
        thread.join()
        server.stop()
    after_warmup = [s["rss_mib"] for s in samples if s["t"] >= 60] or [s["rss_mib"] for s in samples]
    growth = (after_warmup[-1] - after_warmup[0]) / after_warmup[0] if after_warmup else 0.0
    return {
        "clients": args.clients,
        "rate": args.rate,
        "minutes": args.minutes,
        "rss_first_mib": samples[0]["rss_mib"] if samples else None,
        "rss_after_1min_mib": after_warmup[0] if after_warmup else None,
        "rss_last_mib": samples[-1]["rss_mib"] if samples else None,
        "rss_max_mib": max(s["rss_mib"] for s in samples) if samples else None,
        "growth_after_1min": round(growth, 4),
        "flat": growth < 0.05,
        "delivered": result["delivered"],
        "expected": result["expected"],
        "gaps": result["gaps"],
        "closes": result["closes"],
        "latencyMs": result["latencyMs"],
        "samples": samples,
        "intervals": intervals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["idle", "sustained"])
    parser.add_argument("--targets", default="herald,socketio,broadcast")
    parser.add_argument("--clients", default="1000,5000", help="idle: N,N; sustained: N")
    parser.add_argument("--settle", type=float, default=3, help="idle: seconds between connecting and reading RSS")
    parser.add_argument("--minutes", type=float, default=10, help="sustained: how long")
    parser.add_argument("--rate", type=float, default=10, help="sustained: events/s")
    parser.add_argument("--herald-env", default="", help="extra environment for Herald, K=V,K=V")
    common_arguments(parser)
    args = parser.parse_args()
    args.env = dict(kv.split("=", 1) for kv in args.herald_env.split(",") if kv)
    with database(args.database_url) as database_, tempfile.TemporaryDirectory(prefix="herald-memory-") as logs:
        runs: list[dict[str, Any]] = []
        if args.mode == "idle":
            for n in (int(x) for x in args.clients.split(",")):
                for kind in (t for t in args.targets.split(",") if t):
                    run = idle(database_, kind, n, args.settle, Path(logs))
                    runs.append(run)
                    print(f"{kind:9} {n:5} idle connections: {run['kib_per_connection']} KiB each "
                          f"(RSS {run['rss_before_mib']} -> {run['rss_after_mib']} MiB), load {run['load'][0]}",
                          flush=True)  # fmt: skip
        else:
            args.clients = int(args.clients.split(",")[0])
            run = sustained(database_, args, Path(logs))
            runs.append(run)
            print(f"{args.minutes} min at {args.rate:g} events/s to {args.clients} clients: RSS "
                  f"{run['rss_first_mib']} -> {run['rss_last_mib']} MiB (max {run['rss_max_mib']}), "
                  f"growth after 1 min {run['growth_after_1min']:.1%}, flat {run['flat']}, "
                  f"p99 {run['latencyMs']['p99']} ms, delivered {run['delivered']}/{run['expected']}",
                  flush=True)  # fmt: skip
        path = write_results(args.results, f"memory-{args.mode}", database_, runs, herald_env=args.env)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
