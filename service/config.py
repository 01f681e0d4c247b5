"""Settings: the only place that reads the environment.

Everything the service can be told from outside is declared here, validated once at start, and then
passed around as a plain object. A setup that would be unsafe (several instances without a shared
secret, a guessable secret) is refused here rather than discovered later.
"""

from __future__ import annotations

import importlib.util
import os
import resource
import secrets
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_LENGTH = 32
MIN_DISTINCT_CHARACTERS = 16
MAKE_A_SECRET = "python -c 'import secrets; print(secrets.token_urlsafe(48))'"

# Secrets that appear in documentation, examples and earlier versions of docker-compose.yml: anyone can
# read them, so anyone could sign an admin token with them. Compared after lower-casing; a secret that
# contains one of the markers is refused too.
PLACEHOLDERS = frozenset({"change-me-to-a-long-random-string-of-32-chars"})
PLACEHOLDER_MARKERS = ("change-me", "changeme", "change_me", "placeholder", "your-secret", "replace-me", "example")


def secret_problem(value: str, name: str) -> str | None:
    """Why `value` may not sign tokens, or None when it may."""
    lowered = value.lower()
    if lowered in PLACEHOLDERS or any(marker in lowered for marker in PLACEHOLDER_MARKERS):
        return f"{name} is a placeholder from an example, which anyone can read"
    if len(value) < MIN_SECRET_LENGTH:
        return f"{name} must be at least {MIN_SECRET_LENGTH} characters"
    if len(set(value)) < MIN_DISTINCT_CHARACTERS:
        return f"{name} has fewer than {MIN_DISTINCT_CHARACTERS} distinct characters: it is guessable"
    return None


def default_concurrency() -> int:
    """HTTP requests the process can hold at once: its open-file limit, less room for the database
    pool, the listener and log files."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return 100_000 if soft == resource.RLIM_INFINITY else max(64, soft - 128)


def otel_installed() -> bool:
    """Whether the `otel` extra (the OpenTelemetry SDK and its OTLP/HTTP exporter) is installed."""
    try:
        return all(
            importlib.util.find_spec(name) is not None
            for name in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http")
        )
    except ModuleNotFoundError:  # a parent package is missing
        return False


class ConfigError(Exception):
    """The environment describes a setup the service refuses to run with."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True, populate_by_name=True)

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    data_dir: Path = Field(default=Path(".herald"), validation_alias="HERALD_DATA_DIR")
    secret: str | None = Field(default=None, validation_alias="HERALD_SECRET")
    # Secrets of before a rotation: tokens they signed stay valid until these are removed.
    previous_secrets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="HERALD_PREVIOUS_SECRETS"
    )
    token_max_ttl_s: int = Field(default=2_592_000, ge=60, validation_alias="HERALD_TOKEN_MAX_TTL_S")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="HERALD_ALLOWED_ORIGINS"
    )
    github_webhook_secret: str | None = Field(default=None, validation_alias="GITHUB_WEBHOOK_SECRET")
    # Retention (docs/protocol.md §7.4): how often the service prunes by the projects' policies, and where
    # it archives what it prunes (default: <HERALD_DATA_DIR>/archive, so nothing leaves unarchived).
    prune_interval_s: float = Field(default=3600.0, gt=0, validation_alias="HERALD_PRUNE_INTERVAL_S")
    archive_dir: Path | None = Field(default=None, validation_alias="HERALD_ARCHIVE_DIR")
    # Housekeeping on the same schedule (docs/operations.md): cursors of clients that have not acked for this
    # many days are deleted, and records of GitHub deliveries older than this many days (more than GitHub's
    # 3-day redelivery window, so a redelivery is always still recognized).
    cursor_ttl_days: int = Field(default=90, ge=1, le=36_500, validation_alias="HERALD_CURSOR_TTL_DAYS")
    webhook_dedupe_days: int = Field(default=7, ge=4, le=36_500, validation_alias="HERALD_WEBHOOK_DEDUPE_DAYS")
    # Seqs per partition of the log of a project created from now on (partitions.py).
    partition_events: int = Field(default=100_000, ge=1, le=100_000_000, validation_alias="HERALD_PARTITION_EVENTS")
    heartbeat_ms: int = Field(default=15_000, ge=100, validation_alias="HERALD_HEARTBEAT_MS")
    sse_keepalive_ms: int = Field(default=15_000, ge=100, validation_alias="HERALD_SSE_KEEPALIVE_MS")
    # How long a request waits for a pooled connection or a statement before answering 503.
    db_timeout_s: float = Field(default=5.0, gt=0, validation_alias="HERALD_DB_TIMEOUT_S")
    pool_size: int = Field(default=10, ge=1, le=200, validation_alias="HERALD_POOL_SIZE")
    # Per connection: bytes queued for a client (outbox and socket buffer together). A client past it
    # is served from the log at its own pace instead of live; one that accepts no bytes for
    # `ws_stall_s` while frames wait is closed with 4429.
    ws_outbox_bytes: int = Field(default=8 * 1024 * 1024, ge=256 * 1024, validation_alias="HERALD_WS_OUTBOX_BYTES")
    ws_stall_s: float = Field(default=10.0, gt=0, validation_alias="HERALD_WS_STALL_S")
    # Per WebSocket: inbound messages per second (token bucket) and the burst allowed above it.
    ws_rate: float = Field(default=500, gt=0, validation_alias="HERALD_WS_RATE")
    ws_burst: float = Field(default=1000, ge=1, validation_alias="HERALD_WS_BURST")
    # Per token: HTTP calls per second (token bucket) and the burst allowed above it.
    http_rate: float = Field(default=200, gt=0, validation_alias="HERALD_HTTP_RATE")
    http_burst: float = Field(default=400, ge=1, validation_alias="HERALD_HTTP_BURST")
    # Per user on one instance: WebSocket and SSE connections open at once.
    max_connections_per_user: int = Field(default=200, ge=1, validation_alias="HERALD_MAX_CONNECTIONS_PER_USER")
    # A request whose headers are not complete in this time, or exceed `max_header_bytes`, is dropped.
    header_timeout_s: float = Field(default=10.0, gt=0, validation_alias="HERALD_HEADER_TIMEOUT_S")
    max_header_bytes: int = Field(default=64 * 1024, ge=4096, validation_alias="HERALD_MAX_HEADER_BYTES")
    # HTTP requests in progress (SSE streams included) past which new ones get 503 at once.
    limit_concurrency: int = Field(
        default_factory=default_concurrency, ge=1, validation_alias="HERALD_LIMIT_CONCURRENCY"
    )
    # Reverse proxies (IPs or CIDRs) whose X-Forwarded-* / Forwarded / X-Request-ID headers are believed
    # (docs/deploy.md). None by default: a peer's own headers say nothing about who it is.
    trusted_proxies: Annotated[list[IPv4Network | IPv6Network], NoDecode] = Field(
        default_factory=list, validation_alias="HERALD_TRUSTED_PROXIES"
    )
    # `text` (a timestamped line) or `json` (one object a line), on stderr.
    log_format: Literal["text", "json"] = Field(default="text", validation_alias="HERALD_LOG_FORMAT")
    # OpenTelemetry traces (traces.py) when an OTLP endpoint is set; the exporter reads the rest of the
    # standard OTEL_* variables itself. OTEL_SDK_DISABLED=true turns them off whatever the endpoint.
    otlp_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    )
    otel_sdk_disabled: bool = Field(default=False, validation_alias="OTEL_SDK_DISABLED")
    # The wake-up bus (bus.py, docs/scaling.md): unset, every instance LISTENs on the database. Several
    # Herald deployments may share one NATS server under different prefixes.
    nats_url: str | None = Field(default=None, validation_alias="HERALD_NATS_URL")
    nats_prefix: str = Field(default="herald", pattern=r"^[A-Za-z0-9_-]{1,64}$", validation_alias="HERALD_NATS_PREFIX")
    # false (with the bus only): appends stop NOTIFYing; the relay polls the heads every HERALD_HEAD_POLL_MS.
    append_notify: bool = Field(default=True, validation_alias="HERALD_APPEND_NOTIFY")
    head_poll_ms: int = Field(default=10, ge=1, le=10_000, validation_alias="HERALD_HEAD_POLL_MS")

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            value = [n.strip() for n in value.split(",") if n.strip()]
        if isinstance(value, list):
            # A bare address is a network of one; host bits set in a CIDR (10.0.0.1/8) are refused.
            return [ip_network(n, strict=True) if isinstance(n, str) else n for n in value]
        return value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("previous_secrets", mode="before")
    @classmethod
    def _split_secrets(cls, value: object) -> object:
        if isinstance(value, str):
            return [s.strip() for s in value.split(",") if s.strip()]
        return value

    @field_validator("github_webhook_secret", "archive_dir", "otlp_endpoint", "nats_url", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `GITHUB_WEBHOOK_SECRET=` (docker-compose's default) must disable webhooks, never make an empty
        # HMAC key that anyone can sign with.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _check_secret(self) -> Settings:
        named = [("HERALD_SECRET", self.secret)] if self.secret is not None else []
        named += [(f"HERALD_PREVIOUS_SECRETS[{i}]", s) for i, s in enumerate(self.previous_secrets)]
        for name, value in named:
            problem = secret_problem(value, name)
            if problem is not None:
                raise ConfigError(f"{problem}; make one with: {MAKE_A_SECRET}")
        if self.database_url is not None and self.secret is None:
            raise ConfigError(
                "HERALD_SECRET is required when DATABASE_URL is set: every instance on one database "
                "must sign and check tokens with the same secret"
            )
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgres://", "postgresql+asyncpg://")
        ):
            raise ConfigError("DATABASE_URL must be a postgresql:// URL")
        if self.traces and not otel_installed():
            raise ConfigError(
                "an OTLP endpoint is set (OTEL_EXPORTER_OTLP_ENDPOINT) but the OpenTelemetry SDK is not "
                "installed: pip install 'herald[otel]', or unset it"
            )
        if self.nats_url is not None and importlib.util.find_spec("nats") is None:
            raise ConfigError(
                "HERALD_NATS_URL is set but nats-py is not installed: pip install 'herald[nats]', or unset it"
            )
        if not self.append_notify and self.nats_url is None:
            raise ConfigError(
                "HERALD_APPEND_NOTIFY=false needs HERALD_NATS_URL: without the bus's relay nothing would tell "
                "the instances that the log moved"
            )
        return self

    @property
    def traces(self) -> bool:
        """True when spans are exported (traces.py): an OTLP endpoint is set and the SDK not disabled."""
        return self.otlp_endpoint is not None and not self.otel_sdk_disabled

    @property
    def embedded(self) -> bool:
        """True when the service runs its own PostgreSQL in the data dir."""
        return self.database_url is None

    def archive_root(self) -> Path:
        """Where scheduled prunes archive: HERALD_ARCHIVE_DIR, else <HERALD_DATA_DIR>/archive."""
        return self.archive_dir if self.archive_dir is not None else self.data_dir / "archive"

    def signing_secret(self) -> str:
        """The token secret: the configured one, else (embedded default only) one kept in the data dir.

        The generated secret is written once with owner-only permissions, so tokens printed by the CLI
        stay valid across restarts of the service.
        """
        if self.secret is not None:
            return self.secret
        path = self.data_dir / "secret"
        if not path.exists():
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            try:
                # Owner-only from the first byte (no window between create and chmod), and O_EXCL: never
                # overwrite a concurrent writer's secret.
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass
            else:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    f.write(secrets.token_urlsafe(48))
        value = path.read_text(encoding="utf-8").strip()
        problem = secret_problem(value, str(path))
        if problem is not None:
            raise ConfigError(f"{problem}; delete it to have a new one generated")
        return value

    def verification_secrets(self) -> list[str]:
        """Every secret whose tokens are accepted: the signing one first, then those of before a rotation."""
        return [self.signing_secret(), *self.previous_secrets]


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; keyword overrides win (tests and the CLI use them)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None
