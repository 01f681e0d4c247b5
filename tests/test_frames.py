"""The fast paths: frames encoded once and written straight to the socket (service/frames.py), pipelined publishes.

Publishes are pipelined on one connection by service/session.py. The fast paths are really taken, what
they write is what `websocket.send` would have written, and they step aside when they must.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from service import frames
from tests.conftest import RunningServer, make_settings, start_server, stop_server, timeout
from tests.helpers import RUN, create, open_client, publish, seqs_of


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_text_frame_is_what_a_websockets_parser_reads(size: int) -> None:
    """Every payload length class (7-bit, 16-bit, 64-bit) parses back, unmasked, final, text."""
    payload = ("é" * size).encode()[:size]
    reader = StreamReader()
    reader.feed_data(frames.text_frame(payload))
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        frame = done.value
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)
    assert not reader.buffer  # nothing left over


async def test_fan_out_writes_through_the_extension(server: RunningServer, client: httpx.AsyncClient) -> None:
    """Under Herald's uvicorn protocol every WebSocket gets the `herald.frames` writer, and events sent
    through it arrive whole and in order, the same bytes for every client."""
    await create(client, "a")
    sockets = [await open_client(server, client_id=f"c{i}") for i in range(3)]
    for ws in sockets:
        await ws.subscribe("a")
    hub = server.app_runtime().hub
    assert all(c.transport._write is not None for c in hub.clients)  # the fast path is in place
    await publish(client, "a", 20)
    received = [await ws.events("a", 20) for ws in sockets]
    assert [seqs_of(r) for r in received] == [list(range(1, 21))] * 3
    assert received[0] == received[1] == received[2]


def test_the_installed_uvicorn_passes_the_probe() -> None:
    """The uvicorn this project pins has everything the extension reads, so the fast path is on."""
    assert frames.probe() is None
    assert frames.protocol() is frames.WebSocketProtocol


async def test_without_what_the_extension_reads_every_send_goes_through_asgi(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An uvicorn whose protocol lacks an attribute the extension reads (simulated): the server warns
    at start-up, runs uvicorn's own protocol, and every WebSocket is served through plain ASGI: no
    writer of Herald's, and events arrive whole and in order all the same."""
    monkeypatch.setattr(frames, "REQUIRED_ATTRIBUTES", (*frames.REQUIRED_ATTRIBUTES, "a_renamed_attribute"))
    frames.probe.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="herald.frames"):
            running, task = await start_server(make_settings(database_url, tmp_path))
        assert "fast fan-out disabled" in caplog.text and "a_renamed_attribute" in caplog.text
        try:
            async with httpx.AsyncClient(base_url=running.base_url, headers=running.headers()) as http:
                await create(http, "a")
                sockets = [await open_client(running, client_id=f"c{i}") for i in range(2)]
                for ws in sockets:
                    await ws.subscribe("a")
                assert all(c.transport._write is None for c in running.app_runtime().hub.clients)
                await publish(http, "a", 20)
                assert [seqs_of(await ws.events("a", 20)) for ws in sockets] == [list(range(1, 21))] * 2
        finally:
            await stop_server(running, task)
    finally:
        monkeypatch.undo()
        frames.probe.cache_clear()


async def test_extension_refuses_once_the_connection_is_closing(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """After the client's close, the writer refuses (False) instead of writing behind the close."""
    await create(client, "a")
    ws = await open_client(server, client_id="gone")
    await ws.subscribe("a")
    (sub_client,) = server.app_runtime().hub.clients
    write = sub_client.transport._write
    assert write(frames.text_frame(b'{"type":"pong","ts":1}'))
    assert (await ws.recv())["type"] == "pong"
    await ws.ws.close()
    deadline = time.monotonic() + timeout(1)
    while write(frames.text_frame(b"{}")):
        if time.monotonic() > deadline:
            pytest.fail("the writer kept writing after the close")
        await asyncio.sleep(0.01)


async def test_pipelined_publishes_are_answered_in_order_before_what_follows(server: RunningServer) -> None:
    """Twenty publishes sent back to back, then a ping and an invalid frame: the twenty `published`
    answers come first, in the order sent, with increasing seqs, then the pong, then the error."""
    ws = await open_client(server)
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers()) as http:
        await create(http, "a", "b")
    messages: list[dict[str, Any]] = [
        {"type": "agent_run_progress", "projectId": "ab"[i % 2], "messageId": f"m{i}", "data": RUN} for i in range(20)
    ]
    for m in messages:
        await ws.ws.send(json.dumps(m))
    await ws.send(type="ping", ts=7)
    await ws.ws.send("not json")
    answers = [await ws.recv(wait=10) for _ in range(22)]
    answers = [a for a in answers if a["type"] != "ping"]
    assert [a["messageId"] for a in answers[:20]] == [m["messageId"] for m in messages]
    for project in "ab":
        assert [a["seq"] for a in answers[:20] if a["projectId"] == project] == list(range(1, 11))
    assert answers[20] == {"type": "pong", "ts": 7}
    assert answers[21]["type"] == "error" and answers[21]["code"] == "invalid_frame"
