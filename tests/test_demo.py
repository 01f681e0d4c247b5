"""The demo stream (service/demo.py): within seconds it fills two projects with events of all three types.

The events are valid and tell coherent stories: runs that progress, PRs whose checks run on their head commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from typing import Any

import httpx

from service.demo import PROJECTS, play
from service.publisher import Publisher
from tests.conftest import RunningServer, timeout


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
