"""Wire models: the one source of truth for every event type and every frame.

The HTTP API, the WebSocket protocol, `python -m service schema` and the generated TypeScript types
all come from the models below. Field names are snake_case in Python and camelCase on the wire.

Event data is strict on purpose (docs/protocol.md §2): unknown fields are rejected, nothing is coerced
("7" is not an int, true is not a number), and `null` counts as absent for optional fields. A
dashboard that trusts the log should never have to second-guess its shape.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, cast

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.alias_generators import to_camel

from . import codes

PROJECT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
REPO_PATTERN = r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$"
MAX_MESSAGE_BYTES = 64 * 1024
MAX_BATCH = 1000  # events in one `POST /api/projects/{id}/events/batch`
MAX_BATCH_BYTES = 1024 * 1024  # its body; each event in it is still held to MAX_MESSAGE_BYTES
MAX_SAFE_INTEGER = 2**53 - 1  # what a JavaScript client can hold exactly

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_nul(value: str) -> str:
    # PostgreSQL's text and jsonb cannot hold U+0000; refuse it here instead of failing at insert.
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000)")
    return value


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("must not contain control characters")
    return value


Text = Annotated[str, AfterValidator(_no_nul)]
MessageId = Annotated[str, Field(min_length=1, max_length=128), AfterValidator(_no_control)]
ProjectId = Annotated[str, Field(pattern=PROJECT_ID_PATTERN)]
Repo = Annotated[str, Field(pattern=REPO_PATTERN, max_length=200)]
Seq = Annotated[int, Field(ge=0, le=MAX_SAFE_INTEGER)]


def is_project_id(value: str) -> bool:
    """Whether `value` could name a project at all; ids outside the pattern never reach the database
    (PostgreSQL cannot even compare a string holding U+0000)."""
    return re.fullmatch(PROJECT_ID_PATTERN, value) is not None


EventType = Literal["agent_run_progress", "pr_notification", "validation_update"]
EVENT_TYPES: tuple[str, ...] = ("agent_run_progress", "pr_notification", "validation_update")


def format_timestamp(moment: datetime) -> str:
    """ISO 8601 UTC with millisecond precision and a `Z`, as the contract spells every time."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class Wire(BaseModel):
    """Base of every wire model: camelCase on the wire, snake_case in Python, no coercion."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid", strict=True)


class StrictData(BaseModel):
    """Base of the event data schemas: no unknown fields, no coercion."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=False, extra="forbid", strict=True, allow_inf_nan=False
    )


# --- event data ---------------------------------------------------------------------------------------

AgentRunStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ValidationStatus = Literal["queued", "in_progress", "completed"]
Conclusion = Literal[
    "success",
    "failure",
    "neutral",
    "cancelled",
    "skipped",
    "timed_out",
    "action_required",
    "stale",
    "startup_failure",
    "error",
]


class AgentRunProgress(StrictData):
    """Progress of one agent run; the latest event per `runId` is the run's state."""

    run_id: Text = Field(min_length=1, max_length=200)
    status: AgentRunStatus
    progress: float = Field(ge=0, le=100)
    step: Text | None = None
    message: Text | None = None


class PrNotification(StrictData):
    """Something happened to a pull request (GitHub's `pull_request` action, `merged`, `review_*`)."""

    action: Text = Field(min_length=1, max_length=100)
    number: int = Field(ge=1, le=MAX_SAFE_INTEGER)
    title: Text
    url: Text
    repo: Repo
    author: Text | None = None
    head_sha: Text | None = None


class ValidationUpdate(StrictData):
    """A check, workflow or status context; keyed by `name` and `headSha` in the state snapshot."""

    name: Text = Field(min_length=1, max_length=300)
    status: ValidationStatus
    conclusion: Conclusion | None = None
    url: Text | None = None
    pr_number: int | None = Field(default=None, ge=1, le=MAX_SAFE_INTEGER)
    head_sha: Text | None = None


DATA_MODELS: dict[str, type[StrictData]] = {
    "agent_run_progress": AgentRunProgress,
    "pr_notification": PrNotification,
    "validation_update": ValidationUpdate,
}


class InvalidData(ValueError):
    """Input that does not fit its schema; `field` is the dotted path of the first offending field."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


M = TypeVar("M", bound=BaseModel)


def check(model: type[M], value: Any, *, prefix: str = "") -> M:
    """`value` as `model`, or InvalidData naming the first offending field (e.g. `data.progress`)."""
    if not isinstance(value, dict):
        raise InvalidData(f"{prefix or 'the message'} must be a JSON object", prefix or None)
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = ".".join(str(part) for part in first["loc"])
        field = ".".join(p for p in (prefix, path) if p) or None
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        raise InvalidData(f"{field}: {message}" if field else message, field) from None


def event_data(type: str, data: Any) -> dict[str, Any]:
    """An event's data checked against its type's schema, with `null` fields dropped (they mean absent).

    Raises InvalidData (field `type` for an unknown type, `data.…` for the data)."""
    model = DATA_MODELS.get(type)
    if model is None:
        raise InvalidData(f"type: unknown event type {type!r}; expected one of {', '.join(DATA_MODELS)}", "type")
    check(model, data, prefix="data")
    return {k: v for k, v in data.items() if v is not None}


# --- the event envelope ------------------------------------------------------------------------------


class Event(Wire):
    """An appended event, as it appears everywhere (HTTP bodies, WebSocket frames, SSE `data:`).

    The envelope of the original requirements (type, project_id, data, timestamp, message_id) plus
    `seq`, the event's position in its project's gap-free sequence.
    """

    type: EventType
    project_id: str
    seq: int = Field(ge=1)
    message_id: str
    timestamp: str = Field(description="ISO 8601 UTC, millisecond precision, ending in Z")
    data: dict[str, Any]
    hash: str = Field(
        pattern="^[0-9a-f]{64}$",
        description="SHA-256 chaining the project's log: covers the previous event's hash and this event's "
        "canonical form (docs/protocol.md, Audit)",
    )


class PublishRequest(Wire):
    """The body of `POST /api/projects/{id}/events`. `timestamp`, `seq` (and a matching `projectId`)
    may be present, as when a client re-sends an event it holds, and are ignored."""

    type: str
    data: Any = None
    message_id: MessageId | None = None
    project_id: str | None = None
    timestamp: Any = None
    seq: Any = None


class PublishBatchRequest(Wire):
    """The body of `POST /api/projects/{id}/events/batch`: events appended together, in this order,
    all or none (an extension, docs/protocol.md)."""

    events: Annotated[list[PublishRequest], Field(min_length=1, max_length=MAX_BATCH)]


class BatchItem(Wire):
    """What became of one event of a batch: its seq, and whether this request appended it (false: its
    messageId was already in the log, or earlier in the batch; `seq` is then the original's)."""

    seq: int
    message_id: str
    created: bool


class PublishBatchResult(Wire):
    project_id: str
    events: list[BatchItem]


# --- HTTP bodies -------------------------------------------------------------------------------------


class ProjectCreate(Wire):
    id: ProjectId
    name: Annotated[Text, Field(min_length=1, max_length=200)]
    repo: Repo | None = None
    webhook_secret: Annotated[str, Field(min_length=16, max_length=200), AfterValidator(_no_control)] | None = Field(
        default=None,
        description="the secret of the project's own GitHub hook (/webhooks/github/ID); never returned",
    )


class Project(Wire):
    id: str
    name: str
    repo: str | None
    head: int


class Retention(Wire):
    """A project's retention policy (docs/protocol.md §7.4): exactly one of the three. The answer to
    `PUT /api/projects/{id}/retention` has the same shape."""

    keep_days: int | None = Field(default=None, ge=1, le=36_500, description="keep events at most this many days old")
    keep_events: int | None = Field(default=None, ge=1, le=MAX_SAFE_INTEGER, description="keep the latest N events")
    forever: Literal[True] | None = Field(default=None, description="keep every event (the default)")


class ProjectList(Wire):
    projects: list[Project]


class EventPage(Wire):
    events: list[Event]
    next: int | None = Field(description="the after (asc) or before (desc) of the next page, if any")


class ProjectState(Wire):
    """The body of `GET /api/projects/{id}/state`: the project as a dashboard shows it, as of `seq`.

    Every item is the latest event of its subject, newest first, at most `limit` per list. Folding
    these events with the events after `seq` gives the state at any later point (docs/protocol.md).
    """

    project_id: str
    seq: int = Field(ge=0, description="the log position this state reflects: subscribe with after = seq")
    agent_runs: list[Event] = Field(description="the latest agent_run_progress event of each runId")
    pull_requests: list[Event] = Field(description="the latest pr_notification event of each (repo, number)")
    validations: list[Event] = Field(description="the latest validation_update event of each (name, headSha)")
    notifications: list[Event] = Field(description="the latest pr_notification events")


class AckRequest(Wire):
    client_id: Annotated[Text, Field(min_length=1, max_length=128)]
    seq: Seq


class AckResult(Wire):
    seq: int


class Cursor(Wire):
    client_id: str
    user: str
    seq: int
    updated_at: str


class CursorList(Wire):
    cursors: list[Cursor]


# --- audit (docs/protocol.md, Audit) -------------------------------------------------------------------


class ChainIntact(Wire):
    """`GET /api/projects/{id}/audit/verify` when every stored event matches the chain."""

    ok: Literal[True]
    head: int = Field(description="the last seq verified (the project's head)")
    hash: str = Field(description="the chain's hash at head; 64 zeros for an empty log")


class ChainBroken(Wire):
    """`GET /api/projects/{id}/audit/verify` when a stored event was changed, deleted or reordered."""

    ok: Literal[False]
    first_bad: int = Field(description="the first seq whose event does not continue the chain")
    reason: str


class Checkpoint(Wire):
    """A signed receipt of the chain at `seq` (`herald audit checkpoint ID`), to be kept outside the
    database: `herald audit verify ID --checkpoint FILE` proves the log still matches it."""

    project_id: str
    seq: int
    hash: str
    at: str = Field(description="when it was taken, ISO 8601 UTC")
    key_id: str = Field(description="which of the service's keys signed it")
    signature: str = Field(description="Ed25519 over the canonical form of the other fields, base64url")


class AckRecord(Wire):
    user: str
    client_id: str
    seq: int = Field(description="the cursor's position after the advance that first reached the asked seq")
    acked_at: str = Field(description="when that advance was persisted, ISO 8601 UTC")


class AckList(Wire):
    """`GET /api/projects/{id}/acks?seq=N`: every client whose acks reached N, with when they first did."""

    acks: list[AckRecord]


class ErrorBody(Wire):
    error: str
    message: str
    field: str | None = None
    message_id: str | None = Field(
        default=None, description="503 `unavailable` of a publish that may have been written: retry with it"
    )
    message_ids: list[str] | None = Field(default=None, description="the same, for a batch: every event's, in order")
    oldest: int | None = Field(default=None, description="`history_truncated`: the oldest seq the log keeps")
    state_seq: int | None = Field(
        default=None,
        description="`history_truncated`, `history_rewritten`: reload the state (at this seq or later), resume "
        "after its seq",
    )
    seq: int | None = Field(
        default=None, description="`history_rewritten`: the client's position where the log's event differs"
    )


class Health(Wire):
    status: Literal["ok"]


class Liveness(Health):
    """`/healthz`: also which release answers, and which version of the wire contract it speaks."""

    version: str = Field(description="Herald's release, e.g. 0.1.0 (the same as the Python and npm packages)")
    protocol: str = Field(description="the version of the wire contract (docs/protocol.md) it speaks, e.g. 1.1")


# --- WebSocket: client to server ---------------------------------------------------------------------


class AuthMessage(Wire):
    type: Literal["auth"]
    token: str


HASH_PATTERN = "^[0-9a-f]{64}$"


class SubscribeMessage(Wire):
    type: Literal["subscribe"]
    project_id: ProjectId
    after: Seq | None = None
    after_hash: str | None = Field(
        default=None,
        pattern=HASH_PATTERN,
        description="extension: the `hash` of the event at `after` as the client has it; a log whose event there "
        "has another hash answers `history_rewritten` (docs/protocol.md §7.5)",
    )


class UnsubscribeMessage(Wire):
    type: Literal["unsubscribe"]
    project_id: ProjectId


class AckMessage(Wire):
    type: Literal["ack"]
    project_id: ProjectId
    seq: Seq
    hash: str | None = Field(
        default=None,
        pattern=HASH_PATTERN,
        description="extension: the `hash` of the event at `seq` as the client has it, kept with the durable "
        "cursor (else the log's at the time the ack is written); docs/protocol.md §7.5",
    )


class PingMessage(Wire):
    type: Literal["ping"]
    ts: float | None = None


class PongMessage(Wire):
    type: Literal["pong"]
    ts: float | None = None


class PublishMessage(Wire):
    """An event-shaped message: publish `data` as an event of `type` to `projectId`."""

    type: EventType
    project_id: ProjectId
    data: Any = None
    message_id: MessageId | None = None
    timestamp: Any = None
    seq: Any = None


# --- WebSocket: server to client ---------------------------------------------------------------------


class WelcomeMessage(Wire):
    type: Literal["welcome"] = "welcome"
    client_id: str
    connection_id: str
    heartbeat_ms: int


class SubscribedMessage(Wire):
    type: Literal["subscribed"] = "subscribed"
    project_id: str
    after: int
    head: int


class UnsubscribedMessage(Wire):
    type: Literal["unsubscribed"] = "unsubscribed"
    project_id: str


class PublishedMessage(Wire):
    type: Literal["published"] = "published"
    project_id: str
    message_id: str
    seq: int


class ErrorMessage(Wire):
    type: Literal["error"] = "error"
    code: str
    message: str
    ref: str | None = None
    oldest: int | None = Field(default=None, description="`history_truncated`: the oldest seq the log keeps")
    state_seq: int | None = Field(
        default=None,
        description="`history_truncated`, `history_rewritten`: reload the state (at this seq or later), resume "
        "after its seq",
    )
    seq: int | None = Field(
        default=None, description="`history_rewritten`: the client's position where the log's event differs"
    )


ClientMessage = (
    AuthMessage | SubscribeMessage | UnsubscribeMessage | AckMessage | PingMessage | PongMessage | PublishMessage
)
ServerMessage = (
    WelcomeMessage
    | SubscribedMessage
    | UnsubscribedMessage
    | Event
    | PublishedMessage
    | PingMessage
    | PongMessage
    | ErrorMessage
)

SCHEMA_MODELS: tuple[type[BaseModel], ...] = (
    Event,
    AgentRunProgress,
    PrNotification,
    ValidationUpdate,
    PublishRequest,
    PublishBatchRequest,
    PublishBatchResult,
    BatchItem,
    ProjectCreate,
    Project,
    ProjectList,
    EventPage,
    ProjectState,
    AckRequest,
    AckResult,
    Cursor,
    CursorList,
    ChainIntact,
    ChainBroken,
    Checkpoint,
    AckRecord,
    AckList,
    ErrorBody,
    AuthMessage,
    SubscribeMessage,
    UnsubscribeMessage,
    AckMessage,
    PingMessage,
    PongMessage,
    PublishMessage,
    WelcomeMessage,
    SubscribedMessage,
    UnsubscribedMessage,
    PublishedMessage,
    ErrorMessage,
)


def json_schema() -> dict[str, Any]:
    """One JSON Schema document holding every wire model under `$defs`, plus the two unions."""
    defs: dict[str, Any] = {}
    for model in SCHEMA_MODELS:
        schema = model.model_json_schema(by_alias=True, ref_template="#/$defs/{model}", mode="serialization")
        defs.update(schema.pop("$defs", {}))
        defs[model.__name__] = schema
    for name, union in (("ClientMessage", ClientMessage), ("ServerMessage", ServerMessage)):
        schema = TypeAdapter(cast(Any, union)).json_schema(by_alias=True, ref_template="#/$defs/{model}")
        defs.update(schema.pop("$defs", {}))
        defs[name] = schema
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Herald wire contract",
        "$defs": dict(sorted(defs.items())),
        # For generated clients: which $def is each event type's `data`, and the codes of codes.py.
        "x-herald-event-data": {name: model.__name__ for name, model in DATA_MODELS.items()},
        "x-herald-codes": codes.table(),
        # The size limits a client must respect: past them the service refuses (1009, 413, 422).
        "x-herald-limits": {
            "maxMessageBytes": MAX_MESSAGE_BYTES,
            "maxBatch": MAX_BATCH,
            "maxBatchBytes": MAX_BATCH_BYTES,
        },
    }
