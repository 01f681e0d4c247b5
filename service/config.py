"""Settings: the only place that reads the environment.

Everything the service can be told from outside is declared here, validated once at start, and then
passed around as a plain object. A setup that would be unsafe (several instances without a shared
secret, a guessable secret) is refused here rather than discovered later.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_LENGTH = 32


class ConfigError(Exception):
    """The environment describes a setup the service refuses to run with."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", extra="ignore", frozen=True, populate_by_name=True)

    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    data_dir: Path = Field(default=Path(".herald"), validation_alias="HERALD_DATA_DIR")
    secret: str | None = Field(default=None, validation_alias="HERALD_SECRET")
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias="HERALD_ALLOWED_ORIGINS"
    )
    github_webhook_secret: str | None = Field(default=None, validation_alias="GITHUB_WEBHOOK_SECRET")
    heartbeat_ms: int = Field(default=15_000, ge=100, validation_alias="HERALD_HEARTBEAT_MS")
    sse_keepalive_ms: int = Field(default=15_000, ge=100, validation_alias="HERALD_SSE_KEEPALIVE_MS")
    # How long a request waits for a pooled connection or a statement before answering 503.
    db_timeout_s: float = Field(default=5.0, gt=0, validation_alias="HERALD_DB_TIMEOUT_S")
    pool_size: int = Field(default=10, ge=1, le=200, validation_alias="HERALD_POOL_SIZE")
    # Per WebSocket: frames queued for a client before it counts as unable to keep up (closed 4429).
    ws_outbox: int = Field(default=2048, ge=8, validation_alias="HERALD_WS_OUTBOX")
    # Per WebSocket: inbound messages per second (token bucket) and the burst allowed above it.
    ws_rate: float = Field(default=500, gt=0, validation_alias="HERALD_WS_RATE")
    ws_burst: float = Field(default=1000, ge=1, validation_alias="HERALD_WS_BURST")

    @field_validator("allowed_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [o.strip().rstrip("/") for o in value.split(",") if o.strip()]
        return value

    @field_validator("github_webhook_secret", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # `GITHUB_WEBHOOK_SECRET=` (docker-compose's default) must disable webhooks, never make an empty
        # HMAC key that anyone can sign with.
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @model_validator(mode="after")
    def _check_secret(self) -> Settings:
        if self.secret is not None and len(self.secret) < MIN_SECRET_LENGTH:
            raise ConfigError(f"HERALD_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        if self.database_url is not None and self.secret is None:
            raise ConfigError(
                "HERALD_SECRET is required when DATABASE_URL is set: every instance on one database "
                "must sign and check tokens with the same secret"
            )
        if self.database_url is not None and not self.database_url.startswith(
            ("postgresql://", "postgres://", "postgresql+asyncpg://")
        ):
            raise ConfigError("DATABASE_URL must be a postgresql:// URL")
        return self

    @property
    def embedded(self) -> bool:
        """True when the service runs its own PostgreSQL in the data dir."""
        return self.database_url is None

    def signing_secret(self) -> str:
        """The token secret: the configured one, else (embedded default only) one kept in the data dir.

        The generated secret is written once with owner-only permissions, so tokens printed by the CLI
        stay valid across restarts of the service.
        """
        if self.secret is not None:
            return self.secret
        path = self.data_dir / "secret"
        if not path.exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            candidate = secrets.token_urlsafe(48)
            try:
                with open(path, "x", encoding="utf-8") as f:  # "x": never overwrite a concurrent writer
                    f.write(candidate)
                path.chmod(0o600)
            except FileExistsError:
                pass
        value = path.read_text(encoding="utf-8").strip()
        if len(value) < MIN_SECRET_LENGTH:
            raise ConfigError(f"{path} holds a secret shorter than {MIN_SECRET_LENGTH} characters")
        return value


def load_settings(**overrides: object) -> Settings:
    """Read the environment once; keyword overrides win (tests and the CLI use them)."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid configuration: {problems}") from None
