"""uvicorn's WebSocket implementations compared: memory per idle connection and fan-out at saturation.

    .venv/bin/python bench/ws_implementations.py [--clients 1000] [--events 300]

The bare FastAPI broadcast peer (bench/peers/broadcast.py) under `uvicorn --ws IMPL` for each of
`websockets-sansio` (uvicorn's default, and the base of Herald's own protocol, service/frames.py),
`websockets` (the legacy implementation) and `wsproto`, so the server's own code is the same and only
the protocol implementation differs. Results: bench/results/ws-implementations.json.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from harness import Database, common_arguments, load, peer, run_client, write_results

IMPLEMENTATIONS = ("websockets-sansio", "websockets", "wsproto")


def measure(impl: str, clients: int, events: int, log_dir: Path) -> dict[str, Any]:
    server = peer("broadcast", log_dir)
    server.command += ["--ws", impl]
    server.start()
    try:
        run_client("fanout.js", {"target": "broadcast", "url": server.url, "clients": 1, "mode": "idle"})
        time.sleep(1)
        before = server.rss()
        marks: dict[str, int] = {}

        def on_phase(phase: dict[str, Any]) -> None:
            if phase["phase"] == "connected":
                time.sleep(2)
                marks["after"] = server.rss()

        idle = run_client(
            "fanout.js",
            {"target": "broadcast", "url": server.url, "clients": clients, "mode": "idle", "idle": 0.1},
            on_phase=on_phase,
        )
        burst = run_client(
            "fanout.js",
            {"target": "broadcast", "url": server.url, "clients": clients, "mode": "burst", "events": events},
        )
    finally:
        server.stop()
    return {
        "implementation": impl,
        "clients": clients,
        "kib_per_connection": round((marks["after"] - before) / max(1, idle["ready"]) / 1024, 1),
        "deliveries_per_s": round(burst["deliveriesPerS"] or 0),
        "delivered": burst["delivered"],
        "expected": burst["expected"],
        "load": load(),
    }


@contextlib.contextmanager
def no_database() -> Iterator[Database]:
    yield Database("", "none (the peer keeps nothing)", "n/a")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--events", type=int, default=300)
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS))
    common_arguments(parser)
    args = parser.parse_args()
    runs = []
    with no_database() as database_, tempfile.TemporaryDirectory(prefix="herald-ws-") as logs:
        for impl in args.implementations.split(","):
            run = measure(impl, args.clients, args.events, Path(logs))
            runs.append(run)
            print(
                f"{impl:18} {run['kib_per_connection']:5} KiB per idle connection, "
                f"{run['deliveries_per_s']:7,} deliveries/s at saturation, load {run['load'][0]}",
                flush=True,
            )
        path = write_results(args.results, "ws-implementations", database_, runs)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
