"""Consuming projects' events over Herald's WebSocket: each event once, in `seq` order, across reconnects,
restarts of the service and restarts of the consumer.

    async with Subscriber("http://127.0.0.1:8000", token, ["web"], client_id="runner-1") as events:
        async for item in events:
            if isinstance(item, Resync):      # the log was pruned or rewritten (docs/protocol.md §7.4, §7.5)
                reload(item.state)            # with fetch_state=True; resumed after item.after
                continue
            handle(item)                      # an Event; acked once the loop asks for the next item

Where it starts: the first subscription to a project resumes from this `client_id`'s durable cursor on
the service (the events after its last persisted ack), or from `after` when given; every reconnect
resumes from the last event handed to the application, so nothing is skipped and nothing comes twice.
That resume names the event's `hash` too (`afterHash`), and every ack the hash of the event it acks, so
that a log which no longer holds that event at its seq (a database failover reissued it, §7.5) answers
`history_rewritten`, a `Resync`, instead of going on with other events as if they followed it.

Acks: by default an item counts as handled, and is acked, when the iteration asks for the next one (or
the subscriber closes), so a consumer that crashes while handling an event gets it again after its
restart. With `auto_ack=False` the application calls `await subscriber.ack(item)` itself. Acks are
cumulative per project: acking seq N acks everything of that project up to N.

Connections: retried with exponential backoff and full jitter on every close the protocol marks
retry (§4.5) and on network failures; the service's heartbeat `ping` is answered with `pong`, and a
service silent for two heartbeats is dropped and reconnected. A terminal close (4401 a bad or expired
token, 4403, 1009), a handshake the service refuses, or a project the token may not read (`forbidden`,
`not_found`) ends the iteration with `SubscriberError`. A token given as a function is asked again for
every connection, so a 4401 on a connection that had been welcomed (the token expired or was revoked
meanwhile) is retried once with a fresh one.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI

from .backoff import backoff

logger = logging.getLogger("herald_client")

EVENT_TYPES = frozenset({"agent_run_progress", "pr_notification", "validation_update"})

# Close codes after which reconnecting cannot help until something changes (docs/protocol.md §4.5).
TERMINAL_CLOSE_CODES = frozenset({4401, 4403, 1009})

# Errors about a project that end the subscription to it for good: the token may not read it, or it
# does not exist.
TERMINAL_ERRORS = frozenset({"forbidden", "not_found"})


@dataclass(frozen=True)
class Event:
    """An event of a project's log (docs/protocol.md §2). `raw` is the wire object as received."""

    type: str
    project_id: str
    seq: int
    message_id: str
    timestamp: str
    data: dict[str, Any]
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_wire(cls, frame: dict[str, Any]) -> Event:
        return cls(
            type=frame["type"],
            project_id=frame["projectId"],
            seq=frame["seq"],
            message_id=frame["messageId"],
            timestamp=frame["timestamp"],
            data=frame["data"],
            raw=frame,
        )


@dataclass(frozen=True)
class Resync:
    """The service cannot resume a project from this consumer's position: the log was pruned past it
    (`history_truncated`, with `oldest`, the oldest seq still kept), the position is beyond the head
    (`invalid_cursor`, a log that was reset), or the log's event at the position is not the one this
    consumer had (`history_rewritten`, with `seq`, that position: a database failover gave the seq to
    another event, docs/protocol.md §7.5). Either way the log cannot continue what this consumer
    holds; the state snapshot (§8) holds what the log says now. The subscription goes on after
    `after`: the snapshot's seq when the subscriber fetched it (`state`, with `fetch_state=True`), else
    `state_seq`, the head when the service answered.
    Acking a `Resync` acks the project up to `after`; when that is below what was handled before it
    (a rewritten log may be shorter than the one this consumer read), the events after `after` are
    acked again as they are handled."""

    project_id: str
    reason: str
    oldest: int | None
    state_seq: int
    state: dict[str, Any] | None = None
    seq: int | None = None

    @property
    def after(self) -> int:
        if self.state is not None:
            seq: int = self.state["seq"]
            return seq
        return self.state_seq


Item = Event | Resync

# A token, or a function giving the current one (called for every connection and every HTTP read).
TokenSource = str | Callable[[], str | Awaitable[str]]


class SubscriberError(Exception):
    """The subscription cannot go on as configured: `code` is the service's error code (`forbidden`,
    `not_found`, ...), `"closed"` with `close_code` for a terminal close, or `"refused"` for a refused
    handshake (`status`)."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        project_id: str | None = None,
        close_code: int | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.project_id = project_id
        self.close_code = close_code
        self.status = status


@dataclass
class _End:
    error: BaseException | None = None


class Subscriber:
    """An async iterator over the events of `projects`, each handed over once and in `seq` order per
    project (projects interleave as the service sends them), with `Resync` items where the log cannot
    be resumed. Use as an async context manager (or call `aclose()`); iterate from one task only.

    Arguments: `base_url` is the service (`http://host:port`; `ws://` works too) and `token` a token
    with `subscribe` on every project, or a function (plain or async) that returns the current one.
    `client_id` (1-128 printable characters) names the durable cursor: keep it stable across restarts
    of the consumer so that it resumes where it left off.
    `after` maps projects to a starting seq for their first subscription (default: the durable cursor,
    or new events only when there is none). `fetch_state` loads `/state` (`state_limit` items per list)
    into each `Resync`. `backoff_s` bounds the reconnect delays; `ack_interval_s` is how often acks of
    handled events go out; `max_buffer` is how many received events may wait for the application
    before the subscriber stops reading (the service then resumes it from its position, losing
    nothing); `open_timeout_s` bounds the handshake and the `welcome`.
    """

    def __init__(
        self,
        base_url: str,
        token: TokenSource,
        projects: str | Iterable[str],
        *,
        client_id: str,
        after: Mapping[str, int] | None = None,
        auto_ack: bool = True,
        fetch_state: bool = False,
        state_limit: int = 50,
        backoff_s: tuple[float, float] = (0.5, 20.0),
        ack_interval_s: float = 0.1,
        max_buffer: int = 1000,
        open_timeout_s: float = 10.0,
    ) -> None:
        self.projects = [projects] if isinstance(projects, str) else list(dict.fromkeys(projects))
        if not self.projects:
            raise ValueError("subscribe to at least one project")
        self.client_id = client_id
        self._token_source = token
        self.auto_ack = auto_ack
        self.fetch_state = fetch_state
        self.state_limit = state_limit
        self.backoff_s = backoff_s
        self.ack_interval_s = ack_interval_s
        self.max_buffer = max_buffer
        self.open_timeout_s = open_timeout_s
        self.connections = 0  # connections welcomed so far: for tests and metrics
        self._http_url = _http_base(base_url)
        self._ws_url = _ws_base(self._http_url) + "/ws?clientId=" + quote(client_id, safe="")
        # The last seq queued for the application per project (None: start from the durable cursor),
        # and the hash of the event there (None for a position given without its event: `after`, a
        # snapshot's seq, the service's start), sent as `afterHash` when resuming from it.
        self._position: dict[str, int | None] = {p: (after or {}).get(p) for p in self.projects}
        self._position_hash: dict[str, str | None] = {}
        self._handled: dict[str, int] = {}  # the last seq the application has handled, to ack
        self._handled_hash: dict[str, str | None] = {}  # the hash of the event at that seq, sent with its ack
        self._sent: dict[str, int] = {}  # acks sent on the current connection
        self._live: set[str] = set()  # subscribed on the current connection
        self._retries: dict[str, int] = {}  # consecutive `unavailable` answers to subscribing
        self._queue: asyncio.Queue[Item | _End] = asyncio.Queue()
        self._room = asyncio.Event()
        self._current: Item | None = None
        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._http: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # resubscribes waiting out a backoff
        self._closed = False

    # --- the application's side --------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Leaving the block normally: the item being handled is done. On an exception it is not.
        await self.aclose(handled=exc_type is None)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Item:
        self.start()
        if self._current is not None and self.auto_ack:
            self._mark_handled(self._current)
        self._current = None
        if self._closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        self._room.set()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later call ends the same way
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        self._current = item
        return item

    def start(self) -> None:
        """Start connecting (entering the context or the first iteration does it)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._supervise(), name=f"herald-subscriber-{self.client_id}")

    async def ack(self, item: Item) -> None:
        """Ack `item` and everything of its project before it, now (when connected; else on the next
        connection). Acks are persisted by the service within a second, and before a clean close."""
        self._mark_handled(item)
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self._flush_acks(ws)

    def position(self, project_id: str) -> int | None:
        """The last seq handed towards the application for this project (None before the first
        `subscribed`)."""
        return self._position.get(project_id)

    async def aclose(self, *, handled: bool = True) -> None:
        """Stop: ack what was handled (with `handled`, the current item too when acking automatically),
        close the connection cleanly, so the service persists those acks before the close completes,
        and end the iteration."""
        if self._closed:
            return
        self._closed = True
        if handled and self.auto_ack and self._current is not None:
            self._mark_handled(self._current)
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(ConnectionClosed, OSError):
                await self._flush_acks(ws)
                await ws.close()
        for task in [self._task, *self._tasks]:
            if task is not None:
                task.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._http is not None:
            await self._http.aclose()
        self._queue.put_nowait(_End())

    def _mark_handled(self, item: Item) -> None:
        project_id = item.project_id
        if isinstance(item, Resync):
            # The acks before it name the log this consumer can no longer follow: `after` replaces
            # them, even when lower (a rewritten log may end below what was handled), and goes out.
            self._handled[project_id] = item.after
            self._handled_hash[project_id] = None
            self._sent.pop(project_id, None)
        elif item.seq > self._handled.get(project_id, 0):
            self._handled[project_id] = item.seq
            self._handled_hash[project_id] = item.raw.get("hash")

    # --- the connection ------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        try:
            await self._run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a terminal failure, or a bug: the application sees it either way
            self._queue.put_nowait(_End(exc))

    async def _run(self) -> None:
        failures = 0
        while not self._closed:
            try:
                ws = await connect(self._ws_url, open_timeout=self.open_timeout_s, ping_interval=None, max_size=2**20)
            except InvalidURI as exc:
                raise SubscriberError("refused", str(exc)) from exc
            except InvalidStatus as exc:
                status = exc.response.status_code
                if 400 <= status < 500 and status != 429:  # a bad clientId, an Origin, a wrong URL
                    message = f"the handshake was refused: HTTP {status}"
                    raise SubscriberError("refused", message, status=status) from exc
                logger.info("herald: handshake answered HTTP %s; retrying", status)
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                logger.info("herald: cannot connect (%s); retrying", exc)
            else:
                async with ws:
                    if await self._session(ws):
                        failures = 0
            delay = backoff(failures, *self.backoff_s)
            failures += 1
            await asyncio.sleep(delay)

    async def _session(self, ws: ClientConnection) -> bool:
        """One connection, until it ends; True when it was welcomed (the backoff starts over)."""
        welcomed = False
        acks: asyncio.Task[None] | None = None
        try:
            await ws.send(json.dumps({"type": "auth", "token": await self._token()}))
            async with asyncio.timeout(self.open_timeout_s):
                welcome = json.loads(await ws.recv())
            if welcome.get("type") != "welcome":
                logger.warning("herald: expected welcome, got %s", welcome.get("type"))
                return False
            welcomed = True
            self.connections += 1
            heartbeat_s = welcome.get("heartbeatMs", 15000) / 1000
            self._ws = ws
            self._sent = {}
            for project_id in self.projects:
                await self._subscribe(ws, project_id)
            acks = asyncio.create_task(self._ack_loop(ws))
            while True:
                # The service pings every heartbeat; two of them without a word means it is gone.
                async with asyncio.timeout(2 * heartbeat_s + 1):
                    raw = await ws.recv()
                await self._frame(ws, json.loads(raw))
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd is not None else None
            renewable = code == 4401 and welcomed and not isinstance(self._token_source, str)
            if code in TERMINAL_CLOSE_CODES and not renewable:
                reason = exc.rcvd.reason if exc.rcvd is not None else ""
                raise SubscriberError("closed", f"closed with {code}: {reason}", close_code=code) from exc
            logger.info("herald: connection closed (%s); resuming", code)
        except TimeoutError:
            logger.info("herald: the service went silent; reconnecting")
        finally:
            if acks is not None:
                acks.cancel()
            if self._ws is ws:
                self._ws = None
            self._live.clear()
        return welcomed

    async def _subscribe(self, ws: ClientConnection, project_id: str) -> None:
        frame: dict[str, Any] = {"type": "subscribe", "projectId": project_id}
        position = self._position[project_id]
        if position is not None:
            frame["after"] = position
            position_hash = self._position_hash.get(project_id)
            if position > 0 and position_hash is not None:
                frame["afterHash"] = position_hash
        self._live.discard(project_id)
        await ws.send(json.dumps(frame))

    async def _resubscribe_later(self, ws: ClientConnection, project_id: str) -> None:
        """The database was unavailable to a subscribe: ask again after a backoff, on this connection."""
        failures = self._retries.get(project_id, 0)
        self._retries[project_id] = failures + 1
        await asyncio.sleep(backoff(failures, *self.backoff_s))
        if self._ws is ws and project_id not in self._live:
            with contextlib.suppress(ConnectionClosed):
                await self._subscribe(ws, project_id)

    async def _frame(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "ping":
            await ws.send(json.dumps({"type": "pong", "ts": frame.get("ts")}))
        elif kind in EVENT_TYPES and "seq" in frame:
            await self._event(ws, frame)
        elif kind == "subscribed":
            project_id = frame["projectId"]
            self._live.add(project_id)
            self._retries.pop(project_id, None)
            if self._position.get(project_id) is None:
                self._position[project_id] = frame["after"]
                self._position_hash[project_id] = None
        elif kind == "unsubscribed":
            self._live.discard(frame["projectId"])
        elif kind == "error":
            await self._error(ws, frame)

    async def _event(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        project_id = frame["projectId"]
        if project_id not in self._position:
            return
        position, seq = self._position[project_id], frame["seq"]
        if position is not None and seq <= position:
            return  # a repeat (a resume from a cursor behind what this consumer had)
        if position is not None and seq > position + 1:
            # A gap: the end of an earlier subscription (a new one replays from the position), or a
            # live one that skipped; either way, ask for what follows the position.
            if project_id in self._live:
                await self._subscribe(ws, project_id)
            return
        self._position[project_id] = seq
        self._position_hash[project_id] = frame.get("hash")
        while self._queue.qsize() >= self.max_buffer:
            self._room.clear()
            await self._room.wait()
        self._queue.put_nowait(Event.from_wire(frame))

    async def _error(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        code, ref, message = frame.get("code"), frame.get("ref"), frame.get("message", "")
        if ref not in self._position:
            logger.info("herald: error %s: %s", code, message)
            return
        project_id: str = ref
        if code in ("history_truncated", "history_rewritten", "invalid_cursor"):
            self._live.discard(project_id)
            resync = await self._resync(project_id, code, frame)
            self._position[project_id] = resync.after
            self._position_hash[project_id] = None  # a snapshot's seq: no event of this consumer's there
            # The handled acks not sent yet name the log it can no longer follow: drop them (a new
            # connection would otherwise send them again); the Resync's own ack replaces them.
            self._handled.pop(project_id, None)
            self._handled_hash.pop(project_id, None)
            self._queue.put_nowait(resync)
            await self._subscribe(ws, project_id)
        elif code in TERMINAL_ERRORS:
            raise SubscriberError(code, message, project_id=project_id)
        elif code == "unavailable":
            if project_id in self._live:
                self._sent.pop(project_id, None)  # an ack the database could not check: send it again
            else:
                task = asyncio.create_task(self._resubscribe_later(ws, project_id))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        else:  # not_subscribed, invalid_ack, rate_limited: nothing to do
            logger.info("herald: error %s on %s: %s", code, project_id, message)

    async def _resync(self, project_id: str, reason: str, frame: dict[str, Any]) -> Resync:
        state: dict[str, Any] | None = None
        state_seq = frame.get("stateSeq")
        if self.fetch_state or state_seq is None:  # invalid_cursor carries no stateSeq: read the head
            state = await self._state(project_id)
            state_seq = state_seq if state_seq is not None else state["seq"]
        return Resync(
            project_id,
            reason,
            frame.get("oldest"),
            state_seq,
            state if self.fetch_state else None,
            frame.get("seq") if reason == "history_rewritten" else None,
        )

    async def _state(self, project_id: str) -> dict[str, Any]:
        """The project's state snapshot (§8), retried while the service cannot answer."""
        if self._http is None:
            self._http = httpx.AsyncClient(base_url=self._http_url, timeout=10)
        limit = self.state_limit if self.fetch_state else 1
        failures = 0
        while True:
            try:
                r = await self._http.get(
                    f"/api/projects/{quote(project_id, safe='')}/state",
                    params={"limit": limit},
                    headers={"Authorization": f"Bearer {await self._token()}"},
                )
            except httpx.TransportError as exc:
                logger.info("herald: cannot read the state of %s (%s); retrying", project_id, exc)
            else:
                if r.status_code == 200:
                    state: dict[str, Any] = r.json()
                    return state
                if r.status_code not in (429, 502, 503, 504):
                    raise SubscriberError("state", f"reading the state answered {r.status_code}: {r.text[:200]}")
            await asyncio.sleep(backoff(failures, *self.backoff_s))
            failures += 1

    async def _token(self) -> str:
        if isinstance(self._token_source, str):
            return self._token_source
        token = self._token_source()
        return await token if inspect.isawaitable(token) else token

    # --- acks ----------------------------------------------------------------------------------------

    async def _ack_loop(self, ws: ClientConnection) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.sleep(self.ack_interval_s)
                await self._flush_acks(ws)

    async def _flush_acks(self, ws: ClientConnection) -> None:
        """Send one cumulative ack per subscribed project whose handled seq moved on this connection, with
        the hash of the event acked: the service keeps it with the durable cursor, so that a resume from
        that cursor on a log that reissued the seq is refused (§7.5) rather than served other events."""
        for project_id in list(self._live):
            seq = self._handled.get(project_id, 0)
            if seq > self._sent.get(project_id, 0):
                self._sent[project_id] = seq
                ack: dict[str, Any] = {"type": "ack", "projectId": project_id, "seq": seq}
                if (hash_ := self._handled_hash.get(project_id)) is not None:
                    ack["hash"] = hash_
                await ws.send(json.dumps(ack))


def _http_base(url: str) -> str:
    parts = urlsplit(url.rstrip("/"))
    scheme = {"ws": "http", "wss": "https"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, parts.path, "", ""))


def _ws_base(http_url: str) -> str:
    parts = urlsplit(http_url)
    return urlunsplit(({"https": "wss"}.get(parts.scheme, "ws"), parts.netloc, parts.path, "", ""))
