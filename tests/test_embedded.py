"""The embedded default, as a user runs it: `python -m service serve` with no DATABASE_URL.

The service starts PostgreSQL in its data dir and stops it on exit; the data survives a clean stop,
a kill -9 of the service and a kill -9 of PostgreSQL itself; CLI commands share the running server.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import ServiceProcess, timeout

RUN = {"runId": "r1", "status": "running", "progress": 1}


class Service(ServiceProcess):
    """The service on the embedded default, with a look at its PostgreSQL."""

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
    assert "/api/projects/demo/events" not in service.log_file.read_text(), "--no-access-log was ignored"
    assert service.postmaster() is None, "after a kill -9 the last live holder still stops PostgreSQL"


def test_cli_migrate_and_help(service: Service) -> None:
    """`migrate` works on the embedded default, and every command answers --help."""
    assert "migrated to head" in service.cli("migrate")
    assert "downgraded to base" in service.cli("migrate", "--down", "base")
    assert "migrated to head" in service.cli("migrate")
    assert service.postmaster() is None, "a CLI command stops the server it started"
    for command in (["serve"], ["migrate"], ["token"], ["project", "add"], ["schema"], []):
        assert "usage:" in service.cli(*command, "--help")
