"""Forged GitHub deliveries, as an adversarial review made them, are refused and leave the log untouched.

GitHub signs a delivery's body and nothing else: not `X-GitHub-Delivery`, not `X-GitHub-Event`, not
`X-GitHub-Hook-ID`, and not the URL it is sent to. Whoever holds one signed body can re-send it under
any of those; whoever holds the service-wide secret could sign for every project. Over a real uvicorn
and PostgreSQL, with GitHub's own examples (tests/api/test_webhooks.py, whose helpers these reuse).
The signatures are computed here, not by the module under test.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from service.config import Settings
from tests.api.test_webhooks import (
    GH_SECRET,
    MAPPED,
    assert_error,
    create,
    deliveries,
    events_of,
    expected_event,
    octokit_examples,
)
from tests.conftest import RunningServer, ServiceProcess, make_settings, start_server, stop_server, timeout

A_SECRET = "alpha's-own-hook-secret-Vd9Qx4Lm"  # project alpha's own: 16 to 200 characters


def hub_signature(secret: str, body: bytes) -> str:
    """`X-Hub-Signature-256` as GitHub computes it: HMAC-SHA256 of the raw body, in hex."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


async def post_delivery(
    github: httpx.AsyncClient,
    event: str,
    body: bytes,
    *,
    path: str = "/webhooks/github",
    secret: str = GH_SECRET,
    delivery: str | None = None,
    hook_id: str = "4242",
) -> httpx.Response:
    """One delivery of the raw `body`, signed with `secret`, to any hook URL (test_webhooks' `deliver`
    posts to the service-wide one only)."""
    headers = {
        "Content-Type": "application/json",
        "X-GitHub-Event": event,
        "X-GitHub-Delivery": delivery or str(uuid.uuid4()),
        "X-GitHub-Hook-ID": hook_id,
        "X-Hub-Signature-256": hub_signature(secret, body),
        "User-Agent": "GitHub-Hookshot/test",
    }
    return await github.post(path, content=body, headers=headers)


def example(event: str, repo: str, **match: Any) -> dict[str, Any]:
    """The first octokit example of `event` whose top-level fields equal `match`, rerouted to `repo`."""
    found = next(e for e in octokit_examples(event) if all(e.get(k) == v for k, v in match.items()))
    payload = copy.deepcopy(found)
    payload["repository"]["full_name"] = repo
    return payload


def body_of(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode()


def retitled(payload: dict[str, Any], title: str) -> dict[str, Any]:
    """Another pull request body, never delivered: a new title makes new bytes."""
    other = copy.deepcopy(payload)
    other["pull_request"]["title"] = title
    return other


async def log_of(client: httpx.AsyncClient, pid: str) -> tuple[int, list[str]]:
    """The project's head (`GET /api/projects`) and its events' messageIds (the history API)."""
    r = await client.get("/api/projects")
    assert r.status_code == 200, r.text
    head: int = next(p["head"] for p in r.json()["projects"] if p["id"] == pid)
    return head, [e["messageId"] for e in await events_of(client, pid)]


def assert_appended(r: httpx.Response, pid: str, seq: int, delivery: str) -> None:
    assert r.status_code == 202, r.text
    assert (r.json()["status"], r.json()["projectId"], r.json()["seq"], r.json()["messageId"]) == (
        "appended",
        pid,
        seq,
        f"gh:{delivery}",
    ), r.text


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, tmp_path, github_webhook_secret=GH_SECRET)


@pytest.fixture
async def github(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    """GitHub's side of the hook: no bearer token, only signatures."""
    async with httpx.AsyncClient(base_url=server.base_url, timeout=timeout(10)) as c:
        yield c


@pytest.fixture
def pr_example() -> dict[str, Any]:
    """An opened pull_request from the octokit examples, rerouted to repo octo/demo."""
    return example("pull_request", "octo/demo", action="opened")


async def test_a_replay_under_a_new_delivery_id_appends_nothing(
    client: httpx.AsyncClient, github: httpx.AsyncClient, conn: asyncpg.Connection, pr_example: dict[str, Any]
) -> None:
    """A signed body re-sent under a new delivery (or hook) id is a duplicate naming the original, even racing."""
    await create(client, "demo", "octo/demo")
    body = body_of(pr_example)
    assert_appended(await post_delivery(github, "pull_request", body, delivery="d-1"), "demo", 1, "d-1")
    for delivery, hook_id in (("d-2", "4242"), ("d-3", "9999")):  # the hook id is not signed either
        r = await post_delivery(github, "pull_request", body, delivery=delivery, hook_id=hook_id)
        assert r.status_code == 202, r.text
        assert r.json() | {"message": ""} == {
            "status": "duplicate",
            "message": "",
            "projectId": "demo",
            "seq": 1,
            "messageId": "gh:d-1",
        }
    assert await log_of(client, "demo") == (1, ["gh:d-1"])

    # Two copies of one new body under two delivery ids, at once: one appends, the other names it.
    appended = ["gh:d-1"]
    for n in range(5):  # a few rounds, so the copies meet in the database rather than one after another
        raw = body_of(retitled(pr_example, f"race {n}"))
        racing = await asyncio.gather(
            *(post_delivery(github, "pull_request", raw, delivery=f"r{n}-{copy_}") for copy_ in "ab")
        )
        answers = [r.json() for r in racing]
        assert [r.status_code for r in racing] == [202, 202], answers
        assert sorted(a["status"] for a in answers) == ["appended", "duplicate"], answers
        winner = next(a for a in answers if a["status"] == "appended")
        assert {(a["projectId"], a["seq"], a["messageId"]) for a in answers} == {
            ("demo", n + 2, winner["messageId"])
        }, answers
        appended.append(winner["messageId"])
    assert await log_of(client, "demo") == (6, appended)
    assert await deliveries(conn) == 6


async def test_a_signed_body_under_another_event_name_is_refused(
    client: httpx.AsyncClient, github: httpx.AsyncClient, conn: asyncpg.Connection, pr_example: dict[str, Any]
) -> None:
    """A signed body re-sent under another X-GitHub-Event is 422 naming the telling field; genuine ones append."""
    await create(client, "demo", "octo/demo")
    pr_body = body_of(pr_example)
    assert_appended(await post_delivery(github, "pull_request", pr_body, delivery="pr-1"), "demo", 1, "pr-1")
    review = example("pull_request_review", "octo/demo")
    check_run = example("check_run", "octo/demo")
    for event, body, field in (
        ("pull_request_review", pr_body, "payload.review"),  # this used to store a forged review_opened
        ("pull_request_review", body_of(retitled(pr_example, "never delivered")), "payload.review"),  # not a replay
        ("pull_request", body_of(review), "payload.review"),
        ("check_suite", body_of(check_run), "payload.check_suite"),
    ):
        r = await post_delivery(github, event, body)
        assert_error(r, 422, "invalid_data")
        assert r.json()["field"] == field, (event, r.text)
    assert await log_of(client, "demo") == (1, ["gh:pr-1"])
    assert await deliveries(conn) == 1

    # Each event type's genuine delivery still appends, the bodies refused above under their own names among them.
    refused = {"pull_request_review": review, "check_run": check_run}
    sent = [("pull_request", pr_example, "pr-1")]
    for event in (e for e in MAPPED if e != "pull_request"):
        payload = refused.get(event) or example(event, "octo/demo")
        r = await post_delivery(github, event, body_of(payload), delivery=f"g-{event}")
        assert_appended(r, "demo", len(sent) + 1, f"g-{event}")
        sent.append((event, payload, f"g-{event}"))
    stored = [(e["messageId"], e["type"], e["data"]) for e in await events_of(client, "demo")]
    assert stored == [(f"gh:{d}", *expected_event(event, payload)) for event, payload, d in sent]
    assert "review_opened" not in {data.get("action") for _, _, data in stored}


async def test_a_project_with_its_own_secret_takes_only_deliveries_signed_with_it(
    client: httpx.AsyncClient, github: httpx.AsyncClient, conn: asyncpg.Connection
) -> None:
    """A project's own secret closes it to the service-wide one, opens no other project, and is never shown."""
    r = await client.post(
        "/api/projects", json={"id": "alpha", "name": "alpha", "repo": "octo/alpha", "webhookSecret": A_SECRET}
    )
    assert r.status_code == 201, r.text
    answers = [r]
    await create(client, "beta", "octo/beta")  # no secret of its own: the service-wide one's
    about_a = example("pull_request", "octo/alpha", action="opened")
    about_b = example("pull_request", "octo/beta", action="opened")

    # The service-wide secret no longer writes into alpha; it still writes into beta.
    r = await post_delivery(github, "pull_request", body_of(about_a))
    assert r.status_code == 202 and r.json()["status"] == "ignored", r.text
    assert "/webhooks/github/alpha" in r.json()["message"] and "nothing was written" in r.json()["message"]
    answers.append(r)
    assert_appended(await post_delivery(github, "pull_request", body_of(about_b), delivery="b-1"), "beta", 1, "b-1")

    # Alpha's own hook, with alpha's own secret, about alpha's repository.
    r = await post_delivery(
        github, "pull_request", body_of(about_a), path="/webhooks/github/alpha", secret=A_SECRET, delivery="a-1"
    )
    assert_appended(r, "alpha", 1, "a-1")
    answers.append(r)

    # Alpha's secret about beta's repository: alpha's log is not a place for beta's news.
    r = await post_delivery(
        github, "pull_request", body_of(retitled(about_b, "via alpha")), path="/webhooks/github/alpha", secret=A_SECRET
    )
    assert_error(r, 422, "invalid_data")
    assert r.json()["field"] == "payload.repository.full_name", r.text
    answers.append(r)

    # The service-wide secret on alpha's hook; any secret on a hook that does not exist.
    fresh_a = body_of(retitled(about_a, "service-wide"))
    assert_error(
        await post_delivery(github, "pull_request", fresh_a, path="/webhooks/github/alpha"), 401, "unauthorized"
    )
    fresh_b = body_of(retitled(about_b, "no hook of its own"))
    for path, secret in (
        ("/webhooks/github/beta", GH_SECRET),
        ("/webhooks/github/beta", A_SECRET),
        ("/webhooks/github/nobody", GH_SECRET),
    ):
        r = await post_delivery(github, "pull_request", fresh_b, path=path, secret=secret)
        assert_error(r, 404, "not_found")
        answers.append(r)

    assert await log_of(client, "alpha") == (1, ["gh:a-1"])
    assert await log_of(client, "beta") == (1, ["gh:b-1"])
    assert await deliveries(conn) == 2
    for path in ("/api/projects", "/api/projects/alpha/events", "/api/projects/alpha/state"):
        r = await client.get(path)
        assert r.status_code == 200, r.text
        answers.append(r)
    assert [r.request.url.path for r in answers if A_SECRET in r.text] == []


async def test_without_the_service_wide_secret_a_projects_own_hook_still_works(
    database_url: str, tmp_path: Path
) -> None:
    """With no GITHUB_WEBHOOK_SECRET, /webhooks/github is 404 and /webhooks/github/ID takes ID's own secret."""
    cli = ServiceProcess(tmp_path / "cli", database_url)
    added = await asyncio.to_thread(
        cli.cli, "project", "add", "alpha", "--name", "alpha", "--repo", "octo/alpha", "--webhook-secret", A_SECRET
    )
    assert json.loads(added) == {"id": "alpha", "name": "alpha", "repo": "octo/alpha", "head": 0}
    running, task = await start_server(make_settings(database_url, tmp_path))
    try:
        async with (
            httpx.AsyncClient(base_url=running.base_url, timeout=timeout(10)) as github,
            httpx.AsyncClient(base_url=running.base_url, headers=running.headers(), timeout=timeout(10)) as client,
        ):
            body = body_of(example("pull_request", "octo/alpha", action="opened"))
            for secret in (A_SECRET, ""):
                r = await post_delivery(github, "pull_request", body, secret=secret)
                assert_error(r, 404, "not_found")
                assert "GITHUB_WEBHOOK_SECRET" in r.json()["message"]
            assert await log_of(client, "alpha") == (0, [])
            r = await post_delivery(
                github, "pull_request", body, path="/webhooks/github/alpha", secret=A_SECRET, delivery="a-1"
            )
            assert_appended(r, "alpha", 1, "a-1")
            assert await log_of(client, "alpha") == (1, ["gh:a-1"])
    finally:
        await stop_server(running, task)


IGNORED_EVENTS = ("pull_request_review_comment", "pull_request_review_thread", "deployment", "deployment_review")


async def test_no_body_of_an_ignored_event_passes_as_a_recorded_one(
    github: httpx.AsyncClient, client: httpx.AsyncClient
) -> None:
    """Every octokit example of the events Herald ignores (review comments and threads, deployments
    and their reviews: bodies GitHub signs if the hook is subscribed to them), re-sent under each
    event name Herald records, appends nothing: refused by its shape (422) or not recorded (202
    ignored)."""
    await create(client, "demo", "octo/demo")
    tried = 0
    for source in IGNORED_EVENTS:
        for payload in octokit_examples(source):
            rerouted = copy.deepcopy(payload)
            rerouted.setdefault("repository", {})["full_name"] = "octo/demo"
            body = body_of(rerouted)
            for event in ("pull_request", "pull_request_review", "check_run", "check_suite", "workflow_run", "status"):
                r = await post_delivery(github, event, body)
                tried += 1
                assert r.status_code == 422 or r.json()["status"] == "ignored", (source, event, r.text)
    assert tried >= 6 * 15  # every example of the four events, under each of the six names
    assert await log_of(client, "demo") == (0, [])
