"""A live demo stream: what a newcomer sees the moment they open the dashboard.

Two projects, each with agent runs moving through named steps, pull requests opened, pushed to,
reviewed and merged or closed, and checks queued, running and completed with mixed conclusions, at a
human pace. Everything goes through `Publisher`, over HTTP, like any producer's events would.

The demo is also a runner that obeys the dashboard. It consumes both projects' events through
`herald_client.Subscriber`, over the WebSocket like any runner would, and acts on the two events the
dashboard's buttons publish:

- "Cancel" on an agent run publishes the run's progress with status `cancelled`. The run stops
  reporting progress and publishes its own final `cancelled` status, where it stopped.
- "Re-run" on a check publishes the check again as `queued`. The demo runs that check anew: in
  progress, then completed with a fresh conclusion.

`herald_client` is a distribution of its own (clients/python), and the server's wheel carries it too:
the demo's Publisher is the one producers use.
"""

from __future__ import annotations

import asyncio
import logging
import random
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from herald_client import Event, Publisher, PublishError, Subscriber

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
DEMO_MESSAGE_IDS = "demo-"  # how every demo's messageIds start
LISTENER_ID = "herald-demo-runner"  # the durable cursor of the demo's runner: a restart resumes from it


@dataclass
class RunState:
    """An agent run under way: where it stands, and the dashboard's request to stop it."""

    task: str
    progress: float = 0
    step: str = "Waiting for a worker"
    cancel: asyncio.Event = field(default_factory=asyncio.Event)


class Demo:
    """Plays stories on every project until cancelled. `pace` scales every pause (1.0 is human
    speed; tests use a small one)."""

    def __init__(
        self, publisher: Publisher, *, pace: float = 1.0, seed: int | None = None, listen: bool = True
    ) -> None:
        self.publisher = publisher
        self.pace = pace
        self.rng = random.Random(seed)
        self.listen = listen
        # Every event the demo publishes carries a messageId with this prefix, new on each start: a
        # restarted demo appends its events anew, and the listener tells the dashboard's from its own.
        self.prefix = f"{DEMO_MESSAGE_IDS}{uuid.uuid4().hex[:8]}-"
        self.subscriber: Subscriber | None = None
        self.runs: dict[tuple[str, str], RunState] = {}  # agent runs under way, by (project, runId)
        self.reruns: dict[tuple[str, str, str | None], asyncio.Task[bool]] = {}  # checks re-running
        self._numbers = {p.id: 100 + self.rng.randrange(0, 800, 10) for p in PROJECTS}
        self._runs = 0
        self._published = 0

    def message_id(self) -> str:
        self._published += 1
        return f"{self.prefix}{self._published}"

    async def pause(self, low: float, high: float, until: asyncio.Event | None = None) -> bool:
        """Wait a while; True when `until` was set meanwhile (the wait is cut short)."""
        delay = self.rng.uniform(low, high) * self.pace
        if until is None:
            await asyncio.sleep(delay)
            return False
        try:
            await asyncio.wait_for(until.wait(), delay)
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        for project in PROJECTS:
            await self.publisher.ensure_project(project.id, project.name, project.repo)
        async with asyncio.TaskGroup() as group:
            if self.listen:
                group.create_task(self.obey())
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
        """One run through its steps; a cancel from the dashboard stops it where it stands."""
        self._runs += 1
        run_id = f"run-{self.rng.randrange(1000, 9999)}-{self._runs}"
        task, steps = self.rng.choice(TASKS)
        run = self.runs[(project.id, run_id)] = RunState(task)

        async def report(status: str, progress: float, step: str, message: str = task) -> None:
            run.progress, run.step = progress, step
            await self.publisher.progress(
                project.id,
                run_id=run_id,
                status=status,
                progress=progress,
                step=step,
                message=message,
                message_id=self.message_id(),
            )

        try:
            await report("queued", 0, "Waiting for a worker")
            if await self.pause(1, 3, run.cancel):
                return await self.cancelled(project, run_id, run)
            fail_at = self.rng.randrange(len(steps)) if self.rng.random() < 0.2 else None
            for i, step in enumerate(steps):
                for part in range(self.rng.randint(1, 3)):
                    await report("running", round(100 * (i + (part + 1) / 4) / len(steps), 1), step)
                    if await self.pause(0.8, 2.5, run.cancel):
                        return await self.cancelled(project, run_id, run)
                if i == fail_at:
                    await report("failed", run.progress, step, f'{task}: "{step}" failed')
                    return
            await report("succeeded", 100, "Done")
        finally:
            del self.runs[(project.id, run_id)]

    async def cancelled(self, project: DemoProject, run_id: str, run: RunState) -> None:
        """The run's last word after a cancel: `cancelled`, where it stopped."""
        await self.publisher.progress(
            project.id,
            run_id=run_id,
            status="cancelled",
            progress=run.progress,
            step=run.step,
            message=f"{run.task}: cancelled from the dashboard",
            message_id=self.message_id(),
        )

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
            await self.publisher.publish(project.id, "pr_notification", data, message_id=self.message_id())

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
        return await self.run_check(project, {"name": name, "prNumber": number, "headSha": sha, "url": url})

    async def run_check(self, project: DemoProject, base: dict[str, Any], *, queued: bool = True) -> bool:
        """A check from queued (unless it already is) through in progress to completed; True when it passed."""
        publish = self.publisher.publish
        if queued:
            await publish(project.id, "validation_update", {**base, "status": "queued"}, message_id=self.message_id())
            await self.pause(0.5, 2)
        await publish(project.id, "validation_update", {**base, "status": "in_progress"}, message_id=self.message_id())
        await self.pause(1, 5)
        conclusion = self.rng.choices(("success", "failure", "skipped", "cancelled"), (80, 14, 4, 2))[0]
        data = {**base, "status": "completed", "conclusion": conclusion}
        await publish(project.id, "validation_update", data, message_id=self.message_id())
        return conclusion in ("success", "skipped")

    # --- the runner's side: what the dashboard asks for ------------------------------------------------

    async def obey(self) -> None:
        """Consume both projects' events and act on the dashboard's cancels and re-runs, until cancelled.
        A failure here stops the listening only; the stories play on."""
        base_url, token = _endpoint(self.publisher)
        projects = [p.id for p in PROJECTS]
        try:
            async with Subscriber(base_url, token, projects, client_id=LISTENER_ID) as events:
                self.subscriber = events
                async for item in events:
                    if isinstance(item, Event):  # a Resync needs nothing: only what comes next is a request
                        self.act(item)
        except Exception:  # the subscriber's own retries are over (a revoked token, say)
            logger.warning("the demo stopped listening for Cancel and Re-run", exc_info=True)
        finally:
            for rerun in list(self.reruns.values()):
                rerun.cancel()

    def act(self, event: Event) -> None:
        """One event from the log: a cancel of a run under way, or a re-run of a check, or neither."""
        if event.message_id.startswith(DEMO_MESSAGE_IDS):
            return  # this demo's own, or another demo's playing into the same projects
        project = next((p for p in PROJECTS if p.id == event.project_id), None)
        if project is None:
            return
        data = event.data
        if event.type == "agent_run_progress" and data["status"] == "cancelled":
            run = self.runs.get((project.id, data["runId"]))
            if run is not None:
                logger.info("demo: cancelling %s on %s", data["runId"], project.id)
                run.cancel.set()
        elif event.type == "validation_update" and data["status"] == "queued":
            key = (project.id, data["name"], data.get("headSha"))
            if key in self.reruns:
                return  # already re-running
            base = {k: data[k] for k in ("name", "prNumber", "headSha", "url") if data.get(k) is not None}
            logger.info("demo: re-running %s on %s", data["name"], project.id)
            task = asyncio.create_task(self.run_check(project, base, queued=False))
            self.reruns[key] = task
            task.add_done_callback(lambda done: self.reruns.pop(key, None))
            task.add_done_callback(_log_failure)

    def sha(self) -> str:
        return f"{self.rng.getrandbits(160):040x}"


def _endpoint(publisher: Publisher) -> tuple[str, str]:
    """The service and token the publisher talks to, for the demo's subscriber."""
    return publisher.base_url, publisher.token


def _log_failure(task: asyncio.Task[Any]) -> None:
    exc = None if task.cancelled() else task.exception()
    if exc is not None:  # e.g. the service stopped under it; the next story tries again
        logger.warning("a demo story stopped: %s", exc, exc_info=not isinstance(exc, PublishError))


async def play(publisher: Publisher, *, pace: float = 1.0, seed: int | None = None, listen: bool = True) -> None:
    """Create the demo projects, then play stories into them until cancelled, acting on the dashboard's
    cancels and re-runs (unless `listen` is false)."""
    await Demo(publisher, pace=pace, seed=seed, listen=listen).run()
