"""Tokens and scopes.

A token is a JWT (HS256, PyJWT) naming a user, the projects it may touch (or `*` for every project,
present and future), its scopes and its expiry. Scopes: `subscribe` (read, stream, ack), `publish`
(append), `admin` (create projects, read every cursor, metrics), which implies the other two.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import jwt

Scope = Literal["subscribe", "publish", "admin"]
SCOPES: tuple[Scope, ...] = ("subscribe", "publish", "admin")
ALL_PROJECTS = "*"
AUDIENCE = "herald"
DEFAULT_TTL_S = 86_400


class InvalidToken(Exception):
    """The token is missing, malformed, wrongly signed or expired; the message says which."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and what they may do."""

    user: str
    projects: frozenset[str] | None  # None: every project (`*`)
    scopes: frozenset[str]
    expires_at: float

    def names(self, project_id: str) -> bool:
        """Whether the token lists this project (or lists every project)."""
        return self.projects is None or project_id in self.projects

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def may(self, scope: Scope, project_id: str) -> bool:
        return self.has(scope) and self.names(project_id)


def issue(
    secret: str,
    *,
    user: str,
    projects: Iterable[str] | Literal["*"],
    scopes: Iterable[str],
    ttl_s: int = DEFAULT_TTL_S,
    now: float | None = None,
) -> str:
    """Sign a token. `projects="*"` (or a list holding `*`) grants every project."""
    scope_list = sorted(set(scopes))
    unknown = [s for s in scope_list if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(unknown)}; expected {', '.join(SCOPES)}")
    if not user:
        raise ValueError("user must not be empty")
    if ttl_s <= 0:
        raise ValueError("ttl must be positive")
    project_list = [projects] if isinstance(projects, str) else sorted(set(projects))
    claim: str | list[str] = ALL_PROJECTS if ALL_PROJECTS in project_list else project_list
    issued = int(now if now is not None else time.time())
    payload = {
        "sub": user,
        "aud": AUDIENCE,
        "projects": claim,
        "scopes": scope_list,
        "iat": issued,
        "exp": issued + ttl_s,
    }
    return jwt.encode(payload, secret, algorithm="HS256")


def verify(secret: str, token: str, *, leeway_s: float = 0) -> Principal:
    """The principal a token stands for, or `InvalidToken` saying why not."""
    if not token:
        raise InvalidToken("missing token")
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=["HS256"],
            audience=AUDIENCE,
            leeway=leeway_s,
            options={"require": ["sub", "exp", "aud"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    projects = claims.get("projects")
    scopes = claims.get("scopes")
    if not isinstance(claims["sub"], str) or not isinstance(scopes, list):
        raise InvalidToken("invalid token: malformed claims")
    if projects == ALL_PROJECTS:
        project_set: frozenset[str] | None = None
    elif isinstance(projects, list) and all(isinstance(p, str) for p in projects):
        project_set = frozenset(projects)
    else:
        raise InvalidToken("invalid token: malformed projects claim")
    return Principal(
        user=claims["sub"],
        projects=project_set,
        scopes=frozenset(s for s in scopes if isinstance(s, str)),
        expires_at=float(claims["exp"]),
    )


_TOKEN_IN_QUERY = re.compile(r"((?:^|[?&])token=)[^&\s\"]*")


def redact_query(text: str) -> str:
    """Hide `token=` values (SSE and WebSocket clients may pass the token in the query string)."""
    return _TOKEN_IN_QUERY.sub(r"\1***", text)


class RedactTokens(logging.Filter):
    """Keeps tokens out of uvicorn's access log, which prints every request's query string."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        return True


def install_log_redaction() -> None:
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactTokens) for f in access.filters):
        access.addFilter(RedactTokens())
