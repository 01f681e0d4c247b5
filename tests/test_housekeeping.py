"""Housekeeping (cursors.prune_stale, webhooks.prune_deliveries, docs/operations.md "Housekeeping"): the
cursors of clients not seen for the TTL go and the others stay, with the ack ledger intact, and a client
whose cursor went resumes as the documented rule says; records of GitHub deliveries older than the dedupe
window go, and a redelivery inside the window is still appended once.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service import cursors, db, retention, webhooks
from service.config import ConfigError, Settings, load_settings
from tests.conftest import RunningServer, make_settings
from tests.helpers import create, open_client, publish, seqs_of

GH_SECRET = "a-hook-secret-of-its-own-for-p"


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    """Partitions of one seq, so a prune drops the partition of each event it passes (and its messageId)."""
    return make_settings(database_url, tmp_path, partition_events=1)


async def connect(server: RunningServer) -> asyncpg.Connection:
    return await asyncpg.connect(db.asyncpg_dsn(server.settings.database_url or ""))


async def ack(client: httpx.AsyncClient, client_id: str, seq: int) -> None:
    r = await client.post("/api/projects/p/ack", json={"clientId": client_id, "seq": seq})
    assert r.status_code == 200 and r.json() == {"seq": seq}, r.text


def test_the_settings_and_their_defaults(tmp_path: Path) -> None:
    """HERALD_CURSOR_TTL_DAYS defaults to 90 days and HERALD_WEBHOOK_DEDUPE_DAYS to 7; a dedupe window no
    longer than GitHub's 3-day redelivery window is refused at start."""
    settings = load_settings(data_dir=tmp_path)
    assert (settings.cursor_ttl_days, settings.webhook_dedupe_days) == (90, 7)
    settings = load_settings(data_dir=tmp_path, cursor_ttl_days=30, webhook_dedupe_days=14)
    assert (settings.cursor_ttl_days, settings.webhook_dedupe_days) == (30, 14)
    with pytest.raises(ConfigError, match="webhook_dedupe_days"):
        load_settings(data_dir=tmp_path, webhook_dedupe_days=3)


async def test_stale_cursors_go_fresh_ones_stay_and_the_ledger_is_kept(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """Of three cursors, the one last acked 91 days ago goes (TTL 90 days), the one acked 89 days ago and the
    one acked now stay; every ack_ledger row stays, so the ledger still names the pruned client."""
    await create(client, "p")
    await publish(client, "p", 5)
    for client_id in ("gone", "kept", "now"):
        await ack(client, client_id, 2)
    await ack(client, "gone", 3)
    conn = await connect(server)
    try:
        await conn.execute("UPDATE cursors SET updated_at = now() - interval '91 days' WHERE client_id = 'gone'")
        await conn.execute("UPDATE cursors SET updated_at = now() - interval '89 days' WHERE client_id = 'kept'")
        ledger = await conn.fetch('SELECT "user", client_id, seq, acked_at FROM ack_ledger ORDER BY client_id, seq')
        assert len(ledger) == 4
        ttl = timedelta(days=server.settings.cursor_ttl_days)
        assert await cursors.prune_stale(conn, older_than=ttl) == 1
        assert await cursors.prune_stale(conn, older_than=ttl) == 0
        after = await conn.fetch('SELECT "user", client_id, seq, acked_at FROM ack_ledger ORDER BY client_id, seq')
        assert after == ledger
    finally:
        await conn.close()
    r = await client.get("/api/projects/p/cursors")
    assert [(c["clientId"], c["seq"]) for c in r.json()["cursors"]] == [("kept", 2), ("now", 2)], r.text


async def test_a_client_whose_cursor_was_pruned_resumes_from_the_head_or_its_after(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """The resume rule without a cursor (cursors.resume_point): a client coming back with no `after` starts at
    the head and gets new events only; with `after` it gets the events after it. A client whose cursor
    stayed resumes after its cursor."""
    await create(client, "p")
    await publish(client, "p", 5)
    await ack(client, "gone", 2)
    await ack(client, "kept", 3)
    conn = await connect(server)
    try:
        await conn.execute("UPDATE cursors SET updated_at = now() - interval '100 days' WHERE client_id = 'gone'")
        assert await cursors.prune_stale(conn, older_than=timedelta(days=90)) == 1
    finally:
        await conn.close()

    gone = await open_client(server, client_id="gone")
    kept = await open_client(server, client_id="kept")
    again = await open_client(server, client_id="gone")
    try:
        subscribed = await gone.subscribe("p")
        assert (subscribed["after"], subscribed["head"]) == (5, 5)
        assert (await kept.subscribe("p"))["after"] == 3
        assert (await again.subscribe("p", after=2))["after"] == 2
        await publish(client, "p", 1)
        assert seqs_of(await gone.events("p", 1)) == [6] and await gone.silence() == []
        assert seqs_of(await kept.events("p", 3)) == [4, 5, 6]
        assert seqs_of(await again.events("p", 4)) == [3, 4, 5, 6]
    finally:
        for ws in (gone, kept, again):
            await ws.ws.close()


def pull_request(title: str) -> dict[str, Any]:
    return {
        "action": "opened",
        "pull_request": {"number": 7, "title": title, "html_url": "https://github.com/octo/demo/pull/7"},
        "repository": {"full_name": "octo/demo"},
    }


async def deliver(client: httpx.AsyncClient, delivery: str, payload: dict[str, Any]) -> dict[str, Any]:
    """One signed pull_request delivery to project p's own hook, as GitHub sends it."""
    body = json.dumps(payload).encode()
    r = await client.post(
        "/webhooks/github/p",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-GitHub-Event": "pull_request",
            "X-GitHub-Delivery": delivery,
            "X-GitHub-Hook-ID": "77",
            "X-Hub-Signature-256": webhooks.sign(GH_SECRET, body),
        },
    )
    assert r.status_code == 202, r.text
    answer: dict[str, Any] = r.json()
    return answer


async def test_old_delivery_records_go_with_their_events_and_a_redelivery_inside_the_window_appends_nothing(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """With the default 7-day window: a record received 8 days ago stays while the log keeps its event (the
    replay guard lives as long as the event, docs/security.md), and goes once a prune has passed that
    event; records received 6 days ago and now stay. Redelivering a kept one (same id, same body) or
    replaying its body under a new id is `duplicate`; a resend of the forgotten one is a new event."""
    r = await client.post(
        "/api/projects", json={"id": "p", "name": "p", "repo": "octo/demo", "webhookSecret": GH_SECRET}
    )
    assert r.status_code == 201, r.text
    for delivery in ("old", "recent", "new"):
        assert (await deliver(client, delivery, pull_request(delivery)))["status"] == "appended"
    conn = await connect(server)
    try:
        await conn.execute(
            "UPDATE webhook_deliveries SET received_at = now() - interval '8 days' WHERE delivery_id = 'old'"
        )
        await conn.execute(
            "UPDATE webhook_deliveries SET received_at = now() - interval '6 days' WHERE delivery_id = 'recent'"
        )
        window = timedelta(days=server.settings.webhook_dedupe_days)
        assert await webhooks.prune_deliveries(conn, older_than=window) == 0  # its event is in the log
        r = await client.put("/api/projects/p/retention", json={"keepEvents": 2})
        assert r.status_code == 200, r.text
        pruned = await retention.prune(conn, "p", archive=None, now=datetime.now(UTC))
        assert pruned is not None and (pruned.last, pruned.partitions) == (1, 1)
        assert await webhooks.prune_deliveries(conn, older_than=window) == 1
        assert await webhooks.prune_deliveries(conn, older_than=window) == 0
        kept = await conn.fetch("SELECT delivery_id FROM webhook_deliveries ORDER BY delivery_id")
        assert [row["delivery_id"] for row in kept] == ["new", "recent"]
    finally:
        await conn.close()

    for delivery in ("recent", "new"):
        answer = await deliver(client, delivery, pull_request(delivery))
        assert (answer["status"], answer["messageId"]) == ("duplicate", f"gh:{delivery}"), answer
        replayed = await deliver(client, f"replay-of-{delivery}", pull_request(delivery))
        assert (replayed["status"], replayed["messageId"]) == ("duplicate", f"gh:{delivery}"), replayed
    answer = await deliver(client, "old", pull_request("old"))
    assert (answer["status"], answer["seq"]) == ("appended", 4), answer


def sample(text: str, name: str) -> float:
    """The value of one sample (`name` with its labels) in a Prometheus text page."""
    values = [line.rsplit(" ", 1)[1] for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} is not in /metrics once: {values}"
    return float(values[0])


async def test_metrics_show_each_projects_log_and_the_rows_pruned(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """/metrics (admin) shows each project's head, watermark and events kept, read at the scrape, the events
    table's bytes, and the rows a prune deleted as counted by `record_pruned` (which the prune loop calls)."""
    await create(client, "p", "q")
    await publish(client, "p", 10)
    r = await client.put("/api/projects/p/retention", json={"keepEvents": 4})
    assert r.status_code == 200, r.text
    text = (await client.get("/metrics")).text
    assert sample(text, 'herald_log_head{project="p"}') == 10
    assert sample(text, 'herald_log_oldest{project="p"}') == 1
    assert sample(text, 'herald_log_events{project="p"}') == 10
    assert 'herald_pruned_rows_total{project="p"}' not in text

    conn = await connect(server)
    try:
        pruned = await retention.prune(conn, "p", archive=None, now=datetime.now(UTC))
    finally:
        await conn.close()
    assert pruned is not None and pruned.deleted > 0
    metrics = server.app_runtime().metrics
    metrics.record_pruned("p", pruned.deleted)
    text = (await client.get("/metrics")).text
    assert sample(text, 'herald_log_head{project="p"}') == 10
    assert sample(text, 'herald_log_oldest{project="p"}') == 7
    assert sample(text, 'herald_log_events{project="p"}') == 4
    assert sample(text, 'herald_pruned_rows_total{project="p"}') == pruned.deleted
    assert (sample(text, 'herald_log_head{project="q"}'), sample(text, 'herald_log_events{project="q"}')) == (0, 0)
    assert 'herald_pruned_rows_total{project="q"}' not in text
    assert sample(text, "herald_log_bytes") > 8192  # at least a page of the table and one of its primary key
    metrics.record_pruned("p", 3)
    assert sample((await client.get("/metrics")).text, 'herald_pruned_rows_total{project="p"}') == pruned.deleted + 3
