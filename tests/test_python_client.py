"""Herald's Python client (clients/python, package `herald_client`) against real services: the Subscriber
hands every event over once and in order through a restart of its service, resumes from its durable
cursor, and meets a pruned log, or one a database failover rewrote, with a `Resync`; the Publisher
appends each event once however often it retries. The distribution stands alone: it never imports the
server.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import pytest
from herald_client import Event, Publisher, Resync, Subscriber, SubscriberError
from herald_client.backoff import backoff

from service import db, retention
from tests.conftest import RunningServer, ServiceProcess, make_settings, start_server, stop_server, timeout
from tests.helpers import RUN, create, dump, promote, publish, wait_until
from tests.proxy import ReplyDroppingProxy

FAST = {"backoff_s": (0.05, 0.5), "ack_interval_s": 0.05}
CLIENT_ROOT = Path(__file__).resolve().parents[1] / "clients" / "python"


class Collector:
    """Iterates a Subscriber in a task of its own, keeping every item, until stopped."""

    def __init__(self, subscriber: Subscriber) -> None:
        self.subscriber = subscriber
        self.items: list[Event | Resync] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for item in self.subscriber:
            self.items.append(item)

    def seqs(self, project_id: str = "p") -> list[int]:
        return [i.seq for i in self.items if isinstance(i, Event) and i.project_id == project_id]

    async def wait_for(self, count: int, project_id: str = "p", wait: float = 20) -> None:
        await wait_until(lambda: len(self.seqs(project_id)) >= count, wait, f"{count} events", self.seqs)

    async def stop(self) -> None:
        await self.subscriber.aclose()
        await asyncio.wait_for(self.task, timeout(10))


async def cursor_of(http: httpx.AsyncClient, project_id: str, client_id: str) -> int | None:
    r = await http.get(f"/api/projects/{project_id}/cursors")
    assert r.status_code == 200, r.text
    return next((c["seq"] for c in r.json()["cursors"] if c["clientId"] == client_id), None)


@pytest.fixture
async def restartable(database_url: str, tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    """`serve` in a process of its own on the test's database, which the test may stop and start again."""
    service = ServiceProcess(tmp_path / "svc", database_url)
    await asyncio.to_thread(service.start)
    yield service
    if service.running():
        await asyncio.to_thread(service.stop, signal.SIGKILL)


# --- the Subscriber --------------------------------------------------------------------------------------


async def test_every_event_once_in_order_through_a_restart(
    restartable: ServiceProcess, server: RunningServer, client: httpx.AsyncClient
) -> None:
    """A Subscriber on a service that is stopped and started again, with events published before,
    during (through another instance on the same database) and after the downtime, hands over seqs
    1..60 once each and in order, over more than one connection; a new Subscriber with the same
    clientId then resumes exactly after what the first acked."""
    await create(client, "p")
    collector = Collector(
        Subscriber(restartable.base_url, server.token(), "p", client_id="runner", after={"p": 0}, **FAST)
    )
    await publish(client, "p", 20)
    await collector.wait_for(20)
    await asyncio.to_thread(restartable.stop, signal.SIGTERM)
    await publish(client, "p", 20)  # while the subscriber's service is down
    await asyncio.to_thread(restartable.start)
    await publish(client, "p", 20)
    await collector.wait_for(60)
    await asyncio.sleep(0.3)  # anything repeated would have arrived by now
    assert collector.seqs() == list(range(1, 61))
    assert collector.subscriber.connections >= 2
    await collector.stop()
    assert await cursor_of(client, "p", "runner") == 60  # acked as handled, persisted at the clean close

    await publish(client, "p", 5)
    resumed = Collector(Subscriber(restartable.base_url, server.token(), "p", client_id="runner", **FAST))
    await resumed.wait_for(5)
    await asyncio.sleep(0.3)
    assert resumed.seqs() == [61, 62, 63, 64, 65]
    await resumed.stop()


async def test_a_handled_event_is_acked_and_an_unhandled_one_comes_again(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """With automatic acks, an event counts as handled when the loop asks for the next one: a consumer
    that stops (raises) while handling seq 3 has acked 2, and its next run starts with 3. With
    `auto_ack=False` only `ack()` moves the cursor."""
    await create(client, "p")
    await publish(client, "p", 5)
    with pytest.raises(RuntimeError):
        async with Subscriber(server.base_url, server.token(), "p", client_id="crashy", after={"p": 0}, **FAST) as sub:
            async for item in sub:
                assert isinstance(item, Event)
                if item.seq == 3:
                    raise RuntimeError("the handler failed")
    assert await cursor_of(client, "p", "crashy") == 2

    async with Subscriber(server.base_url, server.token(), "p", client_id="crashy", auto_ack=False, **FAST) as sub:
        seen = []
        async for item in sub:
            assert isinstance(item, Event)
            seen.append(item.seq)
            if item.seq == 4:
                await sub.ack(item)
            if item.seq == 5:
                break
    assert seen == [3, 4, 5]
    assert await cursor_of(client, "p", "crashy") == 4


async def test_several_projects_on_one_subscriber(server: RunningServer, client: httpx.AsyncClient) -> None:
    """One Subscriber over two projects: each project's events once and in order, and each acked."""
    await create(client, "p", "q")
    collector = Collector(Subscriber(server.base_url, server.token(), ["p", "q"], client_id="both", **FAST))
    await wait_until(lambda: collector.subscriber.position("q") is not None, 10, "the subscriptions")
    for _ in range(5):
        await publish(client, "p", 2)
        await publish(client, "q", 1)
    await collector.wait_for(10, "p")
    await collector.wait_for(5, "q")
    assert collector.seqs("p") == list(range(1, 11)) and collector.seqs("q") == list(range(1, 6))
    await collector.stop()
    assert (await cursor_of(client, "p", "both"), await cursor_of(client, "q", "both")) == (10, 5)


async def test_history_truncated_gives_a_resync_then_the_events_after_the_state(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """A consumer that acked seq 3 and went away; the log is pruned to its last 4 events (oldest kept
    7). Coming back, it gets a `Resync` naming oldest 7 and the state snapshot (seq 10), then exactly
    the events published after it; the cursor follows."""
    await create(client, "p")
    await publish(client, "p", 3)
    async with Subscriber(server.base_url, server.token(), "p", client_id="late", after={"p": 0}, **FAST) as sub:
        async for item in sub:
            assert isinstance(item, Event)
            if item.seq == 3:
                break
    assert await cursor_of(client, "p", "late") == 3
    await publish(client, "p", 7)
    r = await client.put("/api/projects/p/retention", json={"keepEvents": 4})
    assert r.status_code == 200, r.text
    conn = await asyncpg.connect(db.asyncpg_dsn(server.settings.database_url or ""))
    try:
        pruned = await retention.prune(conn, "p", archive=None, now=datetime.now(UTC))
    finally:
        await conn.close()
    assert pruned is not None and (pruned.first, pruned.last) == (1, 6)

    collector = Collector(Subscriber(server.base_url, server.token(), "p", client_id="late", fetch_state=True, **FAST))
    await wait_until(lambda: collector.items, 10, "the resync")
    resync = collector.items[0]
    assert isinstance(resync, Resync), resync
    assert (resync.project_id, resync.reason, resync.oldest, resync.state_seq) == ("p", "history_truncated", 7, 10)
    assert resync.state is not None and resync.state["seq"] == 10 and resync.after == 10
    assert resync.state["agentRuns"][0]["seq"] == 10
    await publish(client, "p", 2)
    await collector.wait_for(2)
    assert collector.seqs() == [11, 12] and len(collector.items) == 3
    await collector.stop()
    assert await cursor_of(client, "p", "late") == 12


KEPT, HANDLED, HEAD = 5, 8, 9  # the standby's last seq, the old primary's head, the new primary's head


async def primary_then_standby(http: httpx.AsyncClient, database_url: str, snapshot: Path) -> dict[int, str]:
    """Project `p` with seqs 1..KEPT, snapshotted as the standby's copy, then 1..HANDLED on the primary:
    the hashes of the primary's events, by seq (tests/test_rewritten.py tells the failover's story)."""
    await create(http, "p")
    await publish(http, "p", KEPT)
    await dump(database_url, snapshot)
    await publish(http, "p", HANDLED - KEPT)
    r = await http.get("/api/projects/p/events", params={"after": 0})
    assert r.status_code == 200, r.text
    return {e["seq"]: e["hash"] for e in r.json()["events"]}


async def test_a_rewritten_log_gives_a_resync_not_the_new_events(
    restartable: ServiceProcess,
    server: RunningServer,
    client: httpx.AsyncClient,
    pg_url: str,
    database_url: str,
    tmp_path: Path,
) -> None:
    """A Subscriber handled 1..HANDLED; its service stops, the database fails over to a standby that had
    only 1..KEPT and gave KEPT+1..HEAD to other events, and the service starts again on it. Resuming with
    the hash of HANDLED (`afterHash`), the subscriber gets a `Resync` (`history_rewritten`, seq HANDLED,
    the new log's state at HEAD), not the new primary's event HEAD as if it followed its own; then exactly
    the events published after it, acked."""
    old = await primary_then_standby(client, database_url, tmp_path / "standby.dump")
    subscriber = Subscriber(
        restartable.base_url, server.token(), "p", client_id="py", after={"p": 0}, fetch_state=True, **FAST
    )
    collector = Collector(subscriber)
    await collector.wait_for(HANDLED)
    await asyncio.to_thread(restartable.stop, signal.SIGTERM)
    await promote(pg_url, database_url, tmp_path / "standby.dump", kept=KEPT, head=HEAD)
    await asyncio.to_thread(restartable.start)

    await wait_until(lambda: len(collector.items) > HANDLED, 20, "an item after the failover", lambda: collector.items)
    resync = collector.items[HANDLED]
    assert isinstance(resync, Resync), resync
    assert (resync.reason, resync.seq, resync.state_seq, resync.after) == ("history_rewritten", HANDLED, HEAD, HEAD)
    assert resync.state is not None and resync.state["agentRuns"][0]["data"]["runId"] == f"after-failover-{HEAD}"
    async with httpx.AsyncClient(base_url=restartable.base_url, headers=server.headers()) as http:
        await publish(http, "p", 2)
        await collector.wait_for(HANDLED + 2)
        await asyncio.sleep(0.3)  # anything else would have arrived by now
        assert collector.seqs() == [*range(1, HANDLED + 1), HEAD + 1, HEAD + 2]
        assert [i.raw["hash"] for i in collector.items[:HANDLED] if isinstance(i, Event)] == [
            old[n] for n in range(1, HANDLED + 1)
        ]
        assert len(collector.items) == HANDLED + 3
        await collector.stop()
        assert await cursor_of(http, "p", "py") == HEAD + 2


async def test_an_ack_carries_the_hash_the_consumer_had(
    server: RunningServer, client: httpx.AsyncClient, pg_url: str, database_url: str, tmp_path: Path
) -> None:
    """A consumer whose ack of HANDLED reaches the new primary after a failover (its connection stayed
    open): the durable cursor keeps the hash of the event the consumer had, not the new log's event at
    HANDLED, so a later resume from that cursor gets a `Resync` (`history_rewritten`) rather than the new
    primary's events as if they followed it."""
    old = await primary_then_standby(client, database_url, tmp_path / "standby.dump")
    async with Subscriber(
        server.base_url, server.token(), "p", client_id="held", after={"p": 0}, auto_ack=False, **FAST
    ) as sub:
        async for item in sub:
            assert isinstance(item, Event)
            if item.seq == HANDLED:
                break
        await promote(pg_url, database_url, tmp_path / "standby.dump", kept=KEPT, head=HEAD)
        deadline = asyncio.get_running_loop().time() + timeout(15)
        while (await client.get("/api/projects/p/state")).status_code != 200:  # the pool reconnects
            assert asyncio.get_running_loop().time() < deadline, "the server never reached the new primary"
            await asyncio.sleep(0.1)
        await sub.ack(item)

    conn = await asyncpg.connect(db.asyncpg_dsn(database_url))
    try:
        kept = await conn.fetchrow(
            "SELECT c.seq, encode(c.hash, 'hex') AS hash, encode(e.hash, 'hex') AS log_hash FROM cursors c"
            " JOIN events e ON e.project_id = c.project_id AND e.seq = c.seq"
            " WHERE c.project_id = 'p' AND c.client_id = 'held'"
        )
    finally:
        await conn.close()
    assert kept is not None and (kept["seq"], kept["hash"]) == (HANDLED, old[HANDLED]), kept
    assert kept["log_hash"] != old[HANDLED]

    collector = Collector(Subscriber(server.base_url, server.token(), "p", client_id="held", **FAST))
    await wait_until(lambda: collector.items, 10, "the resync")
    resync = collector.items[0]
    assert isinstance(resync, Resync), resync
    assert (resync.reason, resync.seq, resync.state_seq, resync.state) == ("history_rewritten", HANDLED, HEAD, None)
    await publish(client, "p", 1)
    await collector.wait_for(1)
    assert collector.seqs() == [HEAD + 1] and len(collector.items) == 2
    await collector.stop()


async def test_terminal_answers_end_the_iteration(server: RunningServer, client: httpx.AsyncClient) -> None:
    """A project the token may not read ends the iteration with `forbidden`; a bad token with the
    terminal close 4401; neither is retried forever."""
    await create(client, "p", "secret")
    only_p = server.token(projects=["p"], scopes=("subscribe",))
    async with Subscriber(server.base_url, only_p, ["p", "secret"], client_id="nosy", **FAST) as sub:
        with pytest.raises(SubscriberError) as info:
            async for _ in sub:
                pass
    assert (info.value.code, info.value.project_id) == ("forbidden", "secret")
    async with Subscriber(server.base_url, "not-a-token", "p", client_id="nosy", **FAST) as sub:
        with pytest.raises(SubscriberError) as info:
            async for _ in sub:
                pass
    assert (info.value.code, info.value.close_code) == ("closed", 4401)


async def test_a_token_function_renews_an_expired_token(server: RunningServer, client: httpx.AsyncClient) -> None:
    """With the token given as a function, the 4401 that ends a welcomed connection when its token
    expires is followed by a reconnect with a fresh token, resuming where it was: every event once."""
    await create(client, "p")
    issued: list[int] = []

    def token() -> str:
        issued.append(2 if not issued else 3600)
        return server.token(ttl_s=issued[-1])

    collector = Collector(Subscriber(server.base_url, token, "p", client_id="renewing", **FAST))
    await wait_until(lambda: collector.subscriber.position("p") is not None, 10, "the subscription")
    await publish(client, "p", 3)
    await collector.wait_for(3)
    await wait_until(lambda: collector.subscriber.connections >= 2, 10, "a reconnect after the expiry")
    await publish(client, "p", 3)
    await collector.wait_for(6)
    await asyncio.sleep(0.3)
    assert collector.seqs() == [1, 2, 3, 4, 5, 6] and issued[:2] == [2, 3600]
    assert not collector.task.done()
    await collector.stop()


def test_backoff_is_bounded_and_grows() -> None:
    """Every reconnect delay lies within [low, high]; the ceiling doubles per failure."""
    delays = [backoff(step, 0.5, 20.0) for step in range(12) for _ in range(50)]
    assert all(0.5 <= d <= 20.0 for d in delays)
    assert max(backoff(0, 0.5, 20.0) for _ in range(200)) <= 1.0
    assert max(backoff(8, 0.5, 20.0) for _ in range(200)) > 10


# --- the Publisher ---------------------------------------------------------------------------------------


async def test_the_same_message_id_twice_is_one_event(server: RunningServer, client: httpx.AsyncClient) -> None:
    """Publishing a messageId again returns the original (created False, same seq); a batch repeating
    ids, within itself and from before, appends only what is new."""
    async with Publisher(server.base_url, server.token()) as herald:
        await herald.ensure_project("p", "P")
        first = await herald.publish("p", "agent_run_progress", RUN, message_id="run-1:start")
        again = await herald.publish("p", "agent_run_progress", {**RUN, "progress": 99}, message_id="run-1:start")
        batch = await herald.publish_many(
            "p",
            [
                ("agent_run_progress", RUN, "run-1:start"),
                ("agent_run_progress", RUN, "run-1:a"),
                ("agent_run_progress", RUN, "run-1:a"),
            ],
        )
    assert (first.created, again.created, again.seq, again.event["data"]) == (True, False, first.seq, RUN)
    assert [(b.seq, b.created) for b in batch] == [(1, False), (2, True), (2, False)]
    events = (await client.get("/api/projects/p/events")).json()["events"]
    assert [e["messageId"] for e in events] == ["run-1:start", "run-1:a"]


async def test_lost_replies_are_retried_with_the_same_message_id(database_url: str, tmp_path: Path) -> None:
    """The service's database connection loses the replies of three commits (docs/protocol.md §7.2: 503
    with the messageId): the Publisher retries each with its messageId, and the log holds every event
    once, in the order published, single publishes and a batch alike."""
    async with ReplyDroppingProxy(database_url) as proxy:
        running, task = await start_server(make_settings(proxy.url, tmp_path))
        try:
            async with Publisher(
                running.base_url, running.token(), deadline_s=timeout(60), backoff_s=(0.05, 0.5)
            ) as herald:
                await herald.ensure_project("p", "P")
                for i in (2, 5):
                    proxy.drop_reply_to(f'"run-{i}"'.encode())
                for i in range(8):
                    await herald.progress("p", run_id=f"run-{i}", status="running", progress=i)
                proxy.drop_reply_to(b'"batch-1"')
                await herald.publish_many(
                    "p", [("agent_run_progress", {**RUN, "runId": f"batch-{i}"}) for i in range(3)]
                )
                assert proxy.dropped == 3 and herald.attempts >= 12
            async with httpx.AsyncClient(base_url=running.base_url, headers=running.headers()) as http:
                events = (await http.get("/api/projects/p/events")).json()["events"]
        finally:
            await stop_server(running, task)
    runs = [e["data"]["runId"] for e in events]
    assert runs == [f"run-{i}" for i in range(8)] + [f"batch-{i}" for i in range(3)]


def test_the_client_never_imports_the_server() -> None:
    """`herald_client` imported in a fresh interpreter loads neither `service` nor the server's
    dependencies (FastAPI, SQLAlchemy, asyncpg)."""
    probe = (
        "import sys, herald_client, herald_client.subscriber, herald_client.publisher; "
        "print(sorted(m for m in ('service', 'fastapi', 'sqlalchemy', 'asyncpg', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=CLIENT_ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
