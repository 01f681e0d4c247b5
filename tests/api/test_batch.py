"""Publishing a batch, `POST /api/projects/{id}/events/batch` (docs/protocol.md §9): all or none, in order.

Up to 1,000 events in one transaction, all or none, in the order given, idempotent on each messageId.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from tests.api.test_http import CHECK, PR, RUN, assert_error, create
from tests.conftest import RunningServer
from tests.helpers import open_client, seqs_of

URL = "/api/projects/p1/events/batch"


def run(i: int, **extra: Any) -> dict[str, Any]:
    return {"type": "agent_run_progress", "data": {**RUN, "step": f"step {i}"}, **extra}


async def head(client: httpx.AsyncClient, pid: str = "p1") -> int:
    projects = (await client.get("/api/projects")).json()["projects"]
    found: int = next(p["head"] for p in projects if p["id"] == pid)
    return found


async def log_of(client: httpx.AsyncClient, pid: str = "p1") -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await client.get(f"/api/projects/{pid}/events", params={"limit": 1000})).json()[
        "events"
    ]
    return events


async def test_a_batch_is_appended_in_order_with_contiguous_seqs(client: httpx.AsyncClient) -> None:
    """201; each event gets the next seq in the order given; the log holds them as sent."""
    await create(client)
    first = await client.post("/api/projects/p1/events", json=run(0))
    assert first.status_code == 201
    events = [
        run(1, messageId="a"),
        {"type": "pr_notification", "data": PR},
        {"type": "validation_update", "data": CHECK},
    ]
    r = await client.post(URL, json={"events": events})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["projectId"] == "p1"
    assert [(e["seq"], e["created"]) for e in body["events"]] == [(2, True), (3, True), (4, True)]
    assert body["events"][0]["messageId"] == "a" and len(body["events"][1]["messageId"]) == 36
    log = await log_of(client)
    assert [(e["seq"], e["type"], e["messageId"]) for e in log[1:]] == [
        (e["seq"], sent["type"], e["messageId"]) for e, sent in zip(body["events"], events, strict=True)
    ]
    assert log[1]["data"] == events[0]["data"] and log[2]["data"] == PR


async def test_a_retried_batch_appends_nothing_and_returns_the_originals(client: httpx.AsyncClient) -> None:
    """The same messageIds again: 200, the original seqs, created false; a batch mixing old and new
    appends only the new ones (201); a messageId twice in one batch is appended once."""
    await create(client)
    events = [run(i, messageId=f"m{i}") for i in range(5)]
    first = (await client.post(URL, json={"events": events})).json()["events"]
    again = await client.post(URL, json={"events": events})
    assert again.status_code == 200
    assert again.json()["events"] == [{**e, "created": False} for e in first]
    mixed = await client.post(
        URL, json={"events": [run(9, messageId="m3"), run(5, messageId="m5"), run(5, messageId="m5")]}
    )
    assert mixed.status_code == 201
    assert [(e["seq"], e["created"]) for e in mixed.json()["events"]] == [(4, False), (6, True), (6, False)]
    assert [e["messageId"] for e in await log_of(client)] == ["m0", "m1", "m2", "m3", "m4", "m5"]


async def test_concurrent_batches_and_publishes_keep_the_log_contiguous(client: httpx.AsyncClient) -> None:
    """Batches and single publishes racing into one project: every event once, seqs 1..n, and each
    batch's events contiguous and in its order (a batch is one transaction)."""
    await create(client)
    batches = [[run(i, messageId=f"b{b}-{i}") for i in range(50)] for b in range(8)]
    singles = [run(i, messageId=f"s{i}") for i in range(40)]
    answers = await asyncio.gather(
        *(client.post(URL, json={"events": batch}) for batch in batches),
        *(client.post("/api/projects/p1/events", json=event) for event in singles),
    )
    assert all(a.status_code == 201 for a in answers), [a.text for a in answers if a.status_code != 201]
    for answer in answers[: len(batches)]:
        seqs = [e["seq"] for e in answer.json()["events"]]
        assert seqs == list(range(seqs[0], seqs[0] + 50))
    log = await log_of(client)
    assert [e["seq"] for e in log] == list(range(1, 8 * 50 + 40 + 1)) and await head(client) == 440
    assert len({e["messageId"] for e in log}) == 440


async def test_a_batch_reaches_subscribers_in_order(server: RunningServer, client: httpx.AsyncClient) -> None:
    """A subscriber receives a batch's events live, each once, in seq order."""
    await create(client)
    sub = await open_client(server)
    await sub.subscribe("p1")
    r = await client.post(URL, json={"events": [run(i) for i in range(20)]})
    assert r.status_code == 201
    assert seqs_of(await sub.events("p1", 20)) == list(range(1, 21))
    await sub.ws.close()


async def test_a_bad_batch_is_refused_whole_and_names_the_event(client: httpx.AsyncClient) -> None:
    """One invalid event refuses the batch (422 naming `events.N.…`); nothing is appended. Likewise an
    empty batch, more than 1,000 events, a projectId that is not the URL's, an event over 64 KiB (413)
    and a body over 1 MiB (413, before parsing)."""
    await create(client)
    bad = {"type": "agent_run_progress", "data": {**RUN, "status": "done"}}
    assert_error(
        await client.post(URL, json={"events": [run(0), run(1), bad]}), 422, "invalid_data", "events.2.data.status"
    )
    unknown = {"type": "nope", "data": {}}
    assert_error(await client.post(URL, json={"events": [run(0), unknown]}), 422, "invalid_data", "events.1.type")
    assert_error(await client.post(URL, json={"events": [run(0), {**run(1), "messageId": ""}]}), 422, "invalid_data")
    assert_error(
        await client.post(URL, json={"events": [run(0), run(1, projectId="p2")]}),
        422,
        "invalid_data",
        "events.1.projectId",
    )
    assert_error(await client.post(URL, json={"events": []}), 422, "invalid_data", "events")
    assert_error(await client.post(URL, json={"events": [run(i) for i in range(1001)]}), 422, "invalid_data", "events")
    assert_error(await client.post(URL, json={"event": [run(0)]}), 422, "invalid_data")
    assert_error(await client.post(URL, json=[run(0)]), 422, "invalid_data")
    assert_error(await client.post(URL, content=b'{"events": ['), 400, "invalid_json")
    huge = {"type": "agent_run_progress", "data": {**RUN, "message": "x" * 70_000}}
    assert_error(await client.post(URL, json={"events": [run(0), huge]}), 413, "too_large", "events.1")
    many = [{"type": "agent_run_progress", "data": {**RUN, "message": "x" * 60_000}} for _ in range(20)]
    assert_error(await client.post(URL, json={"events": many}), 413, "too_large")
    assert await head(client) == 0 and await log_of(client) == []


async def test_a_batch_needs_publish_rights_on_an_existing_project(
    server: RunningServer, client: httpx.AsyncClient
) -> None:
    """401 without a token, 403 without the publish scope or the project, 404 for a missing project."""
    await create(client)
    body = {"events": [run(0)]}
    async with httpx.AsyncClient(base_url=server.base_url) as anonymous:
        assert_error(await anonymous.post(URL, json=body), 401, "unauthorized")
    reader = server.headers(server.token(scopes=("subscribe",)))
    assert_error(await client.post(URL, json=body, headers=reader), 403, "forbidden")
    elsewhere = server.headers(server.token(projects=["p2"], scopes=("publish",)))
    assert_error(await client.post(URL, json=body, headers=elsewhere), 403, "forbidden")
    assert_error(await client.post("/api/projects/ghost/events/batch", json=body), 404, "not_found")
    assert await head(client) == 0
