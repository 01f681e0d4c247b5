"""The auditor's reads on a long log: history filters, the state at a seq, and what their indexes cost
an append.

    .venv/bin/python bench/audit_queries.py [--events 1000000] [--appends 1000] [--rounds 5] [--database-url URL]

Without --database-url (or BENCH_DATABASE_URL) it runs on an embedded PostgreSQL. Steps, each timed, on a
fresh database (results: bench/results/audit-queries.json; docs/delivery.md, "The auditor's reads"):

1. Two projects whose logs interleave, written in one statement: `big` (EVENTS) and `other` (a quarter
   of that), one event a second, 60% agent runs over 20,000 runIds, 15% pull-request events over 5,000
   PRs, 25% validations over 10 checks x 3,000 head SHAs. (The hash chain is not measured here: the
   events carry a placeholder hash; bench/audit.py measures the chain.)
2. The state at a seq folded directly from the log (DISTINCT ON over the events up to it, and the
   cheaper GROUP BY form), which is what the stretches avoid.
3. Summarizing the log into stretches (what the service does once after the upgrade, then every 10,000
   events), and `state.read_at` at several seqs and limits.
4. History pages (101 rows, as `limit=100` reads) with time windows at the start, middle and end of the
   log, with and without the stretches, and with subjects; the plan each one got.
5. Appends with and without the indexes of migration 0007, alternating rounds.
6. Flushing held acks: the statement that also writes the ack ledger, against the upsert before it.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from harness import common_arguments, database, write_results

from service import cursors, db, eventlog, partitions, state

T0 = datetime(2026, 1, 1, tzinfo=UTC)

_SEED = """
INSERT INTO events (project_id, seq, message_id, type, data, created_at, hash)
SELECT project_id, row_number() OVER (PARTITION BY project_id ORDER BY g), 'bulk-' || g, type, data, created_at,
    sha256(g::text::bytea)
FROM (
    SELECT g, CASE WHEN g % 5 = 0 THEN 'other' ELSE 'big' END AS project_id, kind.type,
        CASE kind.type
        WHEN 'agent_run_progress' THEN jsonb_build_object(
            'runId', 'run-' || mod(hashint4(g)::bigint + 2147483648, 20000),
            'status', (ARRAY['queued', 'running', 'succeeded'])[g % 3 + 1],
            'progress', g % 101, 'step', 'step ' || g % 7)
        WHEN 'pr_notification' THEN jsonb_build_object(
            'action', 'synchronize', 'number', mod(hashint4(-g)::bigint + 2147483648, 5000) + 1,
            'title', 'A pull request ' || g, 'url', 'https://github.com/octo/demo/pull/' || g % 5000,
            'repo', 'octo/demo', 'headSha', md5((g / 7)::text))
        ELSE jsonb_build_object(
            'name', 'check ' || mod(hashint4(g + 1)::bigint + 2147483648, 10), 'status', 'completed',
            'conclusion', 'success', 'headSha', md5(mod(hashint4(g + 2)::bigint + 2147483648, 3000)::text),
            'prNumber', mod(hashint4(g + 3)::bigint + 2147483648, 5000) + 1, 'url', 'https://ci.example/' || g)
        END AS data,
        '2026-01-01T00:00:00Z'::timestamptz + make_interval(secs => g) AS created_at
    FROM generate_series(1, {total}) AS g
    CROSS JOIN LATERAL (
        SELECT CASE WHEN g % 20 < 12 THEN 'agent_run_progress' WHEN g % 20 < 15 THEN 'pr_notification'
                    ELSE 'validation_update' END AS type
    ) AS kind
) AS src ORDER BY g;
UPDATE projects SET head = (SELECT coalesce(max(seq), 0) FROM events WHERE project_id = projects.id);
"""

_FOLD_DISTINCT = f"""
WITH latest AS (
    SELECT DISTINCT ON (type, subject) type, subject, seq
    FROM (SELECT type, seq, {eventlog.SUBJECT_HASH_SQL} AS subject FROM events
          WHERE project_id = 'big' AND seq <= $1 AND type = ANY($2::text[])) AS keyed
    ORDER BY type, subject, seq DESC
), ranked AS (SELECT type, seq, row_number() OVER (PARTITION BY type ORDER BY seq DESC) AS rank FROM latest)
SELECT type, seq FROM ranked WHERE rank <= 50
"""

_FOLD_GROUP = f"""
WITH latest AS (
    SELECT type, max(seq) AS seq FROM events WHERE project_id = 'big' AND seq <= $1 AND type = ANY($2::text[])
    GROUP BY type, {eventlog.SUBJECT_HASH_SQL}
), ranked AS (SELECT type, seq, row_number() OVER (PARTITION BY type ORDER BY seq DESC) AS rank FROM latest)
SELECT type, seq FROM ranked WHERE rank <= 50
"""

# How held acks were persisted before the ledger: the cursor upsert, once per ack, in one round trip.
_ADVANCE_BEFORE = """
INSERT INTO cursors AS c (project_id, "user", client_id, seq, updated_at)
SELECT p.id, $2, $3, $4, now() FROM projects p WHERE p.id = $1 AND p.head >= $4
ON CONFLICT (project_id, "user", client_id)
DO UPDATE SET seq = GREATEST(c.seq, EXCLUDED.seq), updated_at = EXCLUDED.updated_at
"""

NEW_INDEXES = ("events_created_at", "events_run_id", "events_head_sha", "events_pr_number")


async def timed(call: Any, repeat: int = 5) -> float:
    """The median of `repeat` runs, in milliseconds."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def history_cases(conn: asyncpg.Connection, total: int, label: str) -> dict[str, Any]:
    sha = await conn.fetchval(
        "SELECT data ->> 'headSha' FROM events WHERE project_id = 'big' AND type = 'validation_update' LIMIT 1"
    )
    hour = 3600
    cases = {
        "no filter": eventlog.Filter(),
        "1 h at the start": eventlog.Filter(since=at(0), until=at(hour)),
        "1 h in the middle": eventlog.Filter(since=at(total / 2), until=at(total / 2 + hour)),
        "1 h at the end": eventlog.Filter(since=at(total - 2 * hour), until=at(total - hour)),
        "1 day in the middle": eventlog.Filter(since=at(total / 2), until=at(total / 2 + 24 * hour)),
        "since the middle": eventlog.Filter(since=at(total / 2)),
        "subject: a runId": eventlog.Filter(subject="run-77"),
        "subject: a head sha": eventlog.Filter(subject=sha),
        "subject: a PR number": eventlog.Filter(subject="123"),
        "subject + 1 day": eventlog.Filter(subject="123", since=at(total / 2), until=at(total / 2 + 24 * hour)),
    }
    print(f"\nhistory pages of 101 rows ({label}):")
    out: dict[str, Any] = {}
    for name, where in cases.items():
        ranges = await eventlog.seq_ranges(conn, "big", where)
        sql, args = eventlog._page_query(
            "big", after=0, before=None, where=where, ranges=ranges, order="asc", limit=101
        )
        plan = await conn.fetch("EXPLAIN " + sql, *args)
        scans = sorted({line[0].split(" on ")[0].split("->")[-1].strip() for line in plan if " on events" in line[0]})
        ms = await timed(lambda where=where: eventlog.read_page(conn, "big", limit=100, where=where))
        rows = len((await eventlog.read_page(conn, "big", limit=100, where=where))[0])
        print(f"  {name:22} {ms:8.2f} ms  {rows:3} rows  {', '.join(scans)}")
        out[name] = {"ms": round(ms, 2), "rows": rows, "scans": scans}
    return out


async def appends(conn: asyncpg.Connection, count: int, rounds: int) -> dict[str, Any]:
    rnd = random.Random(7)

    async def round_of_appends() -> float:
        samples = []
        for _ in range(count):
            roll = rnd.random()
            if roll < 0.6:
                kind, data = "agent_run_progress", {"runId": f"run-{rnd.randrange(20000)}", "status": "running",
                                                    "progress": rnd.randrange(101)}  # fmt: skip
            elif roll < 0.75:
                n = rnd.randrange(1, 5001)
                kind, data = "pr_notification", {"action": "opened", "number": n, "title": "t", "url": "u",
                                                 "repo": "octo/demo", "headSha": f"{n:040x}"}  # fmt: skip
            else:
                kind, data = "validation_update", {"name": "ci", "status": "queued", "headSha": "abc", "prNumber": 9}
            started = time.perf_counter()
            await eventlog.append(conn, project_id="other", type=kind, data=data)
            samples.append(time.perf_counter() - started)
        return statistics.median(samples) * 1e6

    definitions = {
        r["indexname"]: r["indexdef"]
        for r in await conn.fetch("SELECT indexname, indexdef FROM pg_indexes WHERE indexname = ANY($1)", NEW_INDEXES)
    }
    results: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(rounds):
        results["with"].append(await round_of_appends())
        for name in NEW_INDEXES:
            await conn.execute(f"DROP INDEX {name}")
        results["without"].append(await round_of_appends())
        for definition in definitions.values():
            await conn.execute(definition)
    with_, without = statistics.median(results["with"]), statistics.median(results["without"])
    print(f"\nappends (median of {rounds} rounds of {count}): {with_:.0f} us with the 0007 indexes, "
          f"{without:.0f} us without ({(with_ / without - 1) * 100:+.1f}%)")  # fmt: skip
    return {"perRound": count, "rounds": rounds, "medianUs": {"with": round(with_), "without": round(without)},
            "costPercent": round((with_ / without - 1) * 100, 1)}  # fmt: skip


async def ack_flushes(conn: asyncpg.Connection, rounds: int = 30) -> dict[str, Any]:
    print("\nflushing held acks, every one moving its cursor (median of 30):")
    out: dict[str, Any] = {}
    seq = 0
    for count in (10, 100, 1000):
        samples: dict[str, list[float]] = {"before": [], "ledger": []}
        for _ in range(rounds):
            for kind in samples:
                seq += 1
                acks = [("big", f"user-{i % 10}", f"tab-{i}", seq) for i in range(count)]
                started = time.perf_counter()
                if kind == "before":
                    await conn.executemany(_ADVANCE_BEFORE, acks)
                else:
                    await cursors.advance_many(conn, acks)
                samples[kind].append((time.perf_counter() - started) * 1000)
        before, ledger = statistics.median(samples["before"]), statistics.median(samples["ledger"])
        print(f"  {count:5} acks: {before:6.2f} ms before the ledger, {ledger:6.2f} ms with it "
              f"({(ledger / before - 1) * 100:+.0f}%)")  # fmt: skip
        out[str(count)] = {"beforeMs": round(before, 2), "withLedgerMs": round(ledger, 2)}
    return out


async def bench(url: str, events: int, appends_per_round: int, rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {"events": events}
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        total = events * 5 // 4
        started = time.perf_counter()
        await conn.execute("INSERT INTO projects (id, name) VALUES ('big', 'big'), ('other', 'other')")
        for pid in ("big", "other"):  # the log's partitions for every seq the seed writes (partitions.py)
            await partitions.extend(conn, pid, upto=total)
        await conn.execute(_SEED.format(total=total))
        await conn.execute("INSERT INTO event_ids SELECT project_id, message_id, seq FROM events")
        await conn.execute("VACUUM ANALYZE events")
        print(f"{total:,} events written ({events:,} in project big): {time.perf_counter() - started:.1f} s")
        sizes = {
            r["name"]: r["size"]
            for r in await conn.fetch(
                "SELECT indexrelid::regclass::text AS name, pg_relation_size(indexrelid) AS size "
                "FROM pg_index WHERE indrelid = 'events'::regclass ORDER BY 1"
            )
        }
        table = await conn.fetchval("SELECT pg_table_size('events')")
        out["sizesMiB"] = {name: round(size / 2**20, 1) for name, size in {"events": table, **sizes}.items()}
        print("sizes (MiB): " + ", ".join(f"{name} {size}" for name, size in out["sizesMiB"].items()))

        types = list(state.LATEST)
        print("\nthe state at a seq, folded directly from the log (limit 50):")
        out["directFoldMs"] = {}
        for n in (events // 2, events):
            distinct = await timed(lambda n=n: conn.fetch(_FOLD_DISTINCT, n, types), repeat=3)
            grouped = await timed(lambda n=n: conn.fetch(_FOLD_GROUP, n, types), repeat=3)
            print(f"  at {n:>9,}: DISTINCT ON {distinct:7.0f} ms, GROUP BY {grouped:7.0f} ms")
            out["directFoldMs"][str(n)] = {"distinctOn": round(distinct), "groupBy": round(grouped)}

        out["historyWithoutStretches"] = await history_cases(conn, total, "before the stretches")

        started = time.perf_counter()
        await state.summarize(conn, "big", upto=events)
        seconds = time.perf_counter() - started
        stretches = events // state.STRETCH
        rows = await conn.fetchval("SELECT count(*) FROM stretch_latest WHERE project_id = 'big'")
        size = await conn.fetchval("SELECT pg_total_relation_size('stretch_latest')")
        each = seconds / max(stretches, 1) * 1000
        print(f"\nsummarizing {stretches} stretches: {seconds:.1f} s ({each:.0f} ms each); {rows:,} subject rows "
              f"({rows / events:.2f} per event), {size / 2**20:.0f} MiB with its key")  # fmt: skip
        out["summarize"] = {"stretches": stretches, "seconds": round(seconds, 1), "rows": rows,
                            "MiB": round(size / 2**20, 1)}  # fmt: skip

        print("\nstate.read_at:")
        out["readAtMs"] = {}
        for n in (1, events // 2 + 4321, events - 1, events):
            for limit in (50, 1000):
                ms = await timed(lambda n=n, limit=limit: state.read_at(conn, "big", n, limit=limit))
                print(f"  at {n:>9,}, limit {limit:4}: {ms:7.1f} ms")
                out["readAtMs"][f"{n}/{limit}"] = round(ms, 1)

        out["historyWithStretches"] = await history_cases(conn, total, "with the stretches")
        out["appends"] = await appends(conn, appends_per_round, rounds)
        out["ackFlushes"] = await ack_flushes(conn)
    finally:
        await conn.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000, help="events in the measured project")
    parser.add_argument("--appends", type=int, default=1000, help="appends per round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of appends with and without the indexes")
    common_arguments(parser)
    args = parser.parse_args()

    async def run(database_: Any) -> dict[str, Any]:
        async with database_.fresh() as url:
            return await bench(url, args.events, args.appends, args.rounds)

    with database(args.database_url) as database_:
        result = asyncio.run(run(database_))
        path = write_results(args.results, "audit-queries", database_, [result])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
