"""Render bench/results/*.json as the results tables of docs/benchmarks.md and a PNG of latency against N.

    .venv/bin/python bench/report.py [--results bench/results] [--doc docs/benchmarks.md]

The tables replace whatever is between `<!-- results:start -->` and `<!-- results:end -->` in the
document (the prose around them is written by hand); the plot goes beside it as benchmarks-latency.png.
Every figure is shown with its target, the machine's load while it was measured, and the command,
date and machine of the run that produced it. Results in bench/results/baseline/ (the same benchmarks
run with BENCH_HERALD_ROOT set to an older checkout) add a before/after table; results in any other
subdirectory (the same benchmarks in another configuration) are shown under the matching tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from harness import RESULTS, ROOT

START, END = "<!-- results:start -->", "<!-- results:end -->"


def load_results(directory: Path) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def fmt(x: Any, digits: int = 1) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("met" if ok else "**missed**")


def provenance(doc: dict[str, Any]) -> str:
    m = doc["machine"]
    return (
        f"`{doc['command']}` — {doc['date']} — {m['nproc']} cores ({m['cpu']}), {m['memory_gib']} GiB, "
        f"PostgreSQL {m['postgresql']}, {doc['database']}, Python {m['python']}, Node {m['node']}"
        + (f", Herald env {doc['herald_env']}" if doc.get("herald_env") else "")
    )


def load_of(run: dict[str, Any]) -> str:
    value = run.get("load")
    if isinstance(value, dict):
        value = value.get("end") or value.get("start")
    return fmt(value[0], 2) if value else "-"


# Targets of the issue, keyed by (clients, rate) for latency: p99 in ms.
LATENCY_TARGETS = {(1000, 10.0): 25.0, (100, 100.0): 10.0, (5000, 2.0): 50.0}


def fanout_latency(doc: dict[str, Any]) -> list[str]:
    lines = [
        "### Fan-out latency (publish start → received, one clock)",
        "",
        provenance(doc),
        "",
        "| target | N | events/s | client processes | p50 ms | p99 ms | max ms | delivered / expected | gaps | "
        "server CPU | load | p99 target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in doc["runs"]:
        lat = r["latencyMs"]
        goal = LATENCY_TARGETS.get((r["clients"], float(r["rate"]))) if r["target"] == "herald" else None
        target = f"≤ {goal:g} ms: {verdict(lat['p99'] is not None and lat['p99'] <= goal)}" if goal else ""
        lines.append(
            f"| {r['target']} | {fmt(r['clients'])} | {r['rate']:g} | {r.get('clientProcesses', 1)} | "
            f"{fmt(lat['p50'])} | {fmt(lat['p99'])} | "
            f"{fmt(lat['max'])} | {fmt(r['delivered'])} / {fmt(r['expected'])} | {fmt(r['gaps'])} | "
            f"{fmt(r['server']['cpu_share'], 2)} | {load_of(r)} | {target} |"
        )
    return lines


def fanout_burst(doc: dict[str, Any]) -> list[str]:
    runs = doc["runs"]
    best: dict[str, float] = {}
    for r in runs:
        best[r["target"]] = max(best.get(r["target"], 0.0), r["deliveriesPerS"] or 0.0)
    lines = [
        "### Fan-out throughput at saturation",
        "",
        provenance(doc),
        "",
        "| target | N | events | deliveries/s | delivered / expected | gaps | p99 ms (queueing) | server CPU | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        lines.append(
            f"| {r['target']} | {fmt(r['clients'])} | {fmt(r['events'])} | {fmt(r['deliveriesPerS'], 0)} | "
            f"{fmt(r['delivered'])} / {fmt(r['expected'])} | {fmt(r['gaps'])} | {fmt(r['latencyMs']['p99'])} | "
            f"{fmt(r['server']['cpu_share'], 2)} | {load_of(r)} |"
        )
    herald = best.get("herald")
    if herald:
        lines += [
            "",
            f"Herald (best run): {fmt(herald, 0)} deliveries/s; target ≥ 80,000: {verdict(herald >= 80_000)}.",
        ]
        for peer, goal in (("broadcast", 1.0), ("socketio", 5.0)):
            if best.get(peer):
                ratio = herald / best[peer]
                lines.append(f"Ratio to {peer}: {ratio:.2f}x (target ≥ {goal:g}x: {verdict(ratio >= goal)}).")
    return lines


def publish(doc: dict[str, Any]) -> list[str]:
    lines = [
        "### Publish throughput (durable, synchronous_commit on, seq contiguous per project)",
        "",
        provenance(doc),
        "",
        "| via | projects | in flight | events per request | events/s | p50 ms | p99 ms | failed | log contiguous "
        "| acks = heads | server CPU | load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|",
    ]
    for r in doc["runs"]:
        lat = r["latencyMs"]
        lines.append(
            f"| {r['via']} | {r['projects']} | {r['concurrency']} | {r.get('batch') or 1} | "
            f"{fmt(r['eventsPerS'], 0)} | {fmt(lat['p50'])} | {fmt(lat['p99'])} | {r['failed']} | "
            f"{r['log']['contiguous'] and r['ackedSeqsContiguous']} | "
            f"{r['log']['heads_match_acks']} | {fmt(r['server']['cpu_share'], 2)} | {load_of(r)} |"
        )
    for via, what in (("ws", "WebSocket publish messages"), ("batch", "the batch HTTP endpoint")):
        many = [r["eventsPerS"] for r in doc["runs"] if r["via"] == via and r["projects"] > 1]
        if many:
            lines += ["", f"Target ≥ 10,000 events/s across projects through {what}: {verdict(max(many) >= 10_000)}."]
    if doc.get("floor"):
        f = doc["floor"]
        lines += [
            "",
            f"The database alone, {f['connections']} connections, one-row transactions: "
            f"{fmt(f['insert_per_s'])} inserts/s, {fmt(f['insert_notify_per_s'])} insert+NOTIFY/s.",
        ]
    return lines


def catchup(doc: dict[str, Any]) -> list[str]:
    lines = [
        "### Catch-up",
        "",
        provenance(doc),
        "",
        "| behind | server | seconds | events/s | complete, in order | load | target < 3 s |",
        "|---:|---|---:|---:|---|---:|---|",
    ]
    for r in doc["runs"]:
        lines.append(
            f"| {fmt(r['behind'])} | {'warm' if r['warm'] else 'cold'} | {fmt(r['seconds'], 2)} | "
            f"{fmt(r['eventsPerS'], 0)} | {r['complete']} | {load_of(r)} | {verdict(r['seconds'] < 3)} |"
        )
    return lines


def memory_idle(doc: dict[str, Any]) -> list[str]:
    lines = [
        "### Memory per idle connection",
        "",
        provenance(doc),
        "",
        "| target | connections | RSS before MiB | RSS after MiB | KiB per connection | load | target ≤ 20 KiB |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in doc["runs"]:
        goal = verdict(r["kib_per_connection"] <= 20) if r["target"] == "herald" else ""
        lines.append(
            f"| {r['target']} | {fmt(r['clients'])} | {fmt(r['rss_before_mib'])} | {fmt(r['rss_after_mib'])} | "
            f"{fmt(r['kib_per_connection'])} | {load_of(r)} | {goal} |"
        )
    return lines


def memory_sustained(doc: dict[str, Any]) -> list[str]:
    lines = ["### RSS through a sustained load", "", provenance(doc), ""]
    for r in doc["runs"]:
        lat = r["latencyMs"]
        lines += [
            f"{fmt(r['minutes'])} minutes, {fmt(r['clients'])} clients, {r['rate']:g} events/s: RSS "
            f"{fmt(r['rss_first_mib'])} MiB at 5 s, {fmt(r['rss_after_1min_mib'])} MiB at 1 min, "
            f"{fmt(r['rss_last_mib'])} MiB at the end (max {fmt(r['rss_max_mib'])}); growth after the first minute "
            f"{r['growth_after_1min']:.1%}: flat {verdict(r['flat'])}. Latency over the run p50 {fmt(lat['p50'])} ms, "
            f"p99 {fmt(lat['p99'])} ms, max {fmt(lat['max'])} ms; delivered {fmt(r['delivered'])} / "
            f"{fmt(r['expected'])}, gaps {r['gaps']}, unexpected closes {r['closes'] or 'none'}.",
        ]
        if r["intervals"]:
            worst = max(i["p99_ms"] or 0 for i in r["intervals"])
            lines.append(f"Worst 30-second p99 along the run: {fmt(worst)} ms.")
        loads = [x["load"] for x in r["samples"]]
        if loads:
            lines.append(f"Load average along the run: {fmt(min(loads), 2)} to {fmt(max(loads), 2)}.")
    return lines


def soak(doc: dict[str, Any]) -> list[str]:
    lines = ["### Soak with faults", "", provenance(doc), ""]
    for r in doc["runs"]:
        log, clients = r["log"], r["clients"]
        lines += [
            "| minutes | events | kill -9 | connection cuts (backends) | client connections (drops on purpose) | "
            "deliveries | duplicates absorbed | lost | gaps/breaks | out of order | caught up | result |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
            f"| {fmt(r['minutes'])} | {fmt(r['events'])} | {r['kills']} | {r['connection_cuts']} "
            f"({r['terminated_backends']}) | {fmt(r['client_connections'])} ({fmt(r['client_drops_on_purpose'])}) | "
            f"{fmt(r['deliveries'])} | {fmt(r['duplicates_absorbed'])} | {clients['lost']} | "
            f"{clients['segment_breaks']} | {clients['out_of_order']} | {r['caught_up']}/{r['subscribers']} | "
            f"{'PASS' if r['ok'] else '**FAIL**'} |",
            "",
            f"Log: seqs contiguous {log['contiguous']}, acknowledged events missing {log['acked_missing']}, "
            f"appended twice {log['appended_twice']}; publish retries {fmt(r['publish_retries'])}; "
            f"commit replies lost on the way back {r.get('replies_dropped', '-')}; "
            f"invented events {clients['invented']}; error frames {clients['errors']}.",
        ]
    return lines


def ws_implementations(doc: dict[str, Any]) -> list[str]:
    lines = [
        "### uvicorn's WebSocket implementations (the bare broadcast peer under each)",
        "",
        provenance(doc),
        "",
        "| implementation | KiB per idle connection | deliveries/s at saturation | delivered / expected | load |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in doc["runs"]:
        lines.append(
            f"| {r['implementation']} | {fmt(r['kib_per_connection'])} | {fmt(r['deliveries_per_s'])} | "
            f"{fmt(r['delivered'])} / {fmt(r['expected'])} | {load_of(r)} |"
        )
    return lines


def audit_chain(doc: dict[str, Any]) -> list[str]:
    r = doc["runs"][0]
    names = list(r["sides"])
    lines = [
        "### Audit chain: publish throughput, versions side by side",
        "",
        provenance(doc),
        "",
        "Sides: "
        + ", ".join(f"`{n}` = {ref if ref != '.' else 'this tree'}" for n, ref in r["sides"].items())
        + f"; {r['rounds']} rounds of {fmt(r['durationS'])} s per case, rotating order; medians, and the cost "
        f"against `{names[0]}`.",
        "",
        "| case | " + " | ".join(f"{n}: events/s (runs)" for n in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for case, by_side in r["cases"].items():
        cells = []
        for n in names:
            side = by_side[n]
            cost = "" if n == names[0] else f", {side['costPercent']:+.1f}% cost"
            cells.append(f"{fmt(side['median'])}{cost} ({', '.join(fmt(v) for v in side['perS'])})")
        lines.append(f"| {case} | " + " | ".join(cells) + " |")
    return lines


def audit_read(doc: dict[str, Any]) -> list[str]:
    r = doc["runs"][0]
    lines = [
        "### Audit: verify and export over a long log",
        "",
        provenance(doc),
        "",
        f"{fmt(r['events'])} events in one project (loaded with COPY in {fmt(r['loadS'])} s, chain included).",
        "",
        "| what | seconds | events/s | MB/s | server RSS (MiB) |",
        "|---|---:|---:|---:|---|",
    ]
    v = r["verifyHttp"]
    lines.append(
        f"| `GET …/audit/verify` | {fmt(v['seconds'], 2)} | {fmt(v['eventsPerS'])} | | "
        f"{fmt(v['rssMiB']['before'])} → {fmt(v['rssMiB']['after'])} |"
    )
    c = r["verifyCli"]
    lines.append(f"| `herald audit verify` (its own process, start-up included) | {fmt(c['seconds'], 2)} | "
                 f"{fmt(c['eventsPerS'])} | | |")  # fmt: skip
    for fmt_name in ("ndjson", "csv"):
        e = r.get(f"export_{fmt_name}", {})
        if "seconds" in e:
            lines.append(
                f"| `GET …/export?format={fmt_name}` ({fmt(e['bytes'] / 1e6)} MB) | {fmt(e['seconds'], 2)} | "
                f"{fmt(e['eventsPerS'])} | {fmt(e['mbPerS'])} | {fmt(e['rssMiB']['before'])} → peak "
                f"{fmt(e['rssMiB']['peak'])} |"
            )
    return lines


def audit_queries(doc: dict[str, Any]) -> list[str]:
    r = doc["runs"][0]
    lines = ["### Audit: the auditor's reads (history filters, state at a seq, ack ledger)", "", provenance(doc), ""]
    lines += [f"{fmt(r['events'])} events in the measured project. History pages (100 events), milliseconds:", ""]
    lines += ["| query | BRIN only | with the stretches |", "|---|---:|---:|"]
    for name, without in r["historyWithoutStretches"].items():
        with_ = r["historyWithStretches"].get(name, {})
        lines.append(f"| {name} | {fmt(without['ms'], 2)} | {fmt(with_.get('ms'), 2)} |")
    fold = ", ".join(f"{fmt(int(n))} events: {fmt(v['distinctOn'])} ms" for n, v in r["directFoldMs"].items())
    at = ", ".join(f"at {k.split('/')[0]} (limit {k.split('/')[1]}): {fmt(v)} ms" for k, v in r["readAtMs"].items())
    s, a = r["summarize"], r["appends"]
    lines += [
        "",
        f"State at a seq: folding the log directly takes {fold}; summarized in stretches "
        f"({fmt(s['stretches'])} stretches in {fmt(s['seconds'])} s, {fmt(s['rows'])} rows, {fmt(s['MiB'])} MiB), "
        f"`state?at=` answers {at}.",
        "",
        f"Appends with the new indexes: {fmt(a['medianUs']['with'])} µs against {fmt(a['medianUs']['without'])} "
        f"µs without (median of {a['rounds']} rounds of {fmt(a['perRound'])}; {a['costPercent']:+.1f}%). "
        "Ack flushes with the ledger: "
        + ", ".join(f"{n} acks {fmt(v['withLedgerMs'], 2)} ms (was {fmt(v['beforeMs'], 2)})"
                    for n, v in r["ackFlushes"].items())
        + ".",
    ]  # fmt: skip
    return lines


def plot(results: dict[str, dict[str, Any]], path: Path) -> bool:
    doc = results.get("fanout-latency")
    if doc is None:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series: dict[tuple[str, float], list[tuple[int, float, float]]] = {}
    for r in doc["runs"]:
        if r["latencyMs"]["p99"] is not None:
            series.setdefault((r["target"], float(r["rate"])), []).append(
                (r["clients"], r["latencyMs"]["p50"], r["latencyMs"]["p99"])
            )
    colors = {"herald": "tab:blue", "socketio": "tab:orange", "broadcast": "tab:green"}
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    markers = {2.0: "^", 10.0: "o", 100.0: "s"}  # by rate; the color is the target
    for (target, rate), points in sorted(series.items()):
        points.sort()
        n = [p[0] for p in points]
        marker = markers.get(rate, "D")
        ax.plot(n, [p[2] for p in points], marker=marker, color=colors.get(target), label=f"{target}, {rate:g}/s")
        ax.plot(n, [p[1] for p in points], marker=marker, color=colors.get(target), linestyle=":", alpha=0.6)
    for (n, _rate), goal in LATENCY_TARGETS.items():
        ax.scatter([n], [goal], marker="_", s=400, color="red")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("connected clients N")
    ax.set_ylabel("publish → receive latency, ms (solid p99, dotted p50)")
    ax.set_title(f"Fan-out latency against N — {doc['date'][:10]}, {doc['machine']['nproc']} cores (red: targets)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def headline(results: dict[str, dict[str, Any]]) -> dict[str, str]:
    """The key figures of a run, by name, formatted (for the before/after table)."""
    out: dict[str, str] = {}
    lat = results.get("fanout-latency")
    for r in lat["runs"] if lat else []:
        if r["target"] == "herald":
            key = f"latency N={r['clients']:,} at {r['rate']:g}/s: p50 / p99 ms"
            out[key] = f"{fmt(r['latencyMs']['p50'])} / {fmt(r['latencyMs']['p99'])} (load {load_of(r)})"
    burst = results.get("fanout-burst")
    herald_bursts = [r for r in burst["runs"] if r["target"] == "herald"] if burst else []
    if herald_bursts:
        best = max(herald_bursts, key=lambda r: r["deliveriesPerS"] or 0)
        out["deliveries/s at saturation, N=1,000 (best run)"] = (
            f"{fmt(best['deliveriesPerS'], 0)} (server CPU {fmt(best['server']['cpu_share'], 2)}, load {load_of(best)})"
        )
    pub = results.get("publish")
    for r in pub["runs"] if pub else []:
        out[f"publish {r['via']}, {r['projects']} project(s): events/s"] = (
            f"{fmt(r['eventsPerS'], 0)} (load {load_of(r)})"
        )
    cu = results.get("catchup")
    if cu:
        warm = sorted(r["seconds"] for r in cu["runs"] if r["warm"]) or [r["seconds"] for r in cu["runs"]]
        out["catch-up of 100,000 events: s (median)"] = fmt(warm[len(warm) // 2], 2)
    mem = results.get("memory-idle")
    for r in mem["runs"] if mem else []:
        if r["target"] == "herald":
            out[f"KiB per idle connection (N={r['clients']:,})"] = fmt(r["kib_per_connection"])
    return out


def before_after(results: dict[str, dict[str, Any]], baseline: dict[str, dict[str, Any]]) -> list[str]:
    before, after = headline(baseline), headline(results)
    some = next(iter(baseline.values()))
    lines = [
        "### Before and after, one harness",
        "",
        f"Before: the service at `{some.get('herald_root', '?')}` (the commit before this work), measured "
        f"{some['date']}; after: this tree. Same harness, same machine, same kind of database.",
        "",
        "| figure | before | after |",
        "|---|---:|---:|",
    ]
    for key in after:
        if key in before:
            lines.append(f"| {key} | {before[key]} | {after[key]} |")
    return lines


SECTIONS = [
    ("fanout-latency", fanout_latency),
    ("fanout-burst", fanout_burst),
    ("publish", publish),
    ("catchup", catchup),
    ("memory-idle", memory_idle),
    ("memory-sustained", memory_sustained),
    ("soak", soak),
    ("ws-implementations", ws_implementations),
    ("audit-chain", audit_chain),
    ("audit-read", audit_read),
    ("audit-queries", audit_queries),
]


def render(
    results: dict[str, dict[str, Any]],
    image: str | None,
    baseline: dict[str, dict[str, Any]],
    others: dict[str, dict[str, dict[str, Any]]],
) -> str:
    lines = [START, "", "<!-- generated by bench/report.py from bench/results/*.json: edit those, not this -->", ""]
    if image:
        lines += [f"![latency against N]({image})", ""]
    if baseline:
        lines += [*before_after(results, baseline), ""]
    for name, section in SECTIONS:
        if name in results:
            lines += [*section(results[name]), ""]
        for label, extra in sorted(others.items()):
            if name in extra:
                lines += [f"Also measured ({label.replace('-', ' ')}):", "", *section(extra[name])[2:], ""]
    lines.append(END)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    results = load_results(args.results)
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    image = args.doc.with_name(args.doc.stem + "-latency.png")
    drawn = plot(results, image)
    baseline = load_results(args.results / "baseline") if (args.results / "baseline").is_dir() else {}
    # Other subdirectories: the same benchmarks in another configuration, shown under each table.
    others = {d.name: load_results(d) for d in sorted(args.results.iterdir()) if d.is_dir() and d.name != "baseline"}
    block = render(results, image.name if drawn else None, baseline, others)
    text = args.doc.read_text() if args.doc.exists() else f"# Benchmarks\n\n{START}\n{END}\n"
    if START not in text or END not in text:
        text += f"\n{START}\n{END}\n"
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    args.doc.write_text(head + block + tail)
    print(f"wrote {args.doc}" + (f" and {image}" if drawn else ""))


if __name__ == "__main__":
    main()
