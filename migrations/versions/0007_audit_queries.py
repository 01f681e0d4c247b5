"""What the auditors' reads need: indexes for the history filters, the log's stretches (the state at a
seq, and time windows), and the ack ledger.

The subject indexes are partial, so an append pays for at most two of them, and only for the types a
subject can name; the time index is a BRIN (a summary per range of table blocks), which costs next to
nothing on append because events are appended in time order. The stretches of an existing log are
summarized by the service after the upgrade, off the hot path, not here. Each existing cursor enters the
ack ledger at its current seq, with the time it was last written: the earliest the ledger can vouch for.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PR_OR_VALIDATION = "type IN ('pr_notification', 'validation_update')"
PR_NUMBER = "coalesce(data ->> 'number', data ->> 'prNumber')"


def _project() -> sa.Column[str]:
    return sa.Column("project_id", sa.Text, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False)


def upgrade() -> None:
    op.create_index("events_created_at", "events", ["created_at"], postgresql_using="brin")
    op.create_index(
        "events_run_id",
        "events",
        ["project_id", sa.text("(data ->> 'runId')"), "seq"],
        postgresql_where=sa.text("type = 'agent_run_progress'"),
    )
    op.create_index(
        "events_head_sha",
        "events",
        ["project_id", sa.text("(data ->> 'headSha')"), "seq"],
        postgresql_where=sa.text(f"{PR_OR_VALIDATION} AND (data ->> 'headSha') IS NOT NULL"),
    )
    op.create_index(
        "events_pr_number",
        "events",
        ["project_id", sa.text(PR_NUMBER), "seq"],
        postgresql_where=sa.text(f"{PR_OR_VALIDATION} AND {PR_NUMBER} IS NOT NULL"),
    )
    op.create_table(
        "log_stretches",
        _project(),
        sa.Column("first_seq", sa.BigInteger, nullable=False),
        sa.Column("last_seq", sa.BigInteger, nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("project_id", "last_seq", name="log_stretches_pkey"),
    )
    op.create_table(
        "stretch_latest",
        _project(),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("subject", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "type", "seq", name="stretch_latest_pkey"),
    )
    op.create_table(
        "ack_ledger",
        _project(),
        sa.Column("user", sa.Text, nullable=False),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
    )
    op.execute(
        'INSERT INTO ack_ledger (project_id, "user", client_id, seq, acked_at) '
        'SELECT project_id, "user", client_id, seq, updated_at FROM cursors'
    )
    op.create_index("ack_ledger_client", "ack_ledger", ["project_id", "user", "client_id", "seq"])


def downgrade() -> None:
    op.drop_index("ack_ledger_client", table_name="ack_ledger")
    op.drop_table("ack_ledger")
    op.drop_table("stretch_latest")
    op.drop_table("log_stretches")
    for name in ("events_pr_number", "events_head_sha", "events_run_id", "events_created_at"):
        op.drop_index(name, table_name="events")
