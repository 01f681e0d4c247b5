"""Prometheus metrics (`GET /metrics`, admin token): one registry per app, read from the hub at scrape.

Gauges are computed when scraped rather than kept up to date on the hot path.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .eventlog import StoredEvent
from .hub import Hub

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


class Metrics:
    def __init__(self) -> None:
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

    def watch(self, hub: Hub) -> None:
        self.registry.register(_HubCollector(hub))

    def sent(self, event: StoredEvent, reached: int) -> None:
        if reached:
            self.messages_sent.inc(reached)
            self.latency.observe(max(0.0, time.time() - event.created_at.timestamp()))

    def render(self) -> bytes:
        return generate_latest(self.registry)
