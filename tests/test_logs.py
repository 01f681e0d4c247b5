"""The service's log lines (service/logs.py): timestamped text by default, JSON on request, with the
request and connection ids, and never a token."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import signal
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import connect

from service import auth, logs
from tests.conftest import SECRET, ServiceProcess, timeout

ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


async def exercise(proc: ServiceProcess, token: str) -> str:
    """Requests whose lines the tests look for: a health check with a proxy's request id, a call with
    `token` in its query string, and a WebSocket authenticated by its URL. Returns the WebSocket's
    connection id."""
    async with httpx.AsyncClient(base_url=proc.base_url, timeout=timeout(10)) as client:
        forwarded = {"X-Request-ID": "proxy-req-1", "X-Forwarded-For": "6.6.6.6, 198.51.100.7"}
        health = await client.get("/healthz", headers=forwarded)
        assert health.headers["x-request-id"] == "proxy-req-1"
        listed = await client.get("/api/projects", params={"token": token})
        assert listed.status_code in (200, 401)  # either way its access line quotes the URL
        created = await client.post(
            "/api/projects", json={"id": "p1", "name": "p1"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert created.status_code == 201, created.text
        async with client.stream("GET", "/api/projects/p1/stream", params={"token": token}) as stream:
            assert stream.status_code == 200
            async for _ in stream.aiter_lines():
                break  # the stream is open: its first line (the retry field) arrived
        async with connect(f"{proc.ws_url}?token={token}&clientId=tab-1") as ws:
            assert ws.response is not None
            assert re.fullmatch(r"[0-9a-f]{32}", ws.response.headers["x-request-id"])
            welcome = json.loads(await asyncio.wait_for(ws.recv(), timeout(5)))
    return str(welcome["connectionId"])


def ended_lines(proc: ServiceProcess, token: str) -> list[str]:
    proc.stop(signal.SIGTERM)
    text = proc.log_file.read_text()
    assert token not in text and token.split(".")[2] not in text
    return [line for line in text.splitlines() if line.strip()]


async def test_json_lines_carry_timestamp_ids_and_no_token(database_url: str, tmp_path: Path) -> None:
    """With HERALD_LOG_FORMAT=json every line the server writes is one JSON object with timestamp,
    level, logger and message; a request's lines carry its id (a trusted proxy's X-Request-ID when it
    sent one), a WebSocket's lines its connection id; a token in a URL appears nowhere."""
    proc = ServiceProcess(
        tmp_path / "data", database_url, serve_args=(), HERALD_LOG_FORMAT="json", HERALD_TRUSTED_PROXIES="127.0.0.1"
    )
    await asyncio.to_thread(proc.start)
    token = auth.issue(SECRET, user="alice", projects="*", scopes=["admin"])
    try:
        connection_id = await exercise(proc, token)
        await asyncio.sleep(0.3)  # the WebSocket's last line is written as its handler ends
    finally:
        lines = await asyncio.to_thread(ended_lines, proc, token)
    records: list[dict[str, Any]] = [json.loads(line) for line in lines]  # every line is JSON
    for record in records:
        assert {"timestamp", "level", "logger", "message", "request_id", "connection_id"} <= record.keys(), record
        assert ISO_UTC.fullmatch(record["timestamp"]), record
    health = [r for r in records if r["logger"] == "uvicorn.access" and "/healthz" in r["message"]]
    (proxied,) = [r for r in health if r["request_id"] == "proxy-req-1"]
    assert proxied["message"].startswith("198.51.100.7:0 - ")  # the client nginx saw, not nginx
    assert all(r["request_id"] for r in health)  # the others were given ids of their own
    quoted = [r for r in records if "/api/projects?token=" in r["message"]]
    assert quoted and all("token=***" in r["message"] for r in quoted)
    accepted = [r for r in records if "WebSocket /ws" in r["message"] and "[accepted]" in r["message"]]
    assert accepted and "token=***" in accepted[0]["message"]
    ended = [r for r in records if r["logger"] == "herald.api.websocket" and "ended after" in r["message"]]
    assert [r["connection_id"] for r in ended] == [connection_id]
    assert ended[0]["request_id"] == accepted[0]["request_id"]  # one request id for the WebSocket's lines
    (stream,) = [r for r in records if r["logger"] == "herald.api.sse" and "ended after" in r["message"]]
    assert re.fullmatch(r"[0-9a-f]{32}", stream["connection_id"]) and stream["connection_id"] != connection_id
    (opened,) = [r for r in records if "/api/projects/p1/stream?token=***" in r["message"]]
    assert stream["request_id"] == opened["request_id"]


async def test_text_lines_are_timestamped(database_url: str, tmp_path: Path) -> None:
    """The default text lines start with an ISO 8601 UTC timestamp and end with the ids they have."""
    proc = ServiceProcess(tmp_path / "data", database_url, serve_args=(), HERALD_TRUSTED_PROXIES="127.0.0.1")
    await asyncio.to_thread(proc.start)
    token = auth.issue(SECRET, user="alice", projects="*", scopes=["admin"])
    try:
        connection_id = await exercise(proc, token)
        await asyncio.sleep(0.3)
    finally:
        lines = await asyncio.to_thread(ended_lines, proc, token)
    for line in lines:
        assert ISO_UTC.match(line), line
    assert any(line.endswith("[request=proxy-req-1]") and "/healthz" in line for line in lines)
    ended = [line for line in lines if "herald.api.websocket" in line and "ended after" in line]
    assert len(ended) == 1 and f"connection={connection_id}]" in ended[0]


def test_json_redacts_tracebacks_and_extra_fields() -> None:
    """A token in an exception's message or in an extra field is redacted in the JSON line too (the
    formatter formats tracebacks and extras after the record factory has redacted the message)."""
    auth.install_log_redaction()
    token = auth.issue(SECRET, user="alice", projects="*", scopes=["admin"])
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormat())
    handler.addFilter(logs.Context())
    logger = logging.getLogger("tests.test_logs.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    reset = logs.request_id.set("r-1")
    try:
        try:
            raise ValueError(f"bad token {token}")
        except ValueError:
            logger.exception("failed with %s", token, extra={"url": f"/ws?token={token}"})
    finally:
        logs.request_id.reset(reset)
        logger.removeHandler(handler)
    record = json.loads(out.getvalue())
    assert token not in out.getvalue()
    assert record["message"] == "failed with ***" and record["url"] == "/ws?token=***"
    assert "ValueError: bad token ***" in record["exc_info"]
    assert record["request_id"] == "r-1" and record["connection_id"] is None and record["level"] == "ERROR"
