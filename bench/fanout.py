"""Fan-out latency and throughput, for Herald and its peers, with the same Node client and workload.

    .venv/bin/python bench/fanout.py latency [--targets herald,socketio,broadcast]
        [--matrix 100x10,100x100,1000x10,1000x100,5000x2,5000x10] [--duration 20] [--warmup 3]
    .venv/bin/python bench/fanout.py burst [--targets ...] [--clients 1000] [--events 500] [--concurrency 16]

latency: for each N x R of the matrix, N WebSocket clients subscribe to one project while the producer
  publishes R events/s over HTTP; latency is publish start -> arrival at a client, on the Node client's
  one clock; p50/p99/max, delivered/expected, gaps (Herald: seq discontinuities in a client's stream).
burst: N clients, E events published as fast as the target takes them (C requests in flight);
  deliveries/s = delivered / (last arrival - first publish): the fan-out at saturation.

Each run gets a fresh server process (and for Herald a fresh database). The server's RSS and CPU share
and the machine's load average are recorded with each run. Results: bench/results/fanout-MODE.json.
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

from harness import (
    PROJECT,
    Database,
    ServerProcess,
    common_arguments,
    create_project,
    database,
    herald,
    load,
    peer,
    profile,
    run_client,
    token,
    write_results,
)


def start_target(kind: str, db_url: str | None, log_dir: Path, env: dict[str, str]) -> ServerProcess:
    return start_targets(kind, db_url, log_dir, env, 1)[0]


def start_targets(kind: str, db_url: str | None, log_dir: Path, env: dict[str, str], n: int) -> list[ServerProcess]:
    """The target as `n` processes (Herald only: instances on one database, e.g. one per core)."""
    if kind == "herald":
        servers = [herald(db_url, log_dir, name=f"herald-{i}", **env) for i in range(n)]  # type: ignore[arg-type]
    else:
        servers = [peer(kind, log_dir)]
    for server in servers:
        server.start()
    if kind == "herald":
        asyncio.run(create_project(servers[0].url))
    return servers


def one_run(
    database_: Database, kind: str, options: dict[str, Any], log_dir: Path, env: dict[str, str]
) -> dict[str, Any]:
    context = database_.fresh() if kind == "herald" else None
    if context is not None:
        return asyncio.run(_with_database(context, kind, options, log_dir, env))
    return _measure(kind, None, options, log_dir, env)


async def _with_database(context: Any, kind: str, options: dict[str, Any], log_dir: Path, env: dict[str, str]) -> Any:
    async with context as url:
        return await asyncio.to_thread(_measure, kind, url, options, log_dir, env)


def _measure(kind: str, db_url: str | None, options: dict[str, Any], log_dir: Path, env: dict[str, str]) -> Any:
    servers = start_targets(kind, db_url, log_dir, env, PROCESSES if kind == "herald" else 1)
    server = Group(servers)
    marks: dict[str, Any] = {}
    profiler: subprocess.Popen[bytes] | None = None

    def on_phase(phase: dict[str, Any]) -> None:
        name = phase["phase"]
        if name == "connected":
            marks["rss_connected"] = server.rss()
        elif name == "measuring":
            marks["cpu0"], marks["wall0"] = server.cpu_seconds(), time.monotonic()
            marks["load_start"] = load()
            if PROFILE_DIR is not None:
                nonlocal profiler
                stem = f"profile-{kind}-{options.get('mode')}-{options['clients']}"
                profiler = profile(servers[0], PROFILE_DIR / stem)
        elif name == "done":
            if profiler is not None:
                profiler.send_signal(signal.SIGINT)
                profiler.wait()
            marks["cpu1"], marks["wall1"] = server.cpu_seconds(), time.monotonic()
            marks["rss_end"] = server.rss()

    try:
        rss_start = server.rss()
        client_options = {"target": kind, "url": servers[0].url, "project": PROJECT, **options}
        if len(servers) > 1:
            client_options["urls"] = ",".join(s.url for s in servers)
        if kind == "herald":
            client_options["token"] = token(("subscribe", "publish"))
        result = run_client("fanout.js", client_options, on_phase=on_phase)
    finally:
        server.stop()
    wall = marks.get("wall1", 0) - marks.get("wall0", 0)
    result["processes"] = len(servers)
    result["server"] = {
        "rss_start_mib": round(rss_start / 2**20, 1),
        "rss_connected_mib": round(marks.get("rss_connected", 0) / 2**20, 1),
        "rss_end_mib": round(marks.get("rss_end", 0) / 2**20, 1),
        "cpu_share": round((marks["cpu1"] - marks["cpu0"]) / wall, 3) if wall > 0 else None,
    }
    result["load"] = {"start": marks.get("load_start"), "end": load()}
    return result


PROFILE_DIR: Path | None = None
PROCESSES = 1


class Group:
    """Several server processes measured as one: RSS and CPU summed."""

    def __init__(self, servers: list[ServerProcess]) -> None:
        self.servers = servers

    def rss(self) -> int:
        return sum(s.rss() for s in self.servers)

    def cpu_seconds(self) -> float:
        return sum(s.cpu_seconds() for s in self.servers)

    def stop(self) -> None:
        for s in self.servers:
            s.stop()


def parse_matrix(text: str) -> list[tuple[int, float]]:
    pairs = []
    for item in text.split(","):
        n, r = item.lower().split("x")
        pairs.append((int(n), float(r)))
    return pairs


def describe(kind: str, r: dict[str, Any]) -> str:
    lat = r["latencyMs"]
    head = f"{kind:9} N={r['clients']:<5}"
    if r["mode"] == "latency":
        head += f" R={r['rate']:<4g}"
    else:
        head += f" E={r['events']:<5} {r['deliveriesPerS'] or 0:9,.0f} deliveries/s"
    return (
        f"{head} p50 {lat['p50']} ms p99 {lat['p99']} ms max {lat['max']} ms "
        f"delivered {r['delivered']}/{r['expected']} gaps {r['gaps']} closes {r['closes']} "
        f"server cpu {r['server']['cpu_share']} load {r['load']['end'][0]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["latency", "burst"])
    parser.add_argument("--targets", default="herald,socketio,broadcast")
    parser.add_argument("--matrix", default="100x10,100x100,1000x10,1000x100,5000x2,5000x10")
    parser.add_argument("--duration", type=float, default=20, help="seconds measured per latency run")
    parser.add_argument("--warmup", type=float, default=3, help="seconds published before measuring")
    parser.add_argument("--clients", type=int, default=1000, help="burst: connected clients")
    parser.add_argument("--events", type=int, default=500, help="burst: events published")
    parser.add_argument("--concurrency", type=int, default=16, help="burst: publish requests in flight")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each configuration")
    parser.add_argument("--herald-env", default="", help="extra environment for Herald, K=V,K=V")
    parser.add_argument("--profile", type=Path, help="py-spy each run's server into this directory")
    parser.add_argument("--processes", type=int, default=1, help="Herald processes on one database, clients spread")
    parser.add_argument("--client-processes", type=int, default=1, help="Node processes holding the clients")
    common_arguments(parser)
    args = parser.parse_args()
    global PROFILE_DIR, PROCESSES
    PROFILE_DIR = args.profile
    PROCESSES = args.processes
    env = dict(kv.split("=", 1) for kv in args.herald_env.split(",") if kv)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    runs: list[dict[str, Any]] = []
    with database(args.database_url) as database_, tempfile.TemporaryDirectory(prefix="herald-fanout-") as logs:
        log_dir = Path(logs)
        if args.mode == "latency":
            configs = [
                {"mode": "latency", "clients": n, "rate": r, "duration": args.duration, "warmup": args.warmup}
                for n, r in parse_matrix(args.matrix)
            ]
        else:
            configs = [
                {"mode": "burst", "clients": args.clients, "events": args.events, "concurrency": args.concurrency}
            ]
        for config in configs:
            config["workers"] = args.client_processes
        for config in configs:
            for kind in targets:
                for _ in range(args.repeat):
                    result = one_run(database_, kind, config, log_dir, env)
                    runs.append(result)
                    print(describe(kind, result), flush=True)
        path = write_results(args.results, f"fanout-{args.mode}", database_, runs, herald_env=env)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
