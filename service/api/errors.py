"""Every HTTP failure as the contract's JSON body: `{"error", "message", "field"?}` (docs/protocol.md §3).

Routes raise `ApiError`; the handlers installed here also turn a database outage, FastAPI's own
validation errors, unknown routes and wrong methods into the same body, so a client never has to parse
anything else.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..codes import HTTP_STATUS, ErrorCode
from ..db import ConnectionLost, DatabaseBusy, DatabaseUnavailable
from ..messages import ErrorBody

logger = logging.getLogger("herald.api.errors")


class ApiError(Exception):
    """An error answered with the contract's JSON body."""

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        field: str | None = None,
        status: int | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status  # when the contract names another status than the code's usual one
        self.headers = headers
        self.extra = extra  # more fields of the body (the messageId of an unknown outcome)

    def response(self) -> JSONResponse:
        return error_response(
            self.code, self.message, field=self.field, status=self.status, headers=self.headers, extra=self.extra
        )


def rate_limited(retry_after_s: int, message: str) -> ApiError:
    return ApiError(ErrorCode.RATE_LIMITED, message, headers={"Retry-After": str(retry_after_s)})


def error_response(
    code: ErrorCode,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    status: int | None = None,
    extra: dict[str, Any] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": code.value, "message": message}
    if field is not None:
        body["field"] = field
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status or HTTP_STATUS[code], headers=headers)


def project_missing(project_id: str) -> ApiError:
    return ApiError(ErrorCode.NOT_FOUND, f"no project {project_id!r}")


def outcome_unknown(message_ids: list[str], *, batch: bool = False) -> ApiError:
    """docs/protocol.md §7.2: the publish may have been written; retrying with its messageId(s) is safe."""
    one = not batch
    return ApiError(
        ErrorCode.UNAVAILABLE,
        "the connection to the database was lost after the publish was sent: it may have been written. "
        f"Retry with the same {'messageId' if one else 'messageIds'}: a retry appends at most once",
        headers={"Retry-After": "1"},
        extra={"messageId": message_ids[0]} if one else {"messageIds": message_ids},
    )


# For the OpenAPI document: the statuses every route may answer with the error body.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 413, 422, 429, 500, 503)
}


def install(app: FastAPI) -> None:
    """Answer every failure of `app` with the contract's error body."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(DatabaseUnavailable)
    async def _unavailable(request: Request, exc: DatabaseUnavailable) -> Response:
        # The driver's words (addresses, errno) are for the operator's log, not for the caller.
        logger.warning("%s %s: database unavailable: %s", request.method, request.url.path, exc)
        if isinstance(exc, DatabaseBusy):
            message = "the database is busy (a row is locked, or a statement ran too long); nothing was written, retry"
        elif isinstance(exc, ConnectionLost):
            message = "the connection to the database was lost; what was asked may have taken effect: retry"
        else:
            message = "the database is unreachable; nothing was written, retry"
        return error_response(ErrorCode.UNAVAILABLE, message, headers={"Retry-After": "1"})

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> Response:
        # Starlette logs the exception (with its traceback) after this answer; the body says no more.
        return error_response(ErrorCode.INTERNAL, "internal error: the service could not answer; it has been logged")

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0]
        loc = [str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body", "header")]
        field = ".".join(loc) or None
        message = f"{field}: {first.get('msg')}" if field else str(first.get("msg"))
        return error_response(ErrorCode.INVALID_DATA, message, field=field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return error_response(ErrorCode.NOT_FOUND, f"no route {request.url.path}")
        if exc.status_code == 405:
            return error_response(
                ErrorCode.METHOD_NOT_ALLOWED, f"{request.method} is not allowed on {request.url.path}"
            )
        # Anything else Starlette raises: the contract's code for that status, if there is one.
        status = exc.status_code
        code = next((c for c, s in HTTP_STATUS.items() if s == status), None)
        if code is None:
            code = ErrorCode.INTERNAL if status >= 500 else ErrorCode.INVALID_DATA
        return error_response(code, str(exc.detail), status=status)
