"""The wake-up bus: NATS carries hints between instances; PostgreSQL stays the only source of truth.

Without a bus every instance LISTENs on the database, and every listening backend reads every NOTIFY:
transactions that NOTIFY slow down with each listener (docs/scaling.md). With `HERALD_NATS_URL` set:

* One instance per database is the **relay** (`Relay`), elected by a session-level advisory lock on
  its own connection: when that instance or its connection dies, PostgreSQL releases the lock and
  another instance, trying every `RELAY_RETRY_S`, takes over within seconds. The relay learns the
  heads from the log (LISTEN, the only listener left; or, with NOTIFY-free appends, a short-interval
  poll of the projects' heads) and publishes each project's latest head on its own subject: state, not
  deltas, so a hint may be lost, coalesced or repeated without harm.
* Every instance (`Bus`) subscribes only to the subjects of the projects its clients watch, and wakes
  their feeds, which re-read the log after what they delivered: a hint never carries an event.
* What a lost hint costs is latency: the listener's periodic head check stays (every 2 s), and while
  an instance's NATS connection is down it LISTENs on the database again (`on_state`), as without a
  bus. When the relay's own NATS connection drops, it gives up the lock so that an instance that can
  still publish relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg

from .db import UNAVAILABLE_ERRORS, Database, DatabaseUnavailable

logger = logging.getLogger("herald.bus")

# The advisory lock whose holder relays (one per database: instances of another database elsewhere use
# another NATS prefix, HERALD_NATS_PREFIX). The number spells "herald".
RELAY_LOCK = 0x68_65_72_61_6C_64
RELAY_RETRY_S = 1.0  # how often a standby instance tries the lock: the failover time, at most


def head_subject(prefix: str, project_id: str) -> str:
    """The subject of a project's head. Project ids may hold dots, which separate NATS tokens; they
    never hold `~`, which NATS allows, so the mapping is one to one."""
    return f"{prefix}.heads.{project_id.replace('.', '~')}"


def revocations_subject(prefix: str) -> str:
    return f"{prefix}.revocations"


def _project_of(prefix: str, subject: str) -> str:
    return subject[len(prefix) + len(".heads.") :].replace("~", ".")


def _nats() -> Any:
    try:
        import nats
    except ModuleNotFoundError as exc:  # pragma: no cover - config refuses HERALD_NATS_URL without it
        raise RuntimeError("HERALD_NATS_URL is set but nats-py is not installed: pip install 'herald[nats]'") from exc
    return nats


class Bus:
    """This instance's NATS connection: the head subjects of the projects its clients watch, and the
    revocations; for the relay, the way out.

    `on_head(project_id, head)` (head None: read anyway) and `on_revocations()` are what the hints
    wake. `on_state(up)` is awaited whenever the connection comes up (subscriptions in place) or goes
    down, so that the caller can stop or start listening on the database, and re-read what it may
    have missed meanwhile.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        watched: Callable[[], Iterable[str]],
        on_head: Callable[[str, int | None], None],
        on_revocations: Callable[[], None],
        on_state: Callable[[bool], Awaitable[None]],
        name: str = "herald",
        max_backoff_s: float = 2.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.watched = watched
        self.on_head = on_head
        self.on_revocations = on_revocations
        self.on_state = on_state
        self.name = name
        self.max_backoff_s = max_backoff_s
        self.up = asyncio.Event()
        self.hints = 0  # heads received, for the tests and /metrics
        self._nc: Any = None
        self._subs: dict[str, Any] = {}  # project -> its NATS subscription
        self._retune = asyncio.Event()
        self._states: asyncio.Queue[bool] = asyncio.Queue()

    def retune(self) -> None:
        """The set of watched projects changed: subscribe to the new ones, drop the old ones."""
        self._retune.set()

    async def publish(self, heads: dict[str, int], *, revocations: bool = False) -> None:
        """Publish heads (and that the revocations changed); the relay's only output. Never raises: a
        hint that cannot be sent is a hint lost, which the head checks cover."""
        nc = self._nc
        if nc is None or not self.up.is_set():
            return
        try:
            for project_id, head in heads.items():
                await nc.publish(head_subject(self.prefix, project_id), str(head).encode())
            if revocations:
                await nc.publish(revocations_subject(self.prefix), b"")
        except Exception as exc:
            logger.warning("bus: publishing failed (%s)", exc)

    async def run(self) -> None:
        """Connect (retrying forever), then keep the subscriptions tuned to the watched projects and
        report each change of state, until cancelled."""
        nats = _nats()
        attempt = 0
        while self._nc is None:
            try:
                self._nc = await nats.connect(
                    servers=[self.url],
                    name=self.name,
                    connect_timeout=2,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                    ping_interval=5,
                    max_outstanding_pings=2,  # a silent server is given up after about 10 s
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                    error_cb=self._error,
                )
            except Exception as exc:
                delay = random.uniform(0, min(self.max_backoff_s, 0.1 * 2**attempt))
                attempt += 1
                logger.warning("bus: cannot connect to NATS (%s); retrying in %.2fs", exc, delay)
                await asyncio.sleep(delay)
        await self._nc.subscribe(revocations_subject(self.prefix), cb=self._revoked)
        self._retune.set()  # the projects watched before the bus came up
        self._states.put_nowait(True)
        try:
            await asyncio.gather(self._tune(), self._report())
        finally:
            nc, self._nc = self._nc, None
            self.up.clear()
            with contextlib.suppress(Exception):
                await nc.close()

    async def _report(self) -> None:
        """Tell the caller of each change of state, in order, once the subscriptions are in place."""
        while True:
            up = await self._states.get()
            if up:
                try:
                    await self._nc.flush(timeout=2)  # the server has every SUB: hints from now on arrive
                except Exception:
                    continue  # down again; its disconnect is queued
                self.up.set()
                logger.info("bus: NATS connected; wake-ups come through it")
            else:
                if not self.up.is_set():
                    continue
                self.up.clear()
                logger.warning("bus: NATS connection lost; listening on the database meanwhile")
            await self.on_state(up)

    async def _tune(self) -> None:
        while True:
            await self._retune.wait()
            self._retune.clear()
            wanted = set(self.watched())
            added = []
            for project_id in wanted - self._subs.keys():
                self._subs[project_id] = await self._nc.subscribe(head_subject(self.prefix, project_id), cb=self._head)
                added.append(project_id)
            for project_id in self._subs.keys() - wanted:
                with contextlib.suppress(Exception):
                    await self._subs.pop(project_id).unsubscribe()
            if added and self.up.is_set():
                # A head published before the server had the SUB is lost: read once now, after it has.
                with contextlib.suppress(Exception):
                    await self._nc.flush(timeout=2)
                for project_id in added:
                    self.on_head(project_id, None)

    async def _head(self, msg: Any) -> None:
        payload = msg.data.decode()
        if payload.isdigit():
            self.hints += 1
            self.on_head(_project_of(self.prefix, msg.subject), int(payload))

    async def _revoked(self, _msg: Any) -> None:
        self.on_revocations()

    async def _disconnected(self) -> None:
        self._states.put_nowait(False)

    async def _reconnected(self) -> None:
        self._states.put_nowait(True)  # nats-py has sent the SUBs again

    async def _error(self, exc: Exception) -> None:
        logger.debug("bus: %s", exc)


class Relay:
    """Contend for the relay lock and, while holding it, turn what the log says into head hints.

    `poll_s` None: LISTEN to the appends' NOTIFYs (and the revocations'). A number: appends do not
    NOTIFY (HERALD_APPEND_NOTIFY=false); the relay reads every project's head that often instead, and
    LISTENs only for the revocations, which are rare."""

    def __init__(
        self,
        database: Database,
        bus: Bus,
        *,
        events_channel: str,
        revocations_channel: str,
        poll_s: float | None = None,
        retry_s: float = RELAY_RETRY_S,
    ) -> None:
        self.database = database
        self.bus = bus
        self.events_channel = events_channel
        self.revocations_channel = revocations_channel
        self.poll_s = poll_s
        self.retry_s = retry_s
        self.relaying = asyncio.Event()
        self.published = 0  # heads published, for the tests and /metrics
        self._pending: dict[str, int] = {}
        self._revoked = False
        self._kick = asyncio.Event()

    async def run(self) -> None:
        """Until cancelled: while the bus is up, try the lock every `retry_s` on a pooled connection, and
        keep that connection while holding it. An instance that does not relay holds no connection for
        it; the relay holds one of its pool's."""
        while True:
            await self.bus.up.wait()
            try:
                async with self.database.connection() as conn:
                    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", RELAY_LOCK):
                        try:
                            await self._relay(conn)
                        finally:
                            if not conn.is_closed():  # back to the pool without the lock or the LISTENs
                                await conn.execute("UNLISTEN *; SELECT pg_advisory_unlock_all()")
            except DatabaseUnavailable as exc:
                logger.warning("relay: %s", exc)
            except UNAVAILABLE_ERRORS as exc:  # lost while relaying
                logger.warning("relay: %s", exc)
            finally:
                if self.relaying.is_set():
                    logger.info("relay: no longer relaying")
                self.relaying.clear()
            await asyncio.sleep(self.retry_s)

    async def _relay(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        on_lost = lambda _c: lost.set()  # noqa: E731
        conn.add_termination_listener(on_lost)
        try:
            await conn.add_listener(self.revocations_channel, self._on_revocations)
            if self.poll_s is None:
                await conn.add_listener(self.events_channel, self._on_notify)
            await self._relay_on(conn, lost)
        finally:
            conn.remove_termination_listener(on_lost)
            with contextlib.suppress(Exception):
                await conn.remove_listener(self.revocations_channel, self._on_revocations)
                if self.poll_s is None:
                    await conn.remove_listener(self.events_channel, self._on_notify)

    async def _relay_on(self, conn: asyncpg.Connection, lost: asyncio.Event) -> None:
        self.relaying.set()
        logger.info("relay: this instance relays the log's heads to NATS")
        # Whatever was appended while no one relayed: every head once (the instances re-read on it).
        known: dict[str, int] = dict(await conn.fetch("SELECT id, head FROM projects"))
        self._pending.update(known)
        self._revoked = True
        sender = asyncio.create_task(self._send())
        self._kick.set()
        try:
            loop = asyncio.get_running_loop()
            next_check = loop.time() + 1.0
            while not lost.is_set() and self.bus.up.is_set() and not sender.done():
                if self.poll_s is None:
                    with contextlib.suppress(TimeoutError):  # a look at the bus ten times a second
                        await asyncio.wait_for(lost.wait(), 0.1)
                    if not lost.is_set() and loop.time() >= next_check:
                        next_check = loop.time() + 1.0
                        await conn.fetchval("SELECT 1")
                    continue
                await asyncio.sleep(self.poll_s)
                for project_id, head in await conn.fetch("SELECT id, head FROM projects"):
                    if known.get(project_id) != head:
                        known[project_id] = head
                        self._pending[project_id] = head
                        self._kick.set()
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender

    def _on_notify(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        project_id, _, seq = payload.rpartition(":")
        if seq.isdigit() and int(seq) > self._pending.get(project_id, -1):
            self._pending[project_id] = int(seq)
            self._kick.set()

    def _on_revocations(self, *_args: Any) -> None:
        self._revoked = True
        self._kick.set()

    async def _send(self) -> None:
        """Publish what has piled up since the last send: one message per project, its latest head."""
        while True:
            await self._kick.wait()
            self._kick.clear()
            heads, self._pending = self._pending, {}
            revoked, self._revoked = self._revoked, False
            self.published += len(heads)
            await self.bus.publish(heads, revocations=revoked)
