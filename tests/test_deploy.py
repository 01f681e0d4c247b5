"""The deployment as written (docker-compose.yml, Dockerfile, deploy/nginx/) is safe: checked by reading
the files, since no Docker engine runs here. Each test names the mistake it guards against."""

from __future__ import annotations

import re
from dataclasses import dataclass
from ipaddress import ip_address, ip_network
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.api import sse
from service.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
NGINX = ROOT / "deploy" / "nginx"
INSTANCES = ("herald-1", "herald-2")


# --- a small nginx parser ------------------------------------------------------------------------------


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str, *args: str) -> Directive:
        found = [d for d in self.all(name) if list(d.args[: len(args)]) == list(args)]
        assert len(found) == 1, f"expected one `{name} {' '.join(args)}` in `{self.name} {' '.join(self.args)}`"
        return found[0]

    def value(self, name: str, *args: str) -> list[str]:
        """The arguments after `args` of the one `name` directive."""
        return self.one(name, *args).args[len(args) :]

    def walk(self) -> list[Directive]:
        out = []
        for d in self.block or []:
            out.append(d)
            out.extend(d.walk())
        return out


_TOKEN = re.compile(r"""\s+|#[^\n]*|"((?:[^"\\]|\\.)*)"|'((?:[^'\\]|\\.)*)'|([{};])|([^\s{};"'#]+)""")


def parse_nginx(text: str) -> Directive:
    """nginx's configuration syntax: directives ending in `;`, blocks in `{}`, `#` comments, quotes."""
    root = Directive("(file)", [], [])
    stack, words = [root], []
    position = 0
    while position < len(text):
        match = _TOKEN.match(text, position)
        assert match, f"cannot read the nginx config at {text[position : position + 30]!r}"
        position = match.end()
        double, single, punct, word = match.groups()
        if double is not None or single is not None or word is not None:
            words.append(next(w for w in (double, single, word) if w is not None))
        elif punct == ";":
            assert words, "an empty directive"
            stack[-1].block.append(Directive(words[0], words[1:]))  # type: ignore[union-attr]
            words = []
        elif punct == "{":
            block = Directive(words[0], words[1:], [])
            stack[-1].block.append(block)  # type: ignore[union-attr]
            stack.append(block)
            words = []
        elif punct == "}":
            assert not words and len(stack) > 1, "an unbalanced }"
            stack.pop()
    assert len(stack) == 1 and not words, "an unclosed block or directive"
    return root


def seconds(value: str) -> float:
    """An nginx time (`75s`, `2m`, `75`, `1m30s`) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|)", value)
    assert parts and "".join(n + u for n, u in parts) == value, f"not an nginx time: {value}"
    return sum(int(n) * units[u] for n, u in parts)


def uncommented(text: str, start: str) -> str:
    """The commented-out block that begins with the line `# {start}`, with its `# ` taken off."""
    lines = text.splitlines()
    first = next(i for i, line in enumerate(lines) if line.strip() == f"# {start}")
    block = []
    for line in lines[first:]:
        if not line.startswith("#"):
            break
        block.append(line[2:] if line.startswith("# ") else line[1:])
    return "\n".join(block)


# --- the files -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def site() -> Directive:
    return parse_nginx((NGINX / "herald.conf").read_text())


@pytest.fixture(scope="module")
def locations() -> Directive:
    return parse_nginx((NGINX / "locations.conf").read_text())


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the final stage, continuation lines joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    stages = [i for i, line in enumerate(lines) if line.upper().startswith("FROM ")]
    final = lines[stages[-1] :]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "") for line in final]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    environment = service.get("environment") or {}
    if isinstance(environment, list):
        return dict(item.split("=", 1) for item in environment)
    return {k: str(v) for k, v in environment.items()}


def heartbeat_s() -> float:
    defaults = load_settings(database_url=None)
    return max(defaults.heartbeat_ms, defaults.sse_keepalive_ms) / 1000


# --- docker-compose.yml --------------------------------------------------------------------------------


def test_no_secret_has_a_default(compose: dict[str, Any]) -> None:
    """A compose file with a default secret signs admin tokens with a string anyone can read: the
    token secret and the database password must be given (`${NAME:?…}`), and any other secret may
    default only to empty (GitHub webhooks off)."""
    secret_names = re.compile(r"SECRET|PASSWORD", re.IGNORECASE)
    checked = 0
    for name, service in compose["services"].items():
        for key, value in env_of(service).items():
            if not secret_names.search(key):
                continue
            checked += 1
            if key in ("HERALD_SECRET", "POSTGRES_PASSWORD"):
                assert value.startswith(f"${{{key}:?"), f"{name}: {key} must be required, not defaulted: {value}"
            else:
                for default in re.findall(r"\$\{\w+:?-([^}]*)\}", value):
                    assert default == "", f"{name}: {key} defaults to {default!r}"
        url = env_of(service).get("DATABASE_URL", "")
        if url:
            assert "${POSTGRES_PASSWORD:?" in url, f"{name}: the database password in DATABASE_URL is written out"
    assert checked >= 2 * len(INSTANCES) + 1


def test_only_nginx_publishes_a_port_on_loopback_by_default(compose: dict[str, Any]) -> None:
    """Herald and PostgreSQL are reachable only through nginx; nginx only from this machine until the
    operator says otherwise (and then with TLS, docs/deploy.md)."""
    published = {name: s["ports"] for name, s in compose["services"].items() if s.get("ports")}
    assert list(published) == ["nginx"]
    for port in published["nginx"]:
        assert str(port).startswith("127.0.0.1:"), port


def test_two_instances_healthchecked_on_readyz(compose: dict[str, Any]) -> None:
    """Traffic goes only to instances that are ready (database, LISTEN connection, not shutting down),
    which /healthz alone does not say; nginx starts once both are, after the schema is migrated."""
    services = compose["services"]
    for name in INSTANCES:
        check = services[name]["healthcheck"]["test"]
        assert "/readyz" in " ".join(check) and "/healthz" not in " ".join(check)
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert services[name]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert services[name]["volumes"] == services[INSTANCES[0]]["volumes"]
    assert "pg_isready" in " ".join(services["postgres"]["healthcheck"]["test"])
    assert services["migrate"]["command"][-1] == "migrate"
    assert {n: c["condition"] for n, c in services["nginx"]["depends_on"].items()} == dict.fromkeys(
        INSTANCES, "service_healthy"
    )


def test_the_instances_trust_nginx_and_only_nginx(compose: dict[str, Any]) -> None:
    """HERALD_TRUSTED_PROXIES is nginx's fixed address: trusting the whole network would let any
    container there forge the host an Origin is checked against."""
    nginx = compose["services"]["nginx"]["networks"]["herald"]["ipv4_address"]
    subnet = ip_network(compose["networks"]["herald"]["ipam"]["config"][0]["subnet"])
    assert ip_address(nginx) in subnet
    for name in INSTANCES:
        assert env_of(compose["services"][name])["HERALD_TRUSTED_PROXIES"] == nginx
        assert load_settings(database_url=None, trusted_proxies=nginx).trusted_proxies == [ip_network(nginx)]


def test_nginx_mounts_what_it_includes(compose: dict[str, Any], site: Directive) -> None:
    """The include paths of herald.conf are where docker-compose.yml mounts the repository's files."""
    mounts = dict(reversed(m.split(":")[:2]) for m in compose["services"]["nginx"]["volumes"])
    assert mounts["/etc/nginx/conf.d/default.conf"] == "./deploy/nginx/herald.conf"
    for server in site.all("server"):
        (path,) = server.value("include")
        assert mounts[path] == "./deploy/nginx/locations.conf"


# --- nginx ---------------------------------------------------------------------------------------------


def test_both_instances_behind_the_upstream(site: Directive, locations: Directive, compose: dict[str, Any]) -> None:
    """nginx balances over both instances, each by its compose service name, and proxies nothing
    anywhere else."""
    upstream = site.one("upstream", "herald")
    servers = [d.args[0] for d in upstream.all("server")]
    assert servers == [f"{name}:8000" for name in INSTANCES]
    assert all(name in compose["services"] for name in INSTANCES)
    passes = [d.args for d in locations.walk() if d.name == "proxy_pass"]
    assert passes and all(args == ["http://herald"] for args in passes)


def test_websocket_upgrade_headers(site: Directive, locations: Directive) -> None:
    """Upgrade and Connection are hop-by-hop: without setting them (over HTTP/1.1) no WebSocket ever
    reaches Herald."""
    assert locations.value("proxy_http_version") == ["1.1"]
    assert locations.value("proxy_set_header", "Upgrade") == ["$http_upgrade"]
    assert locations.value("proxy_set_header", "Connection") == ["$connection_upgrade"]
    upgrade_map = site.one("map", "$http_upgrade", "$connection_upgrade")
    assert upgrade_map.value("default") == ["upgrade"]


def test_host_and_forwarded_headers(locations: Directive) -> None:
    """The Origin check compares a browser's Origin with the host and scheme the client used: nginx
    must pass them on (with the port: $http_host, not $host) along with the client's address and a
    request id, and at server level, since one proxy_set_header in a location drops all inherited ones."""
    headers = {d.args[0].lower(): d.args[1] for d in locations.all("proxy_set_header")}
    assert headers["host"] == "$http_host"
    assert headers["x-forwarded-host"] == "$http_host"
    assert headers["x-forwarded-proto"] == "$scheme"
    assert headers["x-forwarded-for"] == "$proxy_add_x_forwarded_for"
    assert headers["x-request-id"] == "$request_id"
    for location in locations.all("location"):
        assert not location.all("proxy_set_header"), f"location {location.args} drops the inherited headers"


def test_streams_unbuffered_with_timeouts_above_the_heartbeat(locations: Directive) -> None:
    """WebSocket and SSE paths are not buffered (events would wait in nginx) and nginx waits longer
    than twice the heartbeat and keep-alive intervals before it calls a quiet connection dead."""
    by_path = {" ".join(loc.args): loc for loc in locations.all("location")}
    ws = by_path["= /ws"]
    stream = next(loc for args, loc in by_path.items() if args.startswith("~ "))
    pattern = re.compile(stream.args[1])
    paths = [route.path for route in sse.router.routes]  # type: ignore[attr-defined]
    assert {"/api/stream", "/api/projects/{project_id}/stream"} <= set(paths)
    assert pattern.search("/api/stream") and pattern.search("/api/projects/p-1/stream")
    assert not pattern.search("/api/projects/p-1/events")
    for location in (ws, stream):
        assert location.value("proxy_buffering") == ["off"]
        for timeout in ("proxy_read_timeout", "proxy_send_timeout"):
            (value,) = location.value(timeout)
            assert seconds(value) > 2 * heartbeat_s(), f"{timeout} {value} is within the heartbeat"


def test_access_log_keeps_tokens_out(site: Directive) -> None:
    """A browser's WebSocket and EventSource carry the token in `?token=`: nginx's access log, which
    Herald's redaction cannot reach, writes the path without the query string, and every server uses it."""
    (log_format,) = [d for d in site.all("log_format") if d.args[0] == "herald"]
    line = " ".join(log_format.args[1:])
    for variable in ("$request ", '$request"', "$request_uri", "$args", "$query_string", "$is_args"):
        assert variable not in line + " ", f"the access log writes {variable.strip()}"
    assert "$uri" in line and "$request_id" in line
    text = (NGINX / "herald.conf").read_text()
    servers = [site.one("server"), parse_nginx(uncommented(text, "server {")).one("server")]
    assert all(server.value("access_log")[1:] == ["herald"] for server in servers)


def test_tls_server_block_is_ready(site: Directive) -> None:
    """The HTTPS server block, once uncommented, is valid nginx: 443 with a certificate and key, and
    the same proxying as HTTP; the HTTP block's redirect is ready too."""
    text = (NGINX / "herald.conf").read_text()
    tls = parse_nginx(uncommented(text, "server {")).one("server")
    assert tls.value("listen") == ["443", "ssl"]
    assert tls.value("ssl_certificate") == ["/etc/nginx/certs/fullchain.pem"]
    assert tls.value("ssl_certificate_key") == ["/etc/nginx/certs/privkey.pem"]
    assert tls.value("include") == site.one("server").value("include")
    assert "# return 301 https://$host$request_uri;" in text
    assert site.one("server").value("listen") == ["80"]


def test_the_parser_reads_what_it_is_given() -> None:
    """The checks above are only as good as the parser: blocks, quotes, comments and regexes."""
    parsed = parse_nginx('a 1; # not this ;\nb "x y" {\n c ~ ^/p(q)?$; d {}\n}\n')
    assert [d.name for d in parsed.walk()] == ["a", "b", "c", "d"]
    assert parsed.one("b").args == ["x y"] and parsed.one("b").value("c") == ["~", "^/p(q)?$"]
    assert seconds("75s") == 75 and seconds("1m30s") == 90 and seconds("60") == 60
    with pytest.raises(AssertionError):
        parse_nginx("a { b;")


# --- Dockerfile ----------------------------------------------------------------------------------------


def test_image_runs_as_a_user_that_owns_its_data_dir(dockerfile: list[tuple[str, str]], compose: Any) -> None:
    """Not root, and the data dir (embedded PostgreSQL, generated secret, retention archive) is created
    and owned by that user before it is declared a volume, so a new volume is writable by it."""
    users = [args for instruction, args in dockerfile if instruction == "USER"]
    assert users and users[-1] == "herald"
    env = " ".join(args for instruction, args in dockerfile if instruction == "ENV")
    data_dir = re.search(r"HERALD_DATA_DIR=(\S+)", env)
    assert data_dir is not None
    data = data_dir.group(1)
    runs = [args for instruction, args in dockerfile if instruction == "RUN"]
    setup = next(run for run in runs if "useradd" in run)
    assert re.search(r"useradd\b.*\bherald\b", setup) and "--system" in setup
    assert f"mkdir -p {data}" in setup and f"chown herald:herald {data}" in setup
    order = [instruction for instruction, _ in dockerfile]
    assert order.index("VOLUME") > order.index("RUN") and data in dict(dockerfile)["VOLUME"]
    assert order.index("USER") > max(i for i, (ins, args) in enumerate(dockerfile) if ins == "RUN")
    for name in INSTANCES:
        assert f"herald-data:{data}" in compose["services"][name]["volumes"]


def test_image_installs_from_the_lock_and_checks_readiness(dockerfile: list[tuple[str, str]]) -> None:
    """Reproducible: dependencies from requirements.lock, Herald itself without resolving again; the
    image's own healthcheck asks /readyz."""
    runs = [args for instruction, args in dockerfile if instruction == "RUN"]
    lock = next(i for i, run in enumerate(runs) if "-r requirements.lock" in run)
    herald = next(i for i, run in enumerate(runs) if re.search(r"pip install .*--no-deps \.$", run))
    assert lock < herald
    installs = [run for run in runs if "pip install" in run]
    unpinned = [run for run in installs if "requirements.lock" not in run and "--no-deps" not in run]
    assert not unpinned
    (healthcheck,) = [args for instruction, args in dockerfile if instruction == "HEALTHCHECK"]
    assert "/readyz" in healthcheck
