"""The wake-up bus over a real NATS server (`nats-server`, started by these tests on a free port).

Three instances, each its own process, on one database, with careful clients and producers on each:
every client gets every seq once, in order, while the relay is killed (another takes over within 5 s),
while NATS restarts, and while NATS is stopped (the instances LISTEN meanwhile). With NOTIFY-free
appends no append NOTIFYs while the bus is up, and the relay's head poll wakes the instances instead.
Without a `nats-server` binary these tests are skipped, saying so: the proof needs a real server.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from websockets.asyncio.client import connect

from service import eventlog
from tests.conftest import ServiceProcess, free_port, timeout
from tests.consumer import Consumer
from tests.helpers import WsClient, create, wait_until
from tests.test_faults import careful_client, http_client, publish_with_retries, read_log, token

NATS_SERVER = shutil.which("nats-server") or next(
    (p for p in ("/usr/sbin/nats-server", "/usr/local/bin/nats-server") if os.path.exists(p)), None
)


class NatsServer:
    """A nats-server of our own (the tests stop and restart it), with its monitoring port for `/connz`."""

    def __init__(self, binary: str, log: Path) -> None:
        self.binary = binary
        self.log = log
        self.port = free_port()
        self.monitor = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout(10)
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("nats-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout(10))

    def subscriptions(self) -> dict[str, set[str]]:
        """Connection name -> the subjects it subscribes to, from the monitoring endpoint."""
        r = httpx.get(f"http://127.0.0.1:{self.monitor}/connz", params={"subs": 1}, timeout=5)
        return {c.get("name", ""): set(c.get("subscriptions_list", [])) for c in r.json()["connections"]}


@pytest.fixture
def nats(tmp_path: Path) -> Iterator[NatsServer]:
    if NATS_SERVER is None:
        pytest.skip("no nats-server binary here: the bus is proven against a real NATS server only")
    server = NatsServer(NATS_SERVER, tmp_path / "nats.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def start_cluster(
    database_url: str, tmp_path: Path, nats: NatsServer
) -> AsyncIterator[Callable[..., Awaitable[list[ServiceProcess]]]]:
    """Starts three instances on the test's database, all on the bus (with extra environment), and
    kills what is left of them at the end."""
    started: list[ServiceProcess] = []

    async def start(**env: str) -> list[ServiceProcess]:
        procs = [
            ServiceProcess(tmp_path / name, database_url, HERALD_NATS_URL=nats.url, **env) for name in ("a", "b", "c")
        ]
        started.extend(procs)
        await asyncio.gather(*(asyncio.to_thread(p.start) for p in procs))
        return procs

    yield start
    for p in started:
        if p.running():
            await asyncio.to_thread(p.stop, signal.SIGKILL)


def metric(instance: ServiceProcess, name: str) -> float:
    r = httpx.get(instance.url("/metrics"), headers={"Authorization": f"Bearer {token()}"}, timeout=timeout(5))
    assert r.status_code == 200, r.text
    found = re.search(rf"^{name}(?:{{[^}}]*}})? (\S+)$", r.text, re.M)
    assert found, f"{name} not in /metrics"
    return float(found.group(1))


def alive(instances: list[ServiceProcess]) -> list[ServiceProcess]:
    return [p for p in instances if p.running()]


def relays(instances: list[ServiceProcess]) -> list[ServiceProcess]:
    return [p for p in alive(instances) if metric(p, "herald_relay") == 1]


async def until_relayed(instances: list[ServiceProcess], wait: float) -> ServiceProcess:
    """The one instance relaying, once exactly one does."""
    await wait_until(lambda: len(relays(instances)) == 1, wait, "exactly one relay")
    return relays(instances)[0]


class Traffic:
    """Careful clients on every instance and producers through every instance, until stopped."""

    def __init__(self, instances: list[ServiceProcess], projects: list[str], seed: int) -> None:
        rng = random.Random(seed)
        self.instances = instances
        self.projects = projects
        self.rng = rng
        self.failures: list[str] = []
        self.published = 0
        self.consumers: list[Consumer] = [
            careful_client(
                f"c{i}",
                [p.ws_url for p in instances],
                rng.sample(projects, 2),
                resume=("after", "cursor")[i % 2],
                rng=random.Random(rng.random()),
            )
            for i in range(9)
        ]
        self.stop = asyncio.Event()
        self.readers = [asyncio.create_task(c.run(self.stop)) for c in self.consumers]

    async def publish(self, count: int, tag: str) -> None:
        """`count` events from three producers, each going through its own instance first (and through
        the next ones when it is down)."""

        async def producer(w: int) -> None:
            clients = [http_client(p.base_url) for p in self.instances]
            ordered = clients[w:] + clients[:w]
            try:
                for i in range(count // 3):
                    await publish_with_retries(
                        ordered, self.rng.choice(self.projects), f"{tag}-w{w}-{i}", failures=self.failures
                    )
                    self.published += 1
            finally:
                for c in clients:
                    await c.aclose()

        await asyncio.gather(*(producer(w) for w in range(3)))

    async def converge(self, via: ServiceProcess, wait: float = 30) -> dict[str, dict[int, str]]:
        """Wait until every client holds the whole log; returns the log."""
        async with http_client(via.base_url) as http:
            logs = {p: await read_log(http, p) for p in self.projects}
        heads = {p: len(log) for p, log in logs.items()}
        behind = lambda: [(c.client_id, c.last) for c in self.consumers if not c.holds(heads)]  # noqa: E731
        await wait_until(lambda: not behind(), wait, f"every client to hold every event of {heads}", behind)
        return logs

    async def finish(self, via: ServiceProcess) -> dict[str, dict[int, str]]:
        logs = await self.converge(via)
        self.stop.set()
        await asyncio.gather(*self.readers)
        assert sum(len(log) for log in logs.values()) == self.published
        for c in self.consumers:
            c.check(logs)  # every seq once (after dedupe), in order, each subscription contiguous
        return logs


async def test_three_instances_through_nats_with_relay_killed_and_nats_restarted(
    start_cluster: Callable[..., Awaitable[list[ServiceProcess]]], nats: NatsServer
) -> None:
    """Clients on each of three instances and producers through each get every seq once, in order,
    woken through NATS; when the relay's process is killed another instance relays within 5 s; when
    NATS restarts the instances come back to it; nothing is lost or repeated on the way."""
    cluster = await start_cluster()
    relay = await until_relayed(cluster, timeout(10))
    async with http_client(cluster[0].base_url) as http:
        await create(http, "p1", "p2", "p3")
    traffic = Traffic(cluster, ["p1", "p2", "p3"], seed=2112)
    await traffic.publish(150, "steady")
    await traffic.converge(cluster[0])
    for p in cluster:  # the hints came through NATS, from the relay
        assert metric(p, "herald_bus_up") == 1
        assert metric(p, "herald_bus_hints_total") > 0, p.base_url
    assert metric(relay, "herald_relay_published_total") > 0

    publishing = asyncio.create_task(traffic.publish(150, "failover"))
    await asyncio.sleep(0.3)
    killed_at = time.monotonic()
    await asyncio.to_thread(relay.stop, signal.SIGKILL)
    successor = await until_relayed(cluster, timeout(5))
    took = time.monotonic() - killed_at
    assert successor is not relay
    await publishing
    await traffic.converge(successor)

    publishing = asyncio.create_task(traffic.publish(150, "nats-restart"))
    await asyncio.sleep(0.2)
    await asyncio.to_thread(nats.stop)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(nats.start)
    await publishing
    survivors = alive(cluster)
    await wait_until(lambda: all(metric(p, "herald_bus_up") == 1 for p in survivors), timeout(15), "the bus back up")
    await until_relayed(cluster, timeout(10))
    hints = {p.port: metric(p, "herald_bus_hints_total") for p in survivors}
    await traffic.publish(30, "after-restart")
    await traffic.finish(survivors[0])
    assert all(metric(p, "herald_bus_hints_total") > hints[p.port] for p in survivors), "NATS no longer wakes them"
    assert traffic.failures == [] or all("failover" in f or "restart" in f for f in traffic.failures)
    print(f"relay takeover after kill -9: {took:.2f} s")


async def test_nats_stopped_instances_listen_on_the_database(
    start_cluster: Callable[..., Awaitable[list[ServiceProcess]]], nats: NatsServer
) -> None:
    """With NATS gone the instances fall back to LISTEN: clients keep receiving every seq once, in
    order; when NATS returns, the bus carries the wake-ups again."""
    cluster = await start_cluster()
    await until_relayed(cluster, timeout(10))
    async with http_client(cluster[0].base_url) as http:
        await create(http, "p1", "p2")
    traffic = Traffic(cluster, ["p1", "p2"], seed=4222)
    await traffic.publish(60, "before")
    await traffic.converge(cluster[0])

    await asyncio.to_thread(nats.stop)
    await wait_until(lambda: all(metric(p, "herald_bus_up") == 0 for p in cluster), timeout(10), "the bus seen down")
    await wait_until(lambda: relays(cluster) == [], timeout(3), "no relay into a bus that is down")
    await traffic.publish(90, "without-nats")
    await traffic.converge(cluster[1], wait=timeout(30))

    await asyncio.to_thread(nats.start)
    await wait_until(lambda: all(metric(p, "herald_bus_up") == 1 for p in cluster), timeout(15), "the bus back up")
    await until_relayed(cluster, timeout(10))
    await traffic.publish(30, "after")
    await traffic.finish(cluster[2])


async def test_notify_free_appends_wake_through_the_relays_head_poll(
    start_cluster: Callable[..., Awaitable[list[ServiceProcess]]], database_url: str
) -> None:
    """With HERALD_APPEND_NOTIFY=false no append NOTIFYs while the bus is up (a LISTEN on the log's
    channel hears nothing), yet every client gets every seq once, in order, through a relay kill too."""
    cluster = await start_cluster(HERALD_APPEND_NOTIFY="false", HERALD_HEAD_POLL_MS="10")
    relay = await until_relayed(cluster, timeout(10))
    async with http_client(cluster[0].base_url) as http:
        await create(http, "p1", "p2", "p3")
    heard: list[str] = []
    listening = await asyncpg.connect(database_url)
    await listening.add_listener(eventlog.NOTIFY_CHANNEL, lambda *args: heard.append(args[-1]))
    try:
        traffic = Traffic(cluster, ["p1", "p2", "p3"], seed=1883)
        await traffic.publish(150, "quiet")
        await traffic.converge(cluster[0])
        assert heard == [], f"appends NOTIFYed: {heard[:5]}"
        await asyncio.to_thread(relay.stop, signal.SIGKILL)
        publishing = asyncio.create_task(traffic.publish(90, "failover"))
        await until_relayed(cluster, timeout(5))
        await publishing
        await traffic.finish(alive(cluster)[0])
        assert heard == []
    finally:
        await listening.close()


async def test_an_instance_subscribes_only_to_the_projects_its_clients_watch(
    database_url: str, tmp_path: Path, nats: NatsServer
) -> None:
    """The instance's NATS connection holds the subjects of the watched projects (and the revocations),
    not the others', and drops a project's subject when its last subscriber leaves."""
    instance = ServiceProcess(tmp_path / "a", database_url, HERALD_NATS_URL=nats.url)
    await asyncio.to_thread(instance.start)
    try:
        async with http_client(instance.base_url) as http:
            await create(http, "watched", "ignored", "dotted.id")
        async with connect(instance.ws_url) as ws:
            client = WsClient(ws)
            await client.send(type="auth", token=token())
            await client.expect("welcome")
            await client.subscribe("watched")
            await client.subscribe("dotted.id")

            def subjects() -> set[str]:
                return set().union(*(s for name, s in nats.subscriptions().items() if name.startswith("herald")))

            want = {"herald.revocations", "herald.heads.watched", "herald.heads.dotted~id"}
            await wait_until(lambda: subjects() == want, timeout(5), "the watched subjects", subjects)
            await client.send(type="unsubscribe", projectId="watched")
            want.discard("herald.heads.watched")
            await wait_until(lambda: subjects() == want, timeout(5), "the subject dropped", subjects)
    finally:
        await asyncio.to_thread(instance.stop, signal.SIGKILL)
