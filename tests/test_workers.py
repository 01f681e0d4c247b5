"""`herald serve --workers N` (service/workers.py): N worker processes behind one port, run as an operator
runs them, with real sockets, clients and signals."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect

from service import auth
from service.__main__ import parser
from service.codes import CloseCode
from tests.conftest import SECRET, ServiceProcess, timeout
from tests.helpers import RUN, WsClient, closed_with

TOKEN = auth.issue(SECRET, user="alice", projects="*", scopes=["admin"])
HEADERS = {"Authorization": f"Bearer {TOKEN}"}


async def open_ws(proc: ServiceProcess, client_id: str) -> tuple[WsClient, str]:
    """An authenticated client, and the worker that accepted it (its handshake's X-Herald-Worker)."""
    ws = await connect(f"{proc.ws_url}?clientId={client_id}")
    assert ws.response is not None
    worker = ws.response.headers["x-herald-worker"]
    client = WsClient(ws)
    await client.send(type="auth", token=TOKEN)
    client.welcome = await client.expect("welcome")
    return client, worker


async def spread(proc: ServiceProcess, prefix: str, workers: set[str]) -> list[tuple[WsClient, str]]:
    """Clients opened until every worker of `workers` accepted some (at most 60)."""
    opened: list[tuple[WsClient, str]] = []
    while {w for _, w in opened} != workers:
        assert len(opened) < 60, f"connections landed only on workers {sorted({w for _, w in opened})}"
        opened.append(await open_ws(proc, f"{prefix}-{len(opened)}"))
    return opened


async def publish(proc: ServiceProcess, n: int) -> list[int]:
    # A fresh client each time: a kept-alive connection to a worker that has since drained is closed.
    async with httpx.AsyncClient(base_url=proc.base_url, headers=HEADERS, timeout=timeout(10)) as http:
        seqs = []
        for _ in range(n):
            r = await http.post("/api/projects/p1/events", json={"type": "agent_run_progress", "data": RUN})
            assert r.status_code == 201, r.text
            seqs.append(r.json()["seq"])
        return seqs


def workers_of(proc: ServiceProcess) -> list[psutil.Process]:
    """The supervisor's live worker processes (not multiprocessing's resource tracker)."""
    assert proc.proc is not None
    found = []
    for child in psutil.Process(proc.proc.pid).children():
        try:
            if "resource_tracker" not in " ".join(child.cmdline()) and child.status() != psutil.STATUS_ZOMBIE:
                found.append(child)
        except psutil.Error:  # gone, or a zombie not yet reaped: not a worker that serves
            continue
    return found


def gone(processes: list[psutil.Process]) -> bool:
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def both_serve(proc: ServiceProcess) -> None:
    """Wait until the supervisor has seen both workers serve (start() returns as soon as one answers)."""
    deadline = time.monotonic() + timeout(60)
    while "herald serving with 2 workers" not in proc.log_file.read_text():
        assert time.monotonic() < deadline, "the workers did not all start"
        time.sleep(0.05)


@pytest.fixture
def workers(database_url: str, tmp_path: Path) -> Any:
    proc = ServiceProcess(tmp_path / "data", database_url, serve_args=("--no-access-log", "--workers", "2"))
    proc.start()
    both_serve(proc)
    try:
        yield proc
    finally:
        if proc.running():
            proc.stop(signal.SIGKILL)


async def test_two_workers_serve_reload_and_stop_with_clients_resuming(workers: ServiceProcess) -> None:
    """Connections land on both workers and every client gets every event in order, whichever worker
    took the publish; SIGHUP replaces the workers one at a time, closing their clients with 1012 and
    letting them resume from where they were with nothing missing; SIGTERM closes every client with
    a retry code and the whole process tree exits 0."""
    proc = workers
    async with httpx.AsyncClient(base_url=proc.base_url, headers=HEADERS, timeout=timeout(10)) as http:
        r = await http.post("/api/projects", json={"id": "p1", "name": "p1"})
        assert r.status_code == 201, r.text
    before = workers_of(proc)
    assert len(before) == 2

    opened = await spread(proc, "a", {"1", "2"})
    clients = [c for c, _ in opened]
    for c in clients:
        await c.subscribe("p1", after=0)
    assert await publish(proc, 10) == list(range(1, 11))
    for c in clients:
        assert [e["seq"] for e in await c.events("p1", 10)] == list(range(1, 11))

    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGHUP)
    codes = await asyncio.gather(*(closed_with(c.ws) for c in clients))
    assert set(codes) == {CloseCode.SERVICE_RESTART}
    assert await publish(proc, 5) == list(range(11, 16))  # while every client is away

    deadline = time.monotonic() + timeout(60)
    while not gone(before):  # both old workers drained and exited; their replacements serve
        assert time.monotonic() < deadline, "the reload did not replace both workers"
        await asyncio.sleep(0.1)
    after = workers_of(proc)
    assert len(after) == 2 and not {p.pid for p in after} & {p.pid for p in before}

    resumed = await spread(proc, "b", {"1", "2"})
    clients = [c for c, _ in resumed]
    for c in clients:
        await c.subscribe("p1", after=10)
    assert await publish(proc, 2) == [16, 17]
    for c in clients:
        assert [e["seq"] for e in await c.events("p1", 7)] == list(range(11, 18))

    started = time.monotonic()
    proc.proc.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*(closed_with(c.ws) for c in clients))
    # 1001 from the drain, or uvicorn's own 1012 when it closes the socket first: both say "resume"
    assert set(codes) <= {CloseCode.GOING_AWAY, CloseCode.SERVICE_RESTART}
    assert await asyncio.to_thread(proc.proc.wait, timeout(30)) == 0
    assert time.monotonic() - started < timeout(30)
    assert gone(after)


async def test_a_dead_worker_is_replaced_and_metrics_name_their_worker(workers: ServiceProcess) -> None:
    """A worker killed with -9 is started again under the same name, and the port keeps serving; a
    scrape of /metrics reaches one worker and labels what that process counts with its name."""
    proc = workers
    victim = next(p for p in workers_of(proc))
    victim.kill()
    deadline = time.monotonic() + timeout(60)
    while True:
        current = workers_of(proc)
        if len(current) == 2 and victim.pid not in {p.pid for p in current}:
            break
        assert time.monotonic() < deadline, "the dead worker was not replaced"
        await asyncio.sleep(0.1)

    names = set()
    deadline = time.monotonic() + timeout(60)
    async with httpx.AsyncClient(base_url=proc.base_url, headers=HEADERS, timeout=timeout(10)) as http:
        while names != {"1", "2"}:
            assert time.monotonic() < deadline, f"only workers {sorted(names)} answered"
            # a new connection each time, so each request may reach either worker
            r = await http.get("/metrics", headers={"Connection": "close"})
            if r.status_code != 200:  # the replacement still starting: the request waits, or fails
                await asyncio.sleep(0.1)
                continue
            worker = r.headers["x-herald-worker"]
            assert f'herald_connections{{worker="{worker}"}}' in r.text, r.text
            names.add(worker)

    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(proc.proc.wait, timeout(30)) == 0
    assert gone(current)


def test_workers_flag() -> None:
    """`--workers` takes a positive number or `auto` (one per core), and defaults to 1: the single-process
    path every other test runs."""
    assert parser().parse_args(["serve"]).workers == 1
    assert parser().parse_args(["serve", "--workers", "3"]).workers == 3
    assert parser().parse_args(["serve", "--workers", "auto"]).workers >= 1
    for bad in ("0", "-2", "many"):
        with pytest.raises(SystemExit):
            parser().parse_args(["serve", "--workers", bad])


async def test_one_process_names_no_worker(client: httpx.AsyncClient) -> None:
    """`serve` with one worker is the single process of before: no X-Herald-Worker, no worker label."""
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert "x-herald-worker" not in r.headers
    assert "herald_connections 0.0" in r.text and "worker=" not in r.text


def test_more_workers_than_one_refuse_print_url_and_demo(monkeypatch: pytest.MonkeyPatch) -> None:
    """`--print-url` and `--demo` belong to the single process: with workers they are refused (status 2)."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/never")
    monkeypatch.setenv("HERALD_SECRET", SECRET)
    for flag in ("--print-url", "--demo"):
        args = parser().parse_args(["serve", "--workers", "2", flag])
        assert args.func(args) == 2


def test_workers_share_one_embedded_database(tmp_path: Path) -> None:
    """Without DATABASE_URL the supervisor starts the embedded PostgreSQL once for every worker: both
    workers see what the other wrote, accept the CLI's tokens (the data dir's secret), and the database
    stops with the service."""
    from tests.test_embedded import Service

    svc = Service(tmp_path / "data", serve_args=("--no-access-log", "--workers", "2"))
    svc.start()
    try:
        postmaster = svc.postmaster()
        assert postmaster is not None
        token = svc.cli("token", "--user", "ops", "--projects", "*", "--scopes", "admin")
        headers = {"Authorization": f"Bearer {token}", "Connection": "close"}
        seen: dict[str, int] = {}
        deadline = time.monotonic() + timeout(60)
        with httpx.Client(base_url=svc.base_url, headers=headers, timeout=timeout(10)) as http:
            assert http.post("/api/projects", json={"id": "p1", "name": "p1"}).status_code == 201
            while set(seen) != {"1", "2"}:
                assert time.monotonic() < deadline, f"only workers {sorted(seen)} answered"
                r = http.post("/api/projects/p1/events", json={"type": "agent_run_progress", "data": RUN})
                assert r.status_code == 201, r.text
                seen[r.headers["x-herald-worker"]] = r.json()["seq"]
            history = http.get("/api/projects/p1/events", params={"after": 0}).json()
        assert [e["seq"] for e in history["events"]] == list(range(1, max(seen.values()) + 1))
        svc.stop(signal.SIGTERM)
        assert svc.proc is not None and svc.proc.returncode == 0
        postmaster.wait(timeout(30))
        assert svc.postmaster() is None
    finally:
        if svc.running():
            svc.stop(signal.SIGKILL)
        leftover = svc.postmaster()
        if leftover is not None:
            leftover.terminate()
