"""A live demo stream: what a newcomer sees the moment they open the dashboard.

Two projects, each with agent runs moving through named steps, pull requests opened, pushed to,
reviewed and merged or closed, and checks queued, running and completed with mixed conclusions, at a
human pace. Everything goes through `Publisher`, over HTTP, like any producer's events would.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from .publisher import Publisher, PublishError

logger = logging.getLogger("herald.demo")


@dataclass(frozen=True)
class DemoProject:
    id: str
    name: str
    repo: str


PROJECTS = (
    DemoProject("acme-web", "Acme Web", "acme/web"),
    DemoProject("agent-lab", "Agent Lab", "acme/agent-lab"),
)

TASKS = (
    ("Fix flaky login test", ("Plan", "Reproduce the failure", "Patch the race", "Run the test suite", "Open PR")),
    ("Upgrade React to 19", ("Plan", "Bump dependencies", "Fix type errors", "Run the test suite", "Open PR")),
    ("Add rate limiting", ("Plan", "Read the middleware", "Write the limiter", "Write tests", "Open PR")),
    ("Triage issue #212", ("Read the issue", "Search the code", "Write a summary")),
    ("Speed up CI", ("Profile the pipeline", "Cache dependencies", "Split the test job", "Open PR")),
)
PR_TITLES = (
    "Cache the dashboard bundle",
    "Retry webhooks with backoff",
    "Show lag per client",
    "Paginate the event history",
    "Dark mode for the dashboard",
    "Bump asyncpg to 0.31",
    "Fix cursor reset on reconnect",
    "Document the SSE fallback",
)
AUTHORS = ("octocat", "mona", "hubot", "agent-7", "ada", "linus")
CHECKS = ("build", "unit tests", "lint", "e2e")


class Demo:
    """Plays stories on every project until cancelled. `pace` scales every pause (1.0 is human
    speed; tests use a small one)."""

    def __init__(self, publisher: Publisher, *, pace: float = 1.0, seed: int | None = None) -> None:
        self.publisher = publisher
        self.pace = pace
        self.rng = random.Random(seed)
        self._numbers = {p.id: 100 + self.rng.randrange(0, 800, 10) for p in PROJECTS}
        self._runs = 0

    async def pause(self, low: float, high: float) -> None:
        await asyncio.sleep(self.rng.uniform(low, high) * self.pace)

    async def run(self) -> None:
        for project in PROJECTS:
            await self.publisher.ensure_project(project.id, project.name, project.repo)
        async with asyncio.TaskGroup() as group:
            for project in PROJECTS:
                group.create_task(self.forever(self.agent_run, project, spacing=(4, 10)))
                group.create_task(self.forever(self.pull_request, project, spacing=(6, 14)))

    async def forever(
        self,
        story: Callable[[DemoProject], Coroutine[Any, Any, None]],
        project: DemoProject,
        *,
        spacing: tuple[float, float],
    ) -> None:
        """Start a story every few seconds, a few overlapping; a failed publish only ends its story."""
        stories: set[asyncio.Task[None]] = set()
        try:
            while True:
                if len(stories) < 2:
                    task = asyncio.create_task(story(project))
                    stories.add(task)
                    task.add_done_callback(stories.discard)
                    task.add_done_callback(_log_failure)
                await self.pause(*spacing)
        finally:
            for task in stories:
                task.cancel()

    async def agent_run(self, project: DemoProject) -> None:
        self._runs += 1
        run_id = f"run-{self.rng.randrange(1000, 9999)}-{self._runs}"
        task, steps = self.rng.choice(TASKS)
        report = self.publisher.progress
        await report(project.id, run_id=run_id, status="queued", progress=0, step="Waiting for a worker", message=task)
        await self.pause(1, 3)
        fail_at = self.rng.randrange(len(steps)) if self.rng.random() < 0.2 else None
        for i, step in enumerate(steps):
            for part in range(self.rng.randint(1, 3)):
                progress = round(100 * (i + (part + 1) / 4) / len(steps), 1)
                await report(project.id, run_id=run_id, status="running", progress=progress, step=step, message=task)
                await self.pause(0.8, 2.5)
            if i == fail_at:
                await report(
                    project.id,
                    run_id=run_id,
                    status="failed",
                    progress=progress,
                    step=step,
                    message=f'{task}: "{step}" failed',
                )
                return
        await report(project.id, run_id=run_id, status="succeeded", progress=100, step="Done", message=task)

    async def pull_request(self, project: DemoProject) -> None:
        self._numbers[project.id] += 1
        number = self._numbers[project.id]
        title = self.rng.choice(PR_TITLES)
        author = self.rng.choice(AUTHORS)
        url = f"https://github.com/{project.repo}/pull/{number}"

        async def notify(action: str, sha: str) -> None:
            data = {
                "action": action,
                "number": number,
                "title": title,
                "url": url,
                "repo": project.repo,
                "author": author,
                "headSha": sha,
            }
            await self.publisher.publish(project.id, "pr_notification", data)

        sha = self.sha()
        await notify("opened", sha)
        passed = await self.checks(project, number, sha)
        if not passed or self.rng.random() < 0.4:  # a fix, or review feedback, then another round
            await self.pause(2, 5)
            sha = self.sha()
            await notify("synchronize", sha)
            passed = await self.checks(project, number, sha)
        await self.pause(1, 4)
        await notify("review_submitted", sha)
        await self.pause(1, 3)
        await notify("merged" if passed or self.rng.random() < 0.2 else "closed", sha)

    async def checks(self, project: DemoProject, number: int, sha: str) -> bool:
        """Run every check on a head commit, side by side; True when all succeeded."""
        results = await asyncio.gather(*(self.check(project, number, sha, name) for name in CHECKS))
        return all(results)

    async def check(self, project: DemoProject, number: int, sha: str, name: str) -> bool:
        url = f"https://github.com/{project.repo}/actions/runs/{self.rng.randrange(10**9, 10**10)}"
        base = {"name": name, "prNumber": number, "headSha": sha, "url": url}
        await self.publisher.publish(project.id, "validation_update", {**base, "status": "queued"})
        await self.pause(0.5, 2)
        await self.publisher.publish(project.id, "validation_update", {**base, "status": "in_progress"})
        await self.pause(1, 5)
        conclusion = self.rng.choices(("success", "failure", "skipped", "cancelled"), (80, 14, 4, 2))[0]
        await self.publisher.publish(
            project.id, "validation_update", {**base, "status": "completed", "conclusion": conclusion}
        )
        return conclusion in ("success", "skipped")

    def sha(self) -> str:
        return f"{self.rng.getrandbits(160):040x}"


def _log_failure(task: asyncio.Task[None]) -> None:
    exc = None if task.cancelled() else task.exception()
    if exc is not None:  # e.g. the service stopped under it; the next story tries again
        logger.warning("a demo story stopped: %s", exc, exc_info=not isinstance(exc, PublishError))


async def play(publisher: Publisher, *, pace: float = 1.0, seed: int | None = None) -> None:
    """Create the demo projects, then play stories into them until cancelled."""
    await Demo(publisher, pace=pace, seed=seed).run()
