"""Archives: the events a prune removes, kept outside the database as the chain's first part.

A project's archive is a directory `<DIR>/<projectId>/` of files
`<projectId>.<first:012d>-<last:012d>.ndjson.gz`: gzip, one event per line exactly as the wire carries
it (`StoredEvent.encode`, with its `hash`), in seq order, the seqs `first` to `last` each once. The
files of successive prunes join end to end from seq 1, so together with the live log from its
watermark they are the whole chain, which `verify` walks as one (docs/protocol.md §7.4).

A file is written under a temporary name, flushed to disk and then renamed (and the directory
flushed), so a crash leaves either the whole file under its final name or none: never a partial
archive that a verifier would take for a gap in the chain.

`restore` puts an archive back into a database (a fresh one, typically): the events exactly as they were
served, with their hashes and times, so that the restored log verifies as the original did
(docs/operations.md, "Restoring an archive").
"""

from __future__ import annotations

import asyncio
import gzip
import itertools
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
import orjson

from . import audit, eventlog, partitions, state
from .messages import format_timestamp

PAGE = 1000  # events read per query while archiving


def _finish(out: gzip.GzipFile, raw: BinaryIO) -> None:
    out.close()
    raw.flush()
    os.fsync(raw.fileno())


def _publish(temporary: Path, final: Path) -> None:
    """Give the whole file its final name, and make the rename itself durable."""
    os.replace(temporary, final)
    directory = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def path(root: Path, project_id: str, first: int, last: int) -> Path:
    """Where the archive of `project_id`'s seqs `first` to `last` lives under `root`."""
    return root / project_id / f"{project_id}.{first:012d}-{last:012d}.ndjson.gz"


async def write(conn: asyncpg.Connection, root: Path, project_id: str, first: int, last: int) -> Path:
    """Write the events `first` to `last` of `project_id` (all still in the log) to their archive file,
    reading them a page at a time; the file appears under its final name only once it is whole and on
    disk. Raises if the log does not hold every one of those seqs (nothing is then left behind)."""
    final = path(root, project_id, first, last)
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    try:
        # The file work runs in a thread: compressing a page must not hold up the service's event loop.
        raw = await asyncio.to_thread(open, temporary, "wb")
        try:
            out = gzip.GzipFile(fileobj=raw, mode="wb", filename="", mtime=0)
            after = first - 1
            while after < last:
                events = await eventlog.read_after(conn, project_id, after, min(PAGE, last - after))
                lines = []
                for event in events:
                    if event.seq != after + 1:
                        raise RuntimeError(f"seq {after + 1} of {project_id} is not in the log: cannot archive it")
                    lines.append(event.encode() + b"\n")
                    after = event.seq
                if not events:
                    raise RuntimeError(f"seq {after + 1} of {project_id} is not in the log: cannot archive it")
                await asyncio.to_thread(out.write, b"".join(lines))
            await asyncio.to_thread(_finish, out, raw)
        finally:
            raw.close()
        await asyncio.to_thread(_publish, temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return final


@dataclass(frozen=True, slots=True)
class File:
    path: Path
    first: int
    last: int


def files(root: Path, project_id: str) -> list[File]:
    """The project's archive files under `root`, by their first seq (temporary files are not listed)."""
    pattern = re.compile(re.escape(project_id) + r"\.(\d{12})-(\d{12})\.ndjson\.gz")
    found: list[File] = []
    directory = root / project_id
    if directory.is_dir():
        for entry in directory.iterdir():
            match = pattern.fullmatch(entry.name)
            if match:
                found.append(File(entry, int(match[1]), int(match[2])))
    return sorted(found, key=lambda f: (f.first, f.last))


def _lines(file: File) -> Iterable[bytes]:
    with gzip.open(file.path, "rb") as lines:
        yield from lines


async def verify(
    conn: asyncpg.Connection, project_id: str, root: Path, *, expect: Mapping[int, bytes] | None = None
) -> audit.Verdict:
    """Verify the project's archive files under `root` and then its live log, as one chain.

    The archive must hold every seq from 1 up to the log's watermark, each line's hash recomputed from
    its wire fields (`audit.canonical`, `audit.link`), and end with the hash the live log's chain begins
    from (`pruned_hash`); then `audit.verify` walks the log. The verdict names the first bad seq: a
    missing file or range, a line altered, moved or not parseable. Lines of a file past the watermark
    (a prune that archived and then did not commit) are the live log's, which is verified instead.
    `expect`: checkpoints' hashes, as for `audit.verify`, over the archive and the log alike.
    """
    expect = dict(expect or {})
    project = await conn.fetchrow("SELECT oldest, pruned_hash FROM projects WHERE id = $1", project_id)
    if project is None:
        raise audit.NoSuchProject(project_id)
    oldest: int = project["oldest"]
    previous, expected = audit.GENESIS, 1
    for file in files(root, project_id):
        if expected >= oldest:
            break
        if file.first > expected:
            return audit.Verdict(False, first_bad=expected, reason=f"seq {expected} is in no archive file")
        try:
            for line in _lines(file):
                if expected >= oldest:
                    break
                try:
                    event = orjson.loads(line)
                    seq = event["seq"]
                    if not isinstance(seq, int):
                        raise TypeError("seq")
                except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
                    return audit.Verdict(
                        False, first_bad=expected, reason=f"a line of {file.path.name} is not an event ({exc})"
                    )
                if seq < expected:  # already verified, from an earlier file that overlaps this one
                    continue
                if seq != expected:
                    return audit.Verdict(
                        False, first_bad=expected, reason=f"seq {expected} is missing from {file.path.name}"
                    )
                try:
                    computed = _chained(previous, event, seq)
                    stated = bytes.fromhex(event["hash"])
                except (KeyError, TypeError, ValueError) as exc:
                    return audit.Verdict(
                        False, first_bad=seq, reason=f"the line of seq {seq} in {file.path.name} is malformed ({exc})"
                    )
                if event["projectId"] != project_id or computed != stated:
                    return audit.Verdict(
                        False,
                        first_bad=seq,
                        reason=f"the archived event at seq {seq} ({file.path.name}) does not continue the chain: "
                        "it was changed, or moved here, or the events before it were",
                    )
                wanted = expect.pop(seq, None)
                if wanted is not None and wanted != computed:
                    return audit.rewritten(seq, "archive")
                previous, expected = computed, seq + 1
        except (OSError, EOFError) as exc:  # not gzip, or cut short
            return audit.Verdict(False, first_bad=expected, reason=f"{file.path.name} cannot be read: {exc}")
    if expected < oldest:
        return audit.Verdict(False, first_bad=expected, reason=f"seq {expected} is in no archive file")
    if previous != bytes(project["pruned_hash"]):
        return audit.Verdict(
            False,
            first_bad=oldest - 1,
            reason=f"the archive's chain ends at seq {oldest - 1} with a hash other than the one the log's "
            "chain begins from: one of them was rewritten with its hashes recomputed",
        )
    return await audit.verify(conn, project_id, expect=expect)


# --- restoring -----------------------------------------------------------------------------------------


class RestoreRefused(Exception):
    """The archive cannot be restored into this database; nothing was written. The message says why."""


@dataclass(frozen=True, slots=True)
class Restored:
    """What `restore` put back: the seqs `first` to `last` of `project_id`, into a project it `created`."""

    project_id: str
    first: int
    last: int
    created: bool

    def to_dict(self) -> dict[str, Any]:
        return {"projectId": self.project_id, "first": self.first, "last": self.last, "created": self.created}


# A page of archive lines, parsed by PostgreSQL itself: `data` goes back into jsonb from the very text the
# archive holds, so every number keeps its exact spelling and the restored event is served byte for byte
# as the archived one (a round trip through Python floats could respell `1.10` as `1.1`).
_INSERT = """
WITH event AS (
    INSERT INTO events (project_id, seq, message_id, type, data, created_at, hash)
    SELECT $1, (e ->> 'seq')::bigint, e ->> 'messageId', e ->> 'type', e -> 'data',
           (e ->> 'timestamp')::timestamptz, decode(e ->> 'hash', 'hex')
    FROM unnest($2::text[]) AS line(text), LATERAL (SELECT line.text::jsonb AS e) AS parsed
    RETURNING project_id, message_id, seq
)
INSERT INTO event_ids (project_id, message_id, seq) SELECT project_id, message_id, seq FROM event
"""

# The project state of the restored range, as the append statement keeps it: the latest event of each
# subject, hashed as eventlog.SUBJECT_HASH_SQL hashes it, never moving a subject back to an older seq.
_STATE = f"""
INSERT INTO project_state (project_id, type, subject, seq)
SELECT DISTINCT ON (type, subject) $1, type, subject, seq
FROM (SELECT type, seq, {eventlog.SUBJECT_HASH_SQL} AS subject FROM events
      WHERE project_id = $1 AND seq >= $2 AND seq <= $3 AND type = ANY($4::text[])) AS keyed
ORDER BY type, subject, seq DESC
ON CONFLICT (project_id, type, subject) DO UPDATE SET seq = excluded.seq WHERE project_state.seq < excluded.seq
"""


def _open(file: File) -> gzip.GzipFile:
    return gzip.GzipFile(file.path, "rb")


def _page(lines: gzip.GzipFile) -> list[bytes]:
    return list(itertools.islice(lines, PAGE))


def _seq(line: bytes, name: str) -> tuple[dict[str, Any], int]:
    """One archive line, parsed, and its seq; RestoreRefused when it is not an event."""
    try:
        event = orjson.loads(line)
        seq = event["seq"]
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise TypeError("seq is not an integer")
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise RestoreRefused(f"a line of {name} is not an archived event ({exc}): nothing restored") from None
    return event, seq


def _chained(previous: bytes, event: Mapping[str, Any], seq: int) -> bytes:
    """The chain's hash after an archived event (as history served it) that follows `previous`."""
    return audit.link(
        previous,
        audit.canonical(
            project_id=event["projectId"],
            seq=seq,
            message_id=event["messageId"],
            type=event["type"],
            timestamp=event["timestamp"],
            data=event["data"],
        ),
    )


def _checked(event: dict[str, Any], seq: int, *, project_id: str, previous: bytes, name: str) -> bytes:
    """The hash of one archived event, after checking that it continues the chain from `previous` and that
    its time reads back as written; RestoreRefused naming its seq otherwise."""
    try:
        timestamp = event["timestamp"]
        computed = _chained(previous, event, seq)
        stated = bytes.fromhex(event["hash"])
        moment = datetime.fromisoformat(timestamp)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise RestoreRefused(f"the line of seq {seq} in {name} is malformed ({exc}): nothing restored") from None
    if event["projectId"] != project_id:
        raise RestoreRefused(f"seq {seq} in {name} is an event of {event['projectId']!r}: nothing restored")
    if computed != stated:
        raise RestoreRefused(
            f"the archived event at seq {seq} ({name}) does not continue the chain: it was changed, or moved "
            "here, or the events before it were; nothing restored"
        )
    if moment.tzinfo is None or format_timestamp(moment) != timestamp:
        raise RestoreRefused(
            f"seq {seq} in {name} has a timestamp Herald does not write ({timestamp!r}): nothing restored"
        )
    return computed


async def restore(
    conn: asyncpg.Connection, root: Path, project_id: str, *, name: str | None = None, repo: str | None = None
) -> Restored:
    """Put the project's archive under `root` back into the database, as the events it held.

    Every archived event is inserted as it was served: its seq, messageId, type, data, time (the
    archive's millisecond timestamp) and hash, without going through the append path; the project's
    head and last hash move to the archive's last event, and the project state takes in the restored
    events as appends would have. The project is created (named `name`, default its id, following
    `repo`) when it does not exist; an existing one must end right before the archive begins (a fresh
    project: the archive must start at seq 1), so a project whose events overlap the archive, or a gap
    between them, is refused.

    Atomic: one transaction, holding the project row's lock as appends do, so RestoreRefused (a line
    that does not continue the chain from the project's last hash, a seq missing, an overlap) leaves
    nothing written. The chain is checked line by line as it is read, so a restored log verifies
    (`audit.verify`) as the archive did. Afterwards the restored stretches are summarized for the state
    at a seq (state.summarize), and a NOTIFY wakes any instance serving the project."""
    found = files(root, project_id)
    if not found:
        raise RestoreRefused(f"no archive of project {project_id!r} under {root}")
    created = False
    async with conn.transaction():
        row = await conn.fetchrow("SELECT head, last_hash FROM projects WHERE id = $1 FOR UPDATE", project_id)
        if row is None:
            try:
                await eventlog.create_project(conn, id=project_id, name=name or project_id, repo=repo)
            except eventlog.RepoTaken:
                raise RestoreRefused(f"repo {repo!r} belongs to another project: nothing restored") from None
            created = True
            head, previous = 0, audit.GENESIS
        else:
            head, previous = row["head"], bytes(row["last_hash"])
        first = found[0].first
        if first <= head:
            raise RestoreRefused(
                f"project {project_id!r} already has events up to seq {head}, which overlap the archive's "
                f"(from seq {first}): restore into a fresh database, or a project whose log ends before the archive"
            )
        if first != head + 1:
            raise RestoreRefused(
                f"the archive of {project_id!r} begins at seq {first}, but the project's log ends at seq {head}: "
                f"seqs {head + 1} to {first - 1} would be missing"
            )
        expected = first
        for file in found:
            lines = await asyncio.to_thread(_open, file)
            try:
                while page := await asyncio.to_thread(_page, lines):
                    batch: list[str] = []
                    for line in page:
                        if not line.strip():
                            continue
                        event, seq = _seq(line, file.path.name)
                        if first <= seq < expected:
                            continue  # restored already, from an earlier file that overlaps this one
                        if seq != expected:
                            raise RestoreRefused(
                                f"seq {expected} of {project_id!r} is missing from the archive "
                                f"({file.path.name} goes on at seq {seq}): nothing restored"
                            )
                        previous = _checked(event, seq, project_id=project_id, previous=previous, name=file.path.name)
                        batch.append(line.decode())
                        expected += 1
                    if batch:
                        await partitions.extend(conn, project_id, upto=expected - 1)
                        try:
                            await conn.execute(_INSERT, project_id, batch)
                        except asyncpg.UniqueViolationError as exc:
                            raise RestoreRefused(
                                f"the archive repeats a messageId the log holds ({exc.detail}): nothing restored"
                            ) from None
            except (OSError, EOFError) as exc:  # not gzip, or cut short
                raise RestoreRefused(f"{file.path.name} cannot be read ({exc}): nothing restored") from None
            finally:
                await asyncio.to_thread(lines.close)
        last = expected - 1
        await conn.execute(_STATE, project_id, first, last, list(state.LATEST))
        await conn.execute("UPDATE projects SET head = $2, last_hash = $3 WHERE id = $1", project_id, last, previous)
        await conn.execute("SELECT pg_notify($1, $2)", eventlog.NOTIFY_CHANNEL, f"{project_id}:{last}")
    await state.summarize(conn, project_id, upto=last)
    return Restored(project_id, first, last, created)
