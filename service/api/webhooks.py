"""`POST /webhooks/github`: GitHub's deliveries, signed with the hook's secret, appended once each.

A thin route over webhooks.py. The checks run cheapest and least trusting first: webhooks enabled
(404), size (413, before the body is all read), signature (401), and only a signed body is parsed,
mapped and sent to the database, so an unsigned request costs one HMAC and writes nothing. The
answers and every mapping choice are in docs/protocol.md ("Webhooks").
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any
from urllib.parse import parse_qs

import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from .. import eventlog, webhooks
from ..codes import ErrorCode
from ..db import Database
from ..messages import InvalidData, event_data, is_project_id
from .dependencies import DatabaseDep, SettingsDep
from .errors import ERRORS, ApiError
from .http import json_response, read_body

logger = logging.getLogger("herald.api.webhooks")

router = APIRouter()

_RESULT = {
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "status": {"enum": ["appended", "duplicate", "ignored", "pong"]},
                    "message": {"type": "string"},
                    "projectId": {"type": ["string", "null"]},
                    "seq": {"type": ["integer", "null"]},
                    "messageId": {"type": "string"},
                },
                "required": ["status", "message"],
            }
        }
    }
}


def parse_payload(body: bytes, content_type: str) -> dict[str, Any]:
    """The payload of either content type a GitHub hook can be set to: JSON, or a form's `payload` field."""
    raw: bytes | str = body
    if content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        fields = parse_qs(body.decode("utf-8", "replace"))
        if "payload" not in fields:
            raise ApiError(ErrorCode.INVALID_JSON, "a form-encoded delivery must carry its JSON in `payload`")
        raw = fields["payload"][0]
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ApiError(ErrorCode.INVALID_JSON, f"the payload is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ApiError(ErrorCode.INVALID_JSON, "the payload must be a JSON object")
    return payload


def _header(request: Request, name: str, *, max_length: int = 100) -> str:
    value = request.headers.get(name, "")
    if not value or len(value) > max_length or not value.isprintable():
        raise ApiError(ErrorCode.INVALID_DATA, f"{name}: expected 1 to {max_length} printable characters", field=name)
    return value


def _answer(status: str, message: str, *, code: int = 202, **fields: Any) -> Response:
    return json_response({"status": status, "message": message, **fields}, code)


_OPENAPI: dict[str, Any] = {
    "status_code": 202,
    "responses": {
        **ERRORS,
        200: {"description": "a `ping` (the hook works)", **_RESULT},
        202: {"description": "appended, a duplicate of an earlier delivery, or ignored (see `status`)", **_RESULT},
    },
    "openapi_extra": {
        "requestBody": {"required": True, "content": {"application/json": {"schema": {"type": "object"}}}},
        "parameters": [
            {"name": "X-Hub-Signature-256", "in": "header", "required": True, "schema": {"type": "string"}},
            {"name": "X-GitHub-Event", "in": "header", "required": True, "schema": {"type": "string"}},
            {"name": "X-GitHub-Delivery", "in": "header", "required": True, "schema": {"type": "string"}},
            {"name": "X-GitHub-Hook-ID", "in": "header", "required": False, "schema": {"type": "string"}},
        ],
    },
    "tags": ["webhooks"],
}


@router.post("/webhooks/github", **_OPENAPI)
async def github(request: Request, settings: SettingsDep, database: DatabaseDep) -> Response:
    """A GitHub delivery signed with the service-wide secret (GITHUB_WEBHOOK_SECRET): `pull_request`,
    `pull_request_review`, `check_run`, `check_suite`, `status` and `workflow_run` become events of the
    project whose `repo` is the payload's repository, unless that project has a secret of its own."""
    secret = settings.github_webhook_secret
    if secret is None:
        # Refusing beats accepting: without a secret nothing tells GitHub's deliveries from a forger's.
        raise ApiError(
            ErrorCode.NOT_FOUND,
            "GitHub webhooks are not enabled on this service: set GITHUB_WEBHOOK_SECRET, or give the project "
            "a webhook secret of its own and use /webhooks/github/PROJECT",
        )
    delivery, event, payload = await _signed(request, secret)
    if event == "ping":
        return await _ping(database, payload, None)
    type, data, repo = _mapped(event, payload)
    if type is None:
        return _answer("ignored", f"{data}; nothing was written")
    async with database.connection() as conn:
        hook = await webhooks.project_for_repo(conn, repo)
        if hook is None:
            return _answer("ignored", f"no project has repo {repo!r}; nothing was written")
        if hook.secret is not None:
            # Its own secret is the only one that may write into it: anyone with the service-wide one
            # could otherwise write into every project with a repository.
            return _answer(
                "ignored",
                f"project {hook.project_id!r} takes deliveries at /webhooks/github/{hook.project_id} "
                "(signed with its own secret) only; nothing was written",
            )
        return await _append(conn, delivery, hook.project_id, event, type, data, notify=database.notify)


@router.post("/webhooks/github/{project_id}", **_OPENAPI)
async def github_for_project(project_id: str, request: Request, database: DatabaseDep) -> Response:
    """A GitHub delivery for one project, signed with that project's own webhook secret. Its repository
    must be the project's `repo` (when the project has one)."""
    hook = None
    if is_project_id(project_id):
        async with database.connection() as conn:
            hook = await webhooks.project_hook(conn, project_id)
    if hook is None or hook.secret is None:
        raise ApiError(ErrorCode.NOT_FOUND, f"project {project_id!r} has no webhook secret of its own")
    delivery, event, payload = await _signed(request, hook.secret)
    if event == "ping":
        return await _ping(database, payload, hook)
    type, data, repo = _mapped(event, payload)
    if type is None:
        return _answer("ignored", f"{data}; nothing was written")
    if hook.repo is not None and repo.lower() != hook.repo.lower():
        raise ApiError(
            ErrorCode.INVALID_DATA,
            f"payload.repository.full_name: {repo!r} is not {project_id!r}'s repository ({hook.repo!r})",
            field="payload.repository.full_name",
        )
    async with database.connection() as conn:
        return await _append(conn, delivery, project_id, event, type, data, notify=database.notify)


async def _signed(request: Request, secret: str) -> tuple[webhooks.Delivery, str, dict[str, Any]]:
    """Size (413), signature (401), then the headers and the payload: nothing unsigned is parsed."""
    body = await read_body(request, webhooks.MAX_BODY_BYTES)
    if not webhooks.verify_signature(secret, body, request.headers.get("x-hub-signature-256")):
        raise ApiError(ErrorCode.UNAUTHORIZED, "missing or wrong X-Hub-Signature-256 for this body and secret")
    event = _header(request, "X-GitHub-Event")
    payload = parse_payload(body, request.headers.get("content-type", ""))
    delivery = webhooks.Delivery(
        hook_id=request.headers.get("x-github-hook-id", ""),
        delivery_id=_header(request, "X-GitHub-Delivery", max_length=120) if event != "ping" else "",
        body_sha256=hashlib.sha256(body).digest(),
    )
    return delivery, event, payload


def _mapped(event: str, payload: dict[str, Any]) -> tuple[str | None, Any, str]:
    """(type, data, repository), or (None, why, "") for a delivery Herald does not record."""
    try:
        type, data = webhooks.to_event(event, payload)
        repo = webhooks.repository(payload)
        return type, event_data(type, data), repo
    except webhooks.Unmapped as exc:
        return None, str(exc), ""
    except InvalidData as exc:
        raise ApiError(ErrorCode.INVALID_DATA, exc.message, field=exc.field) from None


async def _append(
    conn: Any,
    delivery: webhooks.Delivery,
    project_id: str,
    event: str,
    type: str,
    data: dict[str, Any],
    *,
    notify: bool,
) -> Response:
    try:
        result = await webhooks.append_once(
            conn, delivery=delivery, project_id=project_id, type=type, data=data, notify=notify
        )
    except eventlog.ProjectNotFound:
        return _answer("ignored", f"project {project_id!r} is gone; nothing was written")
    fields: dict[str, Any] = {"projectId": result.project_id, "seq": result.seq, "messageId": result.message_id}
    if result.duplicate:
        logger.info("GitHub delivery %s was appended before (%s)", delivery.delivery_id, result.message_id)
        return _answer("duplicate", "this delivery was appended before; nothing was appended", **fields)
    return _answer("appended", f"{event} appended as {type}", **fields)


async def _ping(database: Database, payload: dict[str, Any], hook: webhooks.Hook | None) -> Response:
    """GitHub's `ping` when a hook is created: say whether its repository reaches a project."""
    try:
        repo = webhooks.repository(payload)
    except webhooks.Unmapped:  # an organization's or an app's hook: each delivery names its repository
        project = hook.project_id if hook else None
        return _answer("pong", "the hook works; deliveries are routed by their repository", code=200, projectId=project)
    except InvalidData as exc:
        raise ApiError(ErrorCode.INVALID_DATA, exc.message, field=exc.field) from None
    own = hook
    if hook is None:
        async with database.connection() as conn:
            hook = await webhooks.project_for_repo(conn, repo)
    if hook is None:
        message = f"the hook works, but no project has repo {repo!r} yet: its deliveries will be ignored"
    elif hook.repo is not None and hook.repo.lower() != repo.lower():
        message = f"the hook works, but project {hook.project_id!r} follows {hook.repo!r}, not {repo!r}"
    elif own is None and hook.secret is not None:
        message = (
            f"the hook works, but project {hook.project_id!r} takes deliveries at /webhooks/github/{hook.project_id}"
        )
    else:
        message = f"the hook works; deliveries of {repo} go to project {hook.project_id!r}"
    return _answer("pong", message, code=200, projectId=hook.project_id if hook else None)
