"""The log partitioned by (project_id, seq), messageIds in a table of their own.

The partitioned log has no foreign key to `projects`: attaching a partition to a table with one locks
`projects` against the appends that take their seq there, and every event's project exists anyway (an
append takes its seq from the project's row; projects are never deleted).

An existing log is moved without stopping its readers and without losing or repeating an event: the new
partitioned table is built and filled beside the old one, page by page, while the old one serves reads
and appends; then appends are held (LOCK … IN SHARE MODE: reads go on), the events appended meanwhile
are copied, and the old table is dropped and the new one takes its name, all in this migration's
transaction, so readers see the old log or the new, whole. Instances still running the previous version
must be restarted after this migration (their appends do not record messageIds in `event_ids`).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SIZE = 100_000  # seqs per partition (partitions.DEFAULT_EVENTS)
PAGE = 50_000  # events copied per statement
PR_OR_VALIDATION = "type IN ('pr_notification', 'validation_update')"
PR_NUMBER = "coalesce(data ->> 'number', data ->> 'prNumber')"
INDEXES = {  # the log's secondary indexes, as 0002 and 0007 made them on the flat table
    "events_pr_notifications": "(project_id, seq) WHERE type = 'pr_notification'",
    "events_created_at": "USING brin (created_at)",
    "events_run_id": "(project_id, (data ->> 'runId'), seq) WHERE type = 'agent_run_progress'",
    "events_head_sha": (
        f"(project_id, (data ->> 'headSha'), seq) WHERE {PR_OR_VALIDATION} AND (data ->> 'headSha') IS NOT NULL"
    ),
    "events_pr_number": f"(project_id, ({PR_NUMBER}), seq) WHERE {PR_OR_VALIDATION} AND {PR_NUMBER} IS NOT NULL",
}


def _name(project_id: str, first: int) -> str:  # partitions.table_name, frozen here as migrations are
    return f"events_{hashlib.sha256(project_id.encode()).hexdigest()[:16]}_{first}"


def _literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _copy(bind: sa.Connection, copied: dict[str, int]) -> None:
    """Copy every event of every project after what `copied` says is there, page by page, creating the
    partitions its seqs need; update `copied`."""
    for project, head in bind.execute(sa.text("SELECT id, head FROM projects ORDER BY id")).all():
        done = copied.setdefault(project, 0)
        last = bind.execute(
            sa.text("SELECT coalesce(max(last_seq), 0) FROM log_partitions WHERE project_id = :p"), {"p": project}
        ).scalar_one()
        while last < head + SIZE:
            first, last = last + 1, last + SIZE
            name = _name(project, first)
            bound = f"FROM ({_literal(project)}, {first}) TO ({_literal(project)}, {last + 1})"
            op.execute(f"CREATE TABLE {name} PARTITION OF events_partitioned FOR VALUES {bound}")
            bind.execute(
                sa.text("INSERT INTO log_partitions VALUES (:p, :first, :last, :name, false)"),
                {"p": project, "first": first, "last": last, "name": name},
            )
        while done < head:
            params = {"p": project, "after": done, "upto": min(head, done + PAGE)}
            bind.execute(
                sa.text(
                    "INSERT INTO events_partitioned SELECT project_id, seq, message_id, type, data, created_at, hash"
                    " FROM events WHERE project_id = :p AND seq > :after AND seq <= :upto"
                ),
                params,
            )
            bind.execute(
                sa.text(
                    "INSERT INTO event_ids SELECT project_id, message_id, seq FROM events"
                    " WHERE project_id = :p AND seq > :after AND seq <= :upto"
                ),
                params,
            )
            done = copied[project] = params["upto"]


def upgrade() -> None:
    op.create_table(
        "log_partitions",
        sa.Column("project_id", sa.Text, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("name", sa.Text, nullable=False, unique=True),
        sa.Column("kept", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "first_seq", name="log_partitions_pkey"),
    )
    op.create_table(
        "event_ids",
        sa.Column("project_id", sa.Text, nullable=False),
        sa.Column("message_id", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "message_id", name="event_ids_pkey"),
    )
    op.create_index("event_ids_seq", "event_ids", ["project_id", "seq"])
    op.execute(
        """
        CREATE TABLE events_partitioned (
            project_id text NOT NULL,
            seq bigint NOT NULL,
            message_id text NOT NULL,
            type text NOT NULL,
            data jsonb NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            hash bytea NOT NULL,
            CONSTRAINT events_partitioned_pkey PRIMARY KEY (project_id, seq)
        ) PARTITION BY RANGE (project_id, seq)
        """
    )
    for name, definition in INDEXES.items():
        op.execute(f"CREATE INDEX {name}_p ON events_partitioned {definition}")
    bind = op.get_bind()
    copied: dict[str, int] = {}
    _copy(bind, copied)  # while the old log serves reads and appends
    # Appends wait from here (reads go on); an append that took its seq before and waits to insert fails
    # when the old table is dropped, and its seq with it: the heads read below are then one too high at
    # most, and the copy stops at the last event there is.
    op.execute("LOCK TABLE events IN SHARE MODE")
    _copy(bind, copied)  # what was appended meanwhile
    op.execute("DROP TABLE events")
    op.execute("ALTER TABLE events_partitioned RENAME TO events")
    op.execute("ALTER TABLE events RENAME CONSTRAINT events_partitioned_pkey TO events_pkey")
    for name in INDEXES:
        op.execute(f"ALTER INDEX {name}_p RENAME TO {name}")


def downgrade() -> None:
    op.execute(
        "CREATE TABLE events_flat (LIKE events INCLUDING DEFAULTS, CONSTRAINT events_flat_pkey PRIMARY KEY"
        " (project_id, seq), CONSTRAINT events_flat_message_id_key UNIQUE (project_id, message_id))"
    )
    op.execute("INSERT INTO events_flat SELECT * FROM events")
    op.execute("DROP TABLE events")  # and its partitions
    op.execute("ALTER TABLE events_flat RENAME TO events")
    op.execute("ALTER TABLE events RENAME CONSTRAINT events_flat_pkey TO events_pkey")
    op.execute("ALTER TABLE events RENAME CONSTRAINT events_flat_message_id_key TO events_message_id_key")
    op.execute(
        "ALTER TABLE events ADD CONSTRAINT events_project_id_fkey FOREIGN KEY (project_id)"
        " REFERENCES projects (id) ON DELETE CASCADE"
    )
    for name, definition in INDEXES.items():
        op.execute(f"CREATE INDEX {name} ON events {definition}")
    op.drop_table("event_ids")
    op.drop_table("log_partitions")
