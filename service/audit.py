"""The audit chain: every event's hash, verifying a project's log against it, and signed checkpoints.

`hash(n) = SHA-256(hash(n-1) || canonical(n))`, with `hash(0)` = 32 zero bytes, where `canonical(n)` is
the event as it appears on the wire, without `hash`, in the JSON Canonicalization Scheme (RFC 8785):
an outside tool in any language with a JCS library recomputes it from what Herald serves
(docs/protocol.md, "Audit"). Changing, deleting or reordering a stored event changes a hash from there
on, so a verifier that walks the log names the first seq that does not continue the chain.

The append statement computes the hash in PostgreSQL, from the previous hash it keeps on the project
row (which it locks anyway) and the two pieces of the canonical form that do not depend on the seq and
the time (`pieces`), so the chain costs no extra round trip. `append_many` computes it here, from the
heads and time it has just locked and read. Both use this module's `canonical_data`: RFC 8785 itself
(the `rfc8785` library) wherever the fast path (orjson, for the shapes of Herald's event data) could
differ from it; a property test holds the two equal.

A checkpoint is a receipt an auditor keeps outside the database: `{projectId, seq, hash, at}` signed
with an Ed25519 key derived from the service's secret. If the log is later rewritten, even with every
hash recomputed, the hash at that seq no longer matches the receipt.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from .messages import format_timestamp

GENESIS = bytes(32)

# The JCS numbers that Python's repr spells the same way: shortest round-trip digits, fixed notation
# (ECMAScript uses fixed notation from 1e-7 to 1e21, repr from 1e-4 to 1e16).
_REPR_LOW, _REPR_HIGH = 1e-4, 1e16
_SAFE_INTEGER = 2**53


def canonical_data(data: Mapping[str, Any]) -> bytes:
    """RFC 8785 (JCS) bytes of an event's `data`.

    Herald's event data is a flat object of strings, integers, booleans and numbers like a progress of
    42.5; for those, orjson with sorted keys writes the JCS bytes once each number is spelled as JCS
    spells it (an integral float without its `.0`). Anything else goes through the reference library.
    """
    plain: dict[str, Any] = {}
    for key, value in data.items():
        if not key.isascii():  # JCS sorts keys by UTF-16 code units; orjson by UTF-8 bytes
            return rfc8785.dumps(dict(data))
        if type(value) is float:
            if value.is_integer() and abs(value) < _SAFE_INTEGER:
                value = int(value)
            elif value.is_integer():  # JCS spells these with the shortest digits and zeros, not as ints
                return rfc8785.dumps(dict(data))
            elif _REPR_LOW <= abs(value) < _REPR_HIGH:
                value = orjson.Fragment(repr(value))
            else:
                return rfc8785.dumps(dict(data))
        elif isinstance(value, (dict, list)) or (type(value) is int and abs(value) >= _SAFE_INTEGER):
            return rfc8785.dumps(dict(data))
        plain[key] = value
    return orjson.dumps(plain, option=orjson.OPT_SORT_KEYS)


def pieces(*, project_id: str, message_id: str, type: str, data: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """The canonical form of an event around its seq and timestamp: `before + seq + middle + timestamp +
    after`, with `middle` = `,"timestamp":"`. The keys of the event object in JCS order are data,
    messageId, projectId, seq, timestamp, type, so everything before the seq is known before appending."""
    before = b'{"data":%b,"messageId":%b,"projectId":%b,"seq":' % (
        canonical_data(data),
        orjson.dumps(message_id),
        orjson.dumps(project_id),
    )
    return before, b'","type":%b}' % orjson.dumps(type)


MIDDLE = b',"timestamp":"'


def canonical(
    *, project_id: str, seq: int, message_id: str, type: str, timestamp: str, data: Mapping[str, Any]
) -> bytes:
    """The canonical form of an event (docs/protocol.md, "Audit")."""
    before, after = pieces(project_id=project_id, message_id=message_id, type=type, data=data)
    return b"%b%d%b%b%b" % (before, seq, MIDDLE, timestamp.encode(), after)


def link(previous: bytes, canonical_form: bytes) -> bytes:
    """One step of the chain."""
    return hashlib.sha256(previous + canonical_form).digest()


# --- verifying -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    """What verifying a log found: intact through `head` with the chain's `hash` there, or broken at
    `first_bad` for `reason`."""

    ok: bool
    head: int = 0
    hash: bytes = GENESIS
    first_bad: int | None = None
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        if self.ok:
            return {"ok": True, "head": self.head, "hash": self.hash.hex()}
        return {"ok": False, "firstBad": self.first_bad, "reason": self.reason}


def rewritten(seq: int, part: str = "log") -> Verdict:
    """A checkpoint's hash at `seq` that the recomputed chain no longer has, though every stored hash
    matches: the `part` (log or archive) was rewritten with its hashes recomputed."""
    return Verdict(
        False,
        first_bad=seq,
        reason=f"the chain at seq {seq} differs from the checkpoint's: the {part} up to seq {seq} was "
        "rewritten and its hashes recomputed",
    )


class NoSuchProject(Exception):
    pass


# Only the kept log, from the watermark: events below it that a prune left for the state (retention.py)
# are no longer part of the chain a verifier walks.
_ROWS = (
    "SELECT seq, message_id, type, data::text AS data, created_at, hash FROM events "
    "WHERE project_id = $1 AND seq >= $2 ORDER BY seq"
)


async def verify(
    conn: asyncpg.Connection, project_id: str, *, expect: Mapping[int, bytes] | None = None, prefetch: int = 2000
) -> Verdict:
    """Recompute `project_id`'s chain from its oldest kept event to its head; the first seq that breaks it.

    After a prune the chain starts at `oldest` from `pruned_hash`, the hash the pruned events ended
    with (retention.py); `verify_archive` there checks the archived part and joins it to this one.

    Reads one consistent snapshot (a repeatable-read transaction) through a server-side cursor, so
    memory stays flat however long the log, and appends going on meanwhile neither wait nor confuse it.
    `expect`: hashes the chain must have at given seqs (from checkpoints); a mismatch there means the
    log was rewritten with its hashes recomputed, which the chain alone cannot show.
    """
    expect = dict(expect or {})
    if expect.pop(0, GENESIS) != GENESIS:
        return Verdict(False, first_bad=1, reason="the checkpoint at seq 0 does not hold the empty chain's hash")
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        project = await conn.fetchrow(
            "SELECT head, last_hash, oldest, pruned_hash FROM projects WHERE id = $1", project_id
        )
        if project is None:
            raise NoSuchProject(project_id)
        head: int = project["head"]
        previous, expected = bytes(project["pruned_hash"]), project["oldest"]
        for at, digest in list(expect.items()):
            if at < expected - 1:  # pruned: the archive's verifier checks it (archive.verify)
                del expect[at]
            elif at == expected - 1 and digest != previous:
                return rewritten(at)
            elif at == expected - 1:
                del expect[at]
        async for row in conn.cursor(_ROWS, project_id, expected, prefetch=prefetch):
            seq: int = row["seq"]
            if seq != expected:
                return Verdict(False, first_bad=expected, reason=f"seq {expected} is missing from the log")
            computed = link(
                previous,
                canonical(
                    project_id=project_id,
                    seq=seq,
                    message_id=row["message_id"],
                    type=row["type"],
                    timestamp=format_timestamp(row["created_at"]),
                    data=orjson.loads(row["data"]),
                ),
            )
            if computed != row["hash"]:
                return Verdict(
                    False,
                    first_bad=seq,
                    reason=f"the event stored at seq {seq} does not continue the chain: it was changed, "
                    "or moved here from another seq, or the events before it were",
                )
            wanted = expect.pop(seq, None)
            if wanted is not None and wanted != computed:
                return rewritten(seq)
            previous, expected = computed, seq + 1
        last = expected - 1
        if last != head:
            return Verdict(
                False, first_bad=expected, reason=f"the log ends at seq {last} but the project's head is {head}"
            )
        if previous != project["last_hash"]:
            return Verdict(False, first_bad=head, reason="the project's last hash differs from its last event's")
        if expect:
            missing = min(expect)
            return Verdict(False, first_bad=missing, reason=f"the checkpoint's seq {missing} is past the head {head}")
        return Verdict(True, head=head, hash=previous)


# --- checkpoints -----------------------------------------------------------------------------------------


def signing_key(secret: str) -> Ed25519PrivateKey:
    """The service's checkpoint key, derived from its secret: every instance sharing the secret signs
    alike, and a rotated secret (HERALD_PREVIOUS_SECRETS) still verifies the receipts it signed."""
    seed = hmac.new(secret.encode(), b"herald audit checkpoint key v1", hashlib.sha256).digest()
    return Ed25519PrivateKey.from_private_bytes(seed)


def public_key_bytes(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: Ed25519PublicKey) -> str:
    return hashlib.sha256(public_key_bytes(key)).hexdigest()[:16]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _signed_part(checkpoint: Mapping[str, Any]) -> bytes:
    return rfc8785.dumps({k: checkpoint[k] for k in ("projectId", "seq", "hash", "at", "keyId")})


class ChainBroken(Exception):
    def __init__(self, verdict: Verdict) -> None:
        super().__init__(f"the chain is broken at seq {verdict.first_bad}: {verdict.reason}")
        self.verdict = verdict


async def checkpoint(conn: asyncpg.Connection, project_id: str, secret: str) -> dict[str, Any]:
    """A signed receipt of the chain at the project's head (docs/protocol.md, "Audit"), given only for a
    chain that verifies: a receipt for a log already altered would vouch for the alteration."""
    verdict = await verify(conn, project_id)
    if not verdict.ok:
        raise ChainBroken(verdict)
    key = signing_key(secret)
    body: dict[str, Any] = {
        "projectId": project_id,
        "seq": verdict.head,
        "hash": verdict.hash.hex(),
        "at": format_timestamp(datetime.now(UTC)),
        "keyId": key_id(key.public_key()),
    }
    body["signature"] = _b64(key.sign(_signed_part(body)))
    return body


class BadCheckpoint(Exception):
    """A checkpoint this service did not sign, or whose fields were changed since."""


def open_checkpoint(checkpoint: Mapping[str, Any], secrets: Sequence[str]) -> tuple[str, int, bytes]:
    """The project, seq and hash a checkpoint vouches for, once its signature checks out against one of
    the service's keys (its secret and those before a rotation)."""
    try:
        keys = {key_id(k.public_key()): k.public_key() for k in map(signing_key, secrets)}
        key = keys.get(checkpoint["keyId"])
        if key is None:
            raise BadCheckpoint("not a checkpoint of this service: signed with a key it does not hold (keyId)")
        key.verify(_unb64(checkpoint["signature"]), _signed_part(checkpoint))
        project_id, seq, digest = checkpoint["projectId"], checkpoint["seq"], bytes.fromhex(checkpoint["hash"])
    except BadCheckpoint:
        raise
    except Exception as exc:  # a missing field, bad base64 or hex, or a signature that does not verify
        why = str(exc) or "the signature does not match"
        raise BadCheckpoint(f"not a valid checkpoint ({type(exc).__name__}: {why})") from None
    if not isinstance(project_id, str) or not isinstance(seq, int) or len(digest) != 32:
        raise BadCheckpoint("not a valid checkpoint (field types)")
    return project_id, seq, digest


def public_key(secret: str) -> dict[str, str]:
    """The checkpoint key's public half, for auditors who check signatures with their own tools."""
    key = signing_key(secret).public_key()
    return {"keyId": key_id(key), "algorithm": "Ed25519", "publicKey": _b64(public_key_bytes(key))}
