"""How the relay can learn the log's heads when appends do not NOTIFY: a poll of the projects' heads, or
logical decoding with the built-in `pgoutput`; LISTEN/NOTIFY beside them as the baseline.

    .venv/bin/python bench/heads.py [--duration 10] [--rate 500] [--interval-ms 10] [--writers 8]

On a PostgreSQL of its own (the embedded server's binaries, in a temporary directory), started first
with wal_level=replica and then with wal_level=logical:
  durable: `--writers` connections append (eventlog.append, one event per transaction, synchronous
    commit, no NOTIFY) as fast as they can for `--duration` s: events/s. With wal_level=logical a
    pgoutput slot on a publication of `projects (id, head)` is kept and drained by the relay meanwhile,
    as it would be in service.
  learn: appends at `--rate` events/s over 20 projects while the relay learns heads by
    poll:     SELECT id, head FROM projects every `--interval-ms`;
    decoding: pg_logical_slot_get_binary_changes on the slot every `--interval-ms` (asyncpg has no
              replication protocol, so the slot is read by SQL);
    listen:   appends that NOTIFY, heard on a LISTEN connection.
  For each: from an append's commit (its return to the appender) to the moment the relay knows that
  head, p50/p99; and the CPU the relay's backend used (seconds per second, read from /proc).
Results: bench/results/heads.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import psutil
from harness import ROOT, Database, migrate, pct, write_results

sys.path.insert(0, str(ROOT))
from service import db, eventlog, partitions

PROJECTS = [f"heads-{i}" for i in range(20)]
SLOT, PUBLICATION = "herald_heads", "herald_heads"
CHANGES = (
    "SELECT data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)"
)


@contextlib.asynccontextmanager
async def server(directory: Path, wal_level: str) -> AsyncIterator[str]:
    """The embedded server in `directory`, (re)started with `wal_level`; yields a migrated database's URL."""
    embedded = await asyncio.to_thread(db.start_embedded, directory, "heads")
    conn = await asyncpg.connect(embedded.url)
    try:
        await conn.execute(f"ALTER SYSTEM SET wal_level = '{wal_level}'")
    finally:
        await conn.close()
    await asyncio.to_thread(embedded.stop)
    embedded = await asyncio.to_thread(db.start_embedded, directory, "heads")
    try:
        conn = await asyncpg.connect(embedded.url)
        try:
            assert await conn.fetchval("SHOW wal_level") == wal_level
        finally:
            await conn.close()
        await asyncio.to_thread(migrate, embedded.url)
        yield embedded.url
    finally:
        await asyncio.to_thread(embedded.stop)


async def setup(url: str, *, slot: bool) -> None:
    conn = await asyncpg.connect(url)
    try:
        for project_id in PROJECTS:
            await conn.execute("INSERT INTO projects (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", project_id)
            await partitions.extend(conn, project_id, upto=1)  # as creating a project does
        if slot:
            await conn.execute(
                f"CREATE PUBLICATION {PUBLICATION} FOR TABLE projects (id, head) WITH (publish = 'update')"
            )
            await conn.execute(f"SELECT pg_create_logical_replication_slot('{SLOT}', 'pgoutput')")
    finally:
        await conn.close()


def backend_cpu(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def parse_heads(messages: list[bytes], relation: list[int | None]) -> dict[str, int]:
    """The (id, head) of each UPDATE of `projects` in pgoutput messages (protocol version 1): 'R' names
    the relation, 'U' carries the new tuple of the published columns, as text."""
    heads: dict[str, int] = {}
    for m in messages:
        kind = m[:1]
        if kind == b"R":
            relation[0] = struct.unpack_from("!I", m, 1)[0]
        elif kind == b"U":
            at = 5
            if m[at : at + 1] in (b"K", b"O"):  # an old tuple (not with the default replica identity)
                at = _skip_tuple(m, at + 1)
            assert m[at : at + 1] == b"N"
            values = _tuple(m, at + 1)
            heads[values[0]] = int(values[1])
    return heads


def _tuple(m: bytes, at: int) -> list[str]:
    (count,) = struct.unpack_from("!H", m, at)
    at += 2
    values = []
    for _ in range(count):
        kind = m[at : at + 1]
        at += 1
        if kind == b"t":
            (length,) = struct.unpack_from("!I", m, at)
            values.append(m[at + 4 : at + 4 + length].decode())
            at += 4 + length
        else:
            values.append("")
    return values


def _skip_tuple(m: bytes, at: int) -> int:
    (count,) = struct.unpack_from("!H", m, at)
    at += 2
    for _ in range(count):
        kind = m[at : at + 1]
        at += 1
        if kind == b"t":
            (length,) = struct.unpack_from("!I", m, at)
            at += 4 + length
    return at


Learned = Callable[[dict[str, int]], None]


async def poll(
    conn: asyncpg.Connection, learned: Callable[[dict[str, int]], None], stop: asyncio.Event, interval: float
) -> None:
    while not stop.is_set():
        learned(dict(await conn.fetch("SELECT id, head FROM projects")))
        await asyncio.sleep(interval)


async def decode(
    conn: asyncpg.Connection, learned: Callable[[dict[str, int]], None], stop: asyncio.Event, interval: float
) -> None:
    relation: list[int | None] = [None]
    while not stop.is_set():
        rows = await conn.fetch(CHANGES, SLOT, PUBLICATION)
        if rows:
            learned(parse_heads([r["data"] for r in rows], relation))
        await asyncio.sleep(interval)


async def listen(
    conn: asyncpg.Connection, learned: Callable[[dict[str, int]], None], stop: asyncio.Event, interval: float
) -> None:
    def heard(_c: Any, _pid: int, _channel: str, payload: str) -> None:
        project_id, _, seq = payload.rpartition(":")
        learned({project_id: int(seq)})

    await conn.add_listener(eventlog.NOTIFY_CHANNEL, heard)
    await stop.wait()


async def learn(url: str, way: str, rate: float, duration: float, interval: float) -> dict[str, Any]:
    """Append at `rate` (round robin over the projects) while the relay learns the heads `way`."""
    relay = await asyncpg.connect(url)
    writers = [await asyncpg.connect(url) for _ in range(4)]
    committed: dict[tuple[str, int], float] = {}
    delays: list[float] = []
    known: dict[str, int] = {}
    early: set[tuple[str, int]] = set()

    def learned(heads: dict[str, int]) -> None:
        now = time.perf_counter()
        for project_id, head in heads.items():
            before = known.get(project_id, 0)
            for seq in range(before + 1, head + 1):
                at = committed.pop((project_id, seq), None)
                if at is None:  # heard before its append returned to the appender
                    early.add((project_id, seq))
                else:
                    delays.append(now - at)
            known[project_id] = max(before, head)

    await relay.execute("SELECT 1")
    for project_id, head in await relay.fetch("SELECT id, head FROM projects"):
        known[project_id] = head
    if way == "decoding":  # start from now: what the earlier runs left in the slot is not this run's
        await relay.fetch(CHANGES, SLOT, PUBLICATION)
    pid = await relay.fetchval("SELECT pg_backend_pid()")
    stop = asyncio.Event()
    runner = {"poll": poll, "decoding": decode, "listen": listen}[way]
    task = asyncio.create_task(runner(relay, learned, stop, interval))
    cpu0, wall0 = backend_cpu(pid), time.monotonic()
    queue: asyncio.Queue[int] = asyncio.Queue()

    async def writer(conn: asyncpg.Connection) -> None:
        while True:
            i = await queue.get()
            if i < 0:
                return
            project_id = PROJECTS[i % len(PROJECTS)]
            stored, _ = await eventlog.append(
                conn, project_id=project_id, type="note", data={"text": f"e{i}"}, notify=way == "listen"
            )
            key = (project_id, stored.seq)
            if key in early:
                early.discard(key)
                delays.append(0.0)
            else:
                committed[key] = time.perf_counter()

    workers = [asyncio.create_task(writer(c)) for c in writers]
    start = time.perf_counter()
    total = int(rate * duration)
    for i in range(total):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        queue.put_nowait(i)
    for _ in workers:
        queue.put_nowait(-1)
    await asyncio.gather(*workers)
    deadline = time.monotonic() + 5
    while committed and time.monotonic() < deadline:  # noqa: ASYNC110 - the last heads, learned or never
        await asyncio.sleep(interval)
    stop.set()
    await task
    wall = time.monotonic() - wall0
    cpu = backend_cpu(pid) - cpu0
    for c in (relay, *writers):
        await c.close()
    return {
        "way": way,
        "rate": rate,
        "events": total,
        "learned": len(delays),
        "delayMs": {"p50": round(pct(delays, 0.5) * 1000, 2), "p99": round(pct(delays, 0.99) * 1000, 2)},
        "relayBackendCpu": round(cpu / wall, 3),
    }


async def durable(url: str, writers: int, duration: float, *, drain: bool, interval: float) -> dict[str, Any]:
    """One event per transaction from `writers` connections, as fast as they commit."""
    conns = [await asyncpg.connect(url) for _ in range(writers)]
    counts = [0] * writers
    stop = asyncio.Event()

    async def writer(k: int) -> None:
        i = 0
        while not stop.is_set():
            await eventlog.append(
                conns[k], project_id=PROJECTS[(k + i) % len(PROJECTS)], type="note", data={"text": "x"}, notify=False
            )
            counts[k] += 1
            i += 1

    drainer = None
    relay = None
    if drain:
        relay = await asyncpg.connect(url)
        drainer = asyncio.create_task(decode(relay, lambda heads: None, stop, interval))
    tasks = [asyncio.create_task(writer(k)) for k in range(writers)]
    meter = await asyncpg.connect(url)  # the writers' connections are busy
    wal0 = await meter.fetchval("SELECT pg_current_wal_lsn()")
    await asyncio.sleep(duration)
    stop.set()
    await asyncio.gather(*tasks)
    wal_bytes = int(await meter.fetchval("SELECT pg_current_wal_lsn()")) - int(wal0)  # asyncpg: an int
    await meter.close()
    if drainer is not None:
        await drainer
    for c in (*conns, *([relay] if relay else [])):
        await c.close()
    events = sum(counts)
    return {"eventsPerS": round(events / duration), "walBytesPerEvent": round(float(wal_bytes) / max(1, events))}


async def notify_floor(url: str, listeners: int, writers: int, duration: float) -> dict[str, Any]:
    """One-row transactions from `writers` connections for `duration` s, each inserting a row and NOTIFYing,
    while `listeners` other sessions LISTEN (as that many instances would): transactions/s."""
    setup_conn = await asyncpg.connect(url)
    await setup_conn.execute("CREATE TABLE IF NOT EXISTS notify_floor (id bigserial PRIMARY KEY, payload text)")
    await setup_conn.close()
    heard = [0]
    ears = [await asyncpg.connect(url) for _ in range(listeners)]
    for ear in ears:
        await ear.add_listener("floor", lambda *_: heard.__setitem__(0, heard[0] + 1))
    conns = [await asyncpg.connect(url) for _ in range(writers)]
    stop = asyncio.Event()
    counts = [0] * writers

    async def writer(k: int) -> None:
        while not stop.is_set():
            await conns[k].execute(
                "BEGIN; INSERT INTO notify_floor (payload) VALUES ('p:1'); SELECT pg_notify('floor', 'p:1'); COMMIT"
            )
            counts[k] += 1

    tasks = [asyncio.create_task(writer(k)) for k in range(writers)]
    await asyncio.sleep(duration)
    stop.set()
    await asyncio.gather(*tasks)
    for c in (*conns, *ears):
        await c.close()
    return {"listeners": listeners, "transactionsPerS": round(sum(counts) / duration), "heard": heard[0]}


async def run(args: argparse.Namespace) -> tuple[list[dict[str, Any]], str]:
    rows: list[dict[str, Any]] = []
    version = ""
    interval = args.interval_ms / 1000
    with tempfile.TemporaryDirectory(prefix="herald-heads-") as directory:
        for wal_level in ("replica", "logical"):
            async with server(Path(directory) / wal_level, wal_level) as url:
                await setup(url, slot=wal_level == "logical")
                conn = await asyncpg.connect(url)
                version = await conn.fetchval("SHOW server_version")
                await conn.close()
                row: dict[str, Any] = {"wal_level": wal_level}
                row["durable"] = await durable(
                    url, args.writers, args.duration, drain=wal_level == "logical", interval=interval
                )
                if wal_level == "replica" and args.listeners:
                    row["notify"] = [
                        await notify_floor(url, int(n), args.writers, args.duration) for n in args.listeners.split(",")
                    ]
                ways = ("decoding", "poll", "listen") if wal_level == "logical" else ("poll", "listen")
                row["learn"] = [await learn(url, way, args.rate, args.duration, interval) for way in ways]
                rows.append(row)
                print(describe(row), flush=True)
    return rows, version


def describe(row: dict[str, Any]) -> str:
    d = row["durable"]
    lines = [
        f"wal_level={row['wal_level']}: durable {d['eventsPerS']:,} events/s, {d['walBytesPerEvent']} WAL bytes/event"
    ]
    for n in row.get("notify", []):
        lines.append(f"  insert + NOTIFY with {n['listeners']:2} listeners: {n['transactionsPerS']:,} transactions/s")
    for r in row["learn"]:
        lines.append(
            f"  {r['way']:8} learned {r['learned']}/{r['events']}  p50 {r['delayMs']['p50']} ms"
            f"  p99 {r['delayMs']['p99']} ms  relay backend cpu {r['relayBackendCpu']}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--interval-ms", type=float, default=10)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--listeners", default="0,1,16,64", help="LISTEN sessions for the NOTIFY floor ('' skips it)")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    rows, version = asyncio.run(run(args))
    path = write_results(
        args.results, "heads", Database("", "embedded PostgreSQL, restarted per wal_level", version), rows
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
