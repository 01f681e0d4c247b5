"""HERALD_TRUSTED_PROXIES: forwarded headers are believed from a trusted proxy only (service/proxies.py).

The server tests run a real uvicorn on 127.0.0.1 and connect from 127.0.0.1, as nginx on the same
machine would: the peer is trusted when the settings list it, and is any other client when they do not.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from ipaddress import ip_network
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from service import proxies
from service.api.websocket import origin_allowed
from service.config import ConfigError, load_settings
from tests.conftest import RunningServer, make_settings, start_server, stop_server

PUBLIC = "herald.example.com"
LOOPBACK = [ip_network("127.0.0.1/32")]


async def running(database_url: str, tmp_path: Path, trusted: str) -> AsyncIterator[RunningServer]:
    server, task = await start_server(make_settings(database_url, tmp_path, trusted_proxies=trusted))
    try:
        yield server
    finally:
        await stop_server(server, task)


@pytest.fixture
async def behind_proxy(database_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server that trusts its peer 127.0.0.1 as a reverse proxy."""
    async for server in running(database_url, tmp_path, "127.0.0.1"):
        yield server


@pytest.fixture
async def trusting_nobody(database_url: str, tmp_path: Path) -> AsyncIterator[RunningServer]:
    """A server with the default: no trusted proxy (a proxy elsewhere is trusted, not this peer)."""
    async for server in running(database_url, tmp_path, "10.0.0.0/8"):
        yield server


async def handshake(server: RunningServer, origin: str, **headers: str) -> str:
    """Open a WebSocket with `origin` and extra handshake `headers`; the first frame's type."""
    url = f"{server.ws_url}?token={server.token()}"
    async with connect(url, origin=origin, additional_headers=headers) as ws:  # type: ignore[arg-type]
        return str(json.loads(await ws.recv())["type"])


async def refused_status(server: RunningServer, origin: str, **headers: str) -> int:
    with pytest.raises(InvalidStatus) as info:
        await handshake(server, origin, **headers)
    return info.value.response.status_code


async def test_forwarded_host_is_the_own_origin_from_a_trusted_proxy(behind_proxy: RunningServer) -> None:
    """Behind a trusted proxy the browser's Origin is the public host the proxy forwards, not the
    Host the proxy connected with: the handshake is accepted, with the scheme the proxy says."""
    forwarded = {"X-Forwarded-Host": PUBLIC, "X-Forwarded-Proto": "https"}
    assert await handshake(behind_proxy, f"https://{PUBLIC}", **forwarded) == "welcome"
    assert await handshake(behind_proxy, f"https://{PUBLIC}:443", **forwarded) == "welcome"
    # The standard header does the same.
    standard = {"Forwarded": f'for=203.0.113.9;host="{PUBLIC}";proto=https'}
    assert await handshake(behind_proxy, f"https://{PUBLIC}", **standard) == "welcome"
    # The same host over the other scheme is another origin (an http page could be anyone's).
    assert await refused_status(behind_proxy, f"http://{PUBLIC}", **forwarded) == 403
    # And the Host the proxy connected with is no longer the service's own origin.
    assert await refused_status(behind_proxy, behind_proxy.base_url, **forwarded) == 403


async def test_forwarded_host_from_an_untrusted_peer_is_ignored(trusting_nobody: RunningServer) -> None:
    """An attacker's page can make a browser connect with its Origin, and a non-browser client can send
    any header: a forged X-Forwarded-Host (or Forwarded) naming the attacker's site does not make that
    site the service's own origin. The handshake is refused with 403 (close code 4403 before accept)."""
    evil = "evil.example"
    assert await refused_status(trusting_nobody, f"https://{evil}", **{"X-Forwarded-Host": evil}) == 403
    assert await refused_status(trusting_nobody, f"https://{evil}", Forwarded=f"host={evil};proto=https") == 403
    assert await refused_status(trusting_nobody, f"https://{PUBLIC}", **{"X-Forwarded-Host": PUBLIC}) == 403
    # The request's own Host still is the service's own origin.
    assert await handshake(trusting_nobody, trusting_nobody.base_url, **{"X-Forwarded-Host": evil}) == "welcome"


async def test_request_id_from_a_trusted_proxy_only(
    behind_proxy: RunningServer, trusting_nobody: RunningServer
) -> None:
    """X-Request-ID is kept from a trusted proxy and echoed; from anyone else a new one is made."""
    async with httpx.AsyncClient() as client:
        kept = await client.get(behind_proxy.base_url + "/healthz", headers={"X-Request-ID": "nginx-42"})
        assert kept.headers["x-request-id"] == "nginx-42"
        forged = await client.get(trusting_nobody.base_url + "/healthz", headers={"X-Request-ID": "nginx-42"})
        made = forged.headers["x-request-id"]
        assert made != "nginx-42" and len(made) == 32
        again = await client.get(trusting_nobody.base_url + "/healthz")
        assert again.headers["x-request-id"] != made
        # A value that would not be a plain token in a log line is replaced, even from a trusted proxy.
        odd = await client.get(behind_proxy.base_url + "/healthz", headers={"X-Request-ID": "a b\tc"})
        assert odd.headers["x-request-id"] != "a b\tc"


def test_client_address_is_the_nearest_untrusted_hop() -> None:
    """The client is the nearest X-Forwarded-For (or Forwarded for=) address that is not a trusted
    proxy; addresses left of it may be the client's own inventions and are never read."""
    chain = [ip_network("127.0.0.1/32"), ip_network("10.0.0.0/8")]
    seen = proxies.read({"x-forwarded-for": "6.6.6.6, 198.51.100.7, 10.1.2.3"}, "127.0.0.1", chain)
    assert seen.client == "198.51.100.7" and seen.via_proxy
    seen = proxies.read({"forwarded": 'for=6.6.6.6, for="[2001:db8::7]:4711", for=10.1.2.3'}, "127.0.0.1", chain)
    assert seen.client == "2001:db8::7"
    # From an untrusted peer, the peer is the client whatever the headers say.
    seen = proxies.read({"x-forwarded-for": "198.51.100.7", "host": "h"}, "192.0.2.1", chain)
    assert (seen.client, seen.host, seen.scheme, seen.via_proxy) == ("192.0.2.1", "h", None, False)
    # An IPv4 peer seen as IPv4-mapped IPv6 is the same peer.
    assert proxies.is_trusted("::ffff:127.0.0.1", LOOPBACK)
    assert not proxies.is_trusted("127.0.0.2", LOOPBACK)


def test_origin_comparison() -> None:
    """The own origin: host and port as the client asked (the default port may be left out) and, when
    known, the scheme."""
    assert origin_allowed("http://h:8000", "h:8000", [])
    assert not origin_allowed("http://h:8001", "h:8000", [])
    assert origin_allowed("https://h", "h:443", [], "https")
    assert origin_allowed("https://H:443", "h", [], "https")
    assert not origin_allowed("http://h", "h", [], "https")
    assert not origin_allowed("https://h", None, [])
    assert origin_allowed("https://other", "h", ["https://other"])
    assert origin_allowed(None, None, [])


def test_trusted_proxies_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    """HERALD_TRUSTED_PROXIES: a comma list of addresses and CIDRs, none by default; a typo is refused."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.delenv("HERALD_TRUSTED_PROXIES", raising=False)
    assert load_settings().trusted_proxies == []
    monkeypatch.setenv("HERALD_TRUSTED_PROXIES", "127.0.0.1, 172.16.0.0/12,::1")
    assert [str(n) for n in load_settings().trusted_proxies] == ["127.0.0.1/32", "172.16.0.0/12", "::1/128"]
    for bad in ("nginx", "10.0.0.1/8"):
        monkeypatch.setenv("HERALD_TRUSTED_PROXIES", bad)
        with pytest.raises(ConfigError, match="HERALD_TRUSTED_PROXIES"):
            load_settings()
