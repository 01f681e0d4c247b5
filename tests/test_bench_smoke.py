"""Every benchmark of bench/ runs for seconds with tiny numbers and produces sane results, so none can rot.

These check the harness, never the figures: no timing thresholds. Each runs the benchmark's own command
line (as `make bench` does) against the tests' PostgreSQL server, with its results in a temporary
directory, and needs Node and bench/client's packages (`make test` installs them).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import timeout

BENCH = Path(__file__).resolve().parent.parent / "bench"


def bench(script: str, *args: str, pg_url: str, results: Path, seconds: float = 180) -> dict[str, Any]:
    """Run bench/SCRIPT with ARGS; returns the JSON document it wrote (the last one, by time)."""
    if not (BENCH / "client" / "node_modules" / "ws").is_dir():
        pytest.fail("bench/client has no node_modules: run `make setup` or `cd bench/client && npm ci`")
    database = ["--database-url", pg_url] if pg_url else []
    out = subprocess.run(
        [sys.executable, str(BENCH / script), *args, *database, "--results", str(results)],
        capture_output=True,
        text=True,
        timeout=timeout(seconds),
        cwd=BENCH,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    written = sorted(results.glob("*.json"), key=lambda p: p.stat().st_mtime)
    assert written, out.stdout
    document: dict[str, Any] = json.loads(written[-1].read_text())
    assert document["machine"]["nproc"] and document["date"] and document["command"]
    return document


def test_fanout_latency_against_herald_and_both_peers(pg_url: str, tmp_path: Path) -> None:
    """The latency run delivers every event to every client of each target, without a gap (with the
    clients spread over two client processes, as `make bench` runs it)."""
    doc = bench(
        "fanout.py", "latency", "--matrix", "20x20", "--duration", "1", "--warmup", "0.5",
        "--client-processes", "2", pg_url=pg_url, results=tmp_path,
    )  # fmt: skip
    assert [r["target"] for r in doc["runs"]] == ["herald", "socketio", "broadcast"]
    for run in doc["runs"]:
        assert run["ready"] == 20
        assert run["published"] > 0 and run["delivered"] == run["expected"] == 20 * run["published"], run
        assert run["gaps"] == 0 and run["latencyMs"]["p99"] is not None and run["clientProcesses"] == 2
        assert run["server"]["cpu_share"] is not None and run["load"]["end"]


def test_fanout_burst_measures_deliveries_per_second(pg_url: str, tmp_path: Path) -> None:
    """The saturation run reports a delivery rate for each target, every event delivered."""
    doc = bench("fanout.py", "burst", "--clients", "20", "--events", "20", pg_url=pg_url, results=tmp_path)
    for run in doc["runs"]:
        assert run["delivered"] == run["expected"] == 400 and run["deliveriesPerS"] > 0


def test_publish_over_http_and_websocket_keeps_seqs_contiguous(pg_url: str, tmp_path: Path) -> None:
    """Publish throughput counts acknowledged events and proves the log and the acks contiguous."""
    doc = bench(
        "publish.py", "--cases", "http:1,batch:2,ws:3", "--duration", "1", "--connections", "8", "--window", "2",
        "--concurrency", "4", "--floor-seconds", "0.3", pg_url=pg_url, results=tmp_path,
    )  # fmt: skip
    for run in doc["runs"]:
        assert run["eventsPerS"] > 0 and run["failed"] == 0
        assert run["log"]["contiguous"] and run["ackedSeqsContiguous"] and run["log"]["heads_match_acks"]
    assert doc["floor"]["insert_per_s"] > 0 and doc["floor"]["insert_notify_per_s"] > 0


def test_catchup_reads_the_whole_backlog_in_order(pg_url: str, tmp_path: Path) -> None:
    """A client behind the head reads every event once, in order, and the time is reported."""
    doc = bench("catchup.py", "--events", "3000", "--repeat", "1", pg_url=pg_url, results=tmp_path)
    (run,) = doc["runs"]
    assert run["complete"] and run["received"] == 3000 and run["seconds"] > 0


def test_memory_idle_and_sustained(pg_url: str, tmp_path: Path) -> None:
    """RSS per idle connection is reported per target; the sustained run samples RSS and latency."""
    idle = bench(
        "memory.py", "idle", "--clients", "20", "--targets", "herald,broadcast", "--settle", "0.5",
        pg_url=pg_url, results=tmp_path,
    )  # fmt: skip
    assert [r["ready"] for r in idle["runs"]] == [20, 20]
    sustained = bench(
        "memory.py", "sustained", "--minutes", "0.15", "--clients", "10", "--rate", "20",
        pg_url=pg_url, results=tmp_path,
    )  # fmt: skip
    (run,) = sustained["runs"]
    assert run["samples"] and run["rss_last_mib"] > 0 and run["delivered"] == run["expected"] > 0


def test_soak_with_faults_passes_its_checker(pg_url: str, tmp_path: Path) -> None:
    """A short soak, with kill -9, connection cuts, lost commit replies and client drops, ends with zero
    loss, zero gaps and nothing appended twice."""
    doc = bench(
        "soak.py", "--minutes", "0.25", "--subscribers", "4", "--publishers", "2", "--projects", "2",
        "--fault-every", "4", "--churn", "4", pg_url=pg_url, results=tmp_path,
    )  # fmt: skip
    (run,) = doc["runs"]
    assert run["ok"] and run["events"] > 0 and run["clients"]["lost"] == 0, run
    assert run["log"]["appended_twice"] == 0 and run["replies_dropped"] >= 0, run


def test_ws_implementations_compares_all_three(tmp_path: Path) -> None:
    """Each uvicorn WebSocket implementation serves the peer: memory and deliveries are reported."""
    doc = bench("ws_implementations.py", "--clients", "10", "--events", "10", pg_url="", results=tmp_path)
    assert [r["implementation"] for r in doc["runs"]] == ["websockets-sansio", "websockets", "wsproto"]
    assert all(r["delivered"] == r["expected"] == 100 for r in doc["runs"])


def test_report_renders_tables_and_the_plot(pg_url: str, tmp_path: Path) -> None:
    """report.py turns results into the markdown tables and a PNG between the markers of the doc."""
    results = tmp_path / "results"
    bench(
        "fanout.py", "latency", "--targets", "herald,broadcast", "--matrix", "5x10,10x10", "--duration", "0.5",
        "--warmup", "0.2", pg_url=pg_url, results=results,
    )  # fmt: skip
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n\nprose\n\n<!-- results:start -->\nold\n<!-- results:end -->\n\nmore prose\n")
    out = subprocess.run(
        [sys.executable, str(BENCH / "report.py"), "--results", str(results), "--doc", str(doc)],
        capture_output=True,
        text=True,
        timeout=timeout(60),
        cwd=BENCH,
    )
    assert out.returncode == 0, out.stderr
    text = doc.read_text()
    assert "prose" in text and "more prose" in text and "old" not in text
    assert "| herald | 5 |" in text and "| broadcast | 10 |" in text
    assert (tmp_path / "benchmarks-latency.png").read_bytes()[:4] == b"\x89PNG"


def test_audit_queries_measures_the_auditors_reads(pg_url: str, tmp_path: Path) -> None:
    """bench/audit_queries.py: the direct fold, the stretches, read_at, history pages, appends, ack flushes."""
    doc = bench(
        "audit_queries.py", "--events", "20000", "--appends", "20", "--rounds", "1", pg_url=pg_url, results=tmp_path
    )
    run = doc["runs"][0]
    assert run["summarize"]["stretches"] == 2 and run["summarize"]["rows"] > 0
    assert set(run["historyWithStretches"]) == set(run["historyWithoutStretches"])
    assert all(case["rows"] > 0 for name, case in run["historyWithStretches"].items() if "subject" not in name)
    assert run["appends"]["medianUs"]["with"] > 0 and set(run["ackFlushes"]) == {"10", "100", "1000"}


def test_audit_chain_runs_versions_side_by_side(pg_url: str, tmp_path: Path) -> None:
    """bench/audit.py chain: every side of every round publishes into a contiguous log (this tree, twice
    under two names: no `git archive` needed for the smoke)."""
    doc = bench(
        "audit.py", "chain", "--sides", "a=.,b=.", "--rounds", "1", "--cases", "ws:1", "--duration", "1",
        pg_url=pg_url, results=tmp_path,
    )  # fmt: skip
    case = doc["runs"][0]["cases"]["ws:1"]
    assert set(case) == {"a", "b"} and all(side["median"] > 0 for side in case.values())
    assert case["a"]["costPercent"] == 0.0


def test_audit_read_verifies_and_exports_a_long_log(pg_url: str, tmp_path: Path) -> None:
    """bench/audit.py read: a seeded log verifies intact over HTTP and the CLI and exports every event."""
    doc = bench("audit.py", "read", "--events", "3000", pg_url=pg_url, results=tmp_path)
    run = doc["runs"][0]
    assert run["verifyHttp"]["eventsPerS"] > 0 and run["verifyCli"]["eventsPerS"] > 0
    assert run["export_ndjson"]["bytes"] > 0 and run["export_csv"]["bytes"] > 0


def test_snapshot_bench_runs_from_revision_0001_to_head(pg_url: str) -> None:
    """bench/snapshot.py (the state's cost, issue of the snapshot) starts at revision 0001 and migrates to
    head: it broke silently twice as later revisions changed the tables, so it runs here too."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "snapshot.py"), "--events", "3000", "--requests", "3", "--appends", "40",
         *(["--database-url", pg_url] if pg_url else [])],
        capture_output=True, text=True, timeout=timeout(180), cwd=BENCH,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "subjects in the state" in out.stdout and "GET /state?limit=1000" in out.stdout, out.stdout


def test_sizing_measures_bytes_per_event(pg_url: str) -> None:
    """bench/sizing.py (docs/operations.md, "Sizing"): a small demo-shaped log, measured in the database and
    in its archive."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "sizing.py"), "--events", "2000", *(["--database-url", pg_url] if pg_url else [])],
        capture_output=True, text=True, timeout=timeout(180), cwd=BENCH,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    sizes = json.loads(out.stdout)
    assert sizes["events"] == 2000 and sum(sizes["types"].values()) == 2000
    assert sizes["events_total_bytes"] == sizes["events_heap_bytes"] + sizes["events_index_bytes"] + sizes[
        "events_toast_bytes"]  # fmt: skip
    assert sizes["bytes_per_event"] > sizes["avg_data_json_bytes"] > 0 and sizes["archive_bytes_per_event"] > 0


def test_retention_prunes_a_log_on_each_side(pg_url: str, tmp_path: Path) -> None:
    """bench/retention.py: each side (this tree, twice) loads a log, prunes it to the kept events and
    reports the time and the space before and after."""
    doc = bench(
        "retention.py", "--sides", "a=.,b=.", "--events", "3000", "--keep", "100", pg_url=pg_url, results=tmp_path
    )
    for run in doc["runs"]:
        assert run["pruned"]["first"] == 1 and run["pruned"]["last"] == 2900 and run["pruneS"] > 0
        assert run["bytesBefore"] > 0 and run["partitioned"]


def test_scale_runs_every_wake_side_by_side(pg_url: str, tmp_path: Path) -> None:
    """bench/scale.py: one and two instances woken by LISTEN, the NATS bus and NOTIFY-free appends, then one
    process against two workers: every run appends without a failure and delivers every event without a gap."""
    if shutil.which("nats-server") is None and not Path("/usr/sbin/nats-server").exists():
        pytest.skip("no nats-server binary here: bench/scale.py measures the bus against a real NATS server")
    doc = bench(
        "scale.py", "--instances", "1,2", "--duration", "1", "--clients-per-instance", "3", "--rate", "10",
        "--workers-clients", "20", pg_url=pg_url, results=tmp_path, seconds=420,
    )  # fmt: skip
    wakes = [(r["instances"], r["wake"]) for r in doc["runs"] if "wake" in r]
    assert wakes == [(n, w) for n in (1, 2) for w in ("listen", "nats", "notify-free")]
    assert [r["workers"] for r in doc["runs"] if "workers" in r] == [1, 2]
    for run in doc["runs"]:
        latency = run.get("latency", run)
        assert latency["deliveredRatio"] == 1 and latency["gaps"] == 0, run
        if "durable" in run:
            durable = run["durable"]
            assert durable["failed"] == 0 and durable["logContiguous"] and durable["acksMatchLog"], run
            assert run["durable"]["eventsPerS"] > 0


def test_heads_learns_every_head_each_way(tmp_path: Path) -> None:
    """bench/heads.py: on its own server, at each wal_level, the relay learns every appended head by polling,
    by logical decoding (pgoutput) and by LISTEN; the NOTIFY floor runs with and without listeners."""
    out = subprocess.run(
        [sys.executable, str(BENCH / "heads.py"), "--duration", "1", "--rate", "50", "--writers", "2",
         "--listeners", "0,2", "--results", str(tmp_path)],
        capture_output=True, text=True, timeout=timeout(300), cwd=BENCH,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    rows = json.loads((tmp_path / "heads.json").read_text())["runs"]
    assert [r["wal_level"] for r in rows] == ["replica", "logical"]
    assert [w["way"] for w in rows[1]["learn"]] == ["decoding", "poll", "listen"]
    assert [n["listeners"] for n in rows[0]["notify"]] == [0, 2]
    assert all(n["transactionsPerS"] > 0 for n in rows[0]["notify"]) and rows[0]["notify"][1]["heard"] > 0
    for row in rows:
        assert row["durable"]["eventsPerS"] > 0
        for way in row["learn"]:
            assert way["learned"] == way["events"] == 50, way
