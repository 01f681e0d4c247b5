"""GitHub's signature and the mapping of GitHub's payloads to Herald's events, without a server.

The octokit examples, end to end over HTTP, are in tests/api/test_webhooks.py; these are the cases
those examples do not reach (merged pulls, every commit state, waiting runs, values outside our enums).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from service import webhooks
from service.config import load_settings
from service.messages import InvalidData, event_data

PR: dict[str, Any] = {
    "action": "closed",
    "pull_request": {
        "number": 7,
        "title": "Add Herald",
        "html_url": "https://github.com/octo/demo/pull/7",
        "user": {"login": "octocat"},
        "head": {"sha": "abc123"},
        "merged": False,
    },
    "repository": {"full_name": "octo/demo"},
}


def run(kind: str, status: Any, conclusion: Any = None, **extra: Any) -> dict[str, Any]:
    """A minimal check_run, check_suite or workflow_run payload."""
    body: dict[str, Any] = {
        "name": "ci",
        "status": status,
        "conclusion": conclusion,
        "html_url": "https://github.com/octo/demo/runs/1",
        "pull_requests": [{"number": 7}, {"number": 8}],
        "head_sha": "abc123",
        "app": {"name": "GitHub Actions"},
        **extra,
    }
    return {"action": "completed", kind: body, "workflow": {"name": "tests"}, "repository": {"full_name": "octo/demo"}}


def mapped(event: str, payload: dict[str, Any]) -> dict[str, Any]:
    type, data = webhooks.to_event(event, payload)
    return {"type": type, **event_data(type, data)}


def test_githubs_signature_test_vector() -> None:
    """The example of GitHub's "Validating webhook deliveries" page checks, and signing reproduces it."""
    secret, body = "It's a Secret to Everybody", b"Hello, World!"
    header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
    assert webhooks.verify_signature(secret, body, header)
    assert webhooks.sign(secret, body) == header


def test_signature_refusals() -> None:
    """A missing, wrong, truncated, sha1 or non-ASCII signature, or an empty secret, never checks."""
    secret, body = "s3cret", b'{"zen":"x"}'
    good = webhooks.sign(secret, body)
    assert webhooks.verify_signature(secret, body, good)
    for header in (None, "", good[:-1], good.upper(), good.removeprefix("sha256="), "sha1=" + good[7:], good + "é"):
        assert not webhooks.verify_signature(secret, body, header), header
    assert not webhooks.verify_signature(secret, body + b" ", good)
    assert not webhooks.verify_signature("other", body, good)
    assert not webhooks.verify_signature("", body, webhooks.sign("", body))


def test_blank_secret_disables_webhooks(tmp_path: Path) -> None:
    """`GITHUB_WEBHOOK_SECRET=` (docker-compose's default) means unset, not an empty HMAC key."""
    assert load_settings(data_dir=tmp_path, github_webhook_secret="  ").github_webhook_secret is None
    assert load_settings(data_dir=tmp_path, github_webhook_secret="k").github_webhook_secret == "k"


def test_pull_request_actions() -> None:
    """`closed` with merged: true is `merged`; other actions pass as GitHub names them; reviews get `review_`."""
    merged = copy.deepcopy(PR)
    merged["pull_request"]["merged"] = True
    assert mapped("pull_request", merged) == {
        "type": "pr_notification",
        "action": "merged",
        "number": 7,
        "title": "Add Herald",
        "url": "https://github.com/octo/demo/pull/7",
        "repo": "octo/demo",
        "author": "octocat",
        "headSha": "abc123",
    }
    assert mapped("pull_request", PR)["action"] == "closed"
    assert mapped("pull_request", {**PR, "action": "auto_merge_enabled"})["action"] == "auto_merge_enabled"
    review = {**PR, "action": "submitted", "review": {"state": "approved"}}
    assert mapped("pull_request_review", review)["action"] == "review_submitted"
    ghost = copy.deepcopy(PR)
    ghost["pull_request"]["user"] = None  # a deleted account
    assert "author" not in mapped("pull_request", ghost)


def test_commit_states() -> None:
    """A status's `pending` is in_progress; success, failure and error complete with that conclusion."""
    base = {"context": "ci/lint", "sha": "abc123", "target_url": None, "repository": {"full_name": "octo/demo"}}
    assert mapped("status", {**base, "state": "pending"}) == {
        "type": "validation_update",
        "name": "ci/lint",
        "status": "in_progress",
        "headSha": "abc123",
    }
    for state in ("success", "failure", "error"):
        data = mapped("status", {**base, "state": state, "target_url": "https://ci.example/1"})
        assert (data["status"], data["conclusion"], data["url"]) == ("completed", state, "https://ci.example/1")
    with pytest.raises(webhooks.Unmapped, match="'paused'"):
        webhooks.to_event("status", {**base, "state": "paused"})


def test_runs_and_their_waiting_states() -> None:
    """requested, waiting and pending are queued; the first listed pull request is prNumber."""
    for kind in ("check_run", "check_suite", "workflow_run"):
        for github, ours in (
            ("requested", "queued"),
            ("waiting", "queued"),
            ("pending", "queued"),
            ("queued", "queued"),
            ("in_progress", "in_progress"),
        ):
            data = mapped(kind, run(kind, github))
            assert data["status"] == ours and "conclusion" not in data and data["prNumber"] == 7, (kind, github)
    assert mapped("check_run", run("check_run", "completed", "timed_out")) == {
        "type": "validation_update",
        "name": "ci",
        "status": "completed",
        "conclusion": "timed_out",
        "url": "https://github.com/octo/demo/runs/1",
        "prNumber": 7,
        "headSha": "abc123",
    }
    suite = mapped("check_suite", run("check_suite", "completed", "startup_failure", pull_requests=[]))
    assert suite["name"] == "GitHub Actions" and "url" not in suite and "prNumber" not in suite
    assert mapped("workflow_run", run("workflow_run", "completed", "stale"))["name"] == "tests"


def test_values_outside_our_enums() -> None:
    """A null suite status follows its conclusion; an unknown conclusion is dropped; an unknown status is Unmapped."""
    assert mapped("check_suite", run("check_suite", None, "success"))["status"] == "completed"
    assert mapped("check_suite", run("check_suite", None))["status"] == "queued"
    data = mapped("check_run", run("check_run", "completed", "exploded"))
    assert data["status"] == "completed" and "conclusion" not in data
    with pytest.raises(webhooks.Unmapped, match="'sleeping'"):
        webhooks.to_event("check_run", run("check_run", "sleeping"))


def test_workflow_name_falls_back_to_the_runs() -> None:
    """Without a workflow object the run's own name is used."""
    payload = run("workflow_run", "queued")
    del payload["workflow"]
    assert mapped("workflow_run", payload)["name"] == "ci"


def test_what_is_not_recorded() -> None:
    """Other events, and payloads without a repository, are Unmapped; a missing field is named."""
    with pytest.raises(webhooks.Unmapped, match="'issues'"):
        webhooks.to_event("issues", PR)
    with pytest.raises(webhooks.Unmapped, match="repository"):
        webhooks.repository({"zen": "x"})
    with pytest.raises(webhooks.Unmapped, match="repository"):
        webhooks.to_event("pull_request", {k: v for k, v in PR.items() if k != "repository"})
    assert webhooks.repository(PR) == "octo/demo"
    broken = copy.deepcopy(PR)
    del broken["pull_request"]["number"]
    with pytest.raises(InvalidData) as exc:
        webhooks.to_event("pull_request", broken)
    assert exc.value.field == "payload.pull_request.number"
    with pytest.raises(InvalidData) as exc:  # present but of the wrong type: the schema names it
        mapped("pull_request", {**PR, "pull_request": {**PR["pull_request"], "number": "7"}})
    assert exc.value.field == "data.number"
    assert webhooks.Delivery("1", "guid").message_id == "gh:guid"
