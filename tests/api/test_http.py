"""The HTTP API of docs/protocol.md §3 over a real uvicorn: every success, every error code, paging."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from service import __version__
from tests.conftest import RunningServer

RUN = {"runId": "r1", "status": "running", "progress": 42.5, "step": "tests", "message": "running"}
PR = {
    "action": "opened",
    "number": 7,
    "title": "Add Herald",
    "url": "https://github.com/octo/demo/pull/7",
    "repo": "octo/demo",
    "author": "octocat",
    "headSha": "abc123",
}
CHECK = {"name": "ci / tests", "status": "completed", "conclusion": "success", "prNumber": 7, "headSha": "abc"}


async def create(client: httpx.AsyncClient, pid: str = "p1", **extra: Any) -> dict[str, Any]:
    r = await client.post("/api/projects", json={"id": pid, "name": f"Project {pid}", **extra})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


async def publish(client: httpx.AsyncClient, pid: str, type: str, data: Any, **extra: Any) -> httpx.Response:
    return await client.post(f"/api/projects/{pid}/events", json={"type": type, "data": data, **extra})


def assert_error(r: httpx.Response, status: int, code: str, field: str | None = None) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["error"] == code, body
    assert isinstance(body["message"], str) and body["message"]
    if field is not None:
        assert body.get("field") == field, body


async def test_health(client: httpx.AsyncClient) -> None:
    """/healthz needs no token and says ok while the database answers, with the release and the wire
    contract's version."""
    r = await client.get("/healthz", headers={"Authorization": ""})
    assert r.status_code == 200 and r.json() == {"status": "ok", "version": __version__, "protocol": "1.1"}


async def test_project_lifecycle(client: httpx.AsyncClient) -> None:
    """Create, list with heads, duplicate id 409, invalid id 422, repo taken (any case) 422."""
    project = await create(client, "p1", repo="octo/demo")
    assert project == {"id": "p1", "name": "Project p1", "repo": "octo/demo", "head": 0}
    await create(client, "p2")
    assert_error(await client.post("/api/projects", json={"id": "p1", "name": "again"}), 409, "exists", "id")
    for bad in ("", "-x", "a" * 65, "a b", "ü"):
        assert_error(await client.post("/api/projects", json={"id": bad, "name": "n"}), 422, "invalid_data", "id")
    r = await client.post("/api/projects", json={"id": "p3", "name": "n", "repo": "OCTO/Demo"})
    assert_error(r, 422, "invalid_data", "repo")
    r = await client.post("/api/projects", json={"id": "p3", "name": "n", "repo": "not-a-repo"})
    assert_error(r, 422, "invalid_data", "repo")
    assert (await publish(client, "p2", "agent_run_progress", RUN)).status_code == 201
    r = await client.get("/api/projects")
    assert r.json() == {
        "projects": [
            {"id": "p1", "name": "Project p1", "repo": "octo/demo", "head": 0},
            {"id": "p2", "name": "Project p2", "repo": None, "head": 1},
        ]
    }


async def test_list_shows_only_named_projects(server: RunningServer, client: httpx.AsyncClient) -> None:
    """A token naming some projects lists just those."""
    for pid in ("p1", "p2", "p3"):
        await create(client, pid)
    token = server.token(projects=["p1", "p3", "ghost"], scopes=("subscribe",))
    r = await client.get("/api/projects", headers=server.headers(token))
    assert [p["id"] for p in r.json()["projects"]] == ["p1", "p3"]


async def test_publish_returns_the_event(client: httpx.AsyncClient) -> None:
    """201 with the full event: seq, a generated messageId, a millisecond UTC timestamp, the data."""
    await create(client)
    r = await publish(client, "p1", "agent_run_progress", RUN)
    assert r.status_code == 201
    event = r.json()
    assert event["type"] == "agent_run_progress" and event["projectId"] == "p1" and event["seq"] == 1
    assert len(event["messageId"]) == 36
    assert event["timestamp"].endswith("Z") and len(event["timestamp"]) == 24
    assert event["data"] == RUN
    r = await publish(client, "p1", "pr_notification", PR, messageId="gh-1")
    assert r.status_code == 201 and r.json()["seq"] == 2 and r.json()["messageId"] == "gh-1"
    r = await publish(client, "p1", "validation_update", CHECK)
    assert r.status_code == 201 and r.json()["seq"] == 3


async def test_publish_is_idempotent_on_message_id(client: httpx.AsyncClient) -> None:
    """A repeated messageId gets 200 and the original event; the log holds it once."""
    await create(client)
    first = await publish(client, "p1", "agent_run_progress", RUN, messageId="m-1")
    again = await publish(client, "p1", "agent_run_progress", {**RUN, "progress": 1}, messageId="m-1")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    results = await asyncio.gather(
        *(publish(client, "p1", "agent_run_progress", RUN, messageId="m-2") for _ in range(8))
    )
    assert sorted(r.status_code for r in results) == [200] * 7 + [201]
    page = (await client.get("/api/projects/p1/events")).json()
    assert [e["messageId"] for e in page["events"]] == ["m-1", "m-2"]


async def test_publish_ignores_timestamp_and_seq(client: httpx.AsyncClient) -> None:
    """`timestamp` and `seq` in a publish body are ignored; a matching projectId is accepted."""
    await create(client)
    r = await publish(
        client, "p1", "agent_run_progress", RUN, seq=99, timestamp="2000-01-01T00:00:00.000Z", projectId="p1"
    )
    assert r.status_code == 201 and r.json()["seq"] == 1 and not r.json()["timestamp"].startswith("2000")
    r = await publish(client, "p1", "agent_run_progress", RUN, projectId="p2")
    assert_error(r, 422, "invalid_data", "projectId")


INVALID: list[tuple[str, Any, str]] = [
    ("agent_run_progress", {**RUN, "extra": 1}, "data.extra"),
    ("agent_run_progress", {**RUN, "progress": "7"}, "data.progress"),
    ("agent_run_progress", {**RUN, "progress": True}, "data.progress"),
    ("agent_run_progress", {**RUN, "progress": 100.01}, "data.progress"),
    ("agent_run_progress", {**RUN, "progress": -1}, "data.progress"),
    ("agent_run_progress", {**RUN, "status": "done"}, "data.status"),
    ("agent_run_progress", {"status": "running", "progress": 1}, "data.runId"),
    ("agent_run_progress", {**RUN, "runId": None}, "data.runId"),
    ("agent_run_progress", {**RUN, "step": 5}, "data.step"),
    ("agent_run_progress", {**RUN, "message": "nul\u0000byte"}, "data.message"),
    ("agent_run_progress", [RUN], "data"),
    ("agent_run_progress", None, "data"),
    ("pr_notification", {**PR, "number": "7"}, "data.number"),
    ("pr_notification", {**PR, "number": 7.0}, "data.number"),
    ("pr_notification", {**PR, "number": 0}, "data.number"),
    ("pr_notification", {**PR, "repo": "octo"}, "data.repo"),
    ("pr_notification", {k: v for k, v in PR.items() if k != "title"}, "data.title"),
    ("pr_notification", {**PR, "head_sha": "x"}, "data.head_sha"),
    ("validation_update", {**CHECK, "status": "done"}, "data.status"),
    ("validation_update", {**CHECK, "conclusion": "passed"}, "data.conclusion"),
    ("validation_update", {**CHECK, "prNumber": "7"}, "data.prNumber"),
    ("validation_update", {"status": "queued"}, "data.name"),
    ("no_such_type", RUN, "type"),
]


@pytest.mark.parametrize(("type_", "data", "field"), INVALID)
async def test_publish_rejects_invalid_data(client: httpx.AsyncClient, type_: str, data: Any, field: str) -> None:
    """§2: unknown fields, coercion, out-of-range values, bad enums and missing fields are 422 with the
    field's dotted path, and the log is untouched."""
    await create(client)
    assert_error(await publish(client, "p1", type_, data), 422, "invalid_data", field)
    assert (await client.get("/api/projects")).json()["projects"][0]["head"] == 0


async def test_null_optional_fields_count_as_absent(client: httpx.AsyncClient) -> None:
    """`null` for an optional field is accepted and stored as absent."""
    await create(client)
    r = await publish(
        client, "p1", "validation_update", {"name": "lint", "status": "queued", "conclusion": None, "url": None}
    )
    assert r.status_code == 201 and r.json()["data"] == {"name": "lint", "status": "queued"}


async def test_publish_body_errors(client: httpx.AsyncClient) -> None:
    """Malformed JSON is 400, a non-object 422, an oversized body 413 (before parsing), a bad messageId 422."""
    await create(client)
    url = "/api/projects/p1/events"
    assert_error(await client.post(url, content=b"{not json"), 400, "invalid_json")
    assert_error(await client.post(url, content=b""), 400, "invalid_json")
    assert_error(await client.post(url, content=b'{"type": NaN}'), 400, "invalid_json")
    assert_error(await client.post(url, content=b"\xff\xfe"), 400, "invalid_json")
    assert_error(await client.post(url, json=[1, 2]), 422, "invalid_data")
    assert_error(await client.post(url, json={"data": RUN}), 422, "invalid_data", "type")
    big = {"type": "agent_run_progress", "data": {**RUN, "message": "x" * 70_000}}
    assert_error(await client.post(url, json=big), 413, "too_large")

    async def chunks() -> Any:  # no Content-Length: the limit holds for streamed bodies too
        for _ in range(70):
            yield b" " * 1024

    assert_error(await client.post(url, content=chunks()), 413, "too_large")
    for bad_id in ("", "x" * 129, "line\nbreak"):
        r = await publish(client, "p1", "agent_run_progress", RUN, messageId=bad_id)
        assert_error(r, 422, "invalid_data", "messageId")
    assert (await client.get("/api/projects")).json()["projects"][0]["head"] == 0


async def test_auth_errors(server: RunningServer, client: httpx.AsyncClient) -> None:
    """No token, a bad or expired token: 401. A token without the scope or the project: 403.
    A `*` token on a missing project: 404; a token naming a missing project: 404."""
    await create(client)
    bare = httpx.AsyncClient(base_url=server.base_url)
    async with bare:
        assert_error(await bare.get("/api/projects"), 401, "unauthorized")
        assert_error(await bare.get("/api/projects", headers={"Authorization": "Bearer nope"}), 401, "unauthorized")
        assert_error(await bare.get("/api/projects", headers={"Authorization": "Basic abc"}), 401, "unauthorized")
        expired = server.token(ttl_s=1, now=1_000_000)
        assert_error(await bare.get("/api/projects", headers=server.headers(expired)), 401, "unauthorized")

        reader = server.headers(server.token(projects=["p1"], scopes=("subscribe",)))
        assert_error(
            await bare.post(
                "/api/projects/p1/events", json={"type": "agent_run_progress", "data": RUN}, headers=reader
            ),
            403,
            "forbidden",
        )
        assert_error(await bare.post("/api/projects", json={"id": "p2", "name": "n"}, headers=reader), 403, "forbidden")
        assert_error(await bare.get("/api/projects/p1/cursors", headers=reader), 403, "forbidden")
        assert (await bare.get("/api/projects/p1/events", headers=reader)).status_code == 200

        writer = server.headers(server.token(projects=["p1"], scopes=("publish",)))
        assert_error(await bare.get("/api/projects/p1/events", headers=writer), 403, "forbidden")
        assert_error(
            await bare.post("/api/projects/p1/ack", json={"clientId": "c", "seq": 0}, headers=writer), 403, "forbidden"
        )

        other = server.headers(server.token(projects=["p9"], scopes=("admin",)))
        assert_error(await bare.get("/api/projects/p1/events", headers=other), 403, "forbidden")
        assert_error(await bare.post("/api/projects", json={"id": "p2", "name": "n"}, headers=other), 403, "forbidden")
        assert_error(await bare.get("/api/projects/p9/events", headers=other), 404, "not_found")

    assert_error(await client.get("/api/projects/ghost/events"), 404, "not_found")
    assert_error(await publish(client, "ghost", "agent_run_progress", RUN), 404, "not_found")
    assert_error(await client.post("/api/projects/ghost/ack", json={"clientId": "c", "seq": 0}), 404, "not_found")
    assert_error(await client.get("/api/projects/ghost/cursors"), 404, "not_found")


async def test_history_paging(client: httpx.AsyncClient) -> None:
    """after/before/limit/type/order and `next` over HTTP; bad parameters are 422 naming the field."""
    await create(client)
    for i in range(1, 8):
        if i % 3 == 0:
            await publish(client, "p1", "pr_notification", {**PR, "number": i})
        else:
            await publish(client, "p1", "agent_run_progress", {**RUN, "progress": i})

    async def page(**params: Any) -> tuple[list[int], Any]:
        r = await client.get("/api/projects/p1/events", params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        return [e["seq"] for e in body["events"]], body["next"]

    assert await page() == ([1, 2, 3, 4, 5, 6, 7], None)
    assert await page(limit=3) == ([1, 2, 3], 3)
    assert await page(limit=3, after=3) == ([4, 5, 6], 6)
    assert await page(limit=3, after=6) == ([7], None)
    assert await page(order="desc", limit=3) == ([7, 6, 5], 5)
    assert await page(order="desc", limit=3, before=5) == ([4, 3, 2], 2)
    assert await page(order="desc", limit=3, before=2) == ([1], None)
    assert await page(after=1, before=4) == ([2, 3], None)
    assert await page(type="pr_notification") == ([3, 6], None)
    assert await page(type="pr_notification", limit=1) == ([3], 3)
    assert await page(limit=7) == ([1, 2, 3, 4, 5, 6, 7], None)
    for params, field in (
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"after": -1}, "after"),
        ({"after": "x"}, "after"),
        ({"before": 0}, "before"),
        ({"order": "up"}, "order"),
        ({"type": "nope"}, "type"),
    ):
        assert_error(await client.get("/api/projects/p1/events", params=params), 422, "invalid_data", field)


async def test_ack_and_cursors(server: RunningServer, client: httpx.AsyncClient) -> None:
    """Acks are cumulative and never move back; seq > head is 422 invalid_ack; admins read cursors."""
    await create(client)
    for _ in range(5):
        await publish(client, "p1", "agent_run_progress", RUN)
    bob = server.headers(server.token(user="bob", projects=["p1"], scopes=("subscribe",)))
    url = "/api/projects/p1/ack"
    assert (await client.post(url, json={"clientId": "tab-1", "seq": 3}, headers=bob)).json() == {"seq": 3}
    assert (await client.post(url, json={"clientId": "tab-1", "seq": 2}, headers=bob)).json() == {"seq": 3}
    assert (await client.post(url, json={"clientId": "tab-1", "seq": 5}, headers=bob)).json() == {"seq": 5}
    assert (await client.post(url, json={"clientId": "tab-2", "seq": 0}, headers=bob)).json() == {"seq": 0}
    assert_error(await client.post(url, json={"clientId": "tab-1", "seq": 6}, headers=bob), 422, "invalid_ack", "seq")
    assert_error(await client.post(url, json={"clientId": "tab-1", "seq": -1}, headers=bob), 422, "invalid_data", "seq")
    assert_error(await client.post(url, json={"clientId": "", "seq": 1}, headers=bob), 422, "invalid_data", "clientId")
    assert_error(await client.post(url, json={"seq": 1}, headers=bob), 422, "invalid_data", "clientId")
    assert_error(await client.post(url, json={"clientId": "c", "seq": "1"}, headers=bob), 422, "invalid_data", "seq")
    assert (await client.post(url, json={"clientId": "tab-1", "seq": 4})).json() == {"seq": 4}  # alice's own

    r = await client.get("/api/projects/p1/cursors")
    cursors = r.json()["cursors"]
    assert [(c["user"], c["clientId"], c["seq"]) for c in cursors] == [
        ("alice", "tab-1", 4),
        ("bob", "tab-1", 5),
        ("bob", "tab-2", 0),
    ]
    assert all(c["updatedAt"].endswith("Z") for c in cursors)


async def test_unknown_routes_and_methods(client: httpx.AsyncClient) -> None:
    """Unknown routes are 404 and wrong methods 405, both with the JSON error body."""
    assert_error(await client.get("/api/nope"), 404, "not_found")
    assert_error(await client.post("/api/nope/deeper", json={}), 404, "not_found")
    assert_error(await client.delete("/api/projects"), 405, "method_not_allowed")
    assert_error(await client.put("/api/projects/p1/events", json={}), 405, "method_not_allowed")


async def test_openapi_documents_every_route(client: httpx.AsyncClient) -> None:
    """The OpenAPI document lists the API and the request body schemas."""
    doc = (await client.get("/api/openapi.json")).json()
    paths = doc["paths"]
    for path in (
        "/healthz",
        "/api/projects",
        "/api/projects/{project_id}/events",
        "/api/projects/{project_id}/cursors",
        "/api/projects/{project_id}/ack",
    ):
        assert path in paths
    schemas = doc["components"]["schemas"]
    assert {"PublishRequest", "ProjectCreate", "AckRequest", "Event", "ErrorBody"} <= set(schemas)
    body = paths["/api/projects/{project_id}/events"]["post"]["requestBody"]
    assert body["content"]["application/json"]["schema"]["$ref"] == "#/components/schemas/PublishRequest"


async def test_dashboard_placeholder_when_not_built(client: httpx.AsyncClient) -> None:
    """Without a built frontend, `/` explains how to build it instead of failing."""
    r = await client.get("/")
    assert r.status_code == 200 and "make run" in r.text


async def test_database_outage_is_503_and_recovers(
    server: RunningServer, client: httpx.AsyncClient, pg_url: str, database_url: str
) -> None:
    """With the database unreachable, publishes and /healthz answer 503 `unavailable` within seconds
    (nothing is written); once it is back, the same publish succeeds."""
    import time
    from urllib.parse import urlsplit

    import asyncpg

    from service import db
    from tests.conftest import timeout

    await create(client)
    name = urlsplit(database_url).path.lstrip("/")
    admin = await asyncpg.connect(db.asyncpg_dsn(pg_url))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name)
        started = time.monotonic()
        r = await publish(client, "p1", "agent_run_progress", RUN, messageId="during-outage")
        assert_error(r, 503, "unavailable")
        assert r.headers.get("retry-after") == "1"
        assert time.monotonic() - started < timeout(6)
        assert_error(await client.get("/healthz"), 503, "unavailable")
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()
    r = await publish(client, "p1", "agent_run_progress", RUN, messageId="during-outage")
    assert r.status_code == 201 and r.json()["seq"] == 1


async def test_cors_only_for_allowed_origins(database_url: str, tmp_path: Any) -> None:
    """CORS answers only the origins in HERALD_ALLOWED_ORIGINS, never `*`, never with credentials."""
    from tests.conftest import make_settings, start_server, stop_server

    running, task = await start_server(make_settings(database_url, tmp_path, allowed_origins="https://dash.example"))
    try:
        async with httpx.AsyncClient(base_url=running.base_url) as c:
            preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
            ok = await c.options("/api/projects", headers={"Origin": "https://dash.example", **preflight})
            assert ok.headers["access-control-allow-origin"] == "https://dash.example"
            assert "access-control-allow-credentials" not in ok.headers
            bad = await c.options("/api/projects", headers={"Origin": "https://evil.example", **preflight})
            assert "access-control-allow-origin" not in bad.headers
            r = await c.get("/healthz", headers={"Origin": "https://evil.example"})
            assert "access-control-allow-origin" not in r.headers
    finally:
        await stop_server(running, task)
