"""OpenTelemetry traces of publish → notify → deliver, when an OTLP endpoint is configured.

With `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) set, `setup` makes
Herald's own tracer provider of the OpenTelemetry SDK (not the global one): resource `service.name` "herald" and
`service.version` this release (`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` override them), a
BatchSpanProcessor, and the OTLP exporter over HTTP/protobuf, which reads its endpoint, headers,
timeout and compression from the standard `OTEL_EXPORTER_OTLP_*` variables itself. Unset, nothing is
imported or installed, and every helper here returns at its first line: the hot path pays one global
lookup. The SDK is the `otel` extra (`pip install 'herald[otel]'`); config.py refuses to start with
an endpoint set and no SDK installed.

Three span names, one per hop (docs/deploy.md, "Traces"). `publish` is a child of the current span
when there is one (a request span that other instrumentation made), else a root; `notify` and
`deliver` are always roots:

* `publish`: an append, from its submission to the group commit until its outcome (eventlog.Appender,
  so HTTP and WebSocket publishes alike), or one per event of a batch publish; `herald.project`,
  `herald.seq`, `herald.message_id`, `herald.created` (False for a repeated messageId).
* `notify`: this process's listener hearing the log's NOTIFY and waking the project's feed;
  `herald.project`, `herald.head` (the seq the NOTIFY names: the project's head after the commit),
  `herald.subscribed` (whether the project has subscribers on this process).
* `deliver`: a feed handing an event to its live subscribers' connections, one span per event (never
  per client); `herald.project`, `herald.seq`, `herald.clients` (how many connections it was handed
  to). A run of events fanned out together shares the run's start and end.

The NOTIFY crosses processes through PostgreSQL and carries only `project:seq`, so the hops are tied
by their attributes rather than by a parent span: the `publish` of (project, seq) is followed by a
`notify` whose `herald.head` >= seq on every instance, and by a `deliver` of (project, seq) on every
instance with subscribers. No span of ours is ever made current, so nothing nests under them by accident.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Protocol, TypeVar

from . import __version__

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Span, Tracer
    from opentelemetry.util.types import AttributeValue

    from .config import Settings


class Event(Protocol):
    """What a span says of an event of the log (eventlog.StoredEvent, which imports this module)."""

    @property
    def seq(self) -> int: ...

    @property
    def message_id(self) -> str: ...


E = TypeVar("E", bound=Event)

logger = logging.getLogger("herald.traces")

SERVICE_NAME = "herald"
SHUTDOWN_WAIT_S = 5.0
"""How long a stop waits for the last export: a collector that is down must not hold up a rolling restart
(the exporter alone would retry for up to twice its timeout, 10 s by default)."""

_tracer: Tracer | None = None
_provider: TracerProvider | None = None


def setup(settings: Settings) -> bool:
    """Make the SDK's provider and the OTLP exporter when `settings` name an OTLP endpoint; returns
    whether traces are on. Once per process: later calls change nothing."""
    global _tracer, _provider
    if _provider is not None or not settings.traces:
        return _tracer is not None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    ours = Resource({"service.name": SERVICE_NAME, "service.version": __version__})
    provider = TracerProvider(resource=ours.merge(OTELResourceDetector().detect()))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    # Ours alone, not the global provider: FastAPI traces every request and WebSocket connection as soon
    # as a global provider is set (a span per health check, one as long as each connection).
    _provider = provider
    _tracer = provider.get_tracer("herald", __version__)
    return True


def shutdown(wait_s: float = SHUTDOWN_WAIT_S) -> None:
    """Export what is still buffered, waiting at most `wait_s` (blocking), and stop. Spans made after
    this are dropped, and so are those the collector has not taken by then."""
    global _tracer
    _tracer = None
    if _provider is None:
        return
    # The SDK's own shutdown has no deadline of its own: give it one (its threads are daemons, so a
    # process that exits meanwhile does not wait for them).
    stopping = threading.Thread(target=_provider.shutdown, name="herald-traces-shutdown", daemon=True)
    stopping.start()
    stopping.join(wait_s)
    if stopping.is_alive():
        logger.warning("the OTLP collector did not take the last spans within %.0f s; they are dropped", wait_s)


def enabled() -> bool:
    """Whether spans are being made (after `setup` found an endpoint, until `shutdown`)."""
    return _tracer is not None


def now() -> int:
    """A start time for `notify`, `deliver` and `publish_batch` (0 when traces are off: never used)."""
    return time.time_ns() if _tracer is not None else 0


def publish(project_id: str, message_id: str, outcome: asyncio.Future[tuple[E, bool]]) -> None:
    """A `publish` span from now until `outcome` (the append's, from the group commit) resolves."""
    if _tracer is None:
        return
    from opentelemetry.trace import SpanKind

    attributes = {"herald.project": project_id, "herald.message_id": message_id}
    span = _tracer.start_span("publish", kind=SpanKind.PRODUCER, attributes=attributes)
    outcome.add_done_callback(partial(_published, span))


def _published(span: Span, outcome: asyncio.Future[tuple[E, bool]]) -> None:
    from opentelemetry.trace import StatusCode

    if outcome.cancelled():
        span.set_status(StatusCode.ERROR, "cancelled")
    elif (exc := outcome.exception()) is not None:
        span.record_exception(exc)
        span.set_status(StatusCode.ERROR, type(exc).__name__)
    else:
        event, created = outcome.result()
        span.set_attributes({"herald.seq": event.seq, "herald.created": created})
    span.end()


def publish_batch(project_id: str, outcomes: Sequence[tuple[Event, bool] | Exception], started: int) -> None:
    """One `publish` span per event of a batch written together since `started` (`now()`)."""
    if _tracer is None:
        return
    _spans(
        "publish",
        started,
        [
            {
                "herald.project": project_id,
                "herald.seq": event.seq,
                "herald.message_id": event.message_id,
                "herald.created": created,
            }
            for event, created in (o for o in outcomes if not isinstance(o, Exception))
        ],
        root=False,
    )


def notify(project_id: str, head: int | None, subscribed: bool, started: int) -> None:
    """A `notify` span: the NOTIFY naming (project, head) was heard and woke the feed, since `started`."""
    if _tracer is None:
        return
    attributes: dict[str, AttributeValue] = {"herald.project": project_id, "herald.subscribed": subscribed}
    _spans("notify", started, [attributes if head is None else {**attributes, "herald.head": head}], consumer=True)


def deliver(project_id: str, events: Sequence[Event], reached: Sequence[int], started: int) -> None:
    """One `deliver` span per event of a run fanned out since `started` (`now()`), `reached[i]` being
    how many connections event i was handed to."""
    if _tracer is None:
        return
    _spans(
        "deliver",
        started,
        [
            {"herald.project": project_id, "herald.seq": event.seq, "herald.clients": clients}
            for event, clients in zip(events, reached, strict=True)
        ],
    )


def _spans(
    name: str, started: int, rows: list[dict[str, AttributeValue]], *, consumer: bool = False, root: bool = True
) -> None:
    """Spans that began at `started` and end now. A root span ignores the current context: a feed's
    pump keeps the context of whatever first woke it, which says nothing about the events it sends."""
    from opentelemetry.context import Context
    from opentelemetry.trace import SpanKind

    assert _tracer is not None
    ended = time.time_ns()
    kind = SpanKind.CONSUMER if consumer else SpanKind.PRODUCER
    context = Context() if root else None
    for attributes in rows:
        span = _tracer.start_span(name, context=context, kind=kind, attributes=attributes, start_time=started)
        span.end(end_time=ended)
