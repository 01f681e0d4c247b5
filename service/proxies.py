"""What a request says about where it came from, believed only from a trusted reverse proxy.

Behind nginx or Traefik the service's direct peer is the proxy: the browser's address, the host it
asked for and whether it used TLS reach the service only in headers (`X-Forwarded-For`,
`X-Forwarded-Host`, `X-Forwarded-Proto`, RFC 7239 `Forwarded`, `X-Request-ID`). Anyone can send those
headers, so they are read only when the direct peer is in `HERALD_TRUSTED_PROXIES`; from any other
peer they are ignored and the request is taken as it arrived (its `Host`, its own address).

`Edge` is the ASGI middleware that decides this once per request: it puts the result in the scope
(`forwarded(scope)`), rewrites the scope's client address (so uvicorn's access log names the real
client), and gives every request an id for the logs (logs.py), echoed as `X-Request-ID`.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import logs

Network = IPv4Network | IPv6Network
SCOPE_KEY = "herald.forwarded"
REQUEST_ID_HEADER = b"x-request-id"
# An id a proxy sends is kept when it is short and plain (it lands in every log line of the request).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_SCHEMES = {"http": "http", "https": "https", "ws": "http", "wss": "https"}


@dataclass(frozen=True)
class Forwarded:
    """The request as the client made it.

    `host`: the Host the client asked for (the proxy's `X-Forwarded-Host` / `Forwarded: host=` when
    the peer is trusted, else the request's own `Host`). `scheme`: `http` or `https` when a trusted
    proxy said which, else None (unknown: the connection to the service says nothing about the
    client's). `client`: the client's address. `via_proxy`: the peer is a trusted proxy.
    """

    host: str | None
    scheme: str | None
    client: str | None
    via_proxy: bool


def _address(text: str) -> IPv4Address | IPv6Address | None:
    """An address from a header's node: `192.0.2.1`, `192.0.2.1:4711`, `[2001:db8::1]:4711`, `2001:db8::1`."""
    node = text.strip().strip('"')
    if node.startswith("["):
        node = node[1 : node.find("]")] if "]" in node else ""
    elif node.count(":") == 1:
        node = node.partition(":")[0]
    try:
        address = ip_address(node)
    except ValueError:
        return None
    if isinstance(address, IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def is_trusted(peer: str | None, proxies: Sequence[Network]) -> bool:
    """True when `peer` (an address) lies in one of `proxies`."""
    if peer is None or not proxies:
        return False
    address = _address(peer)
    return address is not None and any(address in network for network in proxies)


def _forwarded_elements(value: str) -> list[dict[str, str]]:
    """RFC 7239 `Forwarded`: one dict of lower-cased parameter names per hop, the nearest hop last."""
    elements = []
    for element in value.split(","):
        pairs: dict[str, str] = {}
        for pair in element.split(";"):
            name, sep, text = pair.partition("=")
            if sep:
                pairs[name.strip().lower()] = text.strip().strip('"')
        elements.append(pairs)
    return elements


def _client_of(hops: Iterable[str], peer: str, proxies: Sequence[Network]) -> str:
    """The client among forwarded-for addresses (nearest last): the nearest one that is not itself a
    trusted proxy. Anything left of it could have been written by the client, so it is never read."""
    client = peer
    for hop in reversed(list(hops)):
        address = _address(hop)
        if address is None:  # `unknown`, an obfuscated node or garbage: the last address believed stands
            break
        client = str(address)
        if not any(address in network for network in proxies):
            break
    return client


def _last(value: str | None) -> str | None:
    """The nearest proxy's value of a header that a chain of proxies may have made a list."""
    if value is None:
        return None
    last = value.split(",")[-1].strip()
    return last or None


def read(headers: dict[str, str], peer: str | None, proxies: Sequence[Network]) -> Forwarded:
    """The request as the client made it, from its lower-cased `headers` and its direct `peer`."""
    own_host = headers.get("host")
    if peer is None or not is_trusted(peer, proxies):
        return Forwarded(host=own_host, scheme=None, client=peer, via_proxy=False)
    if "forwarded" in headers:  # the standard form wins over the X-Forwarded-* family
        elements = _forwarded_elements(headers["forwarded"])
        nearest = elements[-1] if elements else {}
        client = _client_of([e["for"] for e in elements if "for" in e], peer, proxies)
        host, proto = nearest.get("host"), nearest.get("proto")
    else:
        forwarded_for = headers.get("x-forwarded-for")
        client = _client_of(forwarded_for.split(","), peer, proxies) if forwarded_for else peer
        host, proto = _last(headers.get("x-forwarded-host")), _last(headers.get("x-forwarded-proto"))
    scheme = _SCHEMES.get(proto.lower()) if proto else None
    return Forwarded(host=host or own_host, scheme=scheme, client=client, via_proxy=True)


def forwarded(scope: Scope) -> Forwarded:
    """What `Edge` decided for this request; without `Edge` in front, the request as it arrived."""
    seen = scope.get(SCOPE_KEY)
    if isinstance(seen, Forwarded):
        return seen
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
    client = scope.get("client")
    return Forwarded(host=headers.get("host"), scheme=None, client=client[0] if client else None, via_proxy=False)


class Edge:
    """ASGI middleware: reads the forwarded headers of trusted proxies (see the module's docstring),
    and runs each HTTP request and WebSocket with a request id in the logs' context, echoed in the
    response's `X-Request-ID` header (in the 101 of a WebSocket that is accepted)."""

    def __init__(self, app: ASGIApp, *, trusted_proxies: Sequence[Network]) -> None:
        self.app = app
        self.trusted_proxies = list(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        peer = scope["client"][0] if scope.get("client") else None
        offered = ""
        if is_trusted(peer, self.trusted_proxies):  # else the request stands as it arrived: forwarded()
            headers: dict[str, str] = {}
            for key, value in scope["headers"]:
                name = key.decode("latin-1").lower()
                text = value.decode("latin-1")
                # A repeated header is one list (RFC 9110 §5.3); Host and X-Request-ID are never lists.
                headers[name] = f"{headers[name]},{text}" if name in headers and name != "host" else text
            seen = read(headers, peer, self.trusted_proxies)
            scope[SCOPE_KEY] = seen
            if seen.client is not None and seen.client != peer:
                scope["client"] = (seen.client, 0)
            offered = headers.get("x-request-id", "")
        request_id = offered if _REQUEST_ID.fullmatch(offered) else uuid.uuid4().hex
        echoed = (REQUEST_ID_HEADER, request_id.encode("latin-1"))
        answer = "http.response.start" if scope["type"] == "http" else "websocket.accept"

        async def send_with_id(message: Message) -> None:
            if message["type"] == answer:
                sent: list[Any] = list(message.get("headers") or [])
                if not any(bytes(k).lower() == REQUEST_ID_HEADER for k, _ in sent):
                    message = {**message, "headers": [*sent, echoed]}
            await send(message)

        token = logs.request_id.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            logs.request_id.reset(token)
