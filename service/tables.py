"""SQLAlchemy tables: the schema as code.

Migrations create these tables (alembic), and a test checks that the migrated database and this
metadata agree. Queries on the hot path are written against asyncpg directly (see eventlog.py), so this
module is the schema's description, not a data-access layer.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

projects = Table(
    "projects",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("repo", Text, nullable=True),
    # The latest seq. Appends lock this row to take the next number, which serializes appends per
    # project and makes commit order equal seq order.
    Column("head", BigInteger, nullable=False, server_default=text("0")),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The secret GitHub signs this project's deliveries with (its own hook URL, /webhooks/github/ID);
    # unset: deliveries come through the service-wide secret, if there is one.
    Column("webhook_secret", Text, nullable=True),
    # The hash of the project's last event (audit.py): the append that takes the next seq under this
    # row's lock chains from it without reading the log. 32 zero bytes for an empty log.
    Column("last_hash", LargeBinary, nullable=False, server_default=text("'\\x" + "00" * 32 + "'::bytea")),
    # The low watermark: the oldest seq the log keeps (events with seq < oldest were pruned). A read
    # starting below it is `history_truncated` (eventlog.truncated); 1 until anything is pruned.
    Column("oldest", BigInteger, nullable=False, server_default=text("1")),
    # The chain's hash at seq oldest - 1, where the kept log's chain begins (audit.verify starts from it,
    # and an archive's last hash must equal it); 32 zero bytes until anything is pruned.
    Column("pruned_hash", LargeBinary, nullable=False, server_default=text("'\\x" + "00" * 32 + "'::bytea")),
    # The retention policy (retention.py): keep events at most this many days old, or the latest this many;
    # both NULL: keep forever, the default.
    Column("keep_days", Integer, nullable=True),
    Column("keep_events", BigInteger, nullable=True),
)
# GitHub compares repository names case-insensitively, and so do uniqueness and webhook routing.
Index("projects_repo_key", func.lower(projects.c.repo), unique=True)

events = Table(
    "events",
    metadata,
    # No foreign key: attaching a partition would lock `projects` against appends (migration 0010).
    Column("project_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # SHA-256 over the previous event's hash and this event's canonical form (audit.py).
    Column("hash", LargeBinary, nullable=False),
    PrimaryKeyConstraint("project_id", "seq", name="events_pkey"),
    # Partitioned by ranges of each project's seqs (partitions.py; the partitions are not in this metadata).
    postgresql_partition_by="RANGE (project_id, seq)",
)

# A messageId appends once per project: the unique constraint the partitioned log cannot hold itself
# (PostgreSQL's unique constraints on a partitioned table must contain the partition key).
event_ids = Table(
    "event_ids",
    metadata,
    Column("project_id", Text, nullable=False),
    Column("message_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("project_id", "message_id", name="event_ids_pkey"),
)
Index("event_ids_seq", event_ids.c.project_id, event_ids.c.seq)

# The log's partitions, each project's seqs first_seq..last_seq; `kept`: a partition below the watermark
# that holds only the rows the state reads (partitions.drop_below).
log_partitions = Table(
    "log_partitions",
    metadata,
    Column("project_id", Text, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("name", Text, nullable=False, unique=True),
    Column("kept", Boolean, nullable=False),
    PrimaryKeyConstraint("project_id", "first_seq", name="log_partitions_pkey"),
)
# The notification feed of the state snapshot (state.py) reads a project's latest pull-request events;
# this keeps that an index scan of a few rows however long the log grows, at the cost of one index
# entry per pull-request event only.
Index("events_pr_notifications", events.c.project_id, events.c.seq, postgresql_where=text("type = 'pr_notification'"))

# The history filters of the audit (eventlog.Filter). `since`/`until`: a BRIN index, a few bytes per range of
# blocks, since events are appended in time order; appends barely pay for it. `subject`: one partial index
# per kind of subject, ending in seq so that a page is an ordered scan that stops at its limit; an event is
# in at most two of them (a pull request's sha and number), and only when it has the value.
_PR_OR_VALIDATION = "type IN ('pr_notification', 'validation_update')"
Index("events_created_at", events.c.created_at, postgresql_using="brin")
Index(
    "events_run_id",
    events.c.project_id,
    text("(data ->> 'runId')"),
    events.c.seq,
    postgresql_where=text("type = 'agent_run_progress'"),
)
Index(
    "events_head_sha",
    events.c.project_id,
    text("(data ->> 'headSha')"),
    events.c.seq,
    postgresql_where=text(f"{_PR_OR_VALIDATION} AND (data ->> 'headSha') IS NOT NULL"),
)
Index(
    "events_pr_number",
    events.c.project_id,
    text("coalesce(data ->> 'number', data ->> 'prNumber')"),
    events.c.seq,
    postgresql_where=text(f"{_PR_OR_VALIDATION} AND coalesce(data ->> 'number', data ->> 'prNumber') IS NOT NULL"),
)

# The latest event of each subject (an agent run, a pull request, a validation): the project state folded
# from the log, kept current by the append statement itself (eventlog.py), so it commits with the event and
# reading the state never re-reads the log. A row points at its event; it holds no copy of the data.
project_state = Table(
    "project_state",
    metadata,
    Column("project_id", Text, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("type", Text, nullable=False),
    # sha-256 of the subject (log.subject) as canonical jsonb text: any length of runId, name or
    # headSha fits an index entry, and the migration's backfill computes the same bytes in SQL.
    Column("subject", LargeBinary, nullable=False),
    Column("seq", BigInteger, nullable=False),
    PrimaryKeyConstraint("project_id", "type", "subject", name="project_state_pkey"),
)
# The most recently updated subjects of a type first, without sorting them all.
Index("project_state_recent", project_state.c.project_id, project_state.c.type, project_state.c.seq)

# The log summarized in stretches of 10,000 events (state.py), written in order from seq 1, off the hot path.
# A stretch's time span lets a time-filtered read skip the stretches wholly outside its window
# (eventlog.seq_ranges); the latest event of each subject within it lets the state at a seq be found by
# walking back through the stretches instead of folding the whole log (state.read_at).
log_stretches = Table(
    "log_stretches",
    metadata,
    Column("project_id", Text, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("first_at", DateTime(timezone=True), nullable=False),  # the earliest created_at in the stretch
    Column("last_at", DateTime(timezone=True), nullable=False),  # the latest
    PrimaryKeyConstraint("project_id", "last_seq", name="log_stretches_pkey"),
)

# One row per subject per stretch: its latest event within the stretch. An event is the latest of its
# subject in at most one stretch, so (type, seq) is a key, and its order is the walk's: newest first.
stretch_latest = Table(
    "stretch_latest",
    metadata,
    Column("project_id", Text, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("type", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("subject", LargeBinary, nullable=False),  # hashed as in project_state
    PrimaryKeyConstraint("project_id", "type", "seq", name="stretch_latest_pkey"),
)

cursors = Table(
    "cursors",
    metadata,
    Column("project_id", Text, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("user", Text, nullable=False),
    Column("client_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # The audit chain's hash of the event at `seq` when it was acked: a resume compares it with the log's
    # (a failover may have reissued the seq with another event). NULL: acked before migration 0011.
    Column("hash", LargeBinary, nullable=True),
    PrimaryKeyConstraint("project_id", "user", "client_id", name="cursors_pkey"),
)

# Every advance of a cursor (cursors.py), written by the statement that moves it: who had acked how far, and
# when. Append-only; an ack that does not move its cursor writes nothing. The index serves the ledger's one
# question, "when did each client first reach seq N", as one probe per client (cursors.reached).
ack_ledger = Table(
    "ack_ledger",
    metadata,
    Column("project_id", Text, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("user", Text, nullable=False),
    Column("client_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),  # the cursor after the advance
    Column("acked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Index("ack_ledger_client", "project_id", "user", "client_id", "seq"),
)

# GitHub deliveries (webhooks.py) that appended an event, keyed as GitHub names them. GitHub redelivers
# on timeouts and by hand; this row commits with the event, so a redelivery finds it and appends nothing.
webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("hook_id", Text, nullable=False),
    Column("delivery_id", Text, nullable=False),
    Column("project_id", Text, ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
    Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    # GitHub signs the body, not the delivery id: the same body re-sent under a new id is the same
    # delivery (GitHub's bodies are never byte-identical across events). These rows are the guard
    # against replays: kept as long as the events they appended (webhooks.prune_deliveries).
    Column("body_sha256", LargeBinary, nullable=True),
    PrimaryKeyConstraint("hook_id", "delivery_id", name="webhook_deliveries_pkey"),
    Index("webhook_deliveries_body", "project_id", "body_sha256", unique=True),
)


# Tokens refused before their expiry (auth.py): one token by its id (`jti`), or every token of a user
# issued up to `revoked_at`. Each instance holds them in memory and reloads them when notified.
token_revocations = Table(
    "token_revocations",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("user", Text, nullable=True),
    Column("token_id", Text, nullable=True),
    Column("revoked_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint('("user" IS NULL) <> (token_id IS NULL)', name="token_revocations_one_kind"),
    Index("token_revocations_recent", "revoked_at"),
)
