"""The embedded default, as a user runs it: `python -m service serve` with no DATABASE_URL.

The service starts PostgreSQL in its data dir and stops it on exit; the data survives a clean stop,
a kill -9 of the service and a kill -9 of PostgreSQL itself; CLI commands share the running server.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import timeout

RUN = {"runId": "r1", "status": "running", "progress": 1}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Service:
    """`python -m service serve` in a subprocess on a data dir of its own."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "HERALD_SECRET")}
        self.env["HERALD_DATA_DIR"] = str(data_dir)
        self.proc: subprocess.Popen[bytes] | None = None

    def cli(self, *args: str) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "service", *args], env=self.env, capture_output=True, timeout=timeout(60)
        )
        assert out.returncode == 0, out.stderr.decode()
        return out.stdout.decode().strip()

    def start(self) -> None:
        with open(self.data_dir.parent / f"serve-{self.port}.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "service", "serve", "--port", str(self.port), "--no-access-log"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout(60)
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "the service exited during start-up"
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise TimeoutError("the service did not become healthy")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(timeout(30))

    def postmaster(self) -> psutil.Process | None:
        pid_file = self.data_dir / "pg" / "postmaster.pid"
        if not pid_file.exists():
            return None
        pid = int(pid_file.read_text().split()[0])
        try:
            proc = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return None
        return proc if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE else None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    svc = Service(tmp_path / "data")
    yield svc
    if svc.proc is not None and svc.proc.poll() is None:
        svc.stop()
    pm = svc.postmaster()
    if pm is not None:  # never leave a server behind, whatever the test did
        pm.terminate()
        pm.wait(timeout(10))


def test_embedded_data_survives_stop_restart_and_kill_9(service: Service) -> None:
    """Start, publish, stop (PostgreSQL stops too), restart, kill -9 the service, restart,
    kill -9 PostgreSQL, restart: every published event is still there, in order."""
    service.start()
    assert service.postmaster() is not None
    # CLI commands join the running embedded server rather than starting another.
    created = service.cli("project", "add", "demo", "--name", "Demo", "--repo", "octo/demo")
    assert '"id": "demo"' in created
    token = service.cli("token", "--user", "ops", "--projects", "*", "--scopes", "admin")
    assert "\n" not in token and token.count(".") == 2
    auth = {"Authorization": f"Bearer {token}"}

    def publish(message_id: str) -> int:
        r = httpx.post(
            service.url("/api/projects/demo/events"),
            json={"type": "agent_run_progress", "data": RUN, "messageId": message_id},
            headers=auth,
        )
        assert r.status_code == 201, r.text
        seq: int = r.json()["seq"]
        return seq

    def message_ids() -> list[str]:
        r = httpx.get(service.url("/api/projects/demo/events"), headers=auth)
        assert r.status_code == 200, r.text
        return [e["messageId"] for e in r.json()["events"]]

    assert publish("a") == 1
    service.stop()
    assert service.postmaster() is None, "a clean stop stops the embedded PostgreSQL"

    service.start()
    assert message_ids() == ["a"]  # the secret in the data dir survived too: the token still works
    assert publish("b") == 2
    service.stop(signal.SIGKILL)

    service.start()
    assert message_ids() == ["a", "b"]
    assert publish("c") == 3
    pm = service.postmaster()
    assert pm is not None
    pm.kill()
    pm.wait(timeout(10))
    service.stop()

    service.start()
    assert message_ids() == ["a", "b", "c"]
    service.stop()
    assert service.postmaster() is None, "after a kill -9 the last live holder still stops PostgreSQL"


def test_cli_migrate_and_help(service: Service) -> None:
    """`migrate` works on the embedded default, and every command answers --help."""
    assert "migrated to head" in service.cli("migrate")
    assert "downgraded to base" in service.cli("migrate", "--down", "base")
    assert "migrated to head" in service.cli("migrate")
    assert service.postmaster() is None, "a CLI command stops the server it started"
    for command in (["serve"], ["migrate"], ["token"], ["project", "add"], ["schema"], []):
        assert "usage:" in service.cli(*command, "--help")
