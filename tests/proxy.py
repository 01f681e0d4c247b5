"""A TCP proxy in front of PostgreSQL that can fail at the worst moment: forward a request, then drop
its reply and the connection, as a network that dies after the database committed does.

    async with ReplyDroppingProxy(pg_url) as proxy:
        settings = make_settings(proxy.url, ...)   # the service talks to PostgreSQL through it
        proxy.drop_reply_to(b"run-77")             # the next request carrying these bytes is forwarded,
                                                   # and its connection never hears back

The database sees the request whole and acts on it (an autocommitted append commits); the service's
connection sees its reply never come, then the connection close. That is the ambiguous commit of
docs/protocol.md §7.2.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit, urlunsplit


@dataclass(eq=False)
class _Pipe:
    doomed: bool = False
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    startup: bytes = b""  # the connection's first bytes (its startup message: user, application_name)


class ReplyDroppingProxy:
    def __init__(self, upstream_url: str, *, close_after_s: float = 0.3) -> None:
        self.upstream_url = upstream_url
        self.close_after_s = close_after_s  # how long the database has to act before the connection dies
        self._patterns: list[bytes] = []
        self._server: asyncio.Server | None = None
        self._pipes: set[_Pipe] = set()
        self.dropped = 0  # requests whose reply was dropped
        self.refusing = False  # new connections are closed at once (the database is unreachable)
        parts = urlsplit(upstream_url)
        query = parse_qs(parts.query)
        host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
        port = int(query.get("port", [parts.port or 5432])[0])
        self._unix = f"{host}/.s.PGSQL.{port}" if host.startswith("/") else None
        self._tcp = (host, port)
        self._parts = parts

    @property
    def url(self) -> str:
        """The upstream URL, pointing at the proxy instead."""
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        user = self._parts.username or "postgres"
        password = f":{self._parts.password}" if self._parts.password else ""
        return urlunsplit(("postgresql", f"{user}{password}@127.0.0.1:{port}", self._parts.path, "", ""))

    def cut(self, pattern: bytes) -> int:
        """Close every connection whose startup message holds `pattern`; returns how many."""
        doomed = [pipe for pipe in self._pipes if pattern in pipe.startup]
        for pipe in doomed:
            for writer in pipe.writers:
                writer.close()
        return len(doomed)

    def drop_reply_to(self, pattern: bytes) -> None:
        """The next request (a chunk from the service) holding `pattern` is forwarded; then its
        connection gets no reply, and is closed `close_after_s` later."""
        self._patterns.append(pattern)

    async def __aenter__(self) -> ReplyDroppingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for pipe in list(self._pipes):
            for writer in pipe.writers:
                writer.close()
        with contextlib.suppress(Exception):
            await self._server.wait_closed()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            client_writer.close()
            return
        if self._unix is not None:
            server_reader, server_writer = await asyncio.open_unix_connection(self._unix)
        else:
            server_reader, server_writer = await asyncio.open_connection(*self._tcp)
        pipe = _Pipe(writers=[client_writer, server_writer])
        self._pipes.add(pipe)
        try:
            await asyncio.gather(
                self._requests(pipe, client_reader, server_writer),
                self._replies(pipe, server_reader, client_writer),
            )
        finally:
            self._pipes.discard(pipe)
            for writer in pipe.writers:
                writer.close()

    async def _requests(self, pipe: _Pipe, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                if len(pipe.startup) < 4096:  # an SSL request may come first: keep the first few KiB
                    pipe.startup += chunk[:4096]
                matched = next((p for p in self._patterns if p in chunk), None)
                if matched is not None:  # doomed before it is sent, so no byte of its reply gets through
                    self._patterns.remove(matched)
                    pipe.doomed = True
                    self.dropped += 1
                writer.write(chunk)
                await writer.drain()
                if pipe.doomed:
                    await asyncio.sleep(self.close_after_s)  # the database acts; nobody hears of it
                    break
        for w in pipe.writers:
            w.close()

    async def _replies(self, pipe: _Pipe, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                if pipe.doomed:
                    continue
                writer.write(chunk)
                await writer.drain()
        for w in pipe.writers:  # the database closed: so does the service's side (it may wait for that)
            w.close()
