"""The guarantees of docs/protocol.md §6 under faults: kill -9, connections cut, PostgreSQL restarted, churn.

Several instances on one database, kill -9 of an instance under a client and under a producer, every
database connection cut, PostgreSQL restarted, and many clients churning across instances and projects
while publishers run.

The clients here are written as a careful client author would write them (reconnect after any drop,
resume, ack, dedupe by seq) and keep everything they received, duplicates included, so that a
checker can judge each stream: after dedupe it must be every event of the log, once, in order; and
within one subscription it must be contiguous from the position the server announced.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service import auth, db
from tests.conftest import (
    SECRET,
    RunningServer,
    ServiceProcess,
    make_settings,
    start_server,
    stop_server,
    timeout,
)
from tests.consumer import Consumer
from tests.helpers import create, open_client, publish, seqs_of, wait_until

RUN = {"runId": "r", "status": "running", "progress": 1}


def token() -> str:
    return auth.issue(SECRET, user="alice", projects="*", scopes=("admin",))


def careful_client(client_id: str, urls: list[str], projects: list[str], **options: Any) -> Consumer:
    """A careful client (tests/consumer.py) with an admin token, its timeouts scaled for this machine."""
    return Consumer(client_id, urls, projects, token, open_timeout=timeout(5), ack_persisted_s=timeout(1.5), **options)


async def read_log(http: httpx.AsyncClient, project_id: str) -> dict[int, str]:
    """seq -> messageId for the whole log of a project, paged over HTTP."""
    events: dict[int, str] = {}
    after = 0
    while True:
        r = await http.get(f"/api/projects/{project_id}/events", params={"after": after, "limit": 1000})
        assert r.status_code == 200, r.text
        page = r.json()["events"]
        if not page:
            return events
        events.update((e["seq"], e["messageId"]) for e in page)
        after = page[-1]["seq"]


def http_client(base_url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=base_url, headers={"Authorization": f"Bearer {token()}"}, timeout=timeout(5))


async def publish_with_retries(
    instances: list[httpx.AsyncClient], project_id: str, message_id: str, *, failures: list[str]
) -> int:
    """Publish one event as a careful producer does: on a dropped connection or a 503 the outcome is
    unknown, so retry with the same messageId (through the next instance) until an answer comes; fail
    if none comes within a minute."""
    deadline = time.monotonic() + timeout(60)
    attempt = 0
    while True:
        http = instances[attempt % len(instances)]
        try:
            r = await http.post(
                f"/api/projects/{project_id}/events",
                json={"type": "agent_run_progress", "messageId": message_id, "data": RUN},
            )
            if r.status_code in (200, 201):
                seq: int = r.json()["seq"]
                return seq
            assert r.status_code == 503, r.text
        except httpx.TransportError:
            pass
        failures.append(message_id)
        assert time.monotonic() < deadline, f"no instance answered the publish of {message_id}"
        attempt += 1
        await asyncio.sleep(min(0.5, 0.02 * 2**attempt))


@pytest.fixture
async def instances(database_url: str, tmp_path: Path) -> AsyncIterator[list[ServiceProcess]]:
    """Two instances of the service, each its own process, on the test's database."""
    procs = [ServiceProcess(tmp_path / name, database_url) for name in ("a", "b")]
    await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
    yield procs
    for p in procs:
        if p.running():
            await asyncio.to_thread(p.stop, signal.SIGKILL)


async def test_two_instances_behave_as_one(server: RunningServer, database_url: str, tmp_path: Path) -> None:
    """A client on instance A receives events published through B, and resumes on B from the cursor
    it left on A."""
    other, task = await start_server(make_settings(database_url, tmp_path / "b"))
    a = httpx.AsyncClient(base_url=server.base_url, headers=server.headers(), timeout=timeout(10))
    b = httpx.AsyncClient(base_url=other.base_url, headers=other.headers(), timeout=timeout(10))
    try:
        await create(a, "p")
        on_a = await open_client(server, client_id="roamer")
        await on_a.subscribe("p")
        started = time.monotonic()
        await publish(b, "p", 5)
        assert seqs_of(await on_a.events("p", 5)) == [1, 2, 3, 4, 5]
        assert time.monotonic() - started < timeout(2)
        await on_a.send(type="ack", projectId="p", seq=4)
        await on_a.ws.close()
        await publish(a, "p", 2)
        on_b = await open_client(other, client_id="roamer")
        assert (await on_b.subscribe("p"))["after"] == 4
        assert seqs_of(await on_b.events("p", 3)) == [5, 6, 7]
        await on_b.ws.close()
    finally:
        await a.aclose()
        await b.aclose()
        await stop_server(other, task)


@dataclass
class OutageProducer:
    """Publishes m1, m2, ... until stopped; after a 503 it retries the same messageId, as a producer
    must (the outcome of a publish cut mid-commit is unknown to it; the messageId makes the retry
    safe). Every answer must come promptly: a publish that hangs through an outage fails the test, and
    so does a message still refused after 30 s (the service did not recover)."""

    http: httpx.AsyncClient
    project_id: str = "p"
    durable: list[int] = field(default_factory=list)
    unavailable: int = 0
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            first_try = time.monotonic()
            while True:
                started = time.monotonic()
                r = await self.http.post(
                    f"/api/projects/{self.project_id}/events",
                    json={"type": "agent_run_progress", "messageId": f"m{n}", "data": RUN},
                )
                assert time.monotonic() - started < timeout(6), "a publish hung during the outage"
                if r.status_code in (200, 201):
                    self.durable.append(r.json()["seq"])
                    break
                assert r.status_code == 503 and r.json()["error"] == "unavailable", r.text
                self.unavailable += 1
                assert time.monotonic() - first_try < timeout(30), f"m{n} still refused: the service did not recover"
                await asyncio.sleep(0.05)


async def test_all_connections_cut_while_publishing(
    server: RunningServer, client: httpx.AsyncClient, database_url: str
) -> None:
    """pg_terminate_backend of the listener and the whole pool, repeatedly, while a producer publishes
    and a client is subscribed: each publish is either durable (201) or a prompt 503, and the client
    receives every durable event once, in order, without reconnecting."""
    await create(client, "p")
    ws = await open_client(server)
    await ws.subscribe("p")
    producer = OutageProducer(client)
    task = asyncio.create_task(producer.run())
    admin = await asyncpg.connect(db.asyncpg_dsn(database_url))
    try:
        for _ in range(5):
            await asyncio.sleep(timeout(0.3))  # let some publishes through between the cuts
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        await asyncio.sleep(timeout(0.5))  # and after the last cut
    finally:
        producer.stop.set()
        await task
        await admin.close()
    durable = producer.durable
    assert durable, "nothing was published"
    assert durable == list(range(1, len(durable) + 1))
    got = await ws.events("p", len(durable), wait=10)
    assert seqs_of(got) == durable
    assert await ws.silence(0.3) == []
    await ws.ws.close()


async def test_kill_9_of_a_clients_instance(instances: list[ServiceProcess]) -> None:
    """kill -9 of the instance a client is reading from, mid-stream, then a restart: the client
    reconnects, resumes from its durable cursor (not from the start, not past what it holds), and
    after dedupe holds every event once, in order."""
    a, b = instances
    total, kill_after = 300, 150
    async with http_client(b.base_url) as http:
        await create(http, "p")
        consumer = careful_client("survivor", [a.ws_url], ["p"], resume="cursor")
        stop = asyncio.Event()
        reader = asyncio.create_task(consumer.run(stop))
        await wait_until(lambda: consumer.segments["p"], 10, "the first subscription")
        restart: asyncio.Task[None] | None = None
        held_at_kill = 0
        for i in range(total):
            await publish_with_retries([http], "p", f"m{i}", failures=[])
            await asyncio.sleep(0.004)  # a steady stream, so acks persist along the way
            if i == kill_after:
                await wait_until(lambda: consumer.last["p"] > 100, 10, "the stream to flow")
                a.stop(signal.SIGKILL)
                held_at_kill = consumer.last["p"]
                restart = asyncio.create_task(asyncio.to_thread(a.start))
        assert restart is not None
        await restart
        await wait_until(lambda: consumer.holds({"p": total}), 20, "the client to catch up")
        stop.set()
        await reader
        log = await read_log(http, "p")
    assert len(log) == total
    consumer.check({"p": log})
    assert consumer.connections >= 2
    resumed_from = consumer.segments["p"][1].after
    assert 0 < resumed_from <= held_at_kill, (resumed_from, held_at_kill)


async def test_kill_9_of_a_producers_instance(instances: list[ServiceProcess]) -> None:
    """kill -9 of the instance four producers publish through, then a restart: each producer retries
    its unanswered publish with the same messageId (through the other instance, then back), and the
    log holds every message exactly once with a gap-free seq."""
    a, b = instances
    per_producer, producers = 60, 4
    failures: list[str] = []
    async with http_client(a.base_url) as via_a, http_client(b.base_url) as via_b:
        await create(via_b, "p")
        published: list[int] = []

        async def producer(w: int) -> None:
            for i in range(per_producer):
                published.append(await publish_with_retries([via_a, via_b], "p", f"w{w}-{i}", failures=failures))

        tasks = [asyncio.create_task(producer(w)) for w in range(producers)]
        await wait_until(lambda: len(published) >= 80, 20, "publishing to get going")
        a.stop(signal.SIGKILL)
        await asyncio.to_thread(a.start)
        await asyncio.gather(*tasks)
        log = await read_log(via_a, "p")
    expected = {f"w{w}-{i}" for w in range(producers) for i in range(per_producer)}
    assert failures, "the kill interrupted no publish"
    assert sorted(log) == list(range(1, len(expected) + 1))
    assert sorted(log.values()) == sorted(expected), "a message lost or duplicated"
    assert sorted(published) == sorted(log), "a producer was told a seq the log does not hold"


@dataclass
class OwnPostgres:
    """A PostgreSQL server of one test's own (embedded), so the test may stop and restart it. It
    comes back on the same unix socket, so the service's DATABASE_URL stays valid."""

    home: Path
    server: db.EmbeddedPostgres

    @property
    def url(self) -> str:
        return self.server.url

    async def stop(self) -> None:
        await asyncio.to_thread(self.server.stop)

    async def start(self) -> None:
        self.server = await asyncio.to_thread(db.start_embedded, self.home, "herald")


@pytest.fixture
async def own_postgres(tmp_path: Path) -> AsyncIterator[OwnPostgres]:
    home = tmp_path / "pg-home"
    pg = OwnPostgres(home, await asyncio.to_thread(db.start_embedded, home, "herald"))
    await asyncio.to_thread(db.migrate, pg.url)
    yield pg
    await pg.stop()


async def test_postgres_restarted_under_the_service(own_postgres: OwnPostgres, tmp_path: Path) -> None:
    """PostgreSQL stopped (fast shutdown) and started again under a running service while a producer
    publishes and a client is subscribed: publishes during the outage are prompt 503s, and once it is
    back every durable event reaches the client once, in order, on the same connection."""
    running, task = await start_server(make_settings(own_postgres.url, tmp_path / "svc"))
    http = httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=timeout(10))
    try:
        await create(http, "p")
        ws = await open_client(running)
        await ws.subscribe("p")
        producer = OutageProducer(http)
        producing = asyncio.create_task(producer.run())
        await asyncio.sleep(timeout(0.5))  # publishing before the outage
        url = own_postgres.url
        await own_postgres.stop()
        await asyncio.sleep(timeout(1.5))  # the outage, during which publishes must be refused promptly
        await own_postgres.start()
        assert own_postgres.url == url
        durable = producer.durable
        await wait_until(lambda: len(durable) >= 20 and durable[-1] > 10, 15, "publishing to resume")
        producer.stop.set()
        await producing
        assert producer.unavailable > 0, "the outage was not observed"
        assert durable == list(range(1, len(durable) + 1))
        assert seqs_of(await ws.events("p", len(durable), wait=15)) == durable
        assert await ws.silence(0.3) == []
        await ws.ws.close()
    finally:
        await http.aclose()
        await stop_server(running, task)


async def test_seam_stress_many_clients_churning(instances: list[ServiceProcess]) -> None:
    """Twenty-four clients on two instances subscribe, ack, unsubscribe, resubscribe and drop their
    connections (abruptly or cleanly) at random, resuming by `after` or by cursor, while eight
    producers publish across four projects through both instances: every client's stream of every
    project is, after dedupe, the whole log in order, and every subscription was contiguous."""
    rng = random.Random(20261125)
    projects = ["p1", "p2", "p3", "p4"]
    urls = [p.ws_url for p in instances]
    async with http_client(instances[0].base_url) as via_a, http_client(instances[1].base_url) as via_b:
        await create(via_a, *projects)
        consumers = [
            careful_client(
                f"c{i}",
                urls,
                rng.sample(projects, 2),
                resume=("after", "cursor", "random")[i % 3],
                churn=rng.uniform(0.3, 1.2),
                ack_every=rng.randint(1, 20),
                rng=random.Random(rng.random()),
            )
            for i in range(24)
        ]
        stop = asyncio.Event()
        readers = [asyncio.create_task(c.run(stop)) for c in consumers]
        failures: list[str] = []

        async def producer(w: int) -> None:
            for i in range(125):
                await publish_with_retries(
                    [via_a, via_b][w % 2 :] + [via_a, via_b][: w % 2],
                    rng.choice(projects),
                    f"w{w}-{i}",
                    failures=failures,
                )

        await asyncio.gather(*(producer(w) for w in range(8)))
        logs = {p: await read_log(via_a, p) for p in projects}
        heads = {p: len(logs[p]) for p in projects}
        for c in consumers:
            c.churn = None  # calm down, then everyone must converge on the heads
        behind = lambda: [(c.client_id, c.last) for c in consumers if not c.holds(heads)]  # noqa: E731
        await wait_until(lambda: not behind(), 30, f"every client to hold every event of {heads}", behind)
        stop.set()
        await asyncio.gather(*readers)
    assert failures == []
    assert sum(heads.values()) == 1000
    for c in consumers:
        c.check(logs)
    assert sum(c.connections for c in consumers) > 2 * len(consumers), "the clients hardly churned"
    assert sum(len(s) for c in consumers for s in c.segments.values()) > 3 * len(consumers)
