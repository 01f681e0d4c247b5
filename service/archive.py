"""Archives: the events a prune removes, kept outside the database as the chain's first part.

A project's archive is a directory `<DIR>/<projectId>/` of files
`<projectId>.<first:012d>-<last:012d>.ndjson.gz`: gzip, one event per line exactly as the wire carries
it (`StoredEvent.encode`, with its `hash`), in seq order, the seqs `first` to `last` each once. The
files of successive prunes join end to end from seq 1, so together with the live log from its
watermark they are the whole chain, which `verify` walks as one (docs/protocol.md §7.4).

A file is written under a temporary name, flushed to disk and then renamed (and the directory
flushed), so a crash leaves either the whole file under its final name or none: never a partial
archive that a verifier would take for a gap in the chain.
"""

from __future__ import annotations

import asyncio
import gzip
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import asyncpg
import orjson

from . import audit, eventlog

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
                    computed = audit.link(
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
