"""Soak with faults: two instances, publishers and subscribers on both, random kill -9 of instances,
`pg_terminate_backend` of every connection, clients dropping; then a checker proves zero loss, zero
gaps and exactly-once per client after dedupe, and prints the counts.

    .venv/bin/python bench/soak.py [--minutes 10] [--subscribers 16] [--publishers 4] [--projects 4]

Publishers publish over HTTP as a careful producer does (docs/protocol.md §6): every event has its messageId
before the first attempt; a dropped connection or a 503 means "unknown", so it retries the same
messageId through the other instance until an answer comes. Subscribers are WebSocket clients that
survive anything: after any drop they reconnect to a random instance and resume (from their own last
seq with `after`, or from their durable cursor), ack as they go, keep everything they receive
(duplicates included), and drop their connection now and then on purpose (abruptly or cleanly).
A chaos loop, every few seconds, kills an instance with SIGKILL (restarted on the same port a moment
later), terminates every server-side database connection, or makes the network lose the reply of an
append: instance b reaches PostgreSQL through a TCP proxy (tests/proxy.py) that, when told, forwards
the next append and drops its reply, so the commit happens and b cannot know (docs/protocol.md §7.2).

The checker, once the faults stop and every subscriber has caught up:
* the log: in every project the seqs are exactly 1..head, and every acknowledged messageId is in it
  exactly once, at the seq its publisher was told;
* every subscriber, per project: after dedupe by seq, the whole log in order (no loss, no gap, nothing
  twice), each subscription contiguous from the position the server announced, nothing invented.
Results: bench/results/soak.json. Exit status 1 if any check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from harness import (
    Database,
    ServerProcess,
    common_arguments,
    create_project,
    database,
    herald,
    load,
    token,
    write_results,
)

from service import db
from tests.consumer import Consumer
from tests.proxy import ReplyDroppingProxy


@dataclass
class Publisher:
    index: int
    instances: list[ServerProcess]
    projects: list[str]
    rate: float
    rng: random.Random
    acked: dict[str, tuple[str, int]] = field(default_factory=dict)  # messageId -> (project, seq)
    retries: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        headers = {"Authorization": f"Bearer {token(('publish',))}"}
        async with httpx.AsyncClient(headers=headers, timeout=5) as http:
            n = 0
            while not stop.is_set():
                project = self.rng.choice(self.projects)
                message_id = f"pub{self.index}-{n}"
                n += 1
                seq = await self._publish(http, project, message_id)
                self.acked[message_id] = (project, seq)
                await asyncio.sleep(self.rng.expovariate(self.rate))

    async def _publish(self, http: httpx.AsyncClient, project: str, message_id: str) -> int:
        attempt = self.rng.randrange(len(self.instances))
        body = {"type": "agent_run_progress", "messageId": message_id,
                "data": {"runId": f"soak-{self.index}", "status": "running", "progress": 1}}  # fmt: skip
        while True:
            server = self.instances[attempt % len(self.instances)]
            try:
                r = await http.post(f"http://127.0.0.1:{server.port}/api/projects/{project}/events", json=body)
                if r.status_code in (200, 201):
                    seq: int = r.json()["seq"]
                    return seq
                if r.status_code != 503:
                    raise RuntimeError(f"unexpected answer {r.status_code}: {r.text}")
            except httpx.TransportError:
                pass
            self.retries += 1
            attempt += 1
            await asyncio.sleep(min(1.0, 0.02 * 2 ** min(attempt, 6)))


@dataclass
class Chaos:
    instances: list[ServerProcess]
    database_url: str
    proxy: ReplyDroppingProxy
    rng: random.Random
    period_s: float
    kills: int = 0
    cuts: int = 0
    terminated_connections: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.rng.uniform(0.5, 1.5) * self.period_s)
            if stop.is_set():
                return
            fault = self.rng.random()
            if fault < 1 / 3:
                # The next append through b commits and its reply is lost: b answers "may have been
                # written" with the messageId, and the publisher's retry with it appends nothing more.
                self.proxy.drop_reply_to(b"pub")
            elif fault < 2 / 3:
                victim = self.rng.choice(self.instances)
                self.kills += 1
                victim.stop(signal.SIGKILL)
                await asyncio.sleep(self.rng.uniform(0.2, 2.0))
                await asyncio.to_thread(victim.start)
            else:
                self.cuts += 1
                conn = await asyncpg.connect(db.asyncpg_dsn(self.database_url))
                try:
                    self.terminated_connections += await conn.fetchval(
                        """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                           WHERE datname = current_database() AND pid <> pg_backend_pid()"""
                    )
                finally:
                    await conn.close()


async def read_log(url: str, projects: list[str]) -> dict[str, dict[int, str]]:
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        log: dict[str, dict[int, str]] = {p: {} for p in projects}
        for r in await conn.fetch("SELECT project_id, seq, message_id FROM events ORDER BY project_id, seq"):
            log[r["project_id"]][r["seq"]] = r["message_id"]
        return log
    finally:
        await conn.close()


async def soak(args: argparse.Namespace, database_: Database, logs: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    projects = [f"soak-{i}" for i in range(args.projects)]
    async with database_.fresh() as url, ReplyDroppingProxy(url) as proxy:
        instances = [herald(url, logs, name="a"), herald(proxy.url, logs, name="b")]
        await asyncio.gather(*(asyncio.to_thread(s.start) for s in instances))
        try:
            for p in projects:
                await create_project(instances[0].url, p)
            urls = [f"ws://127.0.0.1:{s.port}/ws" for s in instances]  # a killed instance comes back there
            subscribers = [
                Consumer(
                    f"soak-{i}",
                    urls,
                    projects,
                    lambda: token(("subscribe",)),
                    resume="random",
                    churn=args.churn,
                    unsubscribes=False,  # drops only: each one is a resume through the log
                    pause=(0.05, 0.3),
                    rng=random.Random(rng.random()),
                )
                for i in range(args.subscribers)
            ]
            publishers = [
                Publisher(i, instances, projects, args.rate / args.publishers, random.Random(rng.random()))
                for i in range(args.publishers)
            ]
            chaos = Chaos(instances, url, proxy, random.Random(rng.random()), args.fault_every)
            stop_faults, stop_publishing, stop_reading = asyncio.Event(), asyncio.Event(), asyncio.Event()
            reading = [asyncio.create_task(s.run(stop_reading)) for s in subscribers]
            publishing = [asyncio.create_task(p.run(stop_publishing)) for p in publishers]
            faults = asyncio.create_task(chaos.run(stop_faults))
            started = time.monotonic()
            load_start = load()
            while time.monotonic() - started < args.minutes * 60:
                await asyncio.sleep(min(10, args.minutes * 60))
                published = sum(len(p.acked) for p in publishers)
                print(f"  {time.monotonic() - started:6.0f} s: {published} published, {chaos.kills} kills, "
                      f"{chaos.cuts} cuts, load {load()[0]}", flush=True)  # fmt: skip
            stop_faults.set()
            await faults
            for s in instances:
                if not s.running():
                    await asyncio.to_thread(s.start)
            stop_publishing.set()
            await asyncio.gather(*publishing)
            log = await read_log(url, projects)
            heads = {p: len(log[p]) for p in projects}
            deadline = time.monotonic() + args.settle
            while not all(s.holds(heads) for s in subscribers) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.2)  # the subscribers' progress is plain state, polled
            caught_up = sum(s.holds(heads) for s in subscribers)
            stop_reading.set()
            await asyncio.gather(*reading)
        finally:
            for s in instances:
                await asyncio.to_thread(s.stop, signal.SIGKILL)
    return judge(args, log, publishers, subscribers, chaos, caught_up, load_start)


def judge(
    args: argparse.Namespace,
    log: dict[str, dict[int, str]],
    publishers: list[Publisher],
    subscribers: list[Consumer],
    chaos: Chaos,
    caught_up: int,
    load_start: list[float],
) -> dict[str, Any]:
    acked = {mid: ps for p in publishers for mid, ps in p.acked.items()}
    in_log = [(p, seq, mid) for p, events in log.items() for seq, mid in events.items()]
    ids_in_log = [mid for _, _, mid in in_log]
    log_checks = {
        "contiguous": all(sorted(events) == list(range(1, len(events) + 1)) for events in log.values()),
        "acked_missing": sum(1 for mid, (p, seq) in acked.items() if log[p].get(seq) != mid),
        "appended_twice": len(ids_in_log) - len(set(ids_in_log)),
        "not_acked_but_in_log": len(set(ids_in_log) - set(acked)),
    }
    per_client = [s.tally(log) for s in subscribers]
    totals = {k: sum(c[k] for c in per_client) for k in per_client[0]}
    ok = (
        log_checks["contiguous"] and log_checks["acked_missing"] == 0 and log_checks["appended_twice"] == 0
        and caught_up == len(subscribers)
        and all(totals[k] == 0 for k in ("lost", "out_of_order", "segment_breaks", "invented", "errors"))
    )  # fmt: skip
    return {
        "minutes": args.minutes,
        "instances": 2,
        "projects": args.projects,
        "publishers": args.publishers,
        "subscribers": args.subscribers,
        "events": len(in_log),
        "published_acked": len(acked),
        "publish_retries": sum(p.retries for p in publishers),
        "kills": chaos.kills,
        "replies_dropped": chaos.proxy.dropped,  # commits whose answer was lost on the way back
        "connection_cuts": chaos.cuts,
        "terminated_backends": chaos.terminated_connections,
        "client_connections": sum(s.connections for s in subscribers),
        "client_drops_on_purpose": sum(s.drops_on_purpose for s in subscribers),
        "subscribes_refused_unavailable": sum(s.unavailable for s in subscribers),  # during cuts; retried
        "deliveries": totals["received"],
        "duplicates_absorbed": totals["duplicates"],
        "expected_per_client": len(in_log),
        "caught_up": caught_up,
        "log": log_checks,
        "clients": {k: v for k, v in totals.items() if k not in ("received", "duplicates")},
        "ok": ok,
        "load": {"start": load_start, "end": load()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--projects", type=int, default=4)
    parser.add_argument("--publishers", type=int, default=4)
    parser.add_argument("--rate", type=float, default=40, help="events/s over all publishers")
    parser.add_argument("--subscribers", type=int, default=16)
    parser.add_argument("--churn", type=float, default=8, help="mean seconds between a client's own drops")
    parser.add_argument("--fault-every", type=float, default=6, help="mean seconds between faults")
    parser.add_argument("--settle", type=float, default=90, help="seconds allowed to catch up at the end")
    parser.add_argument("--seed", type=int, default=1)
    common_arguments(parser)
    args = parser.parse_args()
    with database(args.database_url) as database_, tempfile.TemporaryDirectory(prefix="herald-soak-") as logs:
        result = asyncio.run(soak(args, database_, Path(logs)))
        path = write_results(args.results, "soak", database_, [result])
    print(json.dumps({k: v for k, v in result.items() if k != "load"}, indent=2))
    print(("PASS" if result["ok"] else "FAIL") + f": wrote {path}")
    raise SystemExit(0 if result["ok"] else 1)


if __name__ == "__main__":
    main()
