"""The Python client's publisher (herald_client.Publisher) on real servers: retries that never duplicate,
and when not to retry.

Errors that are the caller's are not retried; a deadline ends the retries; the blocking wrapper does the same.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import httpx
import pytest
from herald_client import Publisher, PublishError, SyncPublisher

from service import auth
from tests.conftest import SECRET, RunningServer, ServiceProcess, free_port, timeout
from tests.helpers import create

RUN = {"runId": "r", "status": "running", "progress": 50}


def admin_token() -> str:
    return auth.issue(SECRET, user="runner", projects="*", scopes=("admin",))


async def messages_in_log(base_url: str, project_id: str) -> list[str]:
    async with httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {admin_token()}"}) as h:
        r = await h.get(f"/api/projects/{project_id}/events", params={"limit": 1000})
        assert r.status_code == 200, r.text
        return [e["messageId"] for e in r.json()["events"]]


async def test_retries_through_a_restart_without_duplicates(database_url: str, tmp_path: Path) -> None:
    """A publisher keeps publishing while its service is killed (-9) and restarted: every report is
    in the log exactly once, in the order it was made, and the retries were real."""
    service = ServiceProcess(tmp_path / "svc", database_url)
    await asyncio.to_thread(service.start)
    try:
        async with Publisher(service.base_url, admin_token(), source="agent", backoff_s=(0.05, 0.5)) as herald:
            await herald.ensure_project("p", "P")
            seqs = []
            for i in range(60):
                if i == 30:
                    service.stop(signal.SIGKILL)
                    restart = asyncio.create_task(asyncio.to_thread(service.start))
                published = await herald.progress("p", run_id="r", status="running", progress=i)
                seqs.append(published.seq)
            await restart
            assert herald.attempts > 60, "the restart caused no retry"
        assert seqs == list(range(1, 61))
        assert await messages_in_log(service.base_url, "p") == [f"agent-{i}" for i in range(1, 61)]
    finally:
        await asyncio.to_thread(service.stop, signal.SIGKILL)


async def test_a_repeated_message_id_is_not_created_again(server: RunningServer) -> None:
    """Publishing a messageId again (a restarted producer re-sending) returns the original event."""
    async with Publisher(server.base_url, server.token()) as herald:
        await herald.ensure_project("p", "P")
        await herald.ensure_project("p", "P")  # idempotent too
        first = await herald.publish("p", "agent_run_progress", RUN, message_id="run-r:step-1")
        again = await herald.publish("p", "agent_run_progress", RUN, message_id="run-r:step-1")
    assert first.created and not again.created
    assert again.seq == first.seq == 1 and again.event == first.event


async def test_caller_errors_are_not_retried(server: RunningServer, client: httpx.AsyncClient) -> None:
    """A 4xx is the caller's to fix: raised at once with the service's code, after one attempt."""
    await create(client, "p")
    async with Publisher(server.base_url, server.token()) as herald:
        with pytest.raises(PublishError) as info:
            await herald.publish("p", "agent_run_progress", {**RUN, "progress": 101})
        assert (info.value.code, info.value.status) == ("invalid_data", 422)
        with pytest.raises(PublishError) as info:
            await herald.publish("nope", "agent_run_progress", RUN)
        assert info.value.code == "not_found"
        assert herald.attempts == 2
    async with Publisher(server.base_url, "not-a-token") as anonymous:
        with pytest.raises(PublishError) as info:
            await anonymous.progress("p", run_id="r", status="running", progress=1)
        assert info.value.code == "unauthorized" and anonymous.attempts == 1


async def test_gives_up_at_the_deadline() -> None:
    """Nothing listening: retries with backoff, then `unavailable` once the deadline has passed."""
    port = free_port()
    async with Publisher(f"http://127.0.0.1:{port}", "t", deadline_s=0.5, backoff_s=(0.02, 0.1)) as herald:
        started = asyncio.get_running_loop().time()
        with pytest.raises(PublishError) as info:
            await herald.progress("p", run_id="r", status="running", progress=1)
        elapsed = asyncio.get_running_loop().time() - started
    assert info.value.code == "unavailable" and herald.attempts > 2
    assert elapsed < timeout(2)


async def test_the_blocking_publisher(server: RunningServer, client: httpx.AsyncClient) -> None:
    """SyncPublisher, for code without an event loop, publishes the same way."""
    await create(client, "p")

    def runner() -> list[int]:
        with SyncPublisher(server.base_url, server.token(), source="script") as herald:
            return [herald.progress("p", run_id="r", status="running", progress=p).seq for p in (10, 20)]

    assert await asyncio.to_thread(runner) == [1, 2]
    assert await messages_in_log(server.base_url, "p") == ["script-1", "script-2"]


async def test_publish_many_appends_a_batch_once(server: RunningServer, client: httpx.AsyncClient) -> None:
    """One request, in order; sent again with the same messageIds it appends nothing (created False)."""
    publisher = Publisher(server.base_url, server.token())
    try:
        await publisher.ensure_project("batch", "Batch")
        events = [
            ("agent_run_progress", {"runId": "r", "status": "running", "progress": i}, f"r-{i}") for i in range(5)
        ]
        first = await publisher.publish_many("batch", events)
        again = await publisher.publish_many("batch", events)
        generated = await publisher.publish_many(
            "batch", [("agent_run_progress", {"runId": "r", "status": "succeeded", "progress": 100})]
        )
    finally:
        await publisher.aclose()
    assert [(p.seq, p.message_id, p.created) for p in first] == [(i + 1, f"r-{i}", True) for i in range(5)]
    assert [(p.seq, p.created) for p in again] == [(i + 1, False) for i in range(5)]
    assert generated[0].seq == 6 and generated[0].created and generated[0].message_id.startswith(publisher.source)
    page = (await client.get("/api/projects/batch/events")).json()["events"]
    assert [e["messageId"] for e in page] == [f"r-{i}" for i in range(5)] + [generated[0].message_id]
