"""Shared fixtures: a real PostgreSQL, a fresh database per test, and a real uvicorn on a free port.

PostgreSQL is `TEST_DATABASE_URL` when set (for example this machine's own server,
postgresql://postgres@127.0.0.1:5432/postgres), else a testcontainers PostgreSQL when
HERALD_TESTS_DOCKER=1 (needs a Docker engine), else an embedded server started once per session.
Each test gets its own database, cloned from a migrated template, so tests are isolated, runnable
alone and independent of order.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import httpx
import pytest
import uvicorn

from service import auth, db
from service.app import Server, create_app, server_config
from service.config import Settings, load_settings

if TYPE_CHECKING:
    from tests.helpers import WsClient

SECRET = "test-secret-Qm7vR2kX9pLw4ZtB8nYc3HsJ6dFa1Ge5"  # strong enough for the service's own checks

# The edge limits that only the attack tests (tests/test_attacks.py) exercise are raised for the other
# tests: they publish hundreds of times a second with one token and open hundreds of connections as one
# user, which the defaults would rightly throttle.
UNLIMITED = {"http_rate": 1e6, "http_burst": 1e6, "max_connections_per_user": 100_000}
UNLIMITED_ENV = {
    "HERALD_HTTP_RATE": "1000000",
    "HERALD_HTTP_BURST": "1000000",
    "HERALD_MAX_CONNECTIONS_PER_USER": "100000",
}
TIMEOUT_FACTOR = float(os.environ.get("HERALD_TESTS_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    """A timing allowance scaled for slow CI machines (HERALD_TESTS_TIMEOUT_FACTOR)."""
    return seconds * TIMEOUT_FACTOR


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """The admin URL of the PostgreSQL server the tests run against."""
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        yield external
        return
    if os.environ.get("HERALD_TESTS_DOCKER") == "1":  # optional, for machines with a Docker engine
        from testcontainers.postgres import PostgresContainer  # pip install -e '.[docker]'

        with PostgresContainer("postgres:16", driver=None) as container:
            yield container.get_connection_url()
        return
    # Not under pytest's own temporary directories: a later pytest session on this machine removes the
    # oldest of those, and with it the data directory of a server this session is still using.
    home = Path(tempfile.mkdtemp(prefix="herald-tests-pg-"))
    embedded = db.start_embedded(home, database="herald_tests")
    try:
        yield embedded.url
    finally:
        embedded.stop()
        shutil.rmtree(home, ignore_errors=True)


async def _admin(pg_url: str, sql: str) -> None:
    conn = await asyncpg.connect(db.asyncpg_dsn(pg_url))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(pg_url: str) -> Iterator[str]:
    """A database migrated to head once, cloned for every test."""
    name = f"herald_tpl_{uuid.uuid4().hex[:10]}"
    asyncio.run(_admin(pg_url, f'CREATE DATABASE "{name}"'))
    db.migrate(db.with_database(pg_url, name))
    try:
        yield name
    finally:
        asyncio.run(_admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@contextlib.asynccontextmanager
async def scratch_database(pg_url: str, template: str | None = None) -> AsyncIterator[str]:
    """A database of its own (a clone of `template`, or empty), dropped afterwards."""
    name = f"herald_t_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    await _admin(pg_url, f'CREATE DATABASE "{name}"{clause}')
    try:
        yield db.with_database(pg_url, name)
    finally:
        await _admin(pg_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def database_url(pg_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    async with scratch_database(pg_url, template_db) as url:
        yield url


@pytest.fixture
async def empty_database_url(pg_url: str) -> AsyncIterator[str]:
    """A fresh database with no schema at all (for migration tests)."""
    async with scratch_database(pg_url) as url:
        yield url


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(db.asyncpg_dsn(database_url))
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await db.create_pool(database_url, size=20, timeout=10)
    try:
        yield p
    finally:
        await p.close()


def make_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    return load_settings(database_url=database_url, secret=SECRET, data_dir=data_dir, **{**UNLIMITED, **overrides})


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path)


@dataclass
class RunningServer:
    """A real uvicorn serving the app on a free port of 127.0.0.1."""

    base_url: str
    settings: Settings
    server: uvicorn.Server

    @property
    def ws_url(self) -> str:
        return self.base_url.replace("http://", "ws://") + "/ws"

    def token(self, user: str = "alice", projects: Any = "*", scopes: tuple[str, ...] = ("admin",), **kw: Any) -> str:
        return auth.issue(SECRET, user=user, projects=projects, scopes=scopes, **kw)

    def app_runtime(self) -> Any:
        """The running app's Runtime (for tests that reach into the process, e.g. the listener)."""
        return self.server.config.app.state.runtime

    def headers(self, token: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {token or self.token()}"}


async def start_server(settings: Settings) -> tuple[RunningServer, asyncio.Task[None]]:
    app = create_app(settings, frontend_dist=None)
    config = server_config(app, settings, host="127.0.0.1", port=0, log_level="warning")
    server = Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(timeout(30)):
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server exited during start-up")
            await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    return RunningServer(f"http://127.0.0.1:{port}", settings, server), task


async def stop_server(running: RunningServer, task: asyncio.Task[None]) -> None:
    running.server.should_exit = True
    async with asyncio.timeout(timeout(15)):
        await task


@pytest.fixture
async def server(settings: Settings) -> AsyncIterator[RunningServer]:
    running, task = await start_server(settings)
    try:
        yield running
    finally:
        await stop_server(running, task)


@pytest.fixture
async def client(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, headers=server.headers(), timeout=timeout(10)) as c:
        yield c


@pytest.fixture
async def ws(server: RunningServer) -> AsyncIterator[WsClient]:
    """An authenticated WebSocket client of `server`, with clientId `tab-1`."""
    from tests.helpers import open_client  # tests/helpers.py builds on this module: imported once it is loaded

    client = await open_client(server, client_id="tab-1")
    yield client
    await client.ws.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class ServiceProcess:
    """`python -m service serve` in a subprocess, as an operator runs it: killable with -9, and
    restartable on the same port so clients come back to the same address.

    With `database_url` it joins that database (and shares `SECRET` with the in-process servers, as
    instances of one deployment do); without it, it runs the embedded default in `data_dir`.
    """

    def __init__(
        self,
        data_dir: Path,
        database_url: str | None = None,
        *,
        serve_args: tuple[str, ...] = ("--no-access-log",),
        **env: str,
    ) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "HERALD_SECRET")}
        self.env["HERALD_DATA_DIR"] = str(data_dir)
        self.env.update(UNLIMITED_ENV)
        self.serve_args = serve_args
        if database_url is not None:
            self.env.update(DATABASE_URL=database_url, HERALD_SECRET=SECRET)
        self.env.update(env)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def url(self, path: str) -> str:
        return self.base_url + path

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "service", *args], env=self.env, capture_output=True, timeout=timeout(60)
        )
        assert out.returncode == 0, out.stderr.decode()
        return out.stdout.decode().strip()

    @property
    def log_file(self) -> Path:
        return self.data_dir.parent / f"serve-{self.port}.log"

    def start(self) -> None:
        """Start and wait until healthy. Blocking: from async code, run it in a thread."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--port", str(self.port), *self.serve_args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout(60)
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the service exited during start-up"
            try:
                if httpx.get(self.url("/healthz"), timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError("the service did not become healthy")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout(30))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
