"""The demo stream (service/demo.py): within seconds it fills two projects with events of all three types.

The events are valid and tell coherent stories: runs that progress, PRs whose checks run on their head commit.
The demo is also a runner: the dashboard's Cancel and Re-run, published as the dashboard publishes them,
reach it through herald_client's Subscriber and it acts on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
from herald_client import Publisher

from service.demo import PROJECTS, Demo, play
from tests.conftest import RunningServer, timeout
from tests.helpers import open_client, wait_until

T = TypeVar("T")


async def test_the_demo_fills_both_projects(server: RunningServer, client: httpx.AsyncClient) -> None:
    """Played fast for three seconds: both projects exist with their repos and hold agent runs,
    PR notifications and validations, each run's progress never moves back, and every check names
    a PR of its project."""
    async with Publisher(server.base_url, server.token(), source="demo") as publisher:
        demo = asyncio.create_task(play(publisher, pace=0.02, seed=7))
        await asyncio.sleep(timeout(3))
        demo.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await demo
    projects = {p["id"]: p for p in (await client.get("/api/projects")).json()["projects"]}
    for project in PROJECTS:
        assert projects[project.id]["repo"] == project.repo
        r = await client.get(f"/api/projects/{project.id}/events", params={"limit": 1000})
        events: list[dict[str, Any]] = r.json()["events"]
        types = {e["type"] for e in events}
        assert types == {"agent_run_progress", "pr_notification", "validation_update"}, types
        progress: dict[str, list[float]] = defaultdict(list)
        for e in events:
            if e["type"] == "agent_run_progress":
                progress[e["data"]["runId"]].append(e["data"]["progress"])
        assert all(p == sorted(p) for p in progress.values())
        prs = {e["data"]["number"] for e in events if e["type"] == "pr_notification"}
        assert {e["data"]["prNumber"] for e in events if e["type"] == "validation_update"} <= prs
        statuses = {e["data"]["status"] for e in events if e["type"] == "validation_update"}
        assert {"queued", "in_progress", "completed"} <= statuses
        assert any(e["data"]["action"] == "opened" for e in events if e["type"] == "pr_notification")


# --- the demo as a runner: the dashboard's Cancel and Re-run ---------------------------------------------


async def latest(client: httpx.AsyncClient, project_id: str, kind: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/projects/{project_id}/events", params={"type": kind, "order": "desc", "limit": 200})
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


async def until(probe: Callable[[], Awaitable[T | None]], wait: float, what: str) -> T:
    """Poll `probe` until it returns something; fail naming `what` after `wait` scaled seconds."""
    deadline = time.monotonic() + timeout(wait)
    while True:
        found = await probe()
        if found is not None:
            return found
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def listening_demo(server: RunningServer) -> AsyncIterator[Demo]:
    """The demo playing into `server`, once its runner is subscribed to both projects."""
    async with Publisher(server.base_url, server.token()) as publisher:
        demo = Demo(publisher, pace=0.15, seed=11)
        task = asyncio.create_task(demo.run())
        try:
            await wait_until(
                lambda: (
                    demo.subscriber is not None and all(demo.subscriber.position(p.id) is not None for p in PROJECTS)
                ),
                10,
                "the demo's runner to subscribe",
            )
            yield demo
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_cancel_stops_a_running_demo_run(server: RunningServer, client: httpx.AsyncClient) -> None:
    """The dashboard's Cancel (the run's progress as it stands, status `cancelled`, over the WebSocket)
    stops a run that is under way: the demo publishes its own final `cancelled` status, and no progress
    of that run follows."""
    async with listening_demo(server) as demo:

        async def a_running_run() -> dict[str, Any] | None:
            seen: set[str] = set()
            for e in await latest(client, "acme-web", "agent_run_progress"):
                if e["data"]["runId"] not in seen and e["data"]["status"] == "running" and e["data"]["progress"] < 50:
                    return e
                seen.add(e["data"]["runId"])
            return None

        run = await until(a_running_run, 20, "a run under way")
        run_id = run["data"]["runId"]
        dashboard = await open_client(server, client_id="dashboard")
        await dashboard.send(
            type="agent_run_progress",
            projectId="acme-web",
            messageId="dashboard-cancel-1",
            data={**run["data"], "status": "cancelled"},
        )
        assert (await dashboard.expect("published"))["messageId"] == "dashboard-cancel-1"
        await dashboard.ws.close()

        async def the_runners_answer() -> list[dict[str, Any]] | None:
            mine = [e for e in await latest(client, "acme-web", "agent_run_progress") if e["data"]["runId"] == run_id]
            return (
                mine
                if mine[0]["messageId"].startswith(demo.prefix) and mine[0]["data"]["status"] == "cancelled"
                else None
            )

        events = await until(the_runners_answer, 10, "the runner's cancelled status")
        await asyncio.sleep(timeout(1.5))  # several of the run's steps at this pace
        after = [e for e in await latest(client, "acme-web", "agent_run_progress") if e["data"]["runId"] == run_id]
        assert after == events, "the run went on after its cancel"
        final, cancel = events[0], next(e for e in events if e["messageId"] == "dashboard-cancel-1")
        assert final["seq"] > cancel["seq"] and final["data"]["message"].endswith("cancelled from the dashboard")
        assert (run_id not in {key[1] for key in demo.runs}) and final["data"]["progress"] >= run["data"]["progress"]


async def test_rerun_runs_a_finished_check_again(server: RunningServer, client: httpx.AsyncClient) -> None:
    """The dashboard's Re-run (the check again as `queued`, same name, commit and PR) makes the demo run
    that check anew: in progress, then completed, both after the request."""
    async with listening_demo(server) as demo:

        async def a_finished_check() -> dict[str, Any] | None:
            done = [
                e for e in await latest(client, "agent-lab", "validation_update") if e["data"]["status"] == "completed"
            ]
            return done[0] if done else None

        check = await until(a_finished_check, 20, "a finished check")
        subject = {k: check["data"][k] for k in ("name", "headSha", "prNumber", "url")}
        r = await client.post(
            "/api/projects/agent-lab/events",
            json={
                "type": "validation_update",
                "messageId": "dashboard-rerun-1",
                "data": {**subject, "status": "queued"},
            },
        )
        assert r.status_code == 201, r.text
        requested = r.json()["seq"]

        async def the_rerun() -> list[dict[str, Any]] | None:
            again = [
                e
                for e in await latest(client, "agent-lab", "validation_update")
                if e["seq"] > requested and all(e["data"].get(k) == v for k, v in subject.items())
            ]
            return again if any(e["data"]["status"] == "completed" for e in again) else None

        again = await until(the_rerun, 10, "the re-run to complete")
        assert [e["data"]["status"] for e in reversed(again)] == ["in_progress", "completed"]
        assert all(e["messageId"].startswith(demo.prefix) for e in again)
        assert again[0]["data"]["conclusion"] in ("success", "failure", "skipped", "cancelled")
