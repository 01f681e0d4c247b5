"""Fuzzing both front doors: hypothesis over `/ws` messages, schemathesis over the OpenAPI document.

Both run against a real uvicorn and PostgreSQL over real sockets. Hypothesis and schemathesis drive
their examples synchronously, so here the server runs on an event loop in a background thread (one
server and one database per test, shared by all its examples) and the tests use blocking clients.

What every example must show: an answer (an `error` frame with a contract code, the message's own
reply, or a documented close code; an HTTP status the document declares, never a 5xx), no error
logged by the server, and no trace in the log of anything that was rejected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.specs.openapi.checks import positive_data_acceptance
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from service import db, webhooks
from service.codes import CloseCode, ErrorCode
from service.messages import EVENT_TYPES, MAX_MESSAGE_BYTES, MAX_SAFE_INTEGER, REPO_PATTERN
from tests.conftest import RunningServer, make_settings, scratch_database, start_server, stop_server, timeout

T = TypeVar("T")

# --- a server on its own thread ----------------------------------------------------------------------


@dataclass
class Hosted:
    """A running server whose event loop lives in a background thread."""

    server: RunningServer
    database_url: str
    loop: asyncio.AbstractEventLoop

    def run(self, coro: Coroutine[Any, Any, T], wait: float = 30) -> T:
        """Run `coro` on the server's loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout(wait))

    def sql(self, query: str, *args: Any) -> list[asyncpg.Record]:
        async def fetch() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(db.asyncpg_dsn(self.database_url))
            try:
                rows: list[asyncpg.Record] = await conn.fetch(query, *args)
                return rows
            finally:
                await conn.close()

        return self.run(fetch())

    def logged(self) -> set[tuple[str, int]]:
        """Every (projectId, seq) in the event log."""
        return {(r["project_id"], r["seq"]) for r in self.sql("SELECT project_id, seq FROM events")}

    def heads(self) -> dict[str, int]:
        return {r["id"]: r["head"] for r in self.sql("SELECT id, head FROM projects")}


@contextlib.contextmanager
def hosted_server(pg_url: str, template: str, data_dir: Path, **overrides: Any) -> Iterator[Hosted]:
    """A fresh database and a uvicorn serving it, on an event loop in a thread of their own."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="herald-fuzz-server", daemon=True)
    thread.start()
    stack = contextlib.AsyncExitStack()

    async def start() -> Hosted:
        url = await stack.enter_async_context(scratch_database(pg_url, template))
        running, task = await start_server(make_settings(url, data_dir, **overrides))
        stack.push_async_callback(stop_server, running, task)
        return Hosted(running, url, loop)

    def run(coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout(60))

    try:
        yield run(start())
    finally:
        try:
            run(stack.aclose())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout(10))
            loop.close()


class ErrorRecords(logging.Handler):
    """Collects every record of level ERROR or above (an unhandled exception in a route is one)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [f"{r.name}: {r.getMessage()} {self.format(r) if r.exc_info else ''}" for r in self.records]


WEBHOOK_SECRET = "fuzz-webhook-secret"


@pytest.fixture
def hosted(pg_url: str, template_db: str, tmp_path: Path) -> Iterator[Hosted]:
    with hosted_server(
        pg_url,
        template_db,
        tmp_path,
        ws_rate=1_000_000,  # the fuzzer sends far faster than any client may; the rate limit has its own test
        ws_burst=1_000_000,
        github_webhook_secret=WEBHOOK_SECRET,
    ) as running:
        yield running


@pytest.fixture
def server_errors(hosted: Hosted) -> Iterator[ErrorRecords]:
    """ERROR records logged anywhere in the process during the test. Attached after the server
    started: uvicorn configures its loggers at start-up, and "uvicorn" does not propagate to the root."""
    handler = ErrorRecords()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


FUZZ = settings(
    deadline=None,  # a round trip to a server shared with other tests' CPU is not a unit of work
    database=None,  # keep no example database in the work tree; failures print their reproduction
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)

# --- WebSocket ---------------------------------------------------------------------------------------

SENTINEL_TS = 7_770_000_000_000  # pings of our own, to know when the server has answered a message
ABNORMAL_CLOSURE = 1006  # the connection dropped without a close frame
PROJECTS = ("fz", "fz2")  # exist; "ghost" does not
# No project can have these; half hold U+0000, which PostgreSQL cannot even compare.
ODD_IDS = ["fz\x00", "\x00", "\x00fz", "f\x00z", "fz ", "-fz", "f" * 65, "fz\n", "fz/..", ""]


def is_event(frame: dict[str, Any]) -> bool:
    return frame.get("type") in EVENT_TYPES and "seq" in frame and "timestamp" in frame


@dataclass
class Answer:
    """What the server sent in answer to one message: replies in order, and a close code if it closed."""

    frames: list[dict[str, Any]]
    close: int | None = None


@dataclass
class Socket:
    """One authenticated connection that checks the delivery invariants on every frame it reads: each
    event belongs to a project subscribed on this connection and comes exactly one after the last."""

    server: RunningServer
    token: str
    client_id: str = "fuzzer"
    ws: ClientConnection | None = None
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    next_seq: dict[str, int] = field(default_factory=dict)  # per subscribed project: the seq due next
    events: list[dict[str, Any]] = field(default_factory=list)
    pings: int = 0

    def open(self) -> Socket:
        """(Re)connect and authenticate; a previous connection is closed first."""
        self.stack.close()
        self.ws = self.stack.enter_context(
            connect(
                f"{self.server.ws_url}?clientId={self.client_id}",
                proxy=None,
                max_size=None,  # the server, not the client, must be the one to refuse a large message
                max_queue=None,  # buffer whatever arrives while the test looks elsewhere
                open_timeout=timeout(10),
                compression=None,
            )
        )
        self.next_seq.clear()
        self.ws.send(json.dumps({"type": "auth", "token": self.token}))
        welcome = self.read(timeout(5))
        assert welcome["type"] == "welcome" and welcome["clientId"] == self.client_id, welcome
        return self

    def close(self) -> None:
        self.stack.close()

    def read(self, wait: float) -> dict[str, Any]:
        assert self.ws is not None
        raw = self.ws.recv(timeout=wait)
        frame: dict[str, Any] = json.loads(raw)
        return frame

    def track(self, frame: dict[str, Any]) -> None:
        """Delivery bookkeeping for a subscribed/unsubscribed answer or an event."""
        kind, pid = frame.get("type"), frame.get("projectId")
        if kind == "subscribed":
            self.next_seq[pid] = frame["after"] + 1
        elif kind == "unsubscribed":
            self.next_seq.pop(pid, None)
        elif is_event(frame):
            assert pid in self.next_seq, f"an event of {pid!r}, which is not subscribed here: {frame}"
            assert frame["seq"] == self.next_seq[pid], f"expected seq {self.next_seq[pid]}: {frame}"
            self.next_seq[pid] += 1
            self.events.append(frame)

    def exchange(self, payload: str | bytes, wait: float = 3) -> Answer:
        """Send one message, then a ping of our own; everything before its pong is the answer (one
        connection's replies are sent in order). Fails if the server goes silent. Reconnects first
        if the server closed the connection before."""
        if self.ws is None:
            self.open()
        assert self.ws is not None
        self.pings += 1
        sentinel = SENTINEL_TS + self.pings
        frames: list[dict[str, Any]] = []
        try:
            self.ws.send(payload)
            self.ws.send(json.dumps({"type": "ping", "ts": sentinel}))
            deadline = time.monotonic() + timeout(wait)
            while True:
                try:
                    frame = self.read(max(0.0, deadline - time.monotonic()))
                except TimeoutError:
                    raise AssertionError(f"no answer within {timeout(wait)} s to {payload!r:.300}") from None
                if frame["type"] == "pong" and frame.get("ts") == sentinel:
                    return Answer(frames)
                self.track(frame)
                if frame["type"] != "ping" and not is_event(frame):  # heartbeats and events are not answers
                    frames.append(frame)
        except ConnectionClosed as exc:
            self.ws = None
            return Answer(frames, exc.rcvd.code if exc.rcvd is not None else ABNORMAL_CLOSURE)


def ref_of(message: dict[str, Any]) -> str | None:
    """docs/protocol.md §4: the offending message's messageId, else its projectId, else null."""
    for key in ("messageId", "projectId"):
        if isinstance(message.get(key), str):
            return str(message[key])
    return None


# Values that break a field: wrong types, numbers past every limit, strings PostgreSQL cannot hold.
NASTY: list[Any] = [
    None, True, False, 0, -1, 1, 2**31, MAX_SAFE_INTEGER, MAX_SAFE_INTEGER + 1, 2**63 - 1, 2**63, 2**64 - 1,
    -(2**63), 10**30, -(10**30), 0.5, -0.0, 1e308, 5e-324, "", "0", "-1", "NaN", "Infinity", "1e999", "\x00",
    "fz\x00", "ünïcødé", "🎉" * 40, " ", "a" * 300, "\u202e\ufeff", [], [1], {}, {"a": None},
]  # fmt: skip
json_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64) + 1, max_value=2**64 - 1)  # orjson reads up to 64 bits as ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30)
)


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # A named function: hypothesis 6.170 misreads this as a lambda and warns that it cannot recurse.
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)


json_values = st.recursive(json_leaves, json_containers, max_leaves=10)
wrong = st.sampled_from(NASTY) | json_values
texts = st.text(max_size=40)  # any code point but surrogates, U+0000 included

DATA_FIELDS: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "agent_run_progress": {
        "runId": st.text(min_size=1, max_size=20),
        "status": st.sampled_from(["queued", "running", "succeeded", "failed", "cancelled"]),
        "progress": st.floats(0, 100) | st.integers(0, 100),
        "step": texts | st.none(),
        "message": texts | st.none(),
    },
    "pr_notification": {
        "action": st.sampled_from(["opened", "closed", "merged", "review_submitted"]),
        "number": st.integers(1, MAX_SAFE_INTEGER),
        "title": texts,
        "url": texts,
        "repo": st.from_regex(REPO_PATTERN.replace("+", "{1,20}"), fullmatch=True),
        "author": texts | st.none(),
        "headSha": st.text("0123456789abcdef", min_size=7, max_size=40),
    },
    "validation_update": {
        "name": st.text(min_size=1, max_size=30),
        "status": st.sampled_from(["queued", "in_progress", "completed"]),
        "conclusion": st.sampled_from(["success", "failure", "error", "stale"]) | st.none(),
        "url": texts | st.none(),
        "prNumber": st.integers(1, MAX_SAFE_INTEGER) | st.none(),
        "headSha": texts | st.none(),
    },
}


@st.composite
def mutated(draw: st.DrawFn, fields: dict[str, st.SearchStrategy[Any]]) -> dict[str, Any]:
    """A dict of `fields`, each mostly valid, sometimes missing or wrong; sometimes an extra key."""
    out: dict[str, Any] = {}
    for name, valid in fields.items():
        choice = draw(st.sampled_from(["valid"] * 6 + ["missing", "wrong"]))
        if choice == "valid":
            out[name] = draw(valid)
        elif choice == "wrong":
            out[name] = draw(wrong)
    if draw(st.sampled_from([False] * 9 + [True])):
        out[draw(st.text(max_size=10))] = draw(wrong)
    return out


def message_shapes(tokens: list[str]) -> dict[str, dict[str, st.SearchStrategy[Any]]]:
    """The fields of each client message of §4, by type, with the values that make them valid."""
    project = st.sampled_from([*PROJECTS, "ghost"]) | st.sampled_from(ODD_IDS) | texts
    ts = st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False, allow_infinity=False)
    shapes: dict[str, dict[str, st.SearchStrategy[Any]]] = {
        "subscribe": {"projectId": project, "after": st.integers(0, 4) | st.none()},
        "unsubscribe": {"projectId": project},
        "ack": {"projectId": project, "seq": st.integers(0, 6)},
        "ping": {"ts": ts},
        "pong": {"ts": ts},
        "auth": {"token": st.sampled_from(tokens)},
    }
    for event_type, data_fields in DATA_FIELDS.items():
        shapes[event_type] = {
            "projectId": project,
            "data": mutated(data_fields),
            "messageId": st.sampled_from(["m-1", "m-2", "m-3"]) | st.text(min_size=1, max_size=130) | st.none(),
            "timestamp": json_values,
            "seq": json_values,
        }
    return shapes


def client_messages(kind: str, fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """A message of type `kind` with mutated fields."""
    return mutated(fields).map(lambda body: {"type": kind, **body})


@st.composite
def mistyped_messages(draw: st.DrawFn, shapes: dict[str, dict[str, st.SearchStrategy[Any]]]) -> dict[str, Any]:
    """The fields of some message under a `type` that is wrong: not a string, or no type of §4."""
    body = draw(mutated(shapes[draw(st.sampled_from(sorted(shapes)))]))
    kind = draw(wrong | st.sampled_from(["Subscribe", "event", "published", "welcome", " ping", ""]))
    return {**body, "type": kind}


def raw_frames() -> st.SearchStrategy[str | bytes]:
    """Anything but a well-formed message: bytes, text, JSON that is no object, objects without a
    string type, and texts that only look like JSON (NaN, 1e999, lone surrogates, trailing junk)."""
    not_typed = json_values.filter(lambda v: not (isinstance(v, dict) and isinstance(v.get("type"), str)))
    almost = st.sampled_from(
        [
            '{"type":"ping","ts":NaN}',
            '{"type":"ping","ts":Infinity}',
            '{"type":"ack","projectId":"fz","seq":1e999}',
            '{"type":"subscribe","projectId":"\\ud800"}',
            '{"type":"subscribe","projectId":"fz"',
            '{"type":"subscribe","projectId":"fz"}}',
            '{"type":"subscribe","projectId":"fz"} x',
            "{'type':'ping'}",
            "",
            " ",
            "null",
            "\x00",
            '"\\u0000"',
        ]
    )
    return st.binary(max_size=200) | st.text(max_size=200) | not_typed.map(json.dumps) | almost


def _not_json(constant: str) -> Any:
    raise ValueError(f"{constant} is not JSON")


def typed_object(payload: str | bytes) -> bool:
    """Whether `payload` is a text message holding a JSON object with a string `type`."""
    try:
        value = json.loads(payload, parse_constant=_not_json) if isinstance(payload, str) else None
    except ValueError:
        return False
    return isinstance(value, dict) and isinstance(value.get("type"), str)


# What each kind of message may be refused with; anything else (unavailable, rate_limited, …) is a bug.
REFUSALS: dict[str, set[ErrorCode]] = {
    "subscribe": {ErrorCode.INVALID_FRAME, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND, ErrorCode.INVALID_CURSOR},
    "unsubscribe": {ErrorCode.INVALID_FRAME},
    "ack": {ErrorCode.INVALID_FRAME, ErrorCode.FORBIDDEN, ErrorCode.NOT_SUBSCRIBED, ErrorCode.INVALID_ACK},
    "ping": {ErrorCode.INVALID_FRAME},
    "pong": {ErrorCode.INVALID_FRAME},
    **{t: {ErrorCode.INVALID_DATA, ErrorCode.FORBIDDEN, ErrorCode.NOT_FOUND} for t in EVENT_TYPES},
}
SUCCESS = {
    "subscribe": "subscribed",
    "unsubscribe": "unsubscribed",
    "ping": "pong",
    **dict.fromkeys(EVENT_TYPES, "published"),
}


@dataclass
class Ledger:
    """What the server said it appended: the log must hold exactly this afterwards."""

    published: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (pid, seq) -> data sent
    message_ids: dict[tuple[str, str], int] = field(default_factory=dict)

    def record(self, message: dict[str, Any], reply: dict[str, Any]) -> None:
        key = (reply["projectId"], reply["seq"])
        assert reply["projectId"] == message["projectId"], reply
        seen = self.message_ids.setdefault((reply["projectId"], reply["messageId"]), reply["seq"])
        assert seen == reply["seq"], f"messageId {reply['messageId']!r} appended twice: {seen}, {reply['seq']}"
        if isinstance(message.get("messageId"), str):
            assert reply["messageId"] == message["messageId"], reply
        self.published.setdefault(key, {k: v for k, v in message["data"].items() if v is not None})


def check_answer(message: dict[str, Any], answer: Answer, ledger: Ledger) -> None:
    """The oracle: one answer of the right kind, or a documented close."""
    kind = message.get("type")
    frames = answer.frames
    for frame in frames:
        if frame["type"] == "error":
            assert frame["code"] in ErrorCode.__members__.values(), frame
            assert isinstance(frame["message"], str) and frame["message"], frame
    if kind == "auth":  # a refresh: nothing, a malformed-frame error, drops of what the token no longer grants, or 4401
        assert answer.close in (None, CloseCode.AUTH), answer
        assert all(f["type"] in ("error", "unsubscribed") for f in frames), frames
        assert {f["code"] for f in frames if f["type"] == "error"} <= {ErrorCode.INVALID_FRAME, ErrorCode.FORBIDDEN}
        return
    assert answer.close is None, f"closed with {answer.close} after {message!r}"
    if not isinstance(kind, str):
        expected_codes = {ErrorCode.INVALID_FRAME}
    elif kind not in REFUSALS:
        expected_codes = {ErrorCode.UNKNOWN_TYPE}
    else:
        expected_codes = REFUSALS[kind]
    if kind in ("ack", "pong"):  # answered only when refused
        assert len(frames) <= 1, frames
    else:
        assert len(frames) == 1, f"{message!r} was answered with {frames}"
    if not frames:
        return
    reply = frames[0]
    if reply["type"] == "error":
        assert reply["code"] in expected_codes, f"{message!r}: {reply}"
        assert reply["ref"] == ref_of(message), reply
        return
    assert isinstance(kind, str) and reply["type"] == SUCCESS.get(kind), f"{message!r}: {reply}"
    if kind == "ping":  # echoed as the same double (what a JavaScript client holds): 10**30 may come back as 1e30
        sent = message.get("ts")
        assert reply["ts"] == sent or float(reply["ts"]) == float(sent), reply
    elif kind in EVENT_TYPES:
        ledger.record(message, reply)
    else:
        assert reply["projectId"] == message["projectId"], reply


def make_projects(server: RunningServer, *ids: str) -> None:
    with httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=timeout(10)) as http:
        for pid in ids:
            r = http.post("/api/projects", json={"id": pid, "name": pid})
            assert r.status_code == 201, r.text


def test_websocket_answers_malformed_frames(hosted: Hosted, server_errors: ErrorRecords) -> None:
    """Binary frames, non-JSON text, JSON that is no object, objects without a string type, and
    near-JSON (NaN, 1e999, lone surrogates) each get one `invalid_frame` error on a connection that
    lives on; a message over 64 KiB closes 1009 and a new connection is served; nothing is logged."""
    server = hosted.server
    make_projects(server, "fz")
    sock = Socket(server, server.token()).open()

    @settings(FUZZ, max_examples=400)
    @given(payload=raw_frames())
    def fuzz(payload: str | bytes) -> None:
        answer = sock.exchange(payload)
        assert answer.close is None, f"closed with {answer.close} after {payload!r}"
        assert len(answer.frames) == 1, answer.frames
        reply = answer.frames[0]
        assert reply["type"] == "error", reply
        if not typed_object(payload):
            assert reply["code"] == ErrorCode.INVALID_FRAME, reply

    fuzz()
    for oversized in (b"x" * (MAX_MESSAGE_BYTES + 1), json.dumps({"type": "ping", "pad": "x" * MAX_MESSAGE_BYTES})):
        assert sock.exchange(oversized).close == CloseCode.MESSAGE_TOO_BIG
    assert sock.exchange(json.dumps({"type": "subscribe", "projectId": "fz"})).frames[0]["type"] == "subscribed"
    sock.close()
    assert hosted.logged() == set()
    assert server_errors.lines() == []


def test_websocket_answers_mutated_messages(hosted: Hosted, server_errors: ErrorRecords) -> None:
    """Client messages of every type with fields missing, of the wrong type, past every limit, full
    of odd unicode or U+0000, or with extra keys: each gets its answer (its reply, or an error with
    a code the contract lists for it, `ref` set), or 4401 for a bad token, never silence or another
    close; events keep their order; afterwards the connection and a bystander are still served, and
    the log holds exactly what was answered `published`."""
    server = hosted.server
    make_projects(server, *PROJECTS)
    token = server.token()
    tokens = [
        token,
        server.token(projects=["fz"], scopes=("subscribe",)),  # a refresh that narrows: fz2 dropped, publish refused
        server.token(user="mallory"),  # another user: 4401
        "not-a-token",
        "",
    ]
    bystander = Socket(server, server.token(user="bob"), client_id="bystander").open()
    assert (
        bystander.exchange(json.dumps({"type": "subscribe", "projectId": "fz", "after": 0})).frames[0]["type"]
        == "subscribed"
    )
    sock = Socket(server, token).open()
    ledger = Ledger()

    shapes = message_shapes(tokens)
    for kind in [*shapes, None]:  # each type in turn, so that every one gets its share
        strategy = mistyped_messages(shapes) if kind is None else client_messages(kind, shapes[kind])

        @settings(FUZZ, max_examples=120 if kind in EVENT_TYPES else 60)
        @given(message=strategy)
        def fuzz(message: dict[str, Any]) -> None:
            check_answer(message, sock.exchange(json.dumps(message)), ledger)

        fuzz()

    # The connection is still served: a refresh back to the full token, a subscribe, a publish.
    assert sock.exchange(json.dumps({"type": "auth", "token": token})).frames == []
    assert sock.exchange(json.dumps({"type": "subscribe", "projectId": "fz2"})).frames[0]["type"] == "subscribed"
    last = {"type": "validation_update", "projectId": "fz2", "data": {"name": "ci", "status": "queued"}}
    answer = sock.exchange(json.dumps(last))
    assert [f["type"] for f in answer.frames] == ["published"], answer
    check_answer(last, answer, ledger)

    # The log holds exactly what was answered `published`, and the heads agree.
    assert hosted.logged() == set(ledger.published)
    heads = hosted.heads()
    for pid in PROJECTS:
        assert heads[pid] == sum(1 for p, _ in ledger.published if p == pid)

    # The bystander got every event of fz, in order (Socket.track), each as it was published.
    deadline = time.monotonic() + timeout(10)
    while len(bystander.events) < heads["fz"] and time.monotonic() < deadline:
        bystander.exchange(json.dumps({"type": "ping", "ts": 1}))
    assert [e["seq"] for e in bystander.events] == list(range(1, heads["fz"] + 1))
    for event in bystander.events:
        assert same_json(event["data"], ledger.published[("fz", event["seq"])]), event
    sock.close()
    bystander.close()
    assert server_errors.lines() == []


def same_json(a: Any, b: Any) -> bool:
    """Equal as JSON values: jsonb keeps numbers as decimals, so 1.0 may come back as 1, but not as true."""
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers) and not isinstance(a, bool) and not isinstance(b, bool):
        return a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_json(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def test_input_beyond_the_contract_never_reaches_the_database(hosted: Hosted, server_errors: ErrorRecords) -> None:
    """Regressions found by the fuzzers: a project id outside the contract's pattern (U+0000 above
    all) dropped the socket silently and was a 500 over HTTP; a seq past 64 bits in a history query
    or an HTTP ack was a 500. Each is now refused before any query."""
    server = hosted.server
    make_projects(server, "fz")
    sock = Socket(server, server.token()).open()
    run = {"runId": "r1", "status": "running", "progress": 5}
    for pid in ("fz\x00", "\x00", "fz ", "f" * 65):
        for message, code in (
            ({"type": "subscribe", "projectId": pid}, ErrorCode.INVALID_FRAME),
            ({"type": "unsubscribe", "projectId": pid}, ErrorCode.INVALID_FRAME),
            ({"type": "ack", "projectId": pid, "seq": 0}, ErrorCode.INVALID_FRAME),
            ({"type": "agent_run_progress", "projectId": pid, "data": run}, ErrorCode.INVALID_DATA),
        ):
            answer = sock.exchange(json.dumps(message))
            assert answer.close is None and len(answer.frames) == 1, answer
            reply = answer.frames[0]
            assert (reply["type"], reply["code"], reply["ref"]) == ("error", code, pid), reply
            assert reply["message"].startswith("projectId: "), reply
    sock.close()

    narrow = server.headers(server.token(projects=["fz"]))
    with httpx.Client(base_url=server.base_url, headers=server.headers(), timeout=timeout(10)) as http:
        for path in ("events", "cursors", "state"):
            assert http.get(f"/api/projects/fz%00/{path}").json()["error"] == "not_found"
            assert http.get(f"/api/projects/fz%00/{path}", headers=narrow).json()["error"] == "forbidden"
        r = http.post("/api/projects/fz%00/events", json={"type": "agent_run_progress", "data": run})
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
        r = http.post("/api/projects/fz%00/ack", json={"clientId": "c", "seq": 0})
        assert (r.status_code, r.json()["error"]) == (404, "not_found")
        huge = 10**33
        for name in ("after", "before"):
            r = http.get(f"/api/projects/fz/events?{name}={huge}")
            assert (r.status_code, r.json()["error"], r.json()["field"]) == (422, "invalid_data", name), r.text
        r = http.post("/api/projects/fz/ack", json={"clientId": "c", "seq": huge})
        assert (r.status_code, r.json()["error"], r.json()["field"]) == (422, "invalid_data", "seq"), r.text
        # Also found: /metrics documented its JSON errors as text/plain.
        responses = http.get("/api/openapi.json").json()["paths"]["/metrics"]["get"]["responses"]
        assert list(responses["200"]["content"]) == ["text/plain"]
        assert list(responses["401"]["content"]) == ["application/json"]
    assert hosted.logged() == set()
    assert server_errors.lines() == []


# --- HTTP: schemathesis over the OpenAPI document -----------------------------------------------------

PATH_IDS = ["fz", "ghost", "fz\x00", "f" * 65, "fz "]  # a project, a missing one, and ids no project can have
VALID_EVENTS = [  # generated bodies are practically never valid events: aim at the 201 path too
    {"type": "agent_run_progress", "data": {"runId": "r1", "status": "running", "progress": 5}},
    {"type": "validation_update", "data": {"name": "ci", "status": "queued"}, "messageId": "ci-1"},
]


class GitHubSignature(requests.auth.AuthBase):
    """Signs a webhook delivery's final body as GitHub does, so that fuzzing gets past the signature."""

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        request.headers["X-Hub-Signature-256"] = webhooks.sign(
            WEBHOOK_SECRET, body.encode() if isinstance(body, str) else body
        )
        return request


def operation_cases(
    operation: schemathesis.APIOperation, admin: dict[str, str], others: list[dict[str, str]]
) -> st.SearchStrategy[schemathesis.Case]:
    """Schema-valid and schema-violating cases with the `admin` headers, aimed also at a real
    project and at impossible ids (generated ids all miss, and never hold U+0000); schema-valid
    cases with each of the `others` headers (a bad token, a narrow one)."""
    modes = list(schemathesis.GenerationMode)
    strategies = [operation.as_strategy(generation_mode=mode, headers=admin) for mode in modes]
    strategies += [operation.as_strategy(headers=headers) for headers in others]
    if "{project_id}" in operation.path:
        strategies += [
            operation.as_strategy(generation_mode=mode, headers=admin, path_parameters={"project_id": pid})
            for mode in modes
            for pid in PATH_IDS
        ]
    cases = st.one_of(strategies)
    if operation.method.upper() == "POST" and operation.path.endswith("/events"):  # half the time, a valid event
        path = {"project_id": "fz"}
        valid = [operation.as_strategy(headers=admin, path_parameters=path, body=b) for b in VALID_EVENTS]
        cases = cases | st.one_of(valid)
    if operation.method.upper() == "POST" and operation.path.endswith("/events/batch"):  # and valid batches
        path = {"project_id": "fz"}
        cases = cases | operation.as_strategy(headers=admin, path_parameters=path, body={"events": VALID_EVENTS})
    return cases


def test_http_api_conforms_to_its_openapi_document(hosted: Hosted, server_errors: ErrorRecords) -> None:
    """Every operation of /api/openapi.json but the endless SSE streams, with schema-valid and
    schema-violating data, an admin token (and a bad one, and a narrow one), signed webhooks: no
    5xx; statuses, content types, headers and bodies as documented; nothing logged; and the log
    holds exactly the events answered 201 (or `appended` by a webhook)."""
    server = hosted.server
    make_projects(server, "fz")
    schema = schemathesis.openapi.from_url(f"{server.base_url}/api/openapi.json", timeout=timeout(10))
    schema.config.update(base_url=server.base_url, request_timeout=timeout(10))
    # Unknown query parameters are ignored, as HTTP APIs conventionally do; the contract does not
    # ask for their rejection. Tokens come from operation_cases, not from generated values.
    schema.config.generation.update(allow_extra_parameters=False, with_security_parameters=False)
    admin = server.headers()
    others = [{"Authorization": "Bearer not-a-token"}, server.headers(server.token(scopes=("subscribe",)))]
    # A 200 from an SSE stream never ends by design; tests/api/test_sse.py covers those routes.
    schema = schema.exclude(tag="streams")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8, [op.label for op in operations]
    created: set[tuple[str, int]] = set()
    statuses: Counter[tuple[str, int]] = Counter()  # (operation, status): what the fuzzing reached

    def check(case: schemathesis.Case) -> None:
        signed = case.operation.path.startswith("/webhooks/") and (
            case.meta is None or case.meta.generation.mode is schemathesis.GenerationMode.POSITIVE
        )  # a negative case may be about the signature header itself
        response = case.call(auth=GitHubSignature() if signed else None)
        statuses[(case.operation.label, response.status_code)] += 1
        if response.status_code == 201 and case.operation.path.endswith("/events"):
            created.add((response.json()["projectId"], response.json()["seq"]))
        if response.status_code == 201 and case.operation.path.endswith("/events/batch"):
            answer = response.json()
            created.update((answer["projectId"], e["seq"]) for e in answer["events"] if e["created"])
        if response.status_code == 202 and response.json().get("status") == "appended":
            created.add((response.json()["projectId"], response.json()["seq"]))
        # Schema-valid input may still be refused: a taken repo, U+0000 in a string, a seq
        # beyond the head, a missing project are all beyond what the JSON Schema says.
        case.validate_response(response, excluded_checks=[positive_data_acceptance])

    for operation in operations:
        settings(FUZZ, max_examples=50)(given(case=operation_cases(operation, admin, others))(check))()
        if operation.method.upper() == "POST" and operation.path.endswith("/events"):
            # The generator aims at these too, but by chance: make sure the 201 path is checked.
            for body in VALID_EVENTS:
                check(operation.Case(path_parameters={"project_id": "fz"}, headers=admin, body=body))
        if operation.method.upper() == "POST" and operation.path.endswith("/events/batch"):
            batch = {"events": [{k: v for k, v in e.items() if k != "messageId"} for e in VALID_EVENTS]}
            check(operation.Case(path_parameters={"project_id": "fz"}, headers=admin, body=batch))

    assert created, statuses
    assert hosted.logged() == created, statuses
    assert server_errors.lines() == []
