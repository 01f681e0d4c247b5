"""GitHub webhooks: which deliveries are GitHub's, what they mean in Herald's terms, and appending each once.

GitHub signs every delivery with the hook's secret (`X-Hub-Signature-256`), retries a delivery that
timed out and lets anyone with access to the hook redeliver it by hand. So a delivery is believed only
when its signature checks, and is appended at most once: the delivery is recorded in
`webhook_deliveries` in the same transaction as its event, and the event's `messageId` is derived from
the delivery, so even a pruned record cannot make a redelivery append twice.

The mapping from GitHub's payloads to Herald's event data is pure and listed in docs/protocol.md
("Webhooks"); every value it produces still goes through the event's schema (`messages.event_data`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, get_args

import asyncpg

from . import db, eventlog
from .messages import REPO_PATTERN, Conclusion, InvalidData, ValidationStatus

logger = logging.getLogger("herald.webhooks")

MAX_BODY_BYTES = 5 * 1024 * 1024
"""GitHub caps payloads at 25 MB; real pull_request payloads pass 64 KiB, none we map comes near this."""

SIGNATURE_PREFIX = "sha256="


class Unmapped(Exception):
    """A delivery that carries nothing Herald records; the message says why (it is told to GitHub)."""


# --- the signature -----------------------------------------------------------------------------------


def sign(secret: str, body: bytes) -> str:
    """The `X-Hub-Signature-256` value GitHub sends for `body` signed with `secret`."""
    return SIGNATURE_PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(secret: str, body: bytes, header: str | None) -> bool:
    """Whether `header` is the signature of the raw `body` under `secret`.

    Compared in constant time, so the answer's timing does not tell a forger how much of a guess was
    right. As bytes: `compare_digest` refuses non-ASCII text, and a header may hold anything.
    """
    if not secret or header is None:
        return False
    return hmac.compare_digest(sign(secret, body).encode(), header.encode())


# --- GitHub's events as Herald's -----------------------------------------------------------------------

_CONCLUSIONS: frozenset[str] = frozenset(get_args(Conclusion))
_STATUSES: frozenset[str] = frozenset(get_args(ValidationStatus))
# GitHub's not-yet-started states. Herald's status says where a validation is, not why it waits.
_WAITING = {"requested": "queued", "waiting": "queued", "pending": "queued"}
# A commit status has no queue: `pending` is GitHub's only not-finished state, and it is running.
_COMMIT_STATE = {
    "pending": ("in_progress", None),
    "success": ("completed", "success"),
    "failure": ("completed", "failure"),
    "error": ("completed", "error"),
}


def _at(payload: Mapping[str, Any], path: str, *, required: bool = True) -> Any:
    """The value at dotted `path`; InvalidData (field `payload.<path>`) when required and missing or null."""
    value: Any = payload
    for key in path.split("."):
        value = value.get(key) if isinstance(value, Mapping) else None
        if value is None:
            break
    if value is None and required:
        raise InvalidData(f"payload.{path}: missing from GitHub's payload", f"payload.{path}")
    return value


def _first_pr_number(pull_requests: Any) -> Any:
    # GitHub lists the pull requests whose head is the commit; the first is the one a dashboard shows.
    if isinstance(pull_requests, list) and pull_requests and isinstance(pull_requests[0], Mapping):
        return pull_requests[0].get("number")
    return None


def _status(event: str, value: Any, conclusion: Any) -> Any:
    if value is None:  # check_suite.status may be null; a conclusion means it finished
        return "completed" if conclusion is not None else "queued"
    if not isinstance(value, str) or value in _STATUSES:
        return value  # the schema refuses a non-string with the field's name
    if value in _WAITING:
        return _WAITING[value]
    raise Unmapped(f"{event} status {value!r} is not one Herald knows")


def _conclusion(event: str, value: Any) -> Any:
    if not isinstance(value, str) or value in _CONCLUSIONS:
        return value  # None, a known conclusion, or a non-string the schema refuses
    # A conclusion GitHub adds later must not cost the whole event: it still says the check finished.
    logger.warning("dropping %s conclusion %r, which Herald's schema does not list", event, value)
    return None


def _pull_request_data(payload: Mapping[str, Any], action: str) -> dict[str, Any]:
    return {
        "action": action,
        "number": _at(payload, "pull_request.number"),
        "title": _at(payload, "pull_request.title"),
        "url": _at(payload, "pull_request.html_url"),
        "repo": _at(payload, "repository.full_name"),
        "author": _at(payload, "pull_request.user.login", required=False),
        "headSha": _at(payload, "pull_request.head.sha", required=False),
    }


def _pull_request(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    action = _at(payload, "action")
    if action == "closed" and _at(payload, "pull_request.merged", required=False) is True:
        action = "merged"
    return "pr_notification", _pull_request_data(payload, action)


def _pull_request_review(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    return "pr_notification", _pull_request_data(payload, f"review_{_at(payload, 'action')}")


def _run(event: str, run: str, name: Any, url: Any, payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """A check run, check suite or workflow run: they share their status, conclusion, PRs and head."""
    conclusion = _conclusion(event, _at(payload, f"{run}.conclusion", required=False))
    return "validation_update", {
        "name": name,
        "status": _status(event, _at(payload, f"{run}.status", required=False), conclusion),
        "conclusion": conclusion,
        "url": url,
        "prNumber": _first_pr_number(_at(payload, f"{run}.pull_requests", required=False)),
        "headSha": _at(payload, f"{run}.head_sha", required=False),
    }


def _check_run(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    name = _at(payload, "check_run.name")
    return _run("check_run", "check_run", name, _at(payload, "check_run.html_url", required=False), payload)


def _check_suite(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    # A suite has no page of its own on github.com (its `url` is the REST API's): no url rather than that.
    return _run("check_suite", "check_suite", _at(payload, "check_suite.app.name"), None, payload)


def _workflow_run(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    # `workflow_run.name` is the run's name, empty in many payloads; the workflow's is the stable one.
    name = _at(payload, "workflow.name", required=False) or _at(payload, "workflow_run.name")
    url = _at(payload, "workflow_run.html_url", required=False)
    return _run("workflow_run", "workflow_run", name, url, payload)


def _commit_status(payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    state = _at(payload, "state")
    if not isinstance(state, str) or state not in _COMMIT_STATE:
        raise Unmapped(f"status state {state!r} is not one Herald knows")
    status, conclusion = _COMMIT_STATE[state]
    return "validation_update", {
        "name": _at(payload, "context"),
        "status": status,
        "conclusion": conclusion,
        "url": _at(payload, "target_url", required=False),
        "headSha": _at(payload, "sha", required=False),
    }


_MAPPINGS: dict[str, Callable[[Mapping[str, Any]], tuple[str, dict[str, Any]]]] = {
    "pull_request": _pull_request,
    "pull_request_review": _pull_request_review,
    "check_run": _check_run,
    "check_suite": _check_suite,
    "status": _commit_status,
    "workflow_run": _workflow_run,
}
EVENTS: frozenset[str] = frozenset(_MAPPINGS)
"""The `X-GitHub-Event` values Herald records; `ping` is answered, every other one is ignored."""

# GitHub signs the body, not the `X-GitHub-Event` header: a signed body re-sent under another event name
# must not be read as that event. Each event's payload has its own object at the top, and none of the
# others': a pull_request body under `pull_request_review` has no `review`, and is refused.
_OWN = {
    "pull_request": "pull_request",
    "pull_request_review": "review",
    "check_run": "check_run",
    "check_suite": "check_suite",
    "workflow_run": "workflow_run",
    "status": "context",
}


# The objects other events put at the top of their payloads (those Herald maps, and those it ignores
# but a hook may still be subscribed to): a mapped event's payload holds none of them but its own.
_FOREIGN = frozenset(
    {"review", "check_run", "check_suite", "workflow_run", "workflow_job", "comment", "thread", "deployment",
     "deployment_status", "deployment_review", "issue", "release", "discussion", "merge_group",
     "approver", "reviewers", "workflow_job_run", "workflow_job_runs"}  # deployment reviews
)  # fmt: skip

# GitHub's own action names: a body of another event under one of these names has an action they lack.
_ACTIONS = {
    "pull_request": frozenset(
        {
            "assigned",
            "auto_merge_disabled",
            "auto_merge_enabled",
            "closed",
            "converted_to_draft",
            "demilestoned",
            "dequeued",
            "edited",
            "enqueued",
            "labeled",
            "locked",
            "milestoned",
            "opened",
            "ready_for_review",
            "reopened",
            "review_request_removed",
            "review_requested",
            "synchronize",
            "unassigned",
            "unlabeled",
            "unlocked",
        }
    ),
    "pull_request_review": frozenset({"submitted", "edited", "dismissed"}),
}


def _check_shape(event: str, payload: Mapping[str, Any]) -> None:
    own = _OWN[event]
    if not isinstance(payload.get(own), dict if own != "context" else str):
        raise InvalidData(f"payload.{own}: a {event} delivery carries it; this one does not", f"payload.{own}")
    foreign = sorted(key for key in _FOREIGN - {own} if key in payload)
    if foreign:
        raise InvalidData(
            f"payload.{foreign[0]}: a {event} delivery does not carry it (is the event header right?)",
            f"payload.{foreign[0]}",
        )
    actions = _ACTIONS.get(event)
    if actions is not None and payload.get("action") not in actions:
        # Not refused: GitHub adds actions now and then. Not recorded either: Herald cannot tell a new
        # action from another event's body re-sent under this event's name.
        raise Unmapped(f"{payload.get('action')!r} is not a {event} action Herald knows")


def to_event(event: str, payload: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The Herald event type and data for GitHub's `event` (the `X-GitHub-Event` header) and payload.

    Raises Unmapped for an event or a status Herald does not record, or a payload naming no
    repository; InvalidData naming the `payload.…` field when the payload lacks one the mapping
    needs. The data is not yet validated (null fields are still present): pass it through
    `messages.event_data`.
    """
    mapping = _MAPPINGS.get(event)
    if mapping is None:
        raise Unmapped(f"Herald does not record {event!r} events")
    repository(payload)  # an organization's delivery names no repository, so no project: not recorded
    _check_shape(event, payload)
    return mapping(payload)


def repository(payload: Mapping[str, Any]) -> str:
    """The `owner/name` a delivery is about, which picks the project; Unmapped when it names none."""
    name = _at(payload, "repository.full_name", required=False)
    if not isinstance(name, str) or not name:
        raise Unmapped("the payload names no repository (repository.full_name)")
    if not re.fullmatch(REPO_PATTERN, name):  # never send the database what no project's repo can be
        raise InvalidData(
            f"payload.repository.full_name: {name[:100]!r} is not OWNER/NAME", "payload.repository.full_name"
        )
    return name


# --- appending once ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """One delivery as GitHub names it: the hook it came from and its GUID (the same on a redelivery)."""

    hook_id: str
    delivery_id: str
    body_sha256: bytes = b""

    @property
    def message_id(self) -> str:
        """The messageId of the delivery's event: a redelivery names the same one."""
        return f"gh:{self.delivery_id}"


@dataclass(frozen=True, slots=True)
class Appended:
    """Where a delivery's event is in the log; `duplicate` when an earlier delivery appended it."""

    project_id: str
    seq: int | None
    message_id: str
    duplicate: bool


@dataclass(frozen=True, slots=True)
class Hook:
    """A project as its webhooks see it: the repository it follows and its own secret, if any."""

    project_id: str
    repo: str | None
    secret: str | None


async def project_for_repo(conn: asyncpg.Connection, repo: str) -> Hook | None:
    """The project whose `repo` is `repo`, compared as GitHub does, case-insensitively."""
    row = await conn.fetchrow("SELECT id, repo, webhook_secret FROM projects WHERE lower(repo) = lower($1)", repo)
    return Hook(row["id"], row["repo"], row["webhook_secret"]) if row else None


async def project_hook(conn: asyncpg.Connection, project_id: str) -> Hook | None:
    row = await conn.fetchrow("SELECT id, repo, webhook_secret FROM projects WHERE id = $1", project_id)
    return Hook(row["id"], row["repo"], row["webhook_secret"]) if row else None


# Either key makes a copy: the delivery id (GitHub's redelivery) or the body (a replay under a new id).
_CLAIM = """
INSERT INTO webhook_deliveries (hook_id, delivery_id, project_id, body_sha256) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING RETURNING project_id
"""

_ORIGINAL = """
SELECT project_id, delivery_id FROM webhook_deliveries
WHERE (hook_id = $1 AND delivery_id = $2) OR (project_id = $3 AND body_sha256 = $4)
LIMIT 1
"""


async def append_once(
    conn: asyncpg.Connection,
    *,
    delivery: Delivery,
    project_id: str,
    type: str,
    data: dict[str, Any],
    notify: bool = True,
) -> Appended:
    """Append the delivery's event to `project_id`, unless this delivery was appended before.

    Atomic: the delivery's record and its event commit together or not at all, so a delivery whose
    append failed can be redelivered. Concurrent copies of one delivery are serialized by the record's
    key: the second waits for the first to commit and then appends nothing. `data` must be validated.
    Raises log.ProjectNotFound when the project is gone.
    """
    key = (delivery.hook_id, delivery.delivery_id, project_id, delivery.body_sha256 or None)
    async with conn.transaction():
        try:
            claimed = await conn.fetchval(_CLAIM, *key)
        except asyncpg.ForeignKeyViolationError:
            raise eventlog.ProjectNotFound(project_id) from None
        if claimed is None:
            row = await conn.fetchrow(_ORIGINAL, *key)
            original = Delivery(delivery.hook_id, row["delivery_id"])
            event = await eventlog.get_by_message_id(conn, row["project_id"], original.message_id)
            return Appended(row["project_id"], event.seq if event else None, original.message_id, duplicate=True)
        stored, created = await eventlog.append(
            conn, project_id=project_id, type=type, data=data, message_id=delivery.message_id, notify=notify
        )
    return Appended(project_id, stored.seq, delivery.message_id, duplicate=not created)


async def prune_deliveries(conn: asyncpg.Connection, *, older_than: timedelta) -> int:
    """Delete the records of deliveries received longer ago than `older_than` (HERALD_WEBHOOK_DEDUPE_DAYS)
    whose event a prune has removed from the log; returns how many were deleted.

    A record is the guard against a replay of its signed body under a new delivery id (docs/security.md),
    so it lives as long as its event (its messageId, `gh:<delivery id>`, in event_ids) and at least
    `older_than`: GitHub redelivers (on a timeout, or by hand) only deliveries of the past 3 days, so
    within the window a redelivery finds its record even for a project that keeps few events. Deletes in
    batches, each its own statement (db.delete_in_batches)."""
    return await db.delete_in_batches(
        conn,
        "DELETE FROM webhook_deliveries WHERE ctid = ANY(ARRAY(SELECT d.ctid FROM webhook_deliveries d "
        "WHERE d.received_at < now() - $1::interval AND NOT EXISTS (SELECT 1 FROM event_ids i "
        "WHERE i.project_id = d.project_id AND i.message_id = 'gh:' || d.delivery_id) LIMIT $2))",
        older_than,
    )
