"""What every benchmark stands on: the database, the servers under test as processes, the Node client,
the machine's description, and the results files.

The servers run as their own processes (`python -m service serve`, or uvicorn for a peer), as an
operator runs them: their memory and CPU are theirs alone, py-spy can attach to them, and kill -9 is
real. The load comes from the Node client in bench/client (one more process), so the Python driver
here only orchestrates and never measures itself.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service import auth, db  # noqa: E402

BENCH = ROOT / "bench"
CLIENT = BENCH / "client"
RESULTS = BENCH / "results"
SECRET = "bench-secret-Zq4Wm8Rt2Yp6Ks1Lx9Vb3Nc7Hd5Fj0Ga"
PROJECT = "bench"


def token(scopes: tuple[str, ...] = ("admin",), projects: Any = "*") -> str:
    return auth.issue(SECRET, user="bench", projects=projects, scopes=scopes, ttl_s=7 * 86400)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def load() -> list[float]:
    """The 1, 5 and 15-minute load averages (`uptime`): how busy the machine was."""
    return [round(x, 2) for x in os.getloadavg()]


# --- the machine -----------------------------------------------------------------------------------------


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine(database_version: str) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "uname": _run("uname", "-a"),
        "python": platform.python_version(),
        "node": _run(node(), "--version"),
        "postgresql": database_version,
    }


def node() -> str:
    found = shutil.which("node")
    if found is None:
        raise SystemExit("node (>= 20) is needed for the bench client")
    return found


# --- the database ----------------------------------------------------------------------------------------


@dataclass
class Database:
    """A PostgreSQL server for a benchmark: `url` (an admin URL; an embedded one when None)."""

    admin_url: str
    description: str
    version: str

    @contextlib.asynccontextmanager
    async def fresh(self) -> Any:
        """A new, migrated database of its own, dropped afterwards; yields its URL."""
        name = f"herald_bench_{uuid.uuid4().hex[:10]}"
        conn = await asyncpg.connect(db.asyncpg_dsn(self.admin_url))
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        url = db.with_database(self.admin_url, name)
        try:
            await asyncio.to_thread(migrate, url)
            yield url
        finally:
            conn = await asyncpg.connect(db.asyncpg_dsn(self.admin_url))
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()


async def seed_log(
    url: str,
    project_id: str,
    events: int,
    *,
    data: Callable[[int], dict[str, Any]] | None = None,
    end: datetime.datetime | None = None,
) -> None:
    """A log of `events` events in `project_id` (created if missing), written with COPY in pages, with
    the chain an append would give it (so it verifies): a long history without a million appends.
    `data(seq)` makes each event's data; the events are 1 ms apart, the last at `end` (default now)."""
    from service import audit
    from service.messages import format_timestamp

    make = data or (lambda seq: {"runId": f"run-{seq % 997}", "status": "running", "progress": seq % 1000 / 10})
    last = end or datetime.datetime.now(datetime.UTC)
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        await conn.execute("INSERT INTO projects (id, name) VALUES ($1, $1) ON CONFLICT DO NOTHING", project_id)
        # A partitioned log (migration 0010; not in an older checkout's) needs its partitions first, and
        # the messageIds recorded beside the events.
        partitioned = await conn.fetchval("SELECT to_regclass('log_partitions') IS NOT NULL")
        if partitioned:
            from service import partitions

            await partitions.extend(conn, project_id, upto=events)
        previous, page = audit.GENESIS, 50_000
        for first in range(1, events + 1, page):
            records = []
            for seq in range(first, min(events, first + page - 1) + 1):
                created, item = last - datetime.timedelta(milliseconds=events - seq), make(seq)
                message_id = f"seed-{seq}"
                previous = audit.link(
                    previous,
                    audit.canonical(
                        project_id=project_id, seq=seq, message_id=message_id, type="agent_run_progress",
                        timestamp=format_timestamp(created), data=item,
                    ),
                )  # fmt: skip
                records.append(
                    (project_id, seq, message_id, "agent_run_progress", orjson.dumps(item).decode(), created, previous)
                )
            await conn.copy_records_to_table(
                "events",
                records=records,
                columns=["project_id", "seq", "message_id", "type", "data", "created_at", "hash"],
            )
            if partitioned:
                await conn.copy_records_to_table(
                    "event_ids", records=[r[:3] for r in records], columns=["project_id", "seq", "message_id"]
                )
        await conn.execute("UPDATE projects SET head = $2, last_hash = $3 WHERE id = $1", project_id, events, previous)
        await conn.execute("VACUUM ANALYZE events")
    finally:
        await conn.close()


def migrate(url: str) -> None:
    """Migrate with the migrations of the service under test: another checkout's (BENCH_HERALD_ROOT)
    knows only its own revisions, and refuses to start on a database migrated past them."""
    other = os.environ.get("BENCH_HERALD_ROOT")
    if not other:
        db.migrate(url)
        return
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_")}
    environment.update(DATABASE_URL=url, HERALD_SECRET=SECRET, PYTHONPATH=other)
    command = [sys.executable, "-m", "service", "migrate"]
    subprocess.run(command, env=environment, cwd=other, check=True, capture_output=True)


async def _version(url: str) -> str:
    conn = await asyncpg.connect(db.asyncpg_dsn(url))
    try:
        settings = {
            r["name"]: r["setting"]
            for r in await conn.fetch(
                "SELECT name, setting FROM pg_settings WHERE name IN ('synchronous_commit', 'fsync', 'shared_buffers')"
            )
        }
        version: str = await conn.fetchval("SHOW server_version")
        return f"{version} (synchronous_commit={settings['synchronous_commit']}, fsync={settings['fsync']})"
    finally:
        await conn.close()


@contextlib.contextmanager
def database(url: str | None) -> Iterator[Database]:
    """The given server, or an embedded PostgreSQL in a temporary directory for the whole run."""
    if url:
        yield Database(url, "external PostgreSQL (--database-url)", asyncio.run(_version(url)))
        return
    with tempfile.TemporaryDirectory(prefix="herald-bench-") as directory:
        embedded = db.start_embedded(Path(directory), database="postgres")
        try:
            yield Database(embedded.url, "embedded PostgreSQL (unix socket)", asyncio.run(_version(embedded.url)))
        finally:
            embedded.stop()


# --- servers under test -------------------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A server under test in its own process, restartable on the same port (kill -9 is real)."""

    name: str
    command: list[str]
    env: dict[str, str]
    health_path: str
    port: int = field(default_factory=free_port)
    log_path: Path | None = None
    cwd: Path = ROOT
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout_s: float = 60) -> None:
        command = [part.replace("{port}", str(self.port)) for part in self.command]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(command, env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.cwd)
        finally:
            if self.log_path:
                log.close()  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited during start-up (see {self.log_path})")
            try:
                if httpx.get(self.url + self.health_path, timeout=1).status_code < 500:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss(self) -> int:
        return int(psutil.Process(self.pid).memory_info().rss)

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.pid).cpu_times()
        return float(times.user + times.system)

    def __enter__(self) -> ServerProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def herald(database_url: str, log_dir: Path, *, name: str = "herald", **env: str) -> ServerProcess:
    """`python -m service serve` on `database_url`, with the bench's secret (instances share it)."""
    data_dir = log_dir / name
    data_dir.mkdir(parents=True, exist_ok=True)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HERALD_") and k != "DATABASE_URL"}
    environment.update(DATABASE_URL=database_url, HERALD_SECRET=SECRET, HERALD_DATA_DIR=str(data_dir))
    # A load test is one user with thousands of connections and one token publishing as fast as the
    # service takes it: the per-user cap and the per-token rate would (rightly) refuse it. They are
    # raised here, not turned off: the limiter still runs on every call it would run on.
    environment.update(
        HERALD_MAX_CONNECTIONS_PER_USER="1000000", HERALD_HTTP_RATE="1000000000", HERALD_HTTP_BURST="1000000000"
    )
    environment.update(env)
    command = [sys.executable, "-m", "service", "serve", "--port", "{port}", "--no-access-log"]
    command += ["--log-level", "warning"]
    server = ServerProcess(name, command, environment, "/healthz", log_path=log_dir / f"{name}.log")
    other = os.environ.get("BENCH_HERALD_ROOT")
    if other:  # another checkout's service (e.g. `git archive` of an older commit), for before/after runs
        server.cwd = Path(other)
        environment["PYTHONPATH"] = other
    return server


PEERS = {"socketio": "socketio_peer:app", "broadcast": "broadcast:app"}


def peer(kind: str, log_dir: Path) -> ServerProcess:
    """A peer on uvicorn, with uvicorn's defaults apart from the port and quiet logs."""
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(BENCH / "peers"), PEERS[kind],
        "--port", "{port}", "--no-access-log", "--log-level", "warning",
    ]  # fmt: skip
    health = "/socket.io/?EIO=4&transport=polling" if kind == "socketio" else "/docs"
    return ServerProcess(kind, command, dict(os.environ), health, log_path=log_dir / f"{kind}.log")


async def create_project(base_url: str, project_id: str = PROJECT) -> None:
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token()}"}) as http:
        r = await http.post("/api/projects", json={"id": project_id, "name": project_id})
        assert r.status_code in (201, 409), r.text


def profile(server: ServerProcess, stem: Path) -> subprocess.Popen[bytes]:
    """py-spy on the server until interrupted (SIGINT): collapsed stacks in STEM.txt, for
    bench/profile_summary.py. BENCH_PY_SPY_NATIVE=1 adds native frames (and stops the process to
    sample, which slows it)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    py_spy = Path(sys.executable).with_name("py-spy")
    native = ["--native"] if os.environ.get("BENCH_PY_SPY_NATIVE") else ["--nonblocking"]
    return subprocess.Popen(
        [str(py_spy), "record", "--pid", str(server.pid), "--rate", "200", "--format", "raw",
         "--output", f"{stem}.txt", *native],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


# --- the Node client --------------------------------------------------------------------------------------


def run_client(
    script: str,
    options: dict[str, Any],
    *,
    on_phase: Callable[[dict[str, Any]], None] | None = None,
    timeout_s: float = 3600,
) -> dict[str, Any]:
    """Run bench/client/`script` with `--key value` options; progress lines go to `on_phase`; returns
    the JSON it wrote to its --out file."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as out:
        out_path = out.name
    args = [node(), str(CLIENT / script)]
    for key, value in {**options, "out": out_path}.items():
        args += ["--" + key.replace("_", "-"), str(value)]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=sys.stderr, cwd=CLIENT, text=True)
    deadline = time.monotonic() + timeout_s
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            with contextlib.suppress(ValueError):
                phase = json.loads(line)
                if on_phase is not None:
                    on_phase(phase)
            if time.monotonic() > deadline:
                raise TimeoutError(f"{script} ran past {timeout_s} s")
        if proc.wait() != 0:
            raise RuntimeError(f"{script} failed with {proc.returncode}")
        result: dict[str, Any] = json.loads(Path(out_path).read_text())
        return result
    finally:
        if proc.poll() is None:
            proc.kill()
        Path(out_path).unlink(missing_ok=True)


# --- results ------------------------------------------------------------------------------------------------


def common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL"),
        help="an admin URL of a PostgreSQL server (default: an embedded one in a temporary directory)",
    )
    parser.add_argument("--results", type=Path, default=RESULTS, help="where the JSON results go")


def write_results(directory: Path, name: str, database: Database, runs: list[dict[str, Any]], **extra: Any) -> Path:
    """bench/results/NAME.json: the runs, with the command, the date and the machine."""
    directory.mkdir(parents=True, exist_ok=True)
    document = {
        "benchmark": name,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": machine(database.version),
        "database": database.description,
        **({"herald_root": os.environ["BENCH_HERALD_ROOT"]} if os.environ.get("BENCH_HERALD_ROOT") else {}),
        **extra,
        "runs": runs,
    }
    path = directory / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    tmp.replace(path)
    return path


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]
