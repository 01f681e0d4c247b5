"""OpenTelemetry traces (service/traces.py): with an OTLP endpoint set, the real service exports
`publish`, `notify` and `deliver` spans over OTLP/HTTP; without one, nothing is configured."""

from __future__ import annotations

import asyncio
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from websockets.asyncio.client import connect

from service import __version__, auth, traces
from service.config import ConfigError, load_settings
from tests.conftest import SECRET, RunningServer, ServiceProcess, timeout
from tests.helpers import RUN, WsClient, create, publish


def value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


class Receiver:
    """An OTLP/HTTP trace receiver on a free port: decodes every POST /v1/traces into spans, each a
    dict of its name, attributes, its resource's attributes and its parent span's id."""

    def __init__(self) -> None:
        self.spans: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                spans = []
                for rs in request.resource_spans:
                    resource = {a.key: value(a.value) for a in rs.resource.attributes}
                    for ss in rs.scope_spans:
                        for span in ss.spans:
                            attributes = {a.key: value(a.value) for a in span.attributes}
                            spans.append(
                                {
                                    "name": span.name,
                                    "attributes": attributes,
                                    "resource": resource,
                                    "parent": span.parent_span_id,
                                }
                            )
                with receiver.lock:
                    receiver.paths.append(self.path)
                    receiver.spans.extend(spans)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def named(self, name: str) -> list[dict[str, Any]]:
        with self.lock:
            return [s for s in self.spans if s["name"] == name]


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
        thread.join()


async def spans_until(receiver: Receiver, name: str, wanted: Any, what: str) -> dict[str, Any]:
    """The first `name` span whose attributes satisfy `wanted`, waiting for the exporter's batches."""
    deadline = time.monotonic() + timeout(20)
    while time.monotonic() < deadline:
        for span in receiver.named(name):
            if wanted(span["attributes"]):
                return span
        await asyncio.sleep(0.05)
    raise AssertionError(f"no {what} among {receiver.named(name)}")


async def test_publish_notify_deliver_are_exported(database_url: str, tmp_path: Path) -> None:
    """The real service, with OTEL_EXPORTER_OTLP_ENDPOINT pointing at a receiver, exports for an HTTP
    publish, a WebSocket publish and a batch publish to a project with one WebSocket subscriber: a
    `publish` span per event (project, seq, messageId), a `notify` span for the NOTIFY that woke the
    feed (project, head, subscribed), and a `deliver` span per event (project, seq, one client), all
    from service "herald" at this version, posted to <endpoint>/v1/traces."""
    with receiving() as receiver:
        proc = ServiceProcess(
            tmp_path / "data",
            database_url,
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_BSP_SCHEDULE_DELAY="50",
        )
        await asyncio.to_thread(proc.start)
        token = auth.issue(SECRET, user="alice", projects="*", scopes=["admin"])
        try:
            async with (
                httpx.AsyncClient(
                    base_url=proc.base_url, headers={"Authorization": f"Bearer {token}"}, timeout=timeout(10)
                ) as client,
                connect(proc.ws_url) as socket,
            ):
                await create(client, "traced")
                ws = WsClient(socket)
                await ws.send(type="auth", token=token)
                await ws.expect("welcome")
                await ws.subscribe("traced")
                (seq,) = await publish(client, "traced")
                assert [e["seq"] for e in await ws.events("traced", 1)] == [seq]
                await ws.send(type="agent_run_progress", projectId="traced", messageId="over-ws", data=RUN)
                assert [e["seq"] for e in await ws.events("traced", 1)] == [seq + 1]
                batch = await client.post(
                    "/api/projects/traced/events/batch",
                    json={
                        "events": [{"type": "agent_run_progress", "data": RUN, "messageId": f"b{i}"} for i in (1, 2)]
                    },
                )
                assert batch.status_code == 201, batch.text
                assert [e["seq"] for e in await ws.events("traced", 2)] == [seq + 2, seq + 3]

                published = await spans_until(
                    receiver,
                    "publish",
                    lambda a: a.get("herald.seq") == seq and a["herald.project"] == "traced",
                    f"publish of seq {seq}",
                )
                assert published["attributes"]["herald.created"] is True
                assert published["attributes"]["herald.message_id"]
                assert published["resource"]["service.name"] == "herald"
                assert published["resource"]["service.version"] == __version__
                notified = await spans_until(
                    receiver,
                    "notify",
                    lambda a: a["herald.project"] == "traced" and a["herald.head"] == seq,
                    f"notify of head {seq}",
                )
                assert notified["attributes"]["herald.subscribed"] is True
                assert notified["resource"]["service.name"] == "herald"
                for n in range(4):
                    delivered = await spans_until(
                        receiver,
                        "deliver",
                        lambda a, n=n: a["herald.project"] == "traced" and a["herald.seq"] == seq + n,
                        f"deliver of seq {seq + n}",
                    )
                    assert delivered["attributes"]["herald.clients"] == 1
                over_ws = await spans_until(
                    receiver, "publish", lambda a: a["herald.message_id"] == "over-ws", "publish over the WebSocket"
                )
                assert over_ws["attributes"]["herald.seq"] == seq + 1
                for i, message_id in enumerate(("b1", "b2"), start=2):
                    in_batch = await spans_until(
                        receiver,
                        "publish",
                        lambda a, m=message_id: a["herald.message_id"] == m,
                        f"publish {message_id}",
                    )
                    assert in_batch["attributes"]["herald.seq"] == seq + i
                    assert in_batch["attributes"]["herald.project"] == "traced"
        finally:
            await asyncio.to_thread(proc.stop)
        assert set(receiver.paths) == {"/v1/traces"}
        # Herald's three spans only (FastAPI's request spans stay off: the global provider is not set),
        # each its own trace (no request span for publish to nest in).
        assert {s["name"] for s in receiver.spans} == {"publish", "notify", "deliver"}
        assert {s["parent"] for s in receiver.spans} == {b""}
        # One span per event and hop: no per-client spans, nothing twice.
        assert sorted(s["attributes"]["herald.seq"] for s in receiver.named("deliver")) == [seq + n for n in range(4)]
        assert sorted(s["attributes"]["herald.seq"] for s in receiver.named("publish")) == [seq + n for n in range(4)]


async def test_nothing_is_configured_without_an_endpoint(
    server: RunningServer, client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without an OTLP endpoint, a server that publishes and delivers installs no tracer provider
    (the API's default proxy stays) and the helpers record nothing."""
    assert not server.settings.traces
    await create(client, "quiet")
    await publish(client, "quiet", 2)
    assert not traces.enabled()
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    assert traces.setup(load_settings(secret=SECRET)) is False
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)


def test_endpoint_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Either standard endpoint variable turns traces on; blank is unset; OTEL_SDK_DISABLED wins."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_SDK_DISABLED"):
        monkeypatch.delenv(name, raising=False)
    assert not load_settings().traces
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", " ")
    assert not load_settings().traces
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert load_settings().traces
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4318/v1/traces")
    assert load_settings().otlp_endpoint == "http://collector:4318/v1/traces"
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert not load_settings().traces


def test_an_endpoint_without_the_sdk_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """With an endpoint set and the `otel` extra missing (here: its SDK made unimportable), the
    settings are refused at start, saying what to install."""
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")
    assert load_settings().traces  # installed: accepted
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk", None)
    with pytest.raises(ConfigError, match=r"pip install 'herald\[otel\]'"):
        load_settings()
