"""The process's log lines: on stderr, timestamped, as text or one JSON object a line.

Every line carries the request it belongs to and, for lines about a WebSocket or an SSE stream, the
connection: both come from context variables (`request_id`, set for every HTTP request and WebSocket
by proxies.Edge; `connection_id`, set by the WebSocket and SSE routes), so any logger, uvicorn's
included, gets them without passing anything around.

Tokens never reach a line: auth.install_log_redaction redacts every record as it is made, and the
JSON form redacts every value it writes once more (extra fields and tracebacks are formatted after
the record is made).
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter

from .auth import install_log_redaction, redact

request_id: ContextVar[str | None] = ContextVar("herald_request_id", default=None)
connection_id: ContextVar[str | None] = ContextVar("herald_connection_id", default=None)

FORMATS = ("text", "json")


def timestamp(record: logging.LogRecord) -> str:
    """ISO 8601 in UTC with milliseconds: `2026-12-02T10:49:34.123Z`."""
    moment = datetime.fromtimestamp(record.created, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Context(logging.Filter):
    """Puts the current request and connection ids on every record a handler writes."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id.get()
        record.connection_id = connection_id.get()
        return True


class TextFormat(logging.Formatter):
    """`<timestamp> <LEVEL> <logger>: <message> [request=… connection=…]`."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return timestamp(record)

    def format(self, record: logging.LogRecord) -> str:
        line = f"{self.formatTime(record)} {super().format(record)}"
        ids = [
            f"{name}={value}"
            for name, value in (
                ("request", getattr(record, "request_id", None)),
                ("connection", getattr(record, "connection_id", None)),
            )
            if value
        ]
        if not ids:
            return line
        first, newline, rest = line.partition("\n")  # after the message, before any traceback
        return f"{first} [{' '.join(ids)}]{newline}{rest}"


class JsonFormat(JsonFormatter):
    """One JSON object a line: timestamp, level, logger, message, request_id, connection_id, then any
    extra fields of the record, and `exc_info` with a traceback."""

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger"},
            # uvicorn's ANSI-coloured copy of its own message
            reserved_attrs=[*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "color_message"],
        )

    def add_fields(self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]) -> None:
        log_data["timestamp"] = timestamp(record)
        super().add_fields(log_data, record, message_dict)
        log_data.setdefault("request_id", None)
        log_data.setdefault("connection_id", None)

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        return {key: redact(value) if isinstance(value, str) else value for key, value in log_data.items()}


def setup(log_format: str = "text") -> None:
    """Send every logger's lines to stderr in `log_format` (`text` or `json`): Herald's own from INFO,
    others' (uvicorn's among them, which must then be run with `log_config=None`) as their levels say,
    WARNING by default. Replaces any handler the root logger had; safe to call again."""
    if log_format not in FORMATS:
        raise ValueError(f"log format {log_format!r}: expected one of {', '.join(FORMATS)}")
    install_log_redaction()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormat() if log_format == "json" else TextFormat())
    handler.addFilter(Context())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("herald").setLevel(logging.INFO)
