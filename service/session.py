"""The protocol of one client connection, without I/O (docs/protocol.md §4 and §5).

A `Session` is fed what arrives (`receive` a WebSocket message, or `subscribe` for an SSE stream's
projects) and answers with effects, taken in order with `take`: frames to send (`Send`, `Refuse`)
and requests to carry out (`Append`, `FindStart`, `CheckAck`, `Ack`, `Connect`, `Disconnect`,
`Reauthorize`, `Close`). A request that needs an answer carries a ticket, and its driver answers it
with `appended`, `found`, `ack_checked` or `unavailable`. The session never awaits anything; it
decides, and the drivers (api/websocket.py, api/sse.py) do the I/O, so the start-position rule, the
authorization of each frame and the mapping of failures to error codes exist once, here, and are
tested without a socket (tests/test_session.py).

Order. Replies go out in the order of the messages they answer. Consecutive publishes are pipelined:
each becomes an `Append` at once, up to MAX_PIPELINED waiting for their commits, and their answers
are given in order as the commits land. Any other message waits until the publishes before it are
answered and the request before it is done, so a client sees exactly what it would if every message
were handled to the end before the next. `accepting` tells the driver when to read the next message.
"""

from __future__ import annotations

import logging
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import orjson
from pydantic import BaseModel

from . import cursors
from .auth import InvalidToken, Principal
from .codes import CloseCode, ErrorCode
from .db import DatabaseBusy, DatabaseUnavailable
from .eventlog import HistoryTruncated, OutcomeUnknown, ProjectNotFound, StoredEvent
from .limits import RateLimit
from .messages import (
    EVENT_TYPES,
    AckMessage,
    AuthMessage,
    InvalidData,
    PingMessage,
    PongMessage,
    PublishMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    check,
    event_data,
)

logger = logging.getLogger("herald.session")
M = TypeVar("M", bound=BaseModel)

MAX_PIPELINED = 64  # publishes of one connection waiting for their commit before reading waits too


# --- effects: what a session asks of its driver, in order --------------------------------------------


@dataclass(frozen=True, slots=True)
class Send:
    """Send this reply frame (JSON text) to the client."""

    text: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """Refuse what the client asked: an `error` frame over a WebSocket (the connection stays open),
    an HTTP error before an SSE stream starts."""

    code: ErrorCode
    message: str
    ref: str | None
    oldest: int | None = None  # `history_truncated`: the oldest seq kept
    state_seq: int | None = None  # `history_truncated`, `history_rewritten`: the head when answered
    seq: int | None = None  # `history_rewritten`: the client's position, where the log differs

    def frame(self) -> str:
        fields: dict[str, Any] = {"type": "error", "code": self.code.value, "message": self.message, "ref": self.ref}
        if self.oldest is not None:
            fields.update(oldest=self.oldest, stateSeq=self.state_seq)
        if self.seq is not None:
            fields.update(seq=self.seq, stateSeq=self.state_seq)
        return encode(**fields)


def history_truncated(project_id: str, exc: HistoryTruncated) -> Refuse:
    """The refusal of a read below the low watermark (docs/protocol.md §7.4): the same frame whether it
    answers a subscribe or ends a subscription whose catch-up the watermark overtook (feed.py)."""
    return Refuse(ErrorCode.HISTORY_TRUNCATED, str(exc), project_id, oldest=exc.oldest, state_seq=exc.head)


def history_rewritten(project_id: str, seq: int, head: int) -> Refuse:
    """The refusal of a resume whose position names an event the log no longer has as the client had it (a
    failover reissued that seq, docs/protocol.md §7.5): the client reloads the state, at `head` or later."""
    return Refuse(
        ErrorCode.HISTORY_REWRITTEN,
        f"the log's event at seq {seq} is not the one this client had (the database failed over and lost it): "
        f"reload the project's state (it is at seq {head}) and resume after its seq",
        project_id,
        seq=seq,
        state_seq=head,
    )


def rewritten_at(
    *,
    after: int | None,
    after_hash: str | None,
    head: int,
    stored: int | None,
    cursor_hash: bytes | None,
    log_hash: bytes | None,
) -> int | None:
    """The client's position whose event the log has with another hash, if any: the one rule of
    `history_rewritten`. With an `after` and its `afterHash`, the log's hash at `after` (`log_hash`)
    must match (nothing to compare, log_hash None: not checked; beyond the head is `invalid_cursor`).
    Without an `after`, the stored cursor's recorded hash must match the log's at its seq, and a cursor
    that recorded one may not be beyond the head: the log lost an event this client acknowledged."""
    if after is not None:
        if after_hash is None or log_hash is None or after > head:
            return None
        return after if log_hash.hex() != after_hash else None
    if stored is None or cursor_hash is None:
        return None
    if stored > head or (log_hash is not None and log_hash != cursor_hash):
        return stored
    return None


@dataclass(frozen=True, slots=True)
class Append:
    """Append this event (group commit); answer with `appended(ticket, outcome)`."""

    ticket: int
    project_id: str
    type: str
    data: dict[str, Any]
    message_id: str


@dataclass(frozen=True, slots=True)
class FindStart:
    """Read the project's head and oldest kept seq and, when `cursor`, this client's durable cursor (acks
    not yet persisted included) with the hash it recorded, and the log's hash at `after` (else at the
    stored cursor): cursors.find_start. Answer with `found(ticket, head, cursor, oldest, ...)`."""

    ticket: int
    project_id: str
    cursor: bool
    after: int | None = None  # a position whose hash the client sent (`afterHash`), to check


@dataclass(frozen=True, slots=True)
class CheckAck:
    """Tell whether the project's log reaches `seq`: answer with `ack_checked(ticket, head)`, where
    `head` is any seq the log is known to have reached that is >= `seq`, else its actual head (None:
    no such project)."""

    ticket: int
    project_id: str
    seq: int


@dataclass(frozen=True, slots=True)
class Ack:
    """Advance this client's cursor for the project to `seq` (held, then persisted in a batch), with the
    hash the client has for that event if it sent one (kept with the cursor, §7.5)."""

    project_id: str
    seq: int
    hash: str | None = None


@dataclass(frozen=True, slots=True)
class Connect:
    """Deliver the project's events with seq > `after`, in order: catch-up, then live."""

    project_id: str
    after: int
    head: int


@dataclass(frozen=True, slots=True)
class Disconnect:
    """Deliver nothing more of the project."""

    project_id: str


@dataclass(frozen=True, slots=True)
class Reauthorize:
    """The connection now acts with this principal (a refreshed token)."""

    principal: Principal


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection with this code, after what is already queued."""

    code: int
    reason: str


Effect = Send | Refuse | Append | FindStart | CheckAck | Ack | Connect | Disconnect | Reauthorize | Close

# An append's outcome as the driver has it: the event and whether it is new, or what went wrong.
AppendOutcome = tuple[StoredEvent, bool] | BaseException


def found_start(session: Session, effect: FindStart, found: cursors.Found | None, cursor: int | None) -> None:
    """Answer `effect` with what cursors.find_start read (None: no such project)."""
    if found is None:
        session.found(effect.ticket, None, None)
    else:
        session.found(
            effect.ticket,
            found.head,
            cursor,
            found.oldest,
            stored=found.cursor,
            cursor_hash=found.cursor_hash,
            log_hash=found.log_hash,
        )


# --- what arrives ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Message:
    """A WebSocket message: `message` is the decoded JSON object with a string type, or None and
    `problem` says what is wrong with `text` (None: a binary frame)."""

    text: str | None
    message: dict[str, Any] | None
    problem: str = ""

    @property
    def publishes(self) -> bool:
        return self.message is not None and self.message["type"] in EVENT_TYPES


@dataclass(frozen=True, slots=True)
class _Subscribe:
    """A subscription asked for without a frame (an SSE stream's projects)."""

    project_id: str
    after: int | None
    after_hash: str | None = None


@dataclass(frozen=True, slots=True)
class _RateLimited:
    pass


_Inbound = _Message | _Subscribe | _RateLimited


def encode(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


def ref_of(message: dict[str, Any]) -> str | None:
    """docs/protocol.md §4: the offending message's messageId, else its projectId, else null."""
    for key in ("messageId", "projectId"):
        value = message.get(key)
        if isinstance(value, str):
            return value
    return None


def decode(text: str | None) -> _Message:
    """A message if it is a JSON object with a string type; else what is wrong with it."""
    if text is None:
        return _Message(None, None, "binary frames are not supported; send JSON text")
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return _Message(text, None, f"not valid JSON: {exc}")
    if not isinstance(message, dict):
        return _Message(text, None, "a message must be a JSON object with a type")
    if not isinstance(message.get("type"), str):
        return _Message(text, None, "type: a message needs a string type")
    return _Message(text, message)


def _ref_in(text: str) -> str | None:
    """The `ref` of a refused frame: that of a JSON object without a string type, else null."""
    try:
        message = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return ref_of(message) if isinstance(message, dict) else None


# --- the session -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Publishing:
    project_id: str
    ref: str | None
    message_id: str  # the client's, or one made before the first attempt (docs/protocol.md §7.2)


class Session:
    """The protocol state of one authenticated connection.

    `verify` turns a refreshed token into its principal (or raises InvalidToken); `durable` says
    whether the connection has a clientId whose durable cursor it resumes from (an SSE stream without
    one has none).
    """

    def __init__(
        self,
        principal: Principal,
        *,
        verify: Callable[[str], Principal],
        rate: RateLimit | None = None,
        durable: bool = True,
    ) -> None:
        self.principal = principal
        self._verify = verify
        self._rate = rate
        self.durable = durable
        self.subscribed: dict[str, None] = {}  # project ids, in the order subscribed
        self.closed = False
        self._inbox: deque[_Inbound] = deque()
        self._publishing: dict[int, _Publishing] = {}  # in flight, oldest first
        self._outcomes: dict[int, AppendOutcome] = {}
        self._request: tuple[int, _Subscribe | AckMessage] | None = None  # a FindStart or CheckAck in flight
        self._effects: list[Effect] = []
        self._tickets = 0

    # --- inputs ----------------------------------------------------------------------------------

    def receive(self, text: str | None) -> None:
        """One WebSocket message (None: a binary frame)."""
        if self.closed:
            return
        if self._rate is not None and not self._rate.allow():
            self._inbox.append(_RateLimited())
        else:
            self._inbox.append(decode(text))
        self._advance()

    def subscribe(self, project_id: str, after: int | None = None, after_hash: str | None = None) -> None:
        """Subscribe as a `subscribe` message would (an SSE stream's projects); `after` is the
        position asked for (`after=`, `Last-Event-ID`), if any, and `after_hash` its event's hash."""
        self._inbox.append(_Subscribe(project_id, after, after_hash))
        self._advance()

    def appended(self, ticket: int, outcome: AppendOutcome) -> None:
        """The outcome of `Append(ticket)`."""
        if ticket not in self._publishing:
            return
        self._outcomes[ticket] = outcome
        while self._publishing:
            oldest = next(iter(self._publishing))
            if oldest not in self._outcomes:
                break
            self._answer_publish(self._publishing.pop(oldest), self._outcomes.pop(oldest))
        self._advance()

    def found(
        self,
        ticket: int,
        head: int | None,
        cursor: int | None,
        oldest: int = 1,
        *,
        stored: int | None = None,
        cursor_hash: bytes | None = None,
        log_hash: bytes | None = None,
    ) -> None:
        """The answer to `FindStart(ticket)`: the head (None: no such project), the cursor, and the
        oldest seq the log keeps; for the check of `rewritten_at`, the stored cursor and its recorded
        hash, and the log's hash at the position checked."""
        request = self._take_request(ticket)
        if not isinstance(request, _Subscribe):
            return
        pid, after = request.project_id, request.after
        rewritten = None
        if head is not None:
            rewritten = rewritten_at(
                after=after,
                after_hash=request.after_hash,
                head=head,
                stored=stored,
                cursor_hash=cursor_hash,
                log_hash=log_hash,
            )
        if head is None:
            self._refuse(ErrorCode.NOT_FOUND, f"no project {pid!r}", pid)
        elif rewritten is not None:
            self._emit(history_rewritten(pid, rewritten, head))
        else:
            try:
                start = cursors.resume_point(after=after, cursor=cursor, head=head, oldest=oldest)
            except cursors.PositionBeyondHead as exc:
                self._refuse(ErrorCode.INVALID_CURSOR, f"after {exc.seq} is beyond the head {exc.head}", pid)
            except HistoryTruncated as exc:
                self._emit(history_truncated(pid, exc))
            else:
                self._send(type="subscribed", projectId=pid, after=start, head=head)
                self.subscribed[pid] = None
                self._emit(Connect(pid, after=start, head=head))
        self._advance()

    def ack_checked(self, ticket: int, head: int | None) -> None:
        """The answer to `CheckAck(ticket)`."""
        request = self._take_request(ticket)
        if not isinstance(request, AckMessage):
            return
        pid, seq = request.project_id, request.seq
        if head is None or seq > head:
            self._refuse(ErrorCode.INVALID_ACK, f"seq {seq} is beyond the head {head}", pid)
        else:
            self._emit(Ack(pid, seq, request.hash))
        self._advance()

    def unavailable(self, ticket: int, *, busy: bool = False) -> None:
        """The database could not answer `FindStart(ticket)` or `CheckAck(ticket)`: unreachable, or
        (`busy`) reachable but not in time (no pooled connection free, a lock, a statement timeout)."""
        request = self._take_request(ticket)
        why = "busy" if busy else "unreachable"
        if isinstance(request, _Subscribe):
            self._refuse(ErrorCode.UNAVAILABLE, f"the database is {why}; retry", request.project_id)
        elif isinstance(request, AckMessage):
            self._refuse(ErrorCode.UNAVAILABLE, f"the database is {why}; ack again", request.project_id)
        self._advance()

    # --- outputs ---------------------------------------------------------------------------------

    def take(self) -> list[Effect]:
        """What the driver must do now, in order (and forget)."""
        effects, self._effects = self._effects, []
        return effects

    @property
    def accepting(self) -> bool:
        """Whether the driver may read the next message: everything received has been handled or
        pipelined, and no lookup is in flight."""
        return not self._inbox and self._request is None and not self.closed

    # --- the machine -----------------------------------------------------------------------------

    def _advance(self) -> None:
        """Handle what has arrived, in order, as far as the publishes and the request in flight allow."""
        while self._inbox and not self.closed and self._request is None:
            item = self._inbox[0]
            if isinstance(item, _Message) and item.publishes and self._pipeline(item):
                self._inbox.popleft()
                continue
            if self._publishing:
                return  # answers follow the publishes before them
            self._inbox.popleft()
            self._handle(item)

    def _pipeline(self, item: _Message) -> bool:
        """Start a valid, authorized publish if there is room; False when it must wait its turn (it is
        invalid or forbidden: its error follows the answers before it; or the pipeline is full)."""
        assert item.message is not None
        if len(self._publishing) >= MAX_PIPELINED:
            return False
        try:
            parsed = check(PublishMessage, item.message)
            data = event_data(parsed.type, parsed.data)
        except InvalidData:
            return False
        if not self.principal.may("publish", parsed.project_id):
            return False
        ticket = self._ticket()
        message_id = parsed.message_id or str(uuid.uuid4())
        self._publishing[ticket] = _Publishing(parsed.project_id, ref_of(item.message), message_id)
        self._emit(Append(ticket, parsed.project_id, parsed.type, data, message_id))
        return True

    def _handle(self, item: _Inbound) -> None:
        if isinstance(item, _RateLimited):
            assert self._rate is not None
            if self._rate.exhausted:
                self._close(CloseCode.POLICY_VIOLATION, "inbound rate limit exceeded")
            else:
                self._refuse(ErrorCode.RATE_LIMITED, "too many messages; slow down (this one was dropped)", None)
        elif isinstance(item, _Subscribe):
            self._subscribe(item)
        elif item.message is None:
            self._refuse(ErrorCode.INVALID_FRAME, item.problem, None if item.text is None else _ref_in(item.text))
        elif item.publishes:
            self._refuse_publish(item.message)
        else:
            kind = item.message["type"]
            handler = self.handlers.get(kind)
            if handler is None:
                self._refuse(ErrorCode.UNKNOWN_TYPE, f"unknown message type {kind!r}", ref_of(item.message))
            else:
                handler(self, item.message)

    def _refuse_publish(self, message: dict[str, Any]) -> None:
        """A publish that `_pipeline` did not start: say why."""
        ref = ref_of(message)
        try:
            parsed = check(PublishMessage, message)
            event_data(parsed.type, parsed.data)
        except InvalidData as exc:
            self._refuse(ErrorCode.INVALID_DATA, exc.message, ref)
            return
        self._refuse(ErrorCode.FORBIDDEN, f"this token may not publish to {parsed.project_id!r}", ref)

    def _answer_publish(self, publishing: _Publishing, outcome: AppendOutcome) -> None:
        pid, ref = publishing.project_id, publishing.ref
        if isinstance(outcome, tuple):
            event, _ = outcome
            self._send(type="published", projectId=pid, messageId=event.message_id, seq=event.seq)
        elif isinstance(outcome, ProjectNotFound):
            self._refuse(ErrorCode.NOT_FOUND, f"no project {pid!r}", ref)
        elif isinstance(outcome, OutcomeUnknown):
            message_id = publishing.message_id
            self._refuse(
                ErrorCode.UNAVAILABLE,
                f"the connection to the database was lost after the publish was sent: it may have been written; "
                f"retry with messageId {message_id!r}",
                message_id,
            )
        elif isinstance(outcome, DatabaseBusy):
            self._refuse(ErrorCode.UNAVAILABLE, "the database is busy; nothing was written, retry", ref)
        elif isinstance(outcome, DatabaseUnavailable):
            self._refuse(ErrorCode.UNAVAILABLE, "the database is unreachable; nothing was written, retry", ref)
        elif isinstance(outcome, Exception):  # a bug: say so, and let the client resume rather than wait
            logger.error("publishing failed", exc_info=outcome)
            self._close(CloseCode.GOING_AWAY, "internal error; reconnect and resume")
        # else cancelled (shutting down): the connection is closing anyway

    # --- one handler per control message ---------------------------------------------------------

    def _parse(self, model: type[M], message: dict[str, Any]) -> M | None:
        try:
            return check(model, message)
        except InvalidData as exc:
            self._refuse(ErrorCode.INVALID_FRAME, exc.message, ref_of(message))
            return None

    def _auth(self, message: dict[str, Any]) -> None:
        parsed = self._parse(AuthMessage, message)
        if parsed is None:
            return
        try:
            principal = self._verify(parsed.token)
        except InvalidToken as exc:
            self._close(CloseCode.AUTH, str(exc))
            return
        if principal.user != self.principal.user:
            self._close(CloseCode.AUTH, "a refreshed token must be for the same user")
            return
        self.principal = principal
        self._emit(Reauthorize(principal))
        for project_id in list(self.subscribed):
            if not principal.may("subscribe", project_id):
                self._unsubscribe(project_id)
                self._refuse(ErrorCode.FORBIDDEN, "the new token does not grant this project", project_id)
                self._send(type="unsubscribed", projectId=project_id)

    def _subscribe_message(self, message: dict[str, Any]) -> None:
        parsed = self._parse(SubscribeMessage, message)
        if parsed is not None and parsed.after_hash is not None and parsed.after is None:
            self._refuse(ErrorCode.INVALID_FRAME, "afterHash: needs the `after` whose event it is", ref_of(message))
        elif parsed is not None:
            self._subscribe(_Subscribe(parsed.project_id, parsed.after, parsed.after_hash))

    def _subscribe(self, request: _Subscribe) -> None:
        pid = request.project_id
        if not self.principal.may("subscribe", pid):
            self._refuse(ErrorCode.FORBIDDEN, f"this token may not subscribe to {pid!r}", pid)
            return
        ticket = self._ticket()
        self._request = (ticket, request)
        checked = request.after if request.after_hash is not None else None
        self._emit(FindStart(ticket, pid, cursor=request.after is None and self.durable, after=checked))

    def _unsubscribe_message(self, message: dict[str, Any]) -> None:
        parsed = self._parse(UnsubscribeMessage, message)
        if parsed is not None:
            self._unsubscribe(parsed.project_id)
            self._send(type="unsubscribed", projectId=parsed.project_id)

    def _unsubscribe(self, project_id: str) -> None:
        self.subscribed.pop(project_id, None)
        self._emit(Disconnect(project_id))

    def _ack(self, message: dict[str, Any]) -> None:
        parsed = self._parse(AckMessage, message)
        if parsed is None:
            return
        pid = parsed.project_id
        if not self.principal.may("subscribe", pid):  # an `audit` token reads, but never acks
            self._refuse(ErrorCode.FORBIDDEN, f"this token may not ack {pid!r}", pid)
            return
        if pid not in self.subscribed:
            self._refuse(ErrorCode.NOT_SUBSCRIBED, f"not subscribed to {pid!r} on this connection", pid)
            return
        ticket = self._ticket()
        self._request = (ticket, parsed)
        self._emit(CheckAck(ticket, parsed.project_id, parsed.seq))

    def _ping(self, message: dict[str, Any]) -> None:
        if self._parse(PingMessage, message) is not None:
            self._send(type="pong", ts=message.get("ts"))

    def _pong(self, message: dict[str, Any]) -> None:
        self._parse(PongMessage, message)  # being alive is what counts, and the driver noted it

    handlers: ClassVar[dict[str, Callable[[Session, dict[str, Any]], None]]] = {
        "auth": _auth,
        "subscribe": _subscribe_message,
        "unsubscribe": _unsubscribe_message,
        "ack": _ack,
        "ping": _ping,
        "pong": _pong,
    }

    # --- plumbing --------------------------------------------------------------------------------

    def _ticket(self) -> int:
        self._tickets += 1
        return self._tickets

    def _take_request(self, ticket: int) -> _Subscribe | AckMessage | None:
        if self._request is None or self._request[0] != ticket:
            return None
        request = self._request[1]
        self._request = None
        return request

    def _emit(self, effect: Effect) -> None:
        if not self.closed:
            self._effects.append(effect)

    def _send(self, **fields: Any) -> None:
        self._emit(Send(encode(**fields)))

    def _refuse(self, code: ErrorCode, message: str, ref: str | None) -> None:
        self._emit(Refuse(code, message, ref))

    def _close(self, code: int, reason: str) -> None:
        self._emit(Close(code, reason))
        self.closed = True
