"""An attacker's and an operator's view of the edge (docs/protocol.md §7.1), over real sockets.

Each test is one attack against a real uvicorn and a real PostgreSQL: a guessable secret, tokens in
logs, slow and oversized headers, a client that stalls a huge catch-up, cross-project metrics, digit
bombs and 500s from input, driver text in errors, revocation across instances, key rotation, token
rules, connection caps, HTTP rates and the dashboard's headers. Each asserts what the service must now
do, which the code before §7.1 did not.

Timing: the service's own limits here are fixed (a 1 s header timeout, a 4 s stall); every wait of
the test around them is scaled by `timeout()` for slow machines.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import jwt
import psutil
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from service import auth, db, eventlog
from service.app import Server, create_app, server_config
from service.config import Settings
from tests.conftest import (
    SECRET,
    RunningServer,
    ServiceProcess,
    free_port,
    make_settings,
    start_server,
    stop_server,
    timeout,
)
from tests.helpers import create, open_client, stream

MiB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent

# --- shared helpers ------------------------------------------------------------------------------------


def issue(user: str = "alice", projects: Any = "*", scopes: tuple[str, ...] = ("admin",), secret: str = SECRET) -> str:
    return auth.issue(secret, user=user, projects=projects, scopes=scopes)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def assert_error(r: httpx.Response, status: int | None, code: str | None = None) -> dict[str, Any]:
    """`r` is the contract's JSON error body (`error` and `message`), with `status` (None: any 4xx)."""
    if status is None:
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
    else:
        assert r.status_code == status, (r.status_code, r.text[:300])
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body: dict[str, Any] = r.json()
    assert isinstance(body.get("error"), str) and isinstance(body.get("message"), str) and body["message"], body
    if code is not None:
        assert body["error"] == code, body
    return body


async def answer(http: httpx.AsyncClient, url: str, **kw: Any) -> httpx.Response:
    """The response to GET `url`, its body read unless it is an event stream (which never ends)."""
    async with http.stream("GET", url, **kw) as r:
        if not r.headers.get("content-type", "").startswith("text/event-stream"):
            await r.aread()
        return r


def rss(proc: ServiceProcess) -> int:
    """The resident memory of a service process, in bytes."""
    assert proc.proc is not None
    return int(psutil.Process(proc.proc.pid).memory_info().rss)


def cli_env(database_url: str, data_dir: Path, **extra: str) -> dict[str, str]:
    """The environment an operator runs `python -m service ...` with, against the test's database."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "HERALD_SECRET", "HERALD_PREVIOUS_SECRETS")}
    env.update(DATABASE_URL=database_url, HERALD_SECRET=SECRET, HERALD_DATA_DIR=str(data_dir))
    env.update(extra)
    return env


async def run_cli(env: dict[str, str], *args: str, wait: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m service ARGS`, whatever its exit status (TimeoutExpired if it is still running after `wait`)."""
    return await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "service", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout(wait),
    )


@contextlib.asynccontextmanager
async def service(data_dir: Path, database_url: str, **kw: Any) -> AsyncIterator[ServiceProcess]:
    """A `python -m service serve` subprocess on the test's database, killed afterwards if still running."""
    proc = ServiceProcess(data_dir, database_url, **kw)
    await asyncio.to_thread(proc.start)
    try:
        yield proc
    finally:
        if proc.running():
            await asyncio.to_thread(proc.stop, signal.SIGKILL)


@contextlib.asynccontextmanager
async def in_process(settings: Settings) -> AsyncIterator[RunningServer]:
    running, task = await start_server(settings)
    try:
        yield running
    finally:
        await stop_server(running, task)


async def close_of(ws: ClientConnection, wait: float = 8) -> tuple[int | None, str]:
    """The close code and reason the server ends `ws` with (None: no close frame), skipping what comes first."""
    try:
        async with asyncio.timeout(timeout(wait)):
            while True:
                await ws.recv()
    except ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (None, "")


async def create_as_admin(base_url: str, *ids: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, headers=bearer(issue()), timeout=timeout(10)) as admin:
        await create(admin, *ids)


def b64(value: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


def forge(secret: str = SECRET, **claims: Any) -> str:
    """A token signed with `secret` and its `kid`, as an attacker holding the key (or the issuer) would
    make it with PyJWT directly: sensible claims, overridden by `claims` (None removes one)."""
    now = time.time()
    payload = {
        "sub": "forger",
        "aud": auth.AUDIENCE,
        "projects": "*",
        "scopes": ["admin"],
        "iat": now,
        "exp": now + 3600,
        "jti": uuid.uuid4().hex,
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, secret, algorithm="HS256", headers={"kid": auth.key_id(secret)})


# --- 1. a public placeholder secret ---------------------------------------------------------------------

PLACEHOLDER = "change-me-to-a-long-random-string-of-32-chars"  # docker-compose.yml's old default


@pytest.mark.parametrize(
    ("secret", "problem"),
    [(PLACEHOLDER, "placeholder"), ("abcdefghij" * 4, "distinct")],
    ids=["compose-placeholder", "40-chars-10-distinct"],
)
async def test_guessable_secret_refuses_to_start(secret: str, problem: str, database_url: str, tmp_path: Path) -> None:
    """`serve` with a public placeholder or low-variety secret exits non-zero at once, saying how to make one."""
    env = cli_env(database_url, tmp_path, HERALD_SECRET=secret)
    out = await run_cli(env, "serve", "--port", str(free_port()), wait=20)  # still serving then: TimeoutExpired
    assert out.returncode != 0, out.stderr
    assert problem in out.stderr and "HERALD_SECRET" in out.stderr, out.stderr
    assert "secrets.token_urlsafe" in out.stderr, out.stderr
    assert secret not in out.stderr + out.stdout  # a near-miss secret is not echoed into logs either


def compose_ports(text: str) -> list[str]:
    """Every `ports:` entry of a compose file (its list items, unquoted)."""
    ports: list[str] = []
    in_ports = False
    for line in text.splitlines():
        item = line.strip()
        if item == "ports:":
            in_ports = True
        elif in_ports and item.startswith("- "):
            ports.append(item[2:].strip().strip("'\""))
        elif item and not item.startswith("#"):
            in_ports = False
    return ports


def test_compose_has_no_default_secret_and_binds_loopback() -> None:
    """docker-compose.yml refuses to start without HERALD_SECRET and publishes ports on 127.0.0.1 only."""
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s*HERALD_SECRET:\s*\$\{HERALD_SECRET:\?", text, re.MULTILINE), "HERALD_SECRET has a default"
    assert PLACEHOLDER not in text and "${HERALD_SECRET:-" not in text and "${HERALD_SECRET-" not in text
    published = compose_ports(text)
    assert published, "herald publishes its port"
    for port in published:
        assert port.startswith("127.0.0.1:"), f"{port} is published on every interface"


# --- 2. tokens in logs ----------------------------------------------------------------------------------


async def test_tokens_never_reach_the_logs(database_url: str, tmp_path: Path) -> None:
    """No token (query, bearer, forged) reaches the info-level access and handshake log; the requests do."""
    token = issue(user="logged")
    forged = ".".join(
        (
            b64({"alg": "HS256", "typ": "JWT", "kid": "0123456789abcdef"}),
            b64({"sub": "x" * 12}),
            secrets.token_urlsafe(32),
        )
    )
    async with service(tmp_path / "svc", database_url, serve_args=("--log-level", "info")) as proc:
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=timeout(10)) as http:
            r = await http.post("/api/projects", json={"id": "p", "name": "p"}, headers=bearer(token))
            assert r.status_code == 201, r.text
            assert_error(await http.get("/api/projects", headers=bearer(forged)), 401, "unauthorized")
            async with connect(f"{proc.ws_url}?token={token}") as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))["type"] == "welcome"
            async with http.stream("GET", f"/api/projects/p/stream?token={token}") as sse:
                assert sse.status_code == 200
                async for chunk in sse.aiter_bytes():
                    assert chunk.startswith(b"retry:")
                    break
            async with connect(f"{proc.ws_url}?token={forged}") as ws:
                code, _ = await close_of(ws)
                assert code == 4401
        await asyncio.to_thread(proc.stop)
    log = proc.log_file.read_text(encoding="utf-8", errors="replace")
    for secret in (token, forged):
        _, payload, signature = secret.split(".")
        assert secret not in log and payload not in log
        leaked = [signature[i : i + 8] for i in range(len(signature) - 7) if signature[i : i + 8] in log]
        assert not leaked, f"part of a token's signature is in the log: {leaked}"
    # Redaction, not silence: the request lines are there, with their tokens masked.
    assert '"WebSocket /ws?token=***" [accepted]' in log, log[-3000:]
    assert "/api/projects/p/stream?token=*** HTTP/1.1" in log, log[-3000:]
    assert '"POST /api/projects HTTP/1.1" 201' in log and '"GET /api/projects HTTP/1.1" 401' in log
    assert log.count('"WebSocket /ws?token=***" [accepted]') == 2  # the forged token's handshake too


# --- 3. slowloris and header bombs -------------------------------------------------------------------


async def slow_headers(port: int, period: float = 0.2) -> float:
    """Send a request line, then one header byte every `period` s, never ending the headers; the
    seconds until the server drops the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    started = time.monotonic()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while time.monotonic() - started < timeout(15):
            try:
                data = await asyncio.wait_for(reader.read(65536), period)
            except TimeoutError:
                writer.write(b"a")
                try:
                    await writer.drain()
                except ConnectionError:
                    return time.monotonic() - started
                continue
            except ConnectionError:
                return time.monotonic() - started
            assert not data, f"the server answered headers that never ended: {data[:200]!r}"
            return time.monotonic() - started
        raise AssertionError("the server held a connection whose headers never end")
    finally:
        writer.close()


async def header_bomb(port: int, head: bytes, size: int, *, finish: bool) -> tuple[int, bytes, bool]:
    """Send `head` and then `size` bytes of one header's value (ending the request only if `finish`),
    reading all the while. Returns the bytes the socket accepted before the server closed, what the
    server answered, and whether it closed the connection at all.

    A plain socket rather than asyncio streams: a stream's transport closes the socket as soon as a
    write fails, dropping an answer that arrived just before the server's reset."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    accepted = 0
    answered = bytearray()

    async def write() -> None:
        nonlocal accepted
        with contextlib.suppress(OSError):
            await loop.sock_sendall(sock, head)
            block = b"a" * (256 * 1024)
            while accepted < size:
                part = block[: size - accepted]
                await loop.sock_sendall(sock, part)
                accepted += len(part)
            if finish:
                await loop.sock_sendall(sock, b"\r\n\r\n")

    async def read() -> None:
        with contextlib.suppress(OSError):
            while data := await loop.sock_recv(sock, 65536):
                answered.extend(data)

    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        writing = asyncio.create_task(write())
        try:
            await asyncio.wait_for(read(), timeout(30))
            closed = True
        except TimeoutError:
            closed = False
        writing.cancel()
        await asyncio.gather(writing, return_exceptions=True)
    finally:
        sock.close()
    return accepted, bytes(answered), closed


def status_of(raw: bytes) -> int | None:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else None


async def test_slowloris_and_header_bombs_hold_no_memory(database_url: str, tmp_path: Path) -> None:
    """Trickling headers are dropped at the timeout, huge ones get 431 and a close, and RSS grows < 20 MiB."""
    async with service(tmp_path / "svc", database_url, HERALD_HEADER_TIMEOUT_S="1") as proc:
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=timeout(10)) as http:
            for _ in range(20):  # warm up: what the first requests allocate is not the attack's
                assert (await http.get("/healthz")).status_code == 200
        before = rss(proc)

        held = await asyncio.gather(*(slow_headers(proc.port) for _ in range(3)))
        for seconds in held:
            assert 0.5 < seconds < 1 + timeout(3), held

        head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: "
        bombs = await asyncio.gather(*(header_bomb(proc.port, head, 30 * 1000 * 1000, finish=False) for _ in range(3)))
        for accepted, answered, closed in bombs:
            assert closed, f"the server still holds a 30 MB header after {accepted} bytes"
            assert accepted < 12 * MiB, accepted  # 64 KiB read, the rest is the kernels' socket buffers
            if answered:
                assert status_of(answered) == 431 and b"too_large" in answered, answered[:300]

        accepted, answered, closed = await header_bomb(
            proc.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", 8 * 1000 * 1000, finish=True
        )
        assert closed and status_of(answered) == 431, (accepted, answered[:300])
        body = json.loads(answered.split(b"\r\n\r\n", 1)[1])
        assert body["error"] == "too_large" and body["message"]

        async with httpx.AsyncClient(base_url=proc.base_url, timeout=timeout(10)) as http:
            padded = {f"X-Pad-{i}": "p" * 1000 for i in range(40)}  # ~40 KiB of headers
            assert (await http.get("/healthz", headers=padded)).status_code == 200
        await asyncio.sleep(timeout(0.5))
        grown = rss(proc) - before
        print(
            f"\nheaders: held {[round(s, 2) for s in held]} s; bombs accepted {[b[0] for b in bombs]} bytes, "
            f"answered {[status_of(b[1]) for b in bombs]}; 8 MB header {accepted} bytes accepted; "
            f"RSS {before / MiB:.1f} MiB, grew {grown / MiB:.1f} MiB"
        )
        assert grown < 20 * MiB, f"RSS grew {grown / MiB:.1f} MiB"
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=timeout(10)) as http:  # a fresh connection
            r = await http.get("/healthz")
            assert r.status_code == 200 and r.json()["status"] == "ok"


# --- 4. a stalled catch-up is bounded by bytes -------------------------------------------------------

EVENTS = 1500
BULK = "0123456789abcdef" * 1280  # 20 KiB of data.message per event: 30 MB of backlog in all


async def stalled_client(proc: ServiceProcess, token: str, project_id: str) -> ClientConnection:
    """A WebSocket that authenticates, subscribes from seq 0, and then reads nothing: a 4 KiB receive
    buffer, and a client library that stops reading after one queued message."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", proc.port))
    ws = await connect(proc.ws_url, sock=sock, max_queue=1, max_size=2**20, ping_interval=None)
    await ws.send(json.dumps({"type": "auth", "token": token}))
    await ws.send(json.dumps({"type": "subscribe", "projectId": project_id, "after": 0}))
    return ws


async def read_slowly(proc: ServiceProcess, token: str, project_id: str) -> tuple[ClientConnection, list[int]]:
    """A client that keeps reading, 2 ms per message, until it has every event; the seqs it got."""
    ws = await connect(proc.ws_url, max_size=2**20, ping_interval=None)
    await ws.send(json.dumps({"type": "auth", "token": token}))
    await ws.send(json.dumps({"type": "subscribe", "projectId": project_id, "after": 0}))
    seqs: list[int] = []
    async with asyncio.timeout(timeout(90)):
        while len(seqs) < EVENTS:
            message = json.loads(await ws.recv())
            if message.get("projectId") == project_id and "seq" in message and "data" in message:
                assert message["data"]["message"] == BULK
                seqs.append(message["seq"])
            await asyncio.sleep(0.002)
    return ws, seqs


async def drained_close(ws: ClientConnection) -> tuple[int, int | None]:
    """Start reading a stalled client: the messages it still gets, then the close code."""
    got = 0
    try:
        async with asyncio.timeout(timeout(30)):
            while True:
                await ws.recv()
                got += 1
    except ConnectionClosed as exc:
        return got, exc.rcvd.code if exc.rcvd else None


async def test_stalled_catch_up_is_bounded_by_bytes(database_url: str, tmp_path: Path) -> None:
    """Non-reading clients of a 30 MB catch-up cost ~their byte budget and get 4429; a slow reader gets all."""
    stall_s = 4.0
    env = {"HERALD_WS_OUTBOX_BYTES": str(MiB), "HERALD_WS_STALL_S": str(stall_s), "HERALD_HEARTBEAT_MS": "300000"}
    admin = issue()
    async with service(tmp_path / "svc", database_url, **env) as proc:
        async with httpx.AsyncClient(base_url=proc.base_url, headers=bearer(admin), timeout=timeout(60)) as http:
            await create(http, "big")
            run = {"runId": "r1", "status": "running", "progress": 50, "message": BULK}
            for first in range(0, EVENTS, 40):  # 40 events of 20 KiB: 800 KiB, under the 1 MiB batch limit
                batch = [{"type": "agent_run_progress", "data": run} for _ in range(first, min(first + 40, EVENTS))]
                r = await http.post("/api/projects/big/events/batch", json={"events": batch})
                assert r.status_code == 201, r.text
            assert (await http.get("/api/projects")).json()["projects"][0]["head"] == EVENTS
            await asyncio.sleep(timeout(0.5))
        before = rss(proc)

        connected = time.monotonic()
        stalled = [await stalled_client(proc, admin, "big") for _ in range(5)]
        steady = asyncio.create_task(read_slowly(proc, admin, "big"))
        try:
            peak = before
            while time.monotonic() - connected < 2.0:
                peak = max(peak, rss(proc))
                await asyncio.sleep(0.05)
            grown = peak - before
            # Five stalled budgets of 1 MiB plus the steady reader's, each frame held encoded twice at most
            # (its text and its WebSocket frame), plus a 256 KiB page being read per client: about 15 MiB;
            # 25 MiB leaves room for allocator slack. Unbounded, each stalled client would hold ~30 MB.
            print(f"\ncatch-up: RSS {before / MiB:.1f} MiB before, peak +{grown / MiB:.1f} MiB with 6 clients")
            assert grown < 25 * MiB, f"RSS grew {grown / MiB:.1f} MiB with five stalled clients"

            # The stall is only noticed while the clients take nothing: wait past it before reading.
            await asyncio.sleep(max(0.0, connected + stall_s + timeout(5) - time.monotonic()))
            closes = await asyncio.gather(*(drained_close(ws) for ws in stalled))
            print(f"stalled clients: (messages read before the close, close code) {closes}")
            for got, code in closes:
                assert code == 4429, closes
                assert got < EVENTS, closes

            ws, seqs = await steady
            assert seqs == list(range(1, EVENTS + 1))
            await ws.send(json.dumps({"type": "ping", "ts": 1}))  # still open, and its session still answers
            async with asyncio.timeout(timeout(5)):
                while json.loads(await ws.recv())["type"] != "pong":
                    pass
            await ws.close()
        finally:
            steady.cancel()
            await asyncio.gather(steady, return_exceptions=True)
            for ws in stalled:
                ws.transport.abort()


# --- 5. cross-project metrics -----------------------------------------------------------------------


async def test_metrics_need_every_project_or_the_metrics_scope(server: RunningServer) -> None:
    """/metrics needs admin on `*` or the `metrics` scope: admin of one project or a subscriber gets 403."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=timeout(10)) as http:
        await create_as_admin(server.base_url, "A")
        assert_error(await http.get("/metrics", headers=bearer(issue(projects=["A"]))), 403, "forbidden")
        assert_error(await http.get("/metrics", headers=bearer(issue(scopes=("subscribe",)))), 403, "forbidden")
        for token in (issue(), issue(user="prometheus", projects=[], scopes=("metrics",))):
            r = await http.get("/metrics", headers=bearer(token))
            assert r.status_code == 200 and "herald_connections" in r.text, r.text[:300]
        scraper = bearer(issue(user="prometheus", projects="*", scopes=("metrics",)))
        assert_error(await http.get("/api/projects/A/events", headers=scraper), 403, "forbidden")


# --- 6. digit bombs and 500s from input -------------------------------------------------------------

GH_SECRET = "gh-hook-Vq3Lm8Xz1Rt6Wn4Kp9Bs2Yd7"
BOMB = "9" * 5000


def github_headers(event: str, body: bytes) -> dict[str, str]:
    signature = "sha256=" + hmac.new(GH_SECRET.encode(), body, hashlib.sha256).hexdigest()
    return {
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": str(uuid.uuid4()),
        "X-Hub-Signature-256": signature,
        "Content-Type": "application/json",
    }


def pull_request(repo: str) -> dict[str, Any]:
    return {
        "action": "opened",
        "number": 7,
        "pull_request": {
            "number": 7,
            "title": "t",
            "html_url": "https://github.com/octo/demo/pull/7",
            "user": {"login": "octocat"},
            "head": {"sha": "abc123"},
        },
        "repository": {"full_name": repo},
    }


async def test_digit_bombs_and_bad_input_are_4xx_json(database_url: str, tmp_path: Path) -> None:
    """Digit bombs in cursors and limits, and a signed webhook with U+0000, are 4xx JSON errors, never 500."""
    settings = make_settings(database_url, tmp_path, github_webhook_secret=GH_SECRET)
    async with in_process(settings) as running:
        async with httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=timeout(10)) as http:
            r = await http.post("/api/projects", json={"id": "p", "name": "p", "repo": "octo/demo"})
            assert r.status_code == 201, r.text

            def leid(value: str) -> dict[str, str]:
                return {"Last-Event-ID": value}

            assert_error(await answer(http, "/api/projects/p/stream", headers=leid(BOMB)), 422, "invalid_data")
            assert_error(await answer(http, "/api/stream?projects=p", headers=leid(f"p:{BOMB}")), 422, "invalid_data")
            assert_error(await answer(http, f"/api/stream?projects=p&after=p:{BOMB}"), 422, "invalid_data")
            for query in ("after", "before", "limit"):
                assert_error(await answer(http, f"/api/projects/p/events?{query}={BOMB}"), 422, "invalid_data")
            assert_error(await answer(http, f"/api/projects/p/stream?after={BOMB}"), None)
            assert_error(await answer(http, "/api/projects/p/stream", headers=leid("1" * 19)), 422, "invalid_data")
            assert_error(
                await answer(http, "/api/stream?projects=p", headers=leid("p:" + "1" * 19)), 422, "invalid_data"
            )
            beyond = await answer(http, "/api/projects/p/stream", headers=leid("9" * 18))
            assert_error(beyond, 422, "invalid_cursor")

            good = json.dumps(pull_request("octo/demo")).encode()  # the control: signed right, it is appended
            r = await http.post("/webhooks/github", content=good, headers=github_headers("pull_request", good))
            assert r.status_code == 202 and r.json()["status"] == "appended", r.text
            for event, payload in (
                ("pull_request", pull_request("octo/de\u0000mo")),
                ("ping", {"zen": "Keep it simple.", "hook_id": 1, "repository": {"full_name": "octo/de\u0000mo"}}),
            ):
                body = json.dumps(payload).encode()
                r = await http.post("/webhooks/github", content=body, headers=github_headers(event, body))
                assert_error(r, 422, "invalid_data")


# --- 7. every 5xx is JSON without driver text ----------------------------------------------------------


async def test_a_bug_is_a_json_500_without_a_traceback(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a route answers 500 `internal` as JSON, without the exception's text or a traceback."""

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("driver detail: /srv/herald/secret.py line 42")

    monkeypatch.setattr(eventlog, "list_projects", broken)
    r = await client.get("/api/projects")
    assert r.status_code == 500, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == "internal" and body["message"], body
    for leak in ("Traceback", "RuntimeError", "driver detail", "secret.py", 'File "'):
        assert leak not in r.text, r.text


async def test_a_database_outage_is_a_json_503_without_driver_text(
    server: RunningServer, client: httpx.AsyncClient, pg_url: str, database_url: str
) -> None:
    """With the database gone, each route answers 503 JSON naming no errno, refusal, host, port or database."""
    await create(client, "p")
    parts = urlsplit(database_url)
    name = parts.path.lstrip("/")
    # Where the database is: a host and port, or (the embedded server) a socket directory.
    where = [parts.hostname, str(parts.port) if parts.port else None, *parse_qs(parts.query).get("host", [])]
    leaks = ["Errno", "errno", "refused", "asyncpg", "Connect call", ".s.PGSQL", "127.0.0.1", "localhost", name]
    leaks += [w for w in where if w]
    admin = await asyncpg.connect(db.asyncpg_dsn(pg_url))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        event = {"type": "agent_run_progress", "data": {"runId": "r", "status": "running", "progress": 1}}
        for r in (
            await client.get("/api/projects"),
            await client.post("/api/projects/p/events", json=event),
            await client.get("/api/projects/p/events"),
            await answer(client, "/api/projects/p/stream"),
            await client.get("/healthz"),
        ):
            assert_error(r, 503, "unavailable")
            found = [leak for leak in leaks if leak in r.text]
            assert not found, (found, r.text)
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


# --- 8. revocation across two instances --------------------------------------------------------------


async def eventually(check: Callable[[], Awaitable[bool]], wait: float) -> float:
    """Poll the async `check` until it returns True; the seconds it took (AssertionError past `wait`)."""
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < timeout(wait), f"not within {timeout(wait)} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


async def revoked_on(http: httpx.AsyncClient, token: str) -> bool:
    r = await http.get("/api/projects", headers=bearer(token))
    if r.status_code == 200:
        return False
    assert "revoked" in assert_error(r, 401, "unauthorized")["message"]
    return True


async def works_on(http: httpx.AsyncClient, token: str) -> bool:
    r = await http.get("/api/projects", headers=bearer(token))
    return r.status_code == 200


async def test_revocation_reaches_every_instance(database_url: str, tmp_path: Path) -> None:
    """`token revoke` reaches HTTP, WebSocket and SSE on both instances within 5 s; later tokens work."""
    env = cli_env(database_url, tmp_path / "cli")
    async with (
        in_process(make_settings(database_url, tmp_path / "a")) as a,
        in_process(make_settings(database_url, tmp_path / "b")) as b,
    ):
        http_a = httpx.AsyncClient(base_url=a.base_url, timeout=timeout(10))
        http_b = httpx.AsyncClient(base_url=b.base_url, timeout=timeout(10))
        try:
            await create_as_admin(a.base_url, "p")
            mallory = issue(user="mallory", scopes=("subscribe", "publish"))
            ws = await open_client(a, token=mallory)
            await ws.subscribe("p")
            async with stream(http_b, "/api/projects/p/stream", headers=bearer(mallory)) as sse:
                assert await works_on(http_b, mallory)
                out = await run_cli(env, "token", "revoke", "--user", "mallory")
                assert out.returncode == 0, out.stderr
                revoked = time.monotonic()
                closed, ended, refused = await asyncio.gather(
                    close_of(ws.ws, wait=5), sse.ended(wait=5), eventually(lambda: revoked_on(http_b, mallory), 5)
                )
                elapsed = time.monotonic() - revoked
            code, reason = closed
            assert code == 4401 and "revoked" in reason, closed
            assert ended, "the SSE stream on B did not end"
            assert elapsed < timeout(5)
            print(
                f"\nrevocation: HTTP refused after {refused:.2f} s; WebSocket, SSE and HTTP all within {elapsed:.2f} s"
            )

            later = issue(user="mallory", scopes=("subscribe", "publish"))  # issued after the revocation
            assert await works_on(http_a, later) and await works_on(http_b, later)
            again = await open_client(a, token=later)
            await again.subscribe("p")
            await again.ws.close()

            one, other = (issue(user="mallory", scopes=("subscribe",)) for _ in range(2))
            jti = jwt.decode(one, options={"verify_signature": False})["jti"]
            out = await run_cli(env, "token", "revoke", "--id", jti)
            assert out.returncode == 0, out.stderr
            await eventually(lambda: revoked_on(http_a, one), 5)
            await eventually(lambda: revoked_on(http_b, one), 5)
            for token in (other, later):
                assert await works_on(http_a, token) and await works_on(http_b, token)
        finally:
            await http_a.aclose()
            await http_b.aclose()


# --- 9. key rotation ---------------------------------------------------------------------------------

OLD_SECRET = "old-Fq8Lz2Wn5Rt9Xc3Vb7Mk1Hs6Jd4Gp0A"
NEW_SECRET = "new-Ty6Ue3Ri8Wo1Pa5Sd9Fg2Hj7Kl4Zx0C"


async def test_key_rotation_keeps_old_tokens_until_the_old_key_is_removed(database_url: str, tmp_path: Path) -> None:
    """OLD-signed tokens work while OLD is a previous secret and get 401 once it is removed; NEW's kid is used."""
    old = issue(user="before", secret=OLD_SECRET)
    new = issue(user="after", secret=NEW_SECRET)
    async with service(
        tmp_path / "svc", database_url, HERALD_SECRET=NEW_SECRET, HERALD_PREVIOUS_SECRETS=OLD_SECRET
    ) as proc:
        issued = await asyncio.to_thread(proc.cli, "token", "--user", "cli", "--projects", "*", "--scopes", "admin")
        assert jwt.get_unverified_header(issued)["kid"] == auth.key_id(NEW_SECRET) != auth.key_id(OLD_SECRET)
        # OLD's signature under NEW's kid: the kid picks the key, it does not vouch for the token.
        payload = jwt.decode(old, options={"verify_signature": False})
        misfiled = jwt.encode(payload, OLD_SECRET, algorithm="HS256", headers={"kid": auth.key_id(NEW_SECRET)})
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=timeout(10)) as http:
            for token in (old, new, issued):
                assert (await http.get("/api/projects", headers=bearer(token))).status_code == 200
            assert_error(await http.get("/api/projects", headers=bearer(misfiled)), 401, "unauthorized")

        await asyncio.to_thread(proc.stop)
        del proc.env["HERALD_PREVIOUS_SECRETS"]
        await asyncio.to_thread(proc.start)
        async with httpx.AsyncClient(base_url=proc.base_url, timeout=timeout(10)) as http:
            assert_error(await http.get("/api/projects", headers=bearer(old)), 401, "unauthorized")
            for token in (new, issued):
                assert (await http.get("/api/projects", headers=bearer(token))).status_code == 200


# --- 10. token rules ---------------------------------------------------------------------------------


async def test_token_rules_at_the_cli_and_the_service(server: RunningServer, database_url: str, tmp_path: Path) -> None:
    """Over-long lifetimes, missing jti and unprintable users are refused by CLI and service; iat has 30 s leeway."""
    env = cli_env(database_url, tmp_path)
    common = ("token", "--projects", "*", "--scopes", "admin")
    ok, too_long, *bad_users = await asyncio.gather(
        run_cli(env, *common, "--user", "ok", "--ttl", "3600"),
        run_cli(env, *common, "--user", "ok", "--ttl", str(31 * 365 * 86400)),
        *(run_cli(env, *common, "--user", user) for user in ("", "a\nb", "\x1b[2Jroot", "x" * 129)),
    )
    assert ok.returncode == 0, ok.stderr
    assert too_long.returncode != 0 and not too_long.stdout and "HERALD_TOKEN_MAX_TTL_S" in too_long.stderr
    for out in bad_users:
        assert out.returncode != 0 and not out.stdout and "user" in out.stderr, out
    with pytest.raises(ValueError, match="control"):  # argv cannot carry U+0000: the issuer the CLI calls
        auth.issue(SECRET, user="a\x00b", projects="*", scopes=["admin"])

    now = time.time()
    accepted = {
        "the CLI's token": ok.stdout.strip(),
        "a forged but well-formed token (the control)": forge(),
        "iat 20 s in the future": forge(iat=now + 20, exp=now + 3620),
    }
    refused = {
        "exp - iat past the maximum": forge(iat=now, exp=now + auth.DEFAULT_MAX_TTL_S + 3600),
        "no jti": forge(jti=None),
        "empty sub": forge(sub=""),
        "sub with U+0000": forge(sub="a\x00b"),
        "sub with a newline": forge(sub="a\nb"),
        "iat 120 s in the future": forge(iat=now + 120, exp=now + 3720),
    }
    async with httpx.AsyncClient(base_url=server.base_url, timeout=timeout(10)) as http:
        for what, token in accepted.items():
            r = await http.get("/api/projects", headers=bearer(token))
            assert r.status_code == 200, (what, r.text)
        for what, token in refused.items():
            r = await http.get("/api/projects", headers=bearer(token))
            assert r.status_code == 401, (what, r.text)
            assert_error(r, 401, "unauthorized")
        async with connect(server.ws_url) as ws:  # the socket applies the same rules
            await ws.send(json.dumps({"type": "auth", "token": refused["sub with a newline"]}))
            assert (await close_of(ws))[0] == 4401


# --- 11. connection caps -----------------------------------------------------------------------------


async def test_connections_per_user_are_capped(database_url: str, tmp_path: Path) -> None:
    """A user's 4th connection is refused (WebSocket 1013, SSE 429) until one closes; other users are unaffected."""
    async with in_process(make_settings(database_url, tmp_path, max_connections_per_user=3)) as running:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=timeout(10)) as http:
            await create_as_admin(running.base_url, "p")
            capped = issue(user="hoarder", scopes=("subscribe",))
            three = [await open_client(running, token=capped) for _ in range(3)]
            async with connect(running.ws_url) as fourth:
                await fourth.send(json.dumps({"type": "auth", "token": capped}))
                code, reason = await close_of(fourth)
                assert code == 1013, (code, reason)
            r = await answer(http, "/api/projects/p/stream", headers=bearer(capped))
            assert_error(r, 429, "rate_limited")

            other = issue(user="bystander", scopes=("subscribe",))
            bystander = await open_client(running, token=other)
            async with stream(http, "/api/projects/p/stream", headers=bearer(other)):
                pass
            await bystander.ws.close()

            await three[0].ws.close()
            replacement: list[ClientConnection] = []

            async def admitted() -> bool:
                ws = await connect(running.ws_url)
                await ws.send(json.dumps({"type": "auth", "token": capped}))
                try:
                    message = json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))
                except ConnectionClosed as exc:  # the server has not yet let go of the closed one
                    assert exc.rcvd is not None and exc.rcvd.code == 1013
                    return False
                assert message["type"] == "welcome"
                replacement.append(ws)
                return True

            await eventually(admitted, 5)
            for ws in [*(c.ws for c in three[1:]), *replacement]:
                await ws.close()


# --- 12. HTTP rate limit per token ---------------------------------------------------------------------


async def test_http_rate_is_limited_per_token(database_url: str, tmp_path: Path) -> None:
    """The 6th quick call of a token (rate 5, burst 5) gets 429 with Retry-After; other tokens are not limited."""
    async with in_process(make_settings(database_url, tmp_path, http_rate=5, http_burst=5)) as running:
        async with httpx.AsyncClient(base_url=running.base_url, timeout=timeout(10)) as http:
            # Six kept-alive connections first (/healthz is not rate-limited), so that the six calls
            # below arrive together, well within the 200 ms it takes the bucket to refill one call.
            await asyncio.gather(*(http.get("/healthz") for _ in range(6)))
            busy, calm = issue(user="busy"), issue(user="busy")
            replies = await asyncio.gather(*(http.get("/api/projects", headers=bearer(busy)) for _ in range(6)))
            assert sorted(r.status_code for r in replies) == [200] * 5 + [429], [r.status_code for r in replies]
            limited = next(r for r in replies if r.status_code == 429)
            assert_error(limited, 429, "rate_limited")
            retry_after = int(limited.headers["Retry-After"])
            assert retry_after >= 1
            assert (await http.get("/api/projects", headers=bearer(calm))).status_code == 200
            await asyncio.sleep(retry_after)
            assert (await http.get("/api/projects", headers=bearer(busy))).status_code == 200


# --- 13. the dashboard's headers ---------------------------------------------------------------------


async def test_dashboard_pages_forbid_foreign_scripts_and_framing(database_url: str, tmp_path: Path) -> None:
    """Dashboard pages and assets carry a CSP (own scripts only, no framing), nosniff and a Referrer-Policy."""
    dist = tmp_path / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text('<!doctype html><script type="module" src="/assets/app.js"></script>')
    (dist / "assets" / "app.js").write_text("console.log('herald')")
    settings = make_settings(database_url, tmp_path / "data")
    config = server_config(
        create_app(settings, frontend_dist=dist), settings, host="127.0.0.1", port=0, log_level="warning"
    )
    server = Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(timeout(30)):
            while not server.started:
                assert not task.done(), "the server exited during start-up"
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout(10)) as http:
            for path, marker in (("/", "app.js"), ("/assets/app.js", "herald"), ("/projects/p", "app.js")):
                r = await http.get(path)
                assert r.status_code == 200 and marker in r.text, (path, r.status_code)
                csp = {
                    d.strip().split()[0]: d.strip().split()[1:]
                    for d in r.headers["Content-Security-Policy"].split(";")
                    if d.strip()
                }
                assert csp["script-src"] == ["'self'"], csp
                assert csp["frame-ancestors"] == ["'none'"], csp
                assert "'unsafe-inline'" not in csp.get("default-src", []), csp
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                assert r.headers["Referrer-Policy"] in ("no-referrer", "same-origin", "strict-origin")
    finally:
        server.should_exit = True
        async with asyncio.timeout(timeout(15)):
            await task


# --- requests in progress -------------------------------------------------------------------------------


async def test_requests_past_the_concurrency_limit_get_a_json_503(database_url: str, tmp_path: Path) -> None:
    """With HERALD_LIMIT_CONCURRENCY=2 and two SSE streams held open, a third HTTP request is answered
    503 `unavailable` (JSON, Retry-After) at once instead of queuing; a WebSocket still connects (it is
    capped per user instead); once a stream closes, requests are served again."""
    running, task = await start_server(make_settings(database_url, tmp_path, limit_concurrency=2))
    try:
        async with httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=timeout(10)) as h:
            await create(h, "p")
            async with stream(h, "/api/projects/p/stream"), stream(h, "/api/projects/p/stream"):
                r = await h.get("/api/projects")
                assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
                assert r.headers["retry-after"] == "1" and "in progress" in r.json()["message"]
                ws = await open_client(running)  # not an HTTP request in progress: not refused
                await ws.ws.close()
            deadline = time.monotonic() + timeout(5)
            while (r := await h.get("/api/projects")).status_code != 200:
                assert time.monotonic() < deadline, r.text
                await asyncio.sleep(0.05)
    finally:
        await stop_server(running, task)
