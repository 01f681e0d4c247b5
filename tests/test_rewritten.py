"""A seq reissued after a failover (docs/protocol.md §7.5, docs/delivery.md "Failover"): a resume whose
position names an event the log now has with another hash answers `history_rewritten`, over every way a
client resumes; a position at or below what the failover kept resumes as before.

The failover is simulated as PostgreSQL does one. The "standby" is a copy of the primary's database as of
seq K (pg_dump takes one consistent snapshot: what an asynchronous standby holds when the commits after K
never reached it, cursors and acks included). The primary then goes on to seq N, its clients receive and
ack those events; then the standby is promoted: another instance appends different events to it through
the real append path (eventlog.append: new seqs K+1.., a chain continuing from K's hash), the primary's
database is dropped (its connections die, as a crashed primary's do) and the standby takes its name, which
is what the server's DSN (a Patroni or pg_auto_failover endpoint) then reaches. The server process stays
up through it all, with its acks in memory, reconnecting as it would to a new primary.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service import db
from service.auth import InvalidToken, Principal
from service.session import Ack, CheckAck, Connect, FindStart, Refuse, Send, Session, rewritten_at
from tests.conftest import RunningServer, timeout
from tests.helpers import WsClient, create, dump, open_client, promote, publish, seqs_of, stream

K = 5  # the last seq the standby received
N = 8  # the primary's head when it failed
NEW = 9  # the new primary's head: seqs K+1..NEW are other events than the ones clients had


async def history(client: httpx.AsyncClient, project_id: str = "p") -> list[dict[str, Any]]:
    r = await client.get(f"/api/projects/{project_id}/events", params={"after": 0, "limit": 1000})
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


@dataclass
class FailedOver:
    old: dict[int, str]  # seq -> hash of the primary's events, as its clients had them
    acker: WsClient  # client `n`, still connected, whose ack of N reached the server while no primary answered


@pytest.fixture
async def failed_over(
    client: httpx.AsyncClient, server: RunningServer, pg_url: str, tmp_path: Path
) -> AsyncIterator[FailedOver]:
    """Project `p` at seq K, snapshotted; then N on the primary. Alice's client `k` acked K before the
    snapshot (the standby has that cursor); client `n` received 1..N and acked N, with N's hash, while the
    primary was down (the server holds the ack and writes it to whichever primary answers next)."""
    await create(client, "p")
    await publish(client, "p", K)
    r = await client.post("/api/projects/p/ack", json={"clientId": "k", "seq": K})
    assert r.status_code == 200, r.text
    await dump(server.settings.database_url, tmp_path / "standby.dump")
    await publish(client, "p", N - K)
    old = {e["seq"]: e["hash"] for e in await history(client)}
    assert sorted(old) == list(range(1, N + 1))

    acker = await open_client(server, client_id="n")
    await acker.subscribe("p", after=0)
    assert seqs_of(await acker.events("p", N)) == list(range(1, N + 1))

    async def ack_while_down() -> None:
        await acker.send(type="ack", projectId="p", seq=N, hash=old[N])
        assert await acker.silence(0.3) == []  # accepted: the server knows the log reached N

    await promote(
        pg_url, server.settings.database_url, tmp_path / "standby.dump", kept=K, head=NEW, then=ack_while_down
    )

    deadline = asyncio.get_running_loop().time() + timeout(15)
    while (await client.get("/api/projects/p/state")).status_code != 200:  # the pool reconnects
        assert asyncio.get_running_loop().time() < deadline, "the server never reached the new primary"
        await asyncio.sleep(0.1)
    new = await history(client)
    assert seqs_of(new) == list(range(1, NEW + 1))
    assert all(e["hash"] == old[e["seq"]] for e in new[:K])
    assert all(e["hash"] != old.get(e["seq"]) for e in new[K:])
    try:
        yield FailedOver(old, acker)
    finally:
        await acker.ws.close()


def rewritten(message: dict[str, Any], seq: int, state_seq: int = NEW) -> None:
    assert message["code"] == "history_rewritten", message
    assert message["seq"] == seq and message["stateSeq"] == state_seq, message
    assert "reload" in message["message"], message


def test_the_rule() -> None:
    """With an after and its hash: rewritten exactly when the log's hash there differs (not checked with
    nothing to compare). From a cursor: when its recorded hash differs, or it is beyond the head; a cursor
    without a hash (acked before migration 0011) is not checked."""
    a, b = bytes(32), bytes([1]) * 32
    assert rewritten_at(after=7, after_hash=b.hex(), head=9, stored=None, cursor_hash=None, log_hash=a) == 7
    assert rewritten_at(after=7, after_hash=a.hex(), head=9, stored=None, cursor_hash=None, log_hash=a) is None
    assert rewritten_at(after=7, after_hash=None, head=9, stored=None, cursor_hash=None, log_hash=a) is None
    assert rewritten_at(after=7, after_hash=a.hex(), head=9, stored=None, cursor_hash=None, log_hash=None) is None
    assert rewritten_at(after=None, after_hash=None, head=9, stored=8, cursor_hash=b, log_hash=a) == 8
    assert rewritten_at(after=None, after_hash=None, head=9, stored=8, cursor_hash=a, log_hash=a) is None
    assert rewritten_at(after=None, after_hash=None, head=5, stored=8, cursor_hash=a, log_hash=None) == 8
    assert rewritten_at(after=None, after_hash=None, head=5, stored=8, cursor_hash=None, log_hash=None) is None


def test_the_session_asks_and_answers() -> None:
    """Sans I/O: a `subscribe` with afterHash asks for the log's hash at `after` (FindStart.after), a
    mismatch is the `history_rewritten` frame with seq and stateSeq and nothing subscribed, a match
    subscribes; an `ack` with a hash hands it to the Ack effect."""
    a, b = bytes(32), bytes([1]) * 32
    s = Session(Principal(user="alice", projects=None, scopes=frozenset({"admin"}), expires_at=2e9), verify=refuse)
    s.receive(json.dumps({"type": "subscribe", "projectId": "p", "after": 7, "afterHash": b.hex()}))
    [find] = s.take()
    assert isinstance(find, FindStart) and (find.after, find.cursor) == (7, False)
    s.found(find.ticket, 9, None, 1, log_hash=a)
    [refusal] = s.take()
    assert isinstance(refusal, Refuse)
    frame = json.loads(refusal.frame())
    assert (frame["code"], frame["ref"], frame["seq"], frame["stateSeq"]) == ("history_rewritten", "p", 7, 9)
    assert "p" not in s.subscribed

    s.receive(json.dumps({"type": "subscribe", "projectId": "p", "after": 7, "afterHash": a.hex()}))
    [find] = s.take()
    s.found(find.ticket, 9, None, 1, log_hash=a)
    assert [type(e) for e in s.take()] == [Send, Connect]
    s.receive(json.dumps({"type": "ack", "projectId": "p", "seq": 7, "hash": a.hex()}))
    [check] = s.take()
    assert isinstance(check, CheckAck)
    s.ack_checked(check.ticket, 9)
    assert s.take() == [Ack("p", 7, a.hex())]

    s.receive(json.dumps({"type": "subscribe", "projectId": "q"}))  # no position: the cursor is checked
    [find] = s.take()
    assert isinstance(find, FindStart) and (find.after, find.cursor) == (None, True)
    s.found(find.ticket, 9, 8, 1, stored=8, cursor_hash=b, log_hash=a)
    [refusal] = s.take()
    assert isinstance(refusal, Refuse) and json.loads(refusal.frame())["seq"] == 8


def refuse(token: str) -> Principal:
    raise InvalidToken("no refreshes here")


# --- WebSocket -----------------------------------------------------------------------------------------


async def test_websocket_after_hash(failed_over: FailedOver, server: RunningServer) -> None:
    """`subscribe` after a seq above K with the hash the client had: `history_rewritten` naming that seq
    and the head to reload the state at, nothing subscribed; at K (the last event the failover kept) or
    with the new event's hash, the subscription resumes and delivers the new primary's events."""
    old = failed_over.old
    ws = await open_client(server, client_id="fresh")
    for seq in (K + 1, N):
        await ws.send(type="subscribe", projectId="p", after=seq, afterHash=old[seq])
        error = await ws.expect("error")
        rewritten(error, seq)
        assert error["ref"] == "p"
    assert await ws.silence(0.3) == []
    await ws.send(type="subscribe", projectId="p", after=K, afterHash=old[K])
    assert (await ws.expect("subscribed"))["after"] == K
    new = await ws.events("p", NEW - K)
    assert seqs_of(new) == list(range(K + 1, NEW + 1))
    assert new[0]["data"]["runId"] == f"after-failover-{K + 1}"
    await ws.ws.close()

    again = await open_client(server, client_id="fresh2")
    await again.send(type="subscribe", projectId="p", after=K + 2, afterHash=new[1]["hash"])  # the new event
    assert (await again.expect("subscribed"))["after"] == K + 2
    assert seqs_of(await again.events("p", NEW - K - 2)) == list(range(K + 3, NEW + 1))
    await again.send(type="subscribe", projectId="q", after=1, afterHash="zz")
    assert (await again.expect("error"))["code"] == "invalid_frame"
    await again.send(type="subscribe", projectId="p", afterHash=old[1])
    assert (await again.expect("error"))["code"] == "invalid_frame"  # a hash needs its `after`
    await again.ws.close()


async def test_websocket_durable_cursor(failed_over: FailedOver, server: RunningServer) -> None:
    """Client `n` acked N with the hash it had; the ack landed on the new primary, whose N is another
    event: resuming from that cursor answers `history_rewritten` at N. Client `k`, whose cursor is at K,
    resumes normally and gets the new events; the client reloads and resubscribes after the state's seq."""
    await failed_over.acker.ws.close()  # its ack is written as it goes

    async def cursor_seq() -> int | None:
        conn = await asyncpg.connect(db.asyncpg_dsn(server.settings.database_url))
        try:
            value: int | None = await conn.fetchval(
                "SELECT seq FROM cursors WHERE project_id = 'p' AND client_id = 'n'"
            )
            return value
        finally:
            await conn.close()

    deadline = asyncio.get_running_loop().time() + timeout(10)
    while await cursor_seq() != N:
        assert asyncio.get_running_loop().time() < deadline, "the ack held in memory never reached the database"
        await asyncio.sleep(0.1)

    n = await open_client(server, client_id="n")
    await n.send(type="subscribe", projectId="p")
    rewritten(await n.expect("error"), N)
    assert await n.silence(0.3) == []
    assert (await n.subscribe("p", after=NEW))["after"] == NEW  # reloaded the state (at NEW), resumes after it
    await n.send(type="ack", projectId="p", seq=NEW)
    assert await n.silence(0.3) == []
    await n.ws.close()
    n = await open_client(server, client_id="n")
    assert (await n.subscribe("p"))["after"] == NEW  # the new ack moved the cursor, and its hash
    await n.ws.close()

    k = await open_client(server, client_id="k")
    assert (await k.subscribe("p"))["after"] == K
    assert seqs_of(await k.events("p", NEW - K)) == list(range(K + 1, NEW + 1))
    await k.ws.close()


# --- HTTP history and SSE ------------------------------------------------------------------------------


async def test_history_after_hash(failed_over: FailedOver, client: httpx.AsyncClient) -> None:
    """A history page after a seq with its hash: 409 `history_rewritten` when the log's event there
    differs or is gone (beyond the head); the page when it matches; 400 for a hash without `after`."""
    old = failed_over.old
    r = await client.get("/api/projects/p/events", params={"after": N, "afterHash": old[N]})
    assert r.status_code == 409, r.text
    body = r.json()
    assert (body["error"], body["seq"], body["stateSeq"]) == ("history_rewritten", N, NEW)
    r = await client.get("/api/projects/p/events", params={"after": NEW + 1, "afterHash": old[1]})
    assert r.status_code == 409 and r.json()["seq"] == NEW + 1, r.text
    r = await client.get("/api/projects/p/events", params={"after": K, "afterHash": old[K]})
    assert r.status_code == 200, r.text
    assert seqs_of(r.json()["events"]) == list(range(K + 1, NEW + 1))
    r = await client.get("/api/projects/p/events", params={"afterHash": old[K]})
    assert r.status_code == 400 and r.json()["error"] == "invalid_cursor", r.text


async def test_sse_after_hash(failed_over: FailedOver, client: httpx.AsyncClient) -> None:
    """A stream opened with `after` and `afterHash` above K: `event: error` history_rewritten, then the
    stream ends; at K it streams the new events. Last-Event-ID (the browser's own reconnect) is not
    checked: the URL's hash names the first `after`, not the header's position."""
    old = failed_over.old
    async with stream(client, f"/api/projects/p/stream?after={N}&afterHash={old[N]}") as s:
        message = await s.next()
        assert message.event == "error", message
        assert (message.json["error"], message.json["seq"], message.json["stateSeq"]) == ("history_rewritten", N, NEW)
        assert await s.ended()
    async with stream(client, f"/api/projects/p/stream?after={K}&afterHash={old[K]}") as s:
        assert [m.id for m in await s.events(NEW - K)] == [str(n) for n in range(K + 1, NEW + 1)]
    url = f"/api/projects/p/stream?after={N}&afterHash={old[N]}"
    async with stream(client, url, headers={"Last-Event-ID": str(K)}) as s:
        assert [m.id for m in await s.events(NEW - K)] == [str(n) for n in range(K + 1, NEW + 1)]
