"""Every HTTP failure as the contract's JSON body: `{"error", "message", "field"?}` (docs/protocol.md §3).

Routes raise `ApiError`; the handlers installed here also turn a database outage, FastAPI's own
validation errors, unknown routes and wrong methods into the same body, so a client never has to parse
anything else.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..codes import HTTP_STATUS, ErrorCode
from ..db import DatabaseUnavailable
from ..messages import ErrorBody


class ApiError(Exception):
    """An error answered with the contract's JSON body."""

    def __init__(self, code: ErrorCode, message: str, *, field: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field
        self.status = status  # when the contract names another status than the code's usual one

    def response(self) -> JSONResponse:
        return error_response(self.code, self.message, field=self.field, status=self.status)


def error_response(
    code: ErrorCode,
    message: str,
    *,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    status: int | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {"error": code.value, "message": message}
    if field is not None:
        body["field"] = field
    return JSONResponse(body, status_code=status or HTTP_STATUS[code], headers=headers)


def project_missing(project_id: str) -> ApiError:
    return ApiError(ErrorCode.NOT_FOUND, f"no project {project_id!r}")


# For the OpenAPI document: the statuses every route may answer with the error body.
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 413, 422, 503)
}


def install(app: FastAPI) -> None:
    """Answer every failure of `app` with the contract's error body."""

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> Response:
        return exc.response()

    @app.exception_handler(DatabaseUnavailable)
    async def _unavailable(request: Request, exc: DatabaseUnavailable) -> Response:
        return error_response(
            ErrorCode.UNAVAILABLE,
            f"the database is unreachable ({exc}); nothing was written, retry",
            headers={"Retry-After": "1"},
        )

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
        status = exc.status_code
        return JSONResponse({"error": "http_error", "message": str(exc.detail)}, status_code=status)
