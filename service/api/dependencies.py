"""What a route may depend on: one running part each, and the caller's principal.

A route names the part it uses (the hub, the appender, the database, ...) rather than reaching through
the whole Runtime, so what a route touches is in its signature. The dependencies are `async def` on
purpose: FastAPI runs a plain `def` dependency in its thread pool, two thread hops per request for
what is an attribute read and an HMAC check.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from ..auth import InvalidToken, Principal, Scope, Verifier
from ..codes import ErrorCode
from ..config import Settings
from ..cursors import AckBuffer
from ..db import Database
from ..eventlog import Appender
from ..hub import Hub
from ..limits import Gates, RateLimits
from ..messages import is_project_id
from ..metrics import Metrics
from ..runtime import Runtime
from .errors import ApiError, project_missing, rate_limited


def _runtime(connection: HTTPConnection) -> Runtime:
    runtime: Runtime = connection.app.state.runtime
    return runtime


async def _hub(connection: HTTPConnection) -> Hub:
    return _runtime(connection).hub


async def _appender(connection: HTTPConnection) -> Appender:
    return _runtime(connection).appender


async def _acks(connection: HTTPConnection) -> AckBuffer:
    return _runtime(connection).acks


async def _database(connection: HTTPConnection) -> Database:
    return _runtime(connection).database


async def _settings(connection: HTTPConnection) -> Settings:
    return _runtime(connection).settings


async def _metrics(connection: HTTPConnection) -> Metrics:
    return _runtime(connection).metrics


async def _verifier(connection: HTTPConnection) -> Verifier:
    """Token -> principal, with this service's secrets and revocations (raises InvalidToken)."""
    return _runtime(connection).verifier


async def _http_limits(connection: HTTPConnection) -> RateLimits:
    return _runtime(connection).http_limits


async def _batch_gates(connection: HTTPConnection) -> Gates:
    return _runtime(connection).batch_gates


async def _runtime_dep(connection: HTTPConnection) -> Runtime:
    return _runtime(connection)


HubDep = Annotated[Hub, Depends(_hub)]
AppenderDep = Annotated[Appender, Depends(_appender)]
AcksDep = Annotated[AckBuffer, Depends(_acks)]
DatabaseDep = Annotated[Database, Depends(_database)]
SettingsDep = Annotated[Settings, Depends(_settings)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
VerifierDep = Annotated[Verifier, Depends(_verifier)]
HttpLimitsDep = Annotated[RateLimits, Depends(_http_limits)]
BatchGatesDep = Annotated[Gates, Depends(_batch_gates)]
ReadinessDep = Annotated[Runtime, Depends(_runtime_dep)]
"""The whole runtime: only /readyz, whose question is about all of its parts."""

_bearer = HTTPBearer(auto_error=False, description="A token from `herald token` (or `python -m service token`)")


def admit(principal: Principal, limits: RateLimits) -> Principal:
    """Count one HTTP call against the token's rate (HERALD_HTTP_RATE): 429 with Retry-After past it."""
    wait = limits.check(principal.token_id)
    if wait is not None:
        raise rate_limited(wait, f"too many requests with this token; retry in {wait} s")
    return principal


async def _authenticated(
    verify: VerifierDep,
    limits: HttpLimitsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)],
) -> Principal:
    if credentials is None:
        raise ApiError(ErrorCode.UNAUTHORIZED, "missing bearer token (Authorization: Bearer TOKEN)")
    try:
        principal = verify(credentials.credentials)
    except InvalidToken as exc:
        raise ApiError(ErrorCode.UNAUTHORIZED, str(exc)) from None
    return admit(principal, limits)


Auth = Annotated[Principal, Depends(_authenticated)]
"""The caller, from `Authorization: Bearer TOKEN` (401 without a valid one, 429 past its rate)."""


def require(principal: Principal, scope: Scope | tuple[Scope, ...], project_id: str) -> None:
    """403 unless the token names the project and carries the scope (or one of the scopes, when given
    several); then 404 for an id that no project can have (it is never looked up)."""
    if not principal.names(project_id):
        raise ApiError(ErrorCode.FORBIDDEN, f"this token does not grant access to project {project_id!r}")
    scopes = scope if isinstance(scope, tuple) else (scope,)
    if not any(principal.has(s) for s in scopes):
        wanted = " or ".join(repr(s) for s in scopes)
        raise ApiError(ErrorCode.FORBIDDEN, f"this token lacks the {wanted} scope")
    if not is_project_id(project_id):
        raise project_missing(project_id)
