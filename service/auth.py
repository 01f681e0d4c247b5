"""Tokens, scopes, revocation, and keeping tokens out of the logs.

A token is a JWT (HS256, PyJWT) naming a user (`sub`), the projects it may touch (or `*` for every
project, present and future), its scopes, when it was issued and when it expires, and its own id
(`jti`). Scopes: `subscribe` (read, stream, ack), `publish` (append), `audit` (read only: history,
export, the ack ledger, past states, verification; never a stream, an ack or an append), `admin`
(create projects, read every cursor, metrics; implies the other three), `metrics` (read /metrics only).

Keys. Every secret has a key id (`kid`, a fingerprint that reveals nothing of it); tokens carry the
kid of the secret that signed them, so a service can accept several secrets at once and an operator
can rotate without logging everyone out (docs/security.md).

Revocation. A token is refused before its expiry when its id was revoked, or when it was issued up
to the moment its user's tokens were revoked. Revocations live in the database (every instance sees
them) and are held here as a set each instance refreshes when notified, so checking one costs no
round trip.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import asyncpg
import jwt

Scope = Literal["subscribe", "publish", "audit", "admin", "metrics"]
SCOPES: tuple[Scope, ...] = ("subscribe", "publish", "audit", "admin", "metrics")
ALL_PROJECTS = "*"
AUDIENCE = "herald"
DEFAULT_TTL_S = 86_400
DEFAULT_MAX_TTL_S = 2_592_000  # 30 days (HERALD_TOKEN_MAX_TTL_S)
LEEWAY_S = 30  # clocks of the issuer and the service may disagree by this much
MAX_USER_LENGTH = 128
REVOCATIONS_CHANNEL = "herald_revocations"


class InvalidToken(Exception):
    """The token is missing, malformed, wrongly signed, expired or revoked; the message says which."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, and what they may do."""

    user: str
    projects: frozenset[str] | None  # None: every project (`*`)
    scopes: frozenset[str]
    expires_at: float
    token_id: str = ""
    issued_at: float = 0.0

    def names(self, project_id: str) -> bool:
        """Whether the token lists this project (or lists every project)."""
        return self.projects is None or project_id in self.projects

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes or "admin" in self.scopes

    def may(self, scope: Scope, project_id: str) -> bool:
        return self.has(scope) and self.names(project_id)


def user_problem(user: object) -> str | None:
    """Why `user` cannot be a token's subject, or None: 1 to 128 printable characters."""
    if not isinstance(user, str) or not user:
        return "user must be a non-empty string"
    if len(user) > MAX_USER_LENGTH:
        return f"user must be at most {MAX_USER_LENGTH} characters"
    if not user.isprintable():
        return "user must be printable characters, without control characters"
    return None


def key_id(secret: str) -> str:
    """The `kid` of a secret: a fingerprint that names it in a token's header and reveals nothing."""
    return hashlib.sha256(b"herald-kid:" + secret.encode()).hexdigest()[:16]


def issue(
    secret: str,
    *,
    user: str,
    projects: Iterable[str] | Literal["*"],
    scopes: Iterable[str],
    ttl_s: int = DEFAULT_TTL_S,
    max_ttl_s: int = DEFAULT_MAX_TTL_S,
    now: float | None = None,
) -> str:
    """Sign a token with `secret`. `projects="*"` (or a list holding `*`) grants every project.

    Raises ValueError for an unknown scope, a user that cannot be a subject, or a lifetime that is not
    positive or exceeds `max_ttl_s`."""
    scope_list = sorted(set(scopes))
    unknown = [s for s in scope_list if s not in SCOPES]
    if unknown:
        raise ValueError(f"unknown scope(s): {', '.join(unknown)}; expected {', '.join(SCOPES)}")
    problem = user_problem(user)
    if problem is not None:
        raise ValueError(problem)
    if ttl_s <= 0:
        raise ValueError("ttl must be positive")
    if ttl_s > max_ttl_s:
        raise ValueError(f"ttl {ttl_s} s exceeds the maximum lifetime of {max_ttl_s} s (HERALD_TOKEN_MAX_TTL_S)")
    project_list = [projects] if isinstance(projects, str) else sorted(set(projects))
    claim: str | list[str] = ALL_PROJECTS if ALL_PROJECTS in project_list else project_list
    # Milliseconds, not whole seconds: a token issued just after its user's tokens were revoked must
    # not look issued at the same moment.
    issued = round(now if now is not None else time.time(), 3)
    payload = {
        "sub": user,
        "aud": AUDIENCE,
        "projects": claim,
        "scopes": scope_list,
        "iat": issued,
        "exp": issued + ttl_s,
        "jti": uuid.uuid4().hex,
    }
    return jwt.encode(payload, secret, algorithm="HS256", headers={"kid": key_id(secret)})


def keys_of(secrets: str | Sequence[str]) -> dict[str, str]:
    """kid -> secret, for `verify`."""
    return {key_id(s): s for s in ([secrets] if isinstance(secrets, str) else secrets)}


def verify(
    secrets: str | Sequence[str] | Mapping[str, str],
    token: str,
    *,
    max_ttl_s: int = DEFAULT_MAX_TTL_S,
    leeway_s: float = LEEWAY_S,
) -> Principal:
    """The principal a token stands for, or `InvalidToken` saying why not.

    `secrets`: the signing secret first, then any of before a rotation (or their `keys_of`, made once);
    the token's `kid` picks one.
    PyJWT checks the signature, the audience and the times (with `leeway_s` either way); this checks
    the rest: a lifetime within `max_ttl_s`, a subject, well-formed claims."""
    if not token:
        raise InvalidToken("missing token")
    keys = secrets if isinstance(secrets, Mapping) else keys_of(secrets)
    try:
        kid = jwt.get_unverified_header(token).get("kid")
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    if not isinstance(kid, str) or kid not in keys:
        raise InvalidToken("invalid token: signed with a key this service does not hold (was it rotated out?)")
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            keys[kid],
            algorithms=["HS256"],
            audience=AUDIENCE,
            leeway=leeway_s,
            options={"require": ["sub", "exp", "iat", "aud", "jti"]},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("token expired") from None
    except jwt.InvalidTokenError as exc:
        raise InvalidToken(f"invalid token: {exc}") from None
    projects, scopes, jti = claims.get("projects"), claims.get("scopes"), claims["jti"]
    if user_problem(claims["sub"]) is not None or not isinstance(scopes, list) or not isinstance(jti, str) or not jti:
        raise InvalidToken("invalid token: malformed claims")
    if claims["exp"] - claims["iat"] > max_ttl_s:
        raise InvalidToken(f"invalid token: it lives longer than the maximum of {max_ttl_s} s")
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
        token_id=jti,
        issued_at=float(claims["iat"]),
    )


# --- revocation --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Revocations:
    """The revocations in force: token ids, and per user the moment up to which its tokens are refused."""

    token_ids: frozenset[str] = frozenset()
    users: Mapping[str, float] = field(default_factory=dict)

    def refuse(self, principal: Principal) -> bool:
        return principal.token_id in self.token_ids or principal.issued_at <= self.users.get(principal.user, -math.inf)


_REVOKE = f"""
WITH revocation AS (
    INSERT INTO token_revocations ("user", token_id) VALUES ($1, $2) RETURNING revoked_at
)
SELECT revoked_at, pg_notify('{REVOCATIONS_CHANNEL}', '') FROM revocation
"""


async def revoke(conn: asyncpg.Connection, *, user: str | None = None, token_id: str | None = None) -> float:
    """Refuse every token of `user` issued up to now, or the token `token_id`, on every instance
    (they are notified at commit). Returns the moment of the revocation (epoch seconds)."""
    if (user is None) == (token_id is None):
        raise ValueError("revoke a user or a token id")
    revoked_at = await conn.fetchval(_REVOKE, user, token_id)
    return float(revoked_at.timestamp())


async def load_revocations(conn: asyncpg.Connection, *, max_ttl_s: int = DEFAULT_MAX_TTL_S) -> Revocations:
    """The revocations that can still refuse a token (a token lives at most `max_ttl_s`, so an older
    revocation can only name tokens that have expired)."""
    rows = await conn.fetch(
        'SELECT "user", token_id, revoked_at FROM token_revocations '
        "WHERE revoked_at > now() - make_interval(secs => $1)",
        max_ttl_s + 2 * LEEWAY_S,
    )
    users: dict[str, float] = {}
    for row in rows:
        if row["user"] is not None:
            users[row["user"]] = max(users.get(row["user"], -math.inf), row["revoked_at"].timestamp())
    ids = frozenset(row["token_id"] for row in rows if row["token_id"] is not None)
    return Revocations(ids, users)


class Verifier:
    """Token -> principal for one service: its secrets, its maximum lifetime, the revocations in force
    (replaced by `Runtime` whenever they change). Raises InvalidToken."""

    def __init__(self, secrets: Sequence[str], *, max_ttl_s: int = DEFAULT_MAX_TTL_S) -> None:
        self.keys = keys_of(list(secrets))
        self.max_ttl_s = max_ttl_s
        self.revocations = Revocations()

    def __call__(self, token: str) -> Principal:
        principal = verify(self.keys, token, max_ttl_s=self.max_ttl_s)
        if self.revocations.refuse(principal):
            raise InvalidToken("token revoked")
        return principal


# --- logs ----------------------------------------------------------------------------------------------

_SECRETS_IN_TEXT = re.compile(
    r"(?P<query>(?:^|[?&;\s])(?:token|access_token)=)[^&\s\"']*"  # ?token=… in a URL
    r"|(?P<bearer>[Bb]earer\s+)[^\s\"',]+"  # Authorization: Bearer …
    r"|eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # any JWT, wherever it stands
)


def redact(text: str) -> str:
    """`text` with every token in it replaced by `***`."""
    return _SECRETS_IN_TEXT.sub(lambda m: (m.group("query") or m.group("bearer") or "") + "***", text)


def _redacted(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


_traceback = logging.Formatter()


def install_log_redaction() -> None:
    """Keep tokens out of every log line, whichever logger writes it (uvicorn's access and handshake
    lines print query strings; a handler could print a frame): every record is redacted as it is
    made. Idempotent."""
    previous = logging.getLogRecordFactory()
    if getattr(previous, "herald_redacts", False):
        return

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_redacted(a) for a in record.args)
        elif isinstance(record.args, Mapping):
            record.args = {k: _redacted(v) for k, v in record.args.items()}
        if record.exc_info and record.exc_info[1] is not None:
            # A traceback can quote a token (an exception's message, a frame's source line): format it
            # now, redacted; formatters print exc_text when it is set.
            record.exc_text = redact(_traceback.formatException(record.exc_info))
        return record

    factory.herald_redacts = True  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
