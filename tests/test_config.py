"""Settings read the environment and refuse unsafe setups; the CLI prints tokens and schemas (docs/protocol.md §1)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from service import auth
from service.config import ConfigError, load_settings
from service.messages import json_schema

GOOD = "s3cret-Q7mVr2kX9pLw4ZtB8nYc3HsJ6dFa1Ge5"


def test_secret_rules(tmp_path: Path) -> None:
    """A short secret, or DATABASE_URL without HERALD_SECRET, is refused at start."""
    with pytest.raises(ConfigError, match="at least 32"):
        load_settings(secret="short", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="HERALD_SECRET is required"):
        load_settings(database_url="postgresql://x@localhost/db", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="postgresql://"):
        load_settings(database_url="mysql://x@localhost/db", secret=GOOD, data_dir=tmp_path)
    assert load_settings(database_url="postgresql://x@localhost/db", secret=GOOD, data_dir=tmp_path).secret == GOOD


def test_bus_settings(tmp_path: Path) -> None:
    """NOTIFY-free appends need the bus (nothing else would wake the instances); a prefix that is not one
    NATS token is refused; a blank HERALD_NATS_URL means no bus."""
    with pytest.raises(ConfigError, match="HERALD_APPEND_NOTIFY=false needs HERALD_NATS_URL"):
        load_settings(data_dir=tmp_path, append_notify=False)
    with pytest.raises(ConfigError, match=r"HERALD_NATS_PREFIX|nats_prefix"):
        load_settings(data_dir=tmp_path, nats_url="nats://127.0.0.1:4222", nats_prefix="a.b")
    assert load_settings(data_dir=tmp_path, nats_url=" ").nats_url is None
    s = load_settings(data_dir=tmp_path, nats_url="nats://127.0.0.1:4222", append_notify=False)
    assert (s.nats_prefix, s.append_notify, s.head_poll_ms) == ("herald", False, 10)


def test_embedded_secret_is_generated_once(tmp_path: Path) -> None:
    """With the embedded default and no secret, one is generated into the data dir, owner-only, and kept."""
    settings = load_settings(data_dir=tmp_path, secret=None, database_url=None)
    first = settings.signing_secret()
    assert len(first) >= 32 and (tmp_path / "secret").stat().st_mode & 0o077 == 0
    assert load_settings(data_dir=tmp_path, secret=None, database_url=None).signing_secret() == first


def test_environment_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Every variable of docs/protocol.md §1 reaches the settings."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres:@/db?host=/tmp/x")
    monkeypatch.setenv("HERALD_SECRET", GOOD)
    monkeypatch.setenv("HERALD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("HERALD_ALLOWED_ORIGINS", "https://a.example, https://b.example/")
    monkeypatch.setenv("GITHUB_WEBHOOK_SECRET", "gh")
    monkeypatch.setenv("HERALD_HEARTBEAT_MS", "5000")
    monkeypatch.setenv("HERALD_SSE_KEEPALIVE_MS", "7000")
    s = load_settings()
    assert s.database_url == "postgresql://postgres:@/db?host=/tmp/x" and s.secret == GOOD
    assert s.data_dir == tmp_path and s.github_webhook_secret == "gh"
    assert s.allowed_origins == ["https://a.example", "https://b.example"]
    assert (s.heartbeat_ms, s.sse_keepalive_ms) == (5000, 7000)
    monkeypatch.setenv("HERALD_HEARTBEAT_MS", "soon")
    with pytest.raises(ConfigError, match="HERALD_HEARTBEAT_MS"):
        load_settings()


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True, timeout=60)


def test_cli_token_and_schema(tmp_path: Path) -> None:
    """`token` prints one token alone on stdout, valid for the same secret; `schema` writes every model."""
    env = {"PATH": "/usr/bin:/bin", "HERALD_SECRET": GOOD, "HERALD_DATA_DIR": str(tmp_path)}
    out = cli("token", "--user", "u", "--projects", "p1,p2", "--scopes", "subscribe,publish", "--ttl", "60", env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\n") == 1
    principal = auth.verify(GOOD, out.stdout.strip())
    assert principal.projects == frozenset({"p1", "p2"}) and principal.scopes == frozenset({"subscribe", "publish"})
    assert 55 <= principal.expires_at - __import__("time").time() <= 61
    bad = cli("token", "--user", "u", "--projects", "*", "--scopes", "root", env=env)
    assert bad.returncode == 2 and "unknown scope" in bad.stderr
    short = cli("token", "--user", "u", "--projects", "*", "--scopes", "admin", env={**env, "HERALD_SECRET": "x"})
    assert short.returncode == 2 and "at least 32" in short.stderr
    schema = cli("schema", env=env)
    assert json.loads(schema.stdout) == json.loads(json.dumps(json_schema()))
    defs = json_schema()["$defs"]
    for name in ("Event", "SubscribeMessage", "PublishedMessage", "ErrorMessage", "ClientMessage", "ServerMessage"):
        assert name in defs
    assert defs["Event"]["properties"]["seq"]["type"] == "integer"
    assert "projectId" in defs["Event"]["properties"]
