"""Prometheus metrics (`GET /metrics`, admin token): one registry per app, read from the hub at scrape.

Gauges are computed when scraped rather than kept up to date on the hot path. The log's (per project: its
head, its low watermark, the events kept; the events table's bytes) are read from the database by the
scrape itself (`read_log`), with a few cheap queries on the projects table and the catalog.

Under `serve --workers N` a scrape reaches one worker, and says so: every series this process counts or
sees carries `worker="k"` (the log's gauges, the same from any worker, do not). Nothing is summed across
workers here; Prometheus sums the workers' series (docs/deploy.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .bus import Bus, Relay
from .eventlog import ConnectionFactory, StoredEvent
from .hub import Hub

logger = logging.getLogger("herald.metrics")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[GaugeMetricFamily]:
        hub = self.hub
        yield GaugeMetricFamily("herald_connections", "Open connections on this process", value=len(hub.clients))
        yield GaugeMetricFamily(
            "herald_subscriptions", "Project subscriptions on this process", value=hub.subscription_count()
        )
        heads = GaugeMetricFamily(
            "herald_project_head", "Latest seq this process has fanned out, per project", labels=["project"]
        )
        lag = 0
        for feed in hub.stats():
            heads.add_metric([feed.project_id], feed.delivered)
            lag = max(lag, feed.max_lag)
        yield heads
        yield GaugeMetricFamily(
            "herald_max_client_lag", "Largest number of events a subscriber is behind its feed", value=lag
        )


@dataclass(frozen=True, slots=True)
class LogSize:
    """The log as the last scrape read it: (project id, oldest, head) per project, and the bytes of the
    events table (all its partitions, their indexes and TOAST)."""

    projects: tuple[tuple[str, int, int], ...]
    events_bytes: int


# pg_partition_tree lists every partition of a partitioned table (whose own size is 0) and nothing for a
# plain table, measured by itself then: the same query measures the log before and after partitioning.
_EVENTS_BYTES = """
SELECT coalesce(sum(pg_total_relation_size(relid)), pg_total_relation_size('events'::regclass))
FROM pg_partition_tree('events'::regclass)
"""


class _BusCollector(Collector):
    """The wake-up bus as this process sees it (bus.py): whether it is up, whether this process relays,
    and the hints it received and published."""

    def __init__(self, bus: Bus, relay: Relay) -> None:
        self.bus = bus
        self.relay = relay

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "herald_bus_up", "1 while this process's NATS connection is up", value=self.bus.up.is_set()
        )
        yield GaugeMetricFamily(
            "herald_relay", "1 while this process relays the log's heads to NATS", value=self.relay.relaying.is_set()
        )
        yield CounterMetricFamily("herald_bus_hints", "Head hints received from NATS", value=self.bus.hints)
        yield CounterMetricFamily(
            "herald_relay_published", "Head hints this process published as the relay", value=self.relay.published
        )


class _LogCollector(Collector):
    def __init__(self) -> None:
        self.size: LogSize | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = self.size
        if size is None:  # the database did not answer this scrape: no log gauges rather than stale ones
            return
        head = GaugeMetricFamily("herald_log_head", "The latest seq of each project's log", labels=["project"])
        oldest = GaugeMetricFamily(
            "herald_log_oldest",
            "The oldest seq each project's log keeps (its low watermark; head + 1 when it keeps none)",
            labels=["project"],
        )
        kept = GaugeMetricFamily(
            "herald_log_events", "Events each project's log keeps (head - oldest + 1)", labels=["project"]
        )
        for project_id, first, last in size.projects:
            head.add_metric([project_id], last)
            oldest.add_metric([project_id], first)
            kept.add_metric([project_id], max(0, last - first + 1))
        yield head
        yield oldest
        yield kept
        yield GaugeMetricFamily(
            "herald_log_bytes",
            "Bytes on disk of the events table (every partition, with indexes and TOAST), all projects",
            value=size.events_bytes,
        )


class _Labelled(Collector):
    """What `source` collects, each sample with `worker` added to its labels."""

    def __init__(self, source: CollectorRegistry, worker: str) -> None:
        self.source = source
        self.worker = worker

    def collect(self) -> Iterator[Metric]:
        for metric in self.source.collect():
            labelled = Metric(metric.name, metric.documentation, metric.type, metric.unit)
            labelled.samples = [
                sample._replace(labels={**sample.labels, "worker": self.worker}) for sample in metric.samples
            ]
            yield labelled


class Metrics:
    def __init__(self) -> None:
        self.worker: str | None = None  # set by `serve --workers N` in each worker
        self.registry = CollectorRegistry(auto_describe=True)
        self.messages_sent = Counter(
            "herald_messages_sent", "Events handed to clients by the live fan-out", registry=self.registry
        )
        self.latency = Histogram(
            "herald_publish_to_send_seconds",
            "From an event's append to its fan-out on this process",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.pruned = Counter(
            "herald_pruned_rows",
            "Rows that prunes run by this process deleted from each project's log",
            ["project"],
            registry=self.registry,
        )
        self._log = _LogCollector()

    def record_pruned(self, project_id: str, rows: int) -> None:
        """Count `rows` deleted from `project_id`'s log by a prune of this process (the scheduled one calls
        it for each project it pruned); the counter appears for a project once it has been pruned."""
        if rows > 0:
            self.pruned.labels(project=project_id).inc(rows)

    async def read_log(self, connection: ConnectionFactory, *, timeout_s: float = 5.0) -> None:
        """Read the log's gauges for the next `render`: every project's head and watermark, and the events
        table's bytes. When the database does not answer within `timeout_s`, the log gauges are left out of
        this scrape (the process's own metrics are still served: they tell what the process sees)."""
        try:
            async with asyncio.timeout(timeout_s), connection() as conn:
                rows = await conn.fetch("SELECT id, oldest, head FROM projects ORDER BY id")
                events_bytes = await conn.fetchval(_EVENTS_BYTES)
        except Exception as exc:  # down, busy or slow: a scrape must not fail with it
            logger.warning("reading the log's size for /metrics failed: %s", exc)
            self._log.size = None
            return
        self._log.size = LogSize(tuple((r["id"], r["oldest"], r["head"]) for r in rows), int(events_bytes))

    def watch(self, hub: Hub) -> None:
        self.registry.register(_HubCollector(hub))

    def watch_bus(self, bus: Bus, relay: Relay) -> None:
        self.registry.register(_BusCollector(bus, relay))

    def sent(self, event: StoredEvent, reached: int) -> None:
        if reached:
            self.messages_sent.inc(reached)
            self.latency.observe(max(0.0, time.time() - event.created_at.timestamp()))

    def render(self) -> bytes:
        scrape = CollectorRegistry(auto_describe=False)
        scrape.register(self._log)
        scrape.register(self.registry if self.worker is None else _Labelled(self.registry, self.worker))
        return generate_latest(scrape)
