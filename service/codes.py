"""Close codes and error codes: the one table of what a client should do about each.

Retry policy lives with the code, so no client has to guess whether reconnecting can help; the
TypeScript client's `frontend/lib/src/types/codes.ts` is generated from `table()`, which
`python -m service schema` prints as `x-herald-codes`.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Any


class ErrorCode(StrEnum):
    """The `error` of an HTTP error body and the `code` of a WebSocket `error` frame."""

    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"  # extension: HTTP 405 on a known path
    EXISTS = "exists"
    INVALID_JSON = "invalid_json"
    INVALID_DATA = "invalid_data"
    INVALID_ACK = "invalid_ack"
    INVALID_CURSOR = "invalid_cursor"
    HISTORY_TRUNCATED = "history_truncated"  # the read starts below the oldest event kept: reload the state
    HISTORY_REWRITTEN = "history_rewritten"  # extension: the log's event at the client's seq differs (a failover)
    INVALID_FRAME = "invalid_frame"
    UNKNOWN_TYPE = "unknown_type"
    NOT_SUBSCRIBED = "not_subscribed"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"  # extension: HTTP 500, a bug (logged); the body says nothing more


HTTP_STATUS: dict[ErrorCode, int] = {
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
    ErrorCode.EXISTS: 409,
    ErrorCode.INVALID_JSON: 400,
    ErrorCode.INVALID_DATA: 422,
    ErrorCode.INVALID_ACK: 422,
    ErrorCode.INVALID_CURSOR: 422,
    ErrorCode.HISTORY_TRUNCATED: 410,
    ErrorCode.HISTORY_REWRITTEN: 409,
    ErrorCode.INVALID_FRAME: 400,
    ErrorCode.UNKNOWN_TYPE: 422,
    ErrorCode.NOT_SUBSCRIBED: 409,
    ErrorCode.RATE_LIMITED: 429,
    ErrorCode.TOO_LARGE: 413,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.INTERNAL: 500,
}


class CloseCode(IntEnum):
    """WebSocket close codes of docs/protocol.md §4."""

    GOING_AWAY = 1001
    POLICY_VIOLATION = 1008  # inbound rate limit exceeded persistently
    MESSAGE_TOO_BIG = 1009
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013  # too many connections for this user on this instance
    AUTH = 4401
    ORIGIN = 4403
    HEARTBEAT_TIMEOUT = 4408
    SLOW_CONSUMER = 4429


TERMINAL_CLOSE_CODES: frozenset[int] = frozenset({CloseCode.AUTH, CloseCode.ORIGIN, CloseCode.MESSAGE_TOO_BIG})
"""Reconnecting cannot help until something changes (a new token, another origin, a smaller message)."""

RETRY_CLOSE_CODES: frozenset[int] = frozenset(
    {
        CloseCode.GOING_AWAY,
        CloseCode.POLICY_VIOLATION,
        CloseCode.SERVICE_RESTART,
        CloseCode.TRY_AGAIN_LATER,
        CloseCode.HEARTBEAT_TIMEOUT,
        CloseCode.SLOW_CONSUMER,
    }
)
"""Reconnect with backoff and resume by cursor: nothing is lost."""


def table() -> dict[str, Any]:
    """Every code above as plain data, for clients generated from the schema (`x-herald-codes`)."""
    return {
        "errorCodes": [code.value for code in ErrorCode],
        "closeCodes": {code.name: code.value for code in CloseCode},
        "terminalCloseCodes": sorted(TERMINAL_CLOSE_CODES),
        "retryCloseCodes": sorted(RETRY_CLOSE_CODES),
    }
