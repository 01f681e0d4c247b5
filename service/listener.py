"""The one LISTEN connection per process, and its reconnects.

A NOTIFY is only a wake-up: a project's feed always re-reads the log after what it has delivered, and
the token revocations are reloaded whole. So the listener's job is to keep waking reliably:

* its own asyncpg connection, never a pooled one (a pool resets connections with `UNLISTEN *`);
* a dead connection is noticed by asyncpg's termination callback and by a periodic `SELECT 1`,
  then replaced with exponential backoff and full jitter;
* after every (re)connect, and every `safety_interval_s` anyway, `refresh` runs on its connection
  (the runtime re-reads every subscribed project whose head has moved and reloads the revocations),
  so what was written while it was deaf, or whose notification was lost, still arrives.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import asyncpg

from .db import UNAVAILABLE_ERRORS, asyncpg_dsn

logger = logging.getLogger("herald.listener")

APPLICATION_NAME = "herald listener"


class Listener:
    def __init__(
        self,
        url: str,
        *,
        channels: Mapping[str, Callable[[str], None]],
        refresh: Callable[[asyncpg.Connection], Awaitable[None]],
        safety_interval_s: float = 2.0,
        check_interval_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.dsn = asyncpg_dsn(url)
        self.channels = channels  # channel -> what its payload wakes
        self.refresh = refresh
        self.safety_interval_s = safety_interval_s
        self.check_interval_s = check_interval_s
        self.connect_timeout_s = connect_timeout_s
        self.max_backoff_s = max_backoff_s
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.notifications = 0
        self._conn: asyncpg.Connection | None = None
        self._nudge = asyncio.Event()  # the connection was lost, or the channels changed

    def listen(self, channels: Mapping[str, Callable[[str], None]]) -> None:
        """Listen on exactly `channels` from now on (none while a wake-up bus carries them; all again
        when it fails), then re-read: what was said while neither carried it is read then."""
        self.channels = channels
        self._nudge.set()

    def _lost(self, lost: asyncio.Event) -> None:
        lost.set()
        self._nudge.set()

    def _on_notify(self, _conn: Any, _pid: int, channel: str, payload: str) -> None:
        self.notifications += 1
        handler = self.channels.get(channel)
        if handler is not None:  # not one just given up
            handler(payload)

    async def run(self) -> None:
        """Listen until cancelled, reconnecting forever."""
        attempt = 0
        while True:
            lost = asyncio.Event()
            try:
                conn = await asyncpg.connect(
                    self.dsn,
                    timeout=self.connect_timeout_s,
                    command_timeout=self.connect_timeout_s,
                    server_settings={"application_name": APPLICATION_NAME},  # for pg_stat_activity
                )
            except Exception as exc:  # refused, shutting down, not accepting: all mean "try again"
                delay = random.uniform(0, min(self.max_backoff_s, 0.1 * 2**attempt))
                attempt += 1
                logger.warning("listener cannot connect (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
                continue
            attempt = 0
            self._conn = conn
            try:
                conn.add_termination_listener(lambda _c, lost=lost: self._lost(lost))
                await self._watch(conn, lost)
            except UNAVAILABLE_ERRORS as exc:
                logger.warning("listener connection lost: %s", exc)
            finally:
                self.connected.clear()
                self._conn = None
                self.reconnects += 1
                with contextlib.suppress(Exception):
                    conn.terminate()

    async def _watch(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        """Return when the connection is gone; meanwhile keep its channels as asked and re-read stale
        projects periodically. The connection is used by this task alone (asyncpg runs one operation
        at a time on a connection)."""
        loop = asyncio.get_running_loop()
        next_check = loop.time() + self.check_interval_s
        listening: set[str] = set()
        while True:
            self._nudge.clear()
            for channel in listening - self.channels.keys():
                await conn.remove_listener(channel, self._on_notify)
            for channel in self.channels.keys() - listening:
                await conn.add_listener(channel, self._on_notify)
            listening = set(self.channels)
            self.connected.set()
            await self.refresh(conn)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._nudge.wait(), self.safety_interval_s)
            if lost.is_set() or conn.is_closed():
                return
            if loop.time() >= next_check:
                next_check = loop.time() + self.check_interval_s
                await conn.fetchval("SELECT 1", timeout=self.connect_timeout_s)
