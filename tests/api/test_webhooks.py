"""`POST /webhooks/github` over a real uvicorn and PostgreSQL, with GitHub's own examples (docs/protocol.md §10).

Signatures, redeliveries, routing by repository, sizes, and an event reaching a WebSocket subscriber.

The examples are the npm package @octokit/webhooks-examples, installed into tests/fixtures by
`make setup` (`npm ci` there); they are never copied into the repository. The expected events are
computed here from the payloads' fields, not by calling the mapping under test.
"""

from __future__ import annotations

import asyncio
import copy
import json
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import asyncpg
import httpx
import pytest

from service import webhooks
from service.config import Settings
from tests.conftest import RunningServer, make_settings, start_server, stop_server
from tests.helpers import open_client

GH_SECRET = "It's a Secret to Everybody"
EXAMPLES = Path(__file__).parent.parent / "fixtures" / "node_modules" / "@octokit" / "webhooks-examples"
MAPPED = ("pull_request", "pull_request_review", "check_run", "check_suite", "status", "workflow_run")


def octokit_examples(event: str) -> list[dict[str, Any]]:
    """Every distinct example payload of `event`, across github.com and each GHES version in the package."""
    indexes = sorted(EXAMPLES.glob("*/index.json"))
    if not indexes:
        pytest.fail(f"{EXAMPLES} is missing: run `make setup` (or `npm ci` in tests/fixtures)")
    seen: dict[str, dict[str, Any]] = {}
    for index in indexes:
        for webhook in json.loads(index.read_text(encoding="utf-8")):
            if webhook["name"] == event:
                for example in webhook["examples"]:
                    seen.setdefault(json.dumps(example, sort_keys=True), example)
    assert seen, f"no {event} examples in {EXAMPLES}"
    return list(seen.values())


def expected_event(event: str, p: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The event docs/protocol.md ("Webhooks") says a payload becomes, read off the payload directly."""
    repo = p["repository"]["full_name"]
    if event in ("pull_request", "pull_request_review"):
        pr = p["pull_request"]
        if event == "pull_request_review":
            action = f"review_{p['action']}"
        else:
            action = "merged" if p["action"] == "closed" and pr.get("merged") is True else p["action"]
        data = {
            "action": action,
            "number": pr["number"],
            "title": pr["title"],
            "url": pr["html_url"],
            "repo": repo,
            "author": (pr.get("user") or {}).get("login"),
            "headSha": pr["head"]["sha"],
        }
    elif event == "status":
        finished = p["state"] != "pending"
        data = {
            "name": p["context"],
            "status": "completed" if finished else "in_progress",
            "conclusion": p["state"] if finished else None,
            "url": p["target_url"],
            "headSha": p["sha"],
        }
    else:
        item = p[event]
        if event == "check_run":
            name = item["name"]
        elif event == "check_suite":
            name = item["app"]["name"]
        else:
            name = p["workflow"]["name"]
        waiting = item["status"] in ("requested", "waiting", "pending")
        data = {
            "name": name,
            "status": "queued" if waiting else item["status"],
            "conclusion": item["conclusion"],
            "url": None if event == "check_suite" else item["html_url"],
            "prNumber": item["pull_requests"][0]["number"] if item["pull_requests"] else None,
            "headSha": item["head_sha"],
        }
    kind = "pr_notification" if event.startswith("pull_request") else "validation_update"
    return kind, {k: v for k, v in data.items() if v is not None}


def project_id_for(repo: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", repo)


async def deliver(
    client: httpx.AsyncClient,
    event: str,
    payload: Any,
    *,
    delivery: str | None = None,
    hook_id: str = "4242",
    secret: str = GH_SECRET,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """Send one delivery as GitHub does: raw JSON body, signed, with the X-GitHub-* headers."""
    raw = body if body is not None else json.dumps(payload).encode()
    sent = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": hook_id,
        "X-Hub-Signature-256": webhooks.sign(secret, raw),
        "User-Agent": "GitHub-Hookshot/test",
        "Authorization": "",  # the client's bearer token must not be what lets a delivery in
        **(headers or {}),
    }
    return await client.post("/webhooks/github", content=raw, headers={k: v for k, v in sent.items() if v})


async def create(client: httpx.AsyncClient, pid: str, repo: str | None = None) -> None:
    r = await client.post("/api/projects", json={"id": pid, "name": pid, **({"repo": repo} if repo else {})})
    assert r.status_code == 201, r.text


async def events_of(client: httpx.AsyncClient, pid: str) -> list[dict[str, Any]]:
    r = await client.get(f"/api/projects/{pid}/events", params={"limit": 1000})
    assert r.status_code == 200, r.text
    events: list[dict[str, Any]] = r.json()["events"]
    return events


async def deliveries(conn: asyncpg.Connection) -> int:
    count: int = await conn.fetchval("SELECT count(*) FROM webhook_deliveries")
    return count


def assert_error(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and isinstance(body["message"], str) and body["message"], body


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path, github_webhook_secret=GH_SECRET)


@pytest.fixture
def pr_example() -> dict[str, Any]:
    """An opened pull_request from the octokit examples, rerouted to repo octo/demo."""
    example = next(e for e in octokit_examples("pull_request") if e["action"] == "opened")
    payload = copy.deepcopy(example)
    payload["repository"]["full_name"] = "octo/demo"
    return payload


@pytest.mark.parametrize("event", MAPPED)
async def test_every_octokit_example_becomes_its_event(client: httpx.AsyncClient, event: str) -> None:
    """Each example payload of the event type is appended (202) as the event its fields say, to its repo's project."""
    examples = octokit_examples(event)
    if event == "pull_request":  # the package has no merged close; make one from a close
        merged = copy.deepcopy(next(e for e in examples if e["action"] == "closed"))
        merged["pull_request"]["merged"] = True
        examples.append(merged)
    repos = {e["repository"]["full_name"] for e in examples}
    for repo in repos:  # stored in another case: routing compares repositories as GitHub does
        await create(client, project_id_for(repo), repo.swapcase())
    sent: dict[str, tuple[str, tuple[str, dict[str, Any]]]] = {}
    for example in examples:
        delivery = str(uuid.uuid4())
        r = await deliver(client, event, example, delivery=delivery)
        assert r.status_code == 202, (r.text, example)
        pid = project_id_for(example["repository"]["full_name"])
        assert r.json()["status"] == "appended" and r.json()["projectId"] == pid, r.text
        assert r.json()["messageId"] == f"gh:{delivery}"
        sent[f"gh:{delivery}"] = (pid, expected_event(event, example))
    stored = {e["messageId"]: e for pid in {p for p, _ in sent.values()} for e in await events_of(client, pid)}
    assert len(stored) == len(examples)
    for message_id, (pid, (kind, data)) in sent.items():
        event_json = stored[message_id]
        assert (event_json["projectId"], event_json["type"], event_json["data"]) == (pid, kind, data)
    if event == "pull_request":
        assert "merged" in {e["data"]["action"] for e in stored.values()}


async def test_ping(client: httpx.AsyncClient) -> None:
    """`ping` is 200 and tells whether the hook's repository reaches a project; it writes nothing."""
    pings = octokit_examples("ping")
    repo_ping = next(p for p in pings if "repository" in p)
    r = await deliver(client, "ping", repo_ping)
    assert r.status_code == 200 and r.json()["status"] == "pong" and r.json()["projectId"] is None, r.text
    await create(client, "hello", repo_ping["repository"]["full_name"])
    r = await deliver(client, "ping", repo_ping)
    assert r.status_code == 200 and r.json()["projectId"] == "hello", r.text
    org_ping = next(p for p in pings if "repository" not in p)
    r = await deliver(client, "ping", org_ping)
    assert r.status_code == 200 and r.json()["status"] == "pong", r.text
    assert await events_of(client, "hello") == []


async def test_signature_is_required(
    client: httpx.AsyncClient, conn: asyncpg.Connection, pr_example: dict[str, Any]
) -> None:
    """A missing signature, one under another secret, or one of another body is 401 and writes nothing."""
    await create(client, "demo", "octo/demo")
    body = json.dumps(pr_example).encode()
    for headers in (
        {"X-Hub-Signature-256": ""},
        {"X-Hub-Signature-256": webhooks.sign("not the secret", body)},
        {"X-Hub-Signature-256": webhooks.sign(GH_SECRET, body + b" ")},
        {"X-Hub-Signature-256": "sha1=" + webhooks.sign(GH_SECRET, body)[7:]},
    ):
        assert_error(await deliver(client, "pull_request", None, body=body, headers=headers), 401, "unauthorized")
    # The bearer token of an admin is no substitute for GitHub's signature.
    r = await client.post("/webhooks/github", content=body, headers={"X-GitHub-Event": "pull_request"})
    assert_error(r, 401, "unauthorized")
    assert await events_of(client, "demo") == [] and await deliveries(conn) == 0


async def test_redelivery_appends_once(
    client: httpx.AsyncClient, conn: asyncpg.Connection, pr_example: dict[str, Any]
) -> None:
    """The same (hook, delivery) appends once, even sent concurrently; another delivery appends again."""
    await create(client, "demo", "octo/demo")
    first = await deliver(client, "pull_request", pr_example, delivery="d-1")
    assert first.status_code == 202 and first.json()["status"] == "appended" and first.json()["seq"] == 1
    again = await deliver(client, "pull_request", pr_example, delivery="d-1")
    assert again.status_code == 202, again.text
    assert again.json() | {"message": ""} == {
        "status": "duplicate",
        "message": "",
        "projectId": "demo",
        "seq": 1,
        "messageId": "gh:d-1",
    }
    # Another delivery is another body (GitHub's bodies differ between events; the same body under a new
    # id is a replay: tests/api/test_webhook_forgery.py).
    second, third = copy.deepcopy(pr_example), copy.deepcopy(pr_example)
    second["pull_request"]["title"], third["pull_request"]["title"] = "second", "third"
    racing = await asyncio.gather(*(deliver(client, "pull_request", second, delivery="d-2") for _ in range(6)))
    assert sorted(r.json()["status"] for r in racing) == ["appended"] + ["duplicate"] * 5
    assert {r.json()["seq"] for r in racing} == {2}
    other = await deliver(client, "pull_request", third, delivery="d-3")
    assert other.json()["status"] == "appended" and other.json()["seq"] == 3
    assert [e["messageId"] for e in await events_of(client, "demo")] == ["gh:d-1", "gh:d-2", "gh:d-3"]
    assert await deliveries(conn) == 3


async def test_what_is_ignored(client: httpx.AsyncClient, conn: asyncpg.Connection, pr_example: dict[str, Any]) -> None:
    """An unknown repository and an unknown event type are 202 `ignored`, with a reason, and write nothing."""
    await create(client, "demo", "octo/demo")
    stranger = copy.deepcopy(pr_example)
    stranger["repository"]["full_name"] = "someone/else"
    for event, payload in (("pull_request", stranger), ("issues", pr_example), ("push", {"ref": "refs/heads/x"})):
        r = await deliver(client, event, payload)
        assert r.status_code == 202 and r.json()["status"] == "ignored", r.text
        assert "nothing was written" in r.json()["message"]
    assert "someone/else" in (await deliver(client, "pull_request", stranger)).json()["message"]
    assert await events_of(client, "demo") == [] and await deliveries(conn) == 0


async def test_sizes(client: httpx.AsyncClient, pr_example: dict[str, Any]) -> None:
    """A 1 MiB payload is appended; over 5 MiB is 413, by Content-Length and while streaming."""
    await create(client, "demo", "octo/demo")
    big = copy.deepcopy(pr_example)
    big["pull_request"]["body"] = "x" * (1024 * 1024)  # real pull_request payloads pass 64 KiB
    r = await deliver(client, "pull_request", big)
    assert r.status_code == 202 and r.json()["status"] == "appended", r.text
    too_big = b"x" * (webhooks.MAX_BODY_BYTES + 1)
    assert_error(await deliver(client, "pull_request", None, body=too_big), 413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit holds while reading
        for _ in range(6):
            yield b"x" * (1024 * 1024)

    headers = {"X-GitHub-Event": "pull_request", "X-Hub-Signature-256": "sha256=00", "Authorization": ""}
    r = await client.post("/webhooks/github", content=chunks(), headers=headers)
    assert_error(r, 413, "too_large")
    assert len(await events_of(client, "demo")) == 1


async def test_malformed_signed_deliveries(client: httpx.AsyncClient, pr_example: dict[str, Any]) -> None:
    """Signed but not JSON 400; lacking a field the mapping needs 422 naming it; no event header 422."""
    await create(client, "demo", "octo/demo")
    assert_error(await deliver(client, "pull_request", None, body=b"{not json"), 400, "invalid_json")
    assert_error(await deliver(client, "pull_request", [1, 2]), 400, "invalid_json")
    broken = copy.deepcopy(pr_example)
    del broken["pull_request"]["number"]
    r = await deliver(client, "pull_request", broken)
    assert_error(r, 422, "invalid_data")
    assert r.json()["field"] == "payload.pull_request.number"
    r = await deliver(client, "", pr_example)
    assert_error(r, 422, "invalid_data")
    assert r.json()["field"] == "X-GitHub-Event"
    assert await events_of(client, "demo") == []


async def test_form_encoded_delivery(client: httpx.AsyncClient, pr_example: dict[str, Any]) -> None:
    """A hook set to application/x-www-form-urlencoded (GitHub's other content type) works the same."""
    await create(client, "demo", "octo/demo")
    body = urlencode({"payload": json.dumps(pr_example)}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded"}
    r = await deliver(client, "pull_request", None, body=body, headers=headers)
    assert r.status_code == 202 and r.json()["status"] == "appended", r.text


async def test_disabled_without_a_secret(database_url: str, tmp_path: Path, pr_example: dict[str, Any]) -> None:
    """With no GITHUB_WEBHOOK_SECRET the endpoint refuses everything with 404, naming the variable."""
    running, task = await start_server(make_settings(database_url, tmp_path))
    try:
        async with httpx.AsyncClient(base_url=running.base_url) as client:
            r = await deliver(client, "pull_request", pr_example, secret="")
            assert_error(r, 404, "not_found")
            assert "GITHUB_WEBHOOK_SECRET" in r.json()["message"]
    finally:
        await stop_server(running, task)


async def test_subscriber_receives_the_webhooks_event(
    server: RunningServer, client: httpx.AsyncClient, pr_example: dict[str, Any]
) -> None:
    """End to end: GitHub's delivery reaches a WebSocket subscriber of the repository's project."""
    await create(client, "demo", "octo/demo")
    ws = await open_client(server)
    try:
        await ws.subscribe("demo")
        r = await deliver(client, "pull_request", pr_example, delivery="live-1")
        assert r.status_code == 202, r.text
        [event] = await ws.events("demo", 1)
        assert event["type"] == "pr_notification" and event["seq"] == 1 and event["messageId"] == "gh:live-1"
        assert event["data"] == expected_event("pull_request", pr_example)[1]
    finally:
        await ws.ws.close()
