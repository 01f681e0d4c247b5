"""What ends a connection (service/connection.py): missed heartbeats 4408, token expiry 4401 (docs/protocol.md §4)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import RunningServer, make_settings, start_server, stop_server
from tests.helpers import closed_with, open_client


async def test_heartbeat_timeout_4408(tmp_path: Any, database_url: str) -> None:
    """The server pings every heartbeatMs; a client that sends nothing for 2 intervals is closed with 4408."""
    settings = make_settings(database_url, tmp_path, heartbeat_ms=300)
    running, task = await start_server(settings)
    try:
        ws = await open_client(running)
        assert ws.welcome["heartbeatMs"] == 300
        ping = await ws.recv(2)
        assert ping["type"] == "ping" and isinstance(ping["ts"], int)
        with pytest.raises(ConnectionClosed) as info:
            while True:
                await ws.recv(3)
        assert info.value.rcvd is not None and info.value.rcvd.code == 4408
        # A client that answers stays connected.
        alive = await open_client(running)
        for _ in range(6):
            message = await alive.recv(2)
            if message["type"] == "ping":
                await alive.send(type="pong", ts=message["ts"])
        await alive.send(type="ping", ts=7)
        assert (await alive.expect("pong"))["ts"] == 7
        await alive.ws.close()
    finally:
        await stop_server(running, task)


async def test_token_expiring_while_connected_closes_4401(server: RunningServer) -> None:
    """A token that expires while connected closes the connection with 4401 at expiry."""
    async with connect(server.ws_url + "?token=" + server.token(ttl_s=2)) as ws:
        assert json.loads(await ws.recv())["type"] == "welcome"
        assert await closed_with(ws) == 4401
