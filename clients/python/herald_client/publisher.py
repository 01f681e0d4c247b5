"""Publishing to Herald, never twice.

A publish whose answer never arrived (a dropped connection, a timeout, a restarting service) may or
may not have been appended. The only safe retry is the same request with the same `messageId`: the
service appends it at most once and answers a repeat with the original event (docs/protocol.md §2). So
every publish gets its messageId before the first attempt, and every retry reuses it.

    async with Publisher("http://127.0.0.1:8000", token) as herald:
        await herald.progress("web", run_id="run-7", status="running", progress=40, step="tests")

Retries: connection failures, timeouts, 429, 502, 503 and 504, with exponential backoff and full
jitter (honouring `Retry-After`), until `deadline_s` has passed. Anything else (a 4xx: a bad token,
an unknown project, invalid data) is the caller's to fix and raises `PublishError` at once.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self, TypeVar

import httpx

T = TypeVar("T")

RETRY_STATUS = frozenset({429, 502, 503, 504})


class PublishError(Exception):
    """A publish that cannot succeed as sent (`code` is the service's error code), or that did not
    succeed before the deadline (`code` "unavailable")."""

    def __init__(self, code: str, message: str, status: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


@dataclass(frozen=True)
class Published:
    """The service's answer: the event's seq, and whether this call appended it (False when an
    earlier attempt, or an earlier process, already had)."""

    project_id: str
    seq: int
    message_id: str
    created: bool
    event: dict[str, Any]


class Publisher:
    """Publishes events over HTTP with retries that never duplicate. Use one per process (it keeps a
    connection pool), as an async context manager or with `aclose()`.

    `source` prefixes generated messageIds (`<source>-<n>`); it defaults to a random id, so two
    processes never collide. A producer that may itself be restarted mid-run should pass its own
    messageIds derived from what it reports (e.g. `f"{run_id}:{step}:{progress}"`), so that the
    restarted process re-sending a report appends nothing new.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        source: str | None = None,
        deadline_s: float = 60.0,
        timeout_s: float = 10.0,
        backoff_s: tuple[float, float] = (0.1, 5.0),
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.source = source or uuid.uuid4().hex[:12]
        self.deadline_s = deadline_s
        self.backoff_s = backoff_s
        self.attempts = 0  # every HTTP attempt so far, retries included: for tests and metrics
        self._counter = itertools.count(1)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout_s,
            transport=transport,
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    def next_message_id(self) -> str:
        return f"{self.source}-{next(self._counter)}"

    async def publish(
        self, project_id: str, type: str, data: dict[str, Any], *, message_id: str | None = None
    ) -> Published:
        """Append one event; retried until it is durable or the deadline passes."""
        message_id = message_id or self.next_message_id()
        body = {"type": type, "data": data, "messageId": message_id}
        r = await self._post(f"/api/projects/{project_id}/events", body)
        event: dict[str, Any] = r.json()
        return Published(project_id, event["seq"], event["messageId"], r.status_code == 201, event)

    async def publish_many(
        self, project_id: str, events: Iterable[tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], str]]
    ) -> list[Published]:
        """Append up to 1,000 events, `(type, data)` or `(type, data, messageId)`, in one request and one
        transaction (`POST …/events/batch`): all or none, in this order; retried as a whole, which the
        messageIds make safe. `Published.event` holds seq, messageId and created."""
        items = []
        for event in events:
            type, data, *given = event
            items.append({"type": type, "data": data, "messageId": given[0] if given else self.next_message_id()})
        r = await self._post(f"/api/projects/{project_id}/events/batch", {"events": items})
        return [Published(project_id, e["seq"], e["messageId"], e["created"], e) for e in r.json()["events"]]

    async def _post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST until a 200 or 201, retrying what may succeed later until the deadline."""
        deadline = time.monotonic() + self.deadline_s
        low, high = self.backoff_s
        for attempt in itertools.count():
            self.attempts += 1
            retry_after: float | None = None
            try:
                r = await self._http.post(path, json=body)
            except httpx.TransportError as exc:  # connect, read, write, protocol: the outcome is unknown
                failure = PublishError("unavailable", f"{exc.__class__.__name__}: {exc}")
            else:
                if r.status_code in (200, 201):
                    return r
                failure = _error_of(r)
                if r.status_code not in RETRY_STATUS:
                    raise failure
                retry_after = _seconds(r.headers.get("retry-after"))
            delay = random.uniform(0, min(high, low * 2**attempt))  # full jitter
            if retry_after is not None:
                delay = max(delay, retry_after)
            if time.monotonic() + delay > deadline:
                raise PublishError("unavailable", f"gave up after {attempt + 1} attempts: {failure.message}")
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def progress(
        self,
        project_id: str,
        *,
        run_id: str,
        status: str,
        progress: float,
        step: str | None = None,
        message: str | None = None,
        message_id: str | None = None,
    ) -> Published:
        """Report an agent run's progress (`agent_run_progress`)."""
        data: dict[str, Any] = {"runId": run_id, "status": status, "progress": progress}
        if step is not None:
            data["step"] = step
        if message is not None:
            data["message"] = message
        return await self.publish(project_id, "agent_run_progress", data, message_id=message_id)

    async def ensure_project(self, project_id: str, name: str, repo: str | None = None) -> None:
        """Create the project unless it exists (needs an admin token)."""
        body: dict[str, Any] = {"id": project_id, "name": name}
        if repo is not None:
            body["repo"] = repo
        r = await self._http.post("/api/projects", json=body)
        if r.status_code not in (201, 409):
            raise _error_of(r)


class SyncPublisher:
    """A blocking `Publisher`, for scripts and agent runners that are not async. It runs the publisher
    on an event loop of its own; do not call it from inside a running event loop. Same arguments."""

    def __init__(self, base_url: str, token: str, **kw: Any) -> None:
        self._loop = asyncio.new_event_loop()
        self._publisher = Publisher(base_url, token, **kw)

    @property
    def attempts(self) -> int:
        return self._publisher.attempts

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def publish(self, project_id: str, type: str, data: dict[str, Any], *, message_id: str | None = None) -> Published:
        return self._run(self._publisher.publish(project_id, type, data, message_id=message_id))

    def publish_many(
        self, project_id: str, events: Iterable[tuple[str, dict[str, Any]] | tuple[str, dict[str, Any], str]]
    ) -> list[Published]:
        return self._run(self._publisher.publish_many(project_id, events))

    def progress(self, project_id: str, **kw: Any) -> Published:
        return self._run(self._publisher.progress(project_id, **kw))

    def ensure_project(self, project_id: str, name: str, repo: str | None = None) -> None:
        self._run(self._publisher.ensure_project(project_id, name, repo))

    def close(self) -> None:
        self._run(self._publisher.aclose())
        self._loop.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


def _error_of(response: httpx.Response) -> PublishError:
    try:
        body = response.json()
        return PublishError(str(body["error"]), str(body["message"]), response.status_code)
    except (ValueError, KeyError, TypeError):
        return PublishError("http_error", f"HTTP {response.status_code}: {response.text[:200]}", response.status_code)


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
