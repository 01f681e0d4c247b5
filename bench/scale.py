"""Past one process: instances on one database woken by LISTEN, by the NATS bus, or by the bus with
NOTIFY-free appends; and `serve --workers 2` against one process at thousands of clients.

    .venv/bin/python bench/scale.py [--instances 1,4,16] [--wakes listen,nats,notify-free]
        [--duration 10] [--clients-per-instance 50] [--rate 100] [--workers-clients 5000] [--workers-rate 2]

For each instance count and way of waking, side by side in one run, on a fresh database each:
  durable: WebSocket publishers (bench/client/publish.js, one process per instance up to four, each on its
    own instance, 100 projects) append as fast as the instances commit; events/s acknowledged (committed,
    synchronous_commit on). Every instance is up and waking (LISTENing, or on the bus) meanwhile.
  latency: clients (`--clients-per-instance` on each instance, one project) while a producer publishes
    `--rate` events/s over HTTP through the first instance; publish -> arrival p50/p99 on the Node
    client's one clock (bench/client/fanout.js), every event to every client, gaps counted.
Then `--workers-clients` clients on one port, served by `serve --workers 2` and by one process, at
`--workers-rate` events/s. NATS: a nats-server of its own (the binary on PATH), or --nats-url. Every
instance has `--pool-size` (4) pooled connections, so that 16 of them fit a default max_connections; the
workers' comparison keeps the default (10 per worker), for the 5,000 subscribes that arrive at once.
Results: bench/results/scale.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
from harness import (
    Database,
    ServerProcess,
    common_arguments,
    create_project,
    database,
    free_port,
    herald,
    load,
    run_client,
    token,
    write_results,
)
from publish import check_log

WAKES: dict[str, dict[str, str]] = {
    "listen": {},
    "nats": {},  # HERALD_NATS_URL added at run time
    "notify-free": {"HERALD_APPEND_NOTIFY": "false"},
}


@contextlib.contextmanager
def nats_server(url: str | None) -> Iterator[str]:
    """The NATS URL to use: the given one, or a nats-server of our own for the run."""
    if url:
        yield url
        return
    binary = shutil.which("nats-server") or (
        "/usr/sbin/nats-server" if os.path.exists("/usr/sbin/nats-server") else None
    )
    if binary is None:
        raise SystemExit("no nats-server binary: install it (apt-get install nats-server) or pass --nats-url")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
                break
            time.sleep(0.05)
        yield f"nats://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)


def metric(server: ServerProcess, name: str) -> float | None:
    r = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token()}"}, timeout=10)
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", r.text, re.M)
    return float(found.group(1)) if found else None


def wait_for_relay(servers: list[ServerProcess], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(metric(s, "herald_relay") == 1 for s in servers) == 1:
            return
        time.sleep(0.2)
    raise TimeoutError("no instance became the relay")


def cpu_seconds(servers: list[ServerProcess]) -> float:
    """CPU seconds of the servers and their live children (`serve --workers N`'s workers)."""
    total = 0.0
    for server in servers:
        parent = psutil.Process(server.pid)
        for proc in (parent, *parent.children(recursive=True)):
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
    return total


def start(db_url: str, log_dir: Path, n: int, env: dict[str, str], tag: str) -> list[ServerProcess]:
    servers = [herald(db_url, log_dir, name=f"{tag}-{i}", **env) for i in range(n)]

    async def all_of() -> None:
        await asyncio.gather(*(asyncio.to_thread(s.start, 180) for s in servers))

    asyncio.run(all_of())
    return servers


def durable(url: str, servers: list[ServerProcess], duration: float) -> dict[str, Any]:
    """WebSocket publishers on up to four instances at once; events/s summed. Afterwards the log must be
    gap-free in every project, and hold exactly what the publishers were told was appended."""
    asyncio.run(create_projects(servers[0].url, 100))
    targets = servers[: min(4, len(servers))]
    cpu0, wall0 = cpu_seconds(servers), time.monotonic()
    procs: list[dict[str, Any]] = []

    async def one(server: ServerProcess) -> None:
        options = {
            "url": server.url, "token": token(("publish",)), "via": "ws", "projects": 100,
            "connections": max(4, 32 // len(targets)), "window": 32, "duration": duration, "warmup": 1,
        }  # fmt: skip
        procs.append(await asyncio.to_thread(run_client, "publish.js", options))

    async def all_of() -> None:
        await asyncio.gather(*(one(s) for s in targets))

    asyncio.run(all_of())
    wall = time.monotonic() - wall0
    log = asyncio.run(check_log(url))
    acked: dict[str, int] = {}
    for p in procs:
        for project_id, count in p["heads"].items():
            acked[project_id] = acked.get(project_id, 0) + count
    return {
        "eventsPerS": round(sum(p["eventsPerS"] for p in procs)),
        "failed": sum(p["failed"] for p in procs),
        "logContiguous": log["contiguous"],
        "acksMatchLog": all(log["heads"].get(project_id) == count for project_id, count in acked.items()),
        "publishers": len(targets),
        "cpu_share": round((cpu_seconds(servers) - cpu0) / wall, 2),
    }


async def create_projects(base_url: str, n: int) -> None:
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token()}"}) as http:
        for i in range(n):
            r = await http.post("/api/projects", json={"id": f"bench-{i}", "name": f"bench-{i}"})
            assert r.status_code in (201, 409), r.text


def latency(servers: list[ServerProcess], clients: int, rate: float, duration: float) -> dict[str, Any]:
    asyncio.run(create_project(servers[0].url))
    cpu0, wall0 = cpu_seconds(servers), time.monotonic()
    options = {
        "target": "herald", "url": servers[0].url, "urls": ",".join(s.url for s in servers), "project": "bench",
        "token": token(("subscribe", "publish")), "mode": "latency", "clients": clients, "rate": rate,
        "duration": duration, "warmup": 2, "workers": 2 if clients >= 1000 else 1,
    }  # fmt: skip
    result = run_client("fanout.js", options)
    wall = time.monotonic() - wall0
    return {
        "clients": clients,
        "rate": rate,
        "latencyMs": result["latencyMs"],
        "deliveredRatio": result["deliveredRatio"],
        "gaps": result["gaps"],
        "duplicates": result["duplicates"],
        "cpu_share": round((cpu_seconds(servers) - cpu0) / wall, 2),
    }


async def with_fresh(database_: Database, work: Any) -> Any:
    async with database_.fresh() as url:
        return await asyncio.to_thread(work, url)


def one_case(database_: Database, log_dir: Path, n: int, wake: str, nats_url: str, args: Any) -> dict[str, Any]:
    env = {**WAKES[wake], "HERALD_POOL_SIZE": str(args.pool_size)}
    if wake != "listen":
        env["HERALD_NATS_URL"] = nats_url

    def work(url: str) -> dict[str, Any]:
        servers = start(url, log_dir, n, env, f"{wake}-{n}")
        try:
            if wake != "listen":
                wait_for_relay(servers)
            row: dict[str, Any] = {"instances": n, "wake": wake}
            # Latency first, on a log not yet loaded by the durable run (its checkpoint would land in it).
            row["latency"] = latency(servers, args.clients_per_instance * n, args.rate, args.duration)
            row["durable"] = durable(url, servers, args.duration)
            row["load"] = load()
            return row
        finally:
            for s in servers:
                s.stop()

    result: dict[str, Any] = asyncio.run(with_fresh(database_, work))
    return result


def workers_case(database_: Database, log_dir: Path, workers: int, args: Any) -> dict[str, Any]:
    def work(url: str) -> dict[str, Any]:
        server = herald(url, log_dir, name=f"workers-{workers}")  # the default pool: 5,000 subscribes at once
        if workers > 1:
            server.command += ["--workers", str(workers)]
        server.start(timeout_s=120)
        try:
            row = {"workers": workers, **latency([server], args.workers_clients, args.workers_rate, args.duration)}
            row["load"] = load()
            return row
        finally:
            server.stop()

    result: dict[str, Any] = asyncio.run(with_fresh(database_, work))
    return result


def describe(row: dict[str, Any]) -> str:
    lat = row["latency"] if "latency" in row else row
    head = f"{row['wake']:11} x{row['instances']:<3}" if "wake" in row else f"workers {row['workers']}     "
    durable_part = ""
    if "durable" in row:
        d = row["durable"]
        durable_part = f"durable {d['eventsPerS']:7,} events/s (failed {d['failed']}, cpu {d['cpu_share']})  "
    ms = lat["latencyMs"]
    return (
        f"{head} {durable_part}latency N={lat['clients']} at {lat['rate']}/s: p50 {ms['p50']} ms p99 {ms['p99']} ms "
        f"delivered {lat['deliveredRatio']} gaps {lat['gaps']} cpu {lat['cpu_share']}  load {row['load'][0]:.1f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--instances", default="1,4,16")
    parser.add_argument("--wakes", default="listen,nats,notify-free")
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--clients-per-instance", type=int, default=50)
    parser.add_argument("--rate", type=float, default=100, help="latency: events/s published")
    parser.add_argument("--workers-clients", type=int, default=5000, help="0 skips the workers comparison")
    parser.add_argument("--workers-rate", type=float, default=2)
    parser.add_argument(
        "--pool-size", type=int, default=4, help="HERALD_POOL_SIZE: 16 x (4 + 1) fits max_connections = 100"
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each instance count and way")
    parser.add_argument("--nats-url", default=os.environ.get("BENCH_NATS_URL"))
    common_arguments(parser)
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    with (
        database(args.database_url) as database_,
        tempfile.TemporaryDirectory(prefix="herald-scale-") as logs,
        nats_server(args.nats_url) as nats_url,
    ):
        log_dir = Path(logs)
        for n in (int(x) for x in args.instances.split(",") if x):
            for _ in range(args.repeat):  # the ways alternate, so that each sees the machine as the others do
                for wake in (w for w in args.wakes.split(",") if w):
                    row = one_case(database_, log_dir, n, wake, nats_url, args)
                    runs.append(row)
                    print(describe(row), flush=True)
        if args.workers_clients:
            for _ in range(args.repeat):
                for workers in (1, 2):
                    row = workers_case(database_, log_dir, workers, args)
                    runs.append(row)
                    print(describe(row), flush=True)
        path = write_results(args.results, "scale", database_, runs)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
