"""`herald serve --workers N`: N full instances of the service behind one port, and the supervisor that
keeps them.

The supervisor binds the listening socket once and hands it to every worker (a spawned process with its
own event loop, pool, hub, listener and metrics: the same service `--workers 1` runs in one process).
The kernel queues new connections on that one socket and whichever worker accepts first takes each.
One shared socket rather than SO_REUSEPORT per worker because a SO_REUSEPORT socket's pending
connections are reset when its worker closes it, so a reload would drop the connections that were
queued on the old worker; with one socket they wait for the next worker to accept them.

What the supervisor does, and nothing else (docs/deploy.md):
- starts the embedded PostgreSQL once (when DATABASE_URL is unset) and migrates the database once,
  then passes the URL and the token secret to the workers;
- restarts a worker that dies (after a second, so a worker that cannot start does not spin);
- SIGTERM or SIGINT: every worker drains as a single process does (1001, acks persisted) and exits;
- SIGHUP: a rolling reload, one worker at a time: a new worker starts and is ready before the old one
  drains with 1012 (restarting: reconnect and resume), so the port never stops accepting.
Each worker answers with an `X-Herald-Worker` header naming its slot, and labels its own metrics with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from types import FrameType
from typing import Any

from .codes import CloseCode

logger = logging.getLogger("herald.workers")

READY_TIMEOUT_S = 60.0  # a worker must be serving within this, or the start (or the reload) fails
STOP_TIMEOUT_S = 30.0  # a draining worker is killed after this
RESTART_DELAY_S = 1.0


@dataclass(frozen=True)
class Spec:
    """What a worker needs to serve: everything the supervisor decided, picklable for a spawned process."""

    host: str
    port: int
    log_level: str
    access_log: bool
    log_format: str
    database_url: str
    secret: str


# --- the worker ---------------------------------------------------------------------------------------


def run_worker(spec: Spec, worker: str, sock: socket.socket, ready: Connection) -> None:
    """A worker's whole life: serve on `sock` until SIGTERM/SIGINT (drain with 1001) or SIGHUP (drain with
    1012, a reload), or until the supervisor is gone. Says `ready` once it accepts connections."""
    from . import logs
    from .app import Server, create_app, server_config
    from .config import load_settings

    logs.setup(spec.log_format)
    settings = load_settings(database_url=spec.database_url, secret=spec.secret)
    app = create_app(settings, worker=worker)
    config = server_config(
        app, settings, host=spec.host, port=spec.port, log_level=spec.log_level, access_log=spec.access_log
    )
    server = Server(config)
    parent = os.getppid()

    def stop(signum: int, frame: FrameType | None) -> None:
        server.should_exit = True  # before uvicorn serves, it then starts up and shuts down at once

    def reload(signum: int, frame: FrameType | None) -> None:
        server.close_code = CloseCode.SERVICE_RESTART
        server.should_exit = True

    # uvicorn handles SIGTERM and SIGINT while it serves, and raises them again once it has shut down
    # cleanly: with these handlers in place, that second raise ends the worker with status 0.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)

    async def serve() -> None:
        task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn exposes only a flag
            await asyncio.sleep(0.05)
        if server.started:
            ready.send(True)
        ready.close()
        while not task.done():
            if os.getppid() != parent:  # the supervisor was killed: no one would stop or replace us
                server.should_exit = True
            await asyncio.wait({task}, timeout=1.0)
        await task

    with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
        runner.run(serve())
    sys.exit(0 if server.started else 1)


# --- the supervisor -----------------------------------------------------------------------------------


def bind(host: str, port: int) -> socket.socket:
    """The one listening socket all workers accept from."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@dataclass
class _Slot:
    name: str
    process: SpawnProcess
    ready: Connection  # one message once the worker serves; closed without one when it failed to start
    started_at: float
    serving: bool = False


class Supervisor:
    """Keeps `n` workers serving on `sock`; see the module's docstring for the signals it acts on."""

    def __init__(self, spec: Spec, n: int, sock: socket.socket) -> None:
        self.spec = spec
        self.n = n
        self.sock = sock
        self.context = multiprocessing.get_context("spawn")
        self.slots: dict[str, _Slot] = {}
        self.stopping = False
        self.reloading = False

    def _spawn(self, name: str) -> _Slot:
        ready, told = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=run_worker, args=(self.spec, name, self.sock, told), name=f"herald-worker-{name}", daemon=False
        )
        process.start()
        told.close()  # the worker's end: only the worker holds it now, so its exit is seen as EOF
        logger.info("worker %s started (pid %s)", name, process.pid)
        return _Slot(name, process, ready, time.monotonic())

    def _await_ready(self, slot: _Slot) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not slot.serving and time.monotonic() < deadline and not self.stopping:
            if slot.ready.poll(0.1):
                try:
                    slot.serving = bool(slot.ready.recv())
                except EOFError:
                    return False
        return slot.serving

    def _stop(self, slots: list[_Slot], sig: int) -> None:
        for slot in slots:
            if slot.process.is_alive() and slot.process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.process.pid, sig)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for slot in slots:
            slot.process.join(max(0.0, deadline - time.monotonic()))
            if slot.process.is_alive():
                logger.error("worker %s did not stop within %ss: killed", slot.name, STOP_TIMEOUT_S)
                slot.process.kill()
                slot.process.join()
            slot.ready.close()

    def _handlers(self) -> dict[int, Callable[[int, FrameType | None], Any] | int | None]:
        def stop(signum: int, frame: FrameType | None) -> None:
            self.stopping = True

        def reload(signum: int, frame: FrameType | None) -> None:
            self.reloading = True

        return {
            signal.SIGTERM: signal.signal(signal.SIGTERM, stop),
            signal.SIGINT: signal.signal(signal.SIGINT, stop),
            signal.SIGHUP: signal.signal(signal.SIGHUP, reload),
        }

    def _reload(self) -> None:
        """Replace each worker in turn: the new one serves before the old one drains (with 1012)."""
        self.reloading = False
        logger.info("reloading %d workers, one at a time", len(self.slots))
        for name in list(self.slots):
            if self.stopping:
                return
            fresh = self._spawn(name)
            if not self._await_ready(fresh):
                if not self.stopping:
                    logger.error("worker %s's replacement did not start: reload abandoned, the old one serves on", name)
                self._stop([fresh], signal.SIGTERM)
                return
            old, self.slots[name] = self.slots[name], fresh
            self._stop([old], signal.SIGHUP)
        logger.info("reload done")

    def run(self) -> int:
        """Serve until SIGTERM or SIGINT; 0 after a clean stop, 1 when the workers could not start."""
        previous = self._handlers()
        try:
            for k in range(1, self.n + 1):
                self.slots[str(k)] = self._spawn(str(k))
            for slot in self.slots.values():
                if not self._await_ready(slot):
                    if not self.stopping:
                        logger.error("worker %s did not start: stopping", slot.name)
                    self._stop(list(self.slots.values()), signal.SIGTERM)
                    return 0 if self.stopping else 1
            logger.info("herald serving with %d workers on %s:%s", self.n, self.spec.host, self.spec.port)
            while not self.stopping:
                if self.reloading:
                    self._reload()
                    continue
                wait([slot.process.sentinel for slot in self.slots.values()], timeout=0.2)
                for name, slot in list(self.slots.items()):
                    if slot.process.is_alive() or self.stopping:
                        continue
                    logger.error("worker %s exited with %s: restarting it", name, slot.process.exitcode)
                    slot.ready.close()
                    elapsed = time.monotonic() - slot.started_at
                    if elapsed < RESTART_DELAY_S:
                        time.sleep(RESTART_DELAY_S - elapsed)
                    self.slots[name] = self._spawn(name)
            logger.info("stopping %d workers", len(self.slots))
            self._stop(list(self.slots.values()), signal.SIGTERM)
            return 0
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.sock.close()
