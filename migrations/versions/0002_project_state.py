"""The project state: the latest event of each subject, and an index for the notification feed.

Existing logs are folded into the new table here, in SQL, so a database upgraded with events in it
answers the same snapshot as one that had the table from the start. The subject expressions mirror
`service.eventlog.subject` as it is at this revision (migrations are frozen; they do not import it): both
sides hash the subject's canonical jsonb text, so they agree byte for byte.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BACKFILL = """
INSERT INTO project_state (project_id, type, subject, seq)
SELECT DISTINCT ON (project_id, type, subject) project_id, type, subject, seq
FROM (
    SELECT project_id, type, seq, sha256(convert_to(CASE type
        WHEN 'agent_run_progress' THEN jsonb_build_array(data -> 'runId')
        WHEN 'pr_notification' THEN jsonb_build_array(lower(data ->> 'repo'), data -> 'number')
        WHEN 'validation_update' THEN jsonb_build_array(data -> 'name', data -> 'headSha')
    END::text, 'UTF8')) AS subject
    FROM events
    WHERE type IN ('agent_run_progress', 'pr_notification', 'validation_update')
) AS keyed
ORDER BY project_id, type, subject, seq DESC
"""


def upgrade() -> None:
    op.create_index(
        "events_pr_notifications",
        "events",
        ["project_id", "seq"],
        postgresql_where=sa.text("type = 'pr_notification'"),
    )
    op.create_table(
        "project_state",
        sa.Column("project_id", sa.Text, sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("type", sa.Text, nullable=False),
        sa.Column("subject", sa.LargeBinary, nullable=False),
        sa.Column("seq", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("project_id", "type", "subject", name="project_state_pkey"),
    )
    op.execute(_BACKFILL)
    # Built after the backfill: one sort instead of a million index insertions on a long log.
    op.create_index("project_state_recent", "project_state", ["project_id", "type", "seq"])


def downgrade() -> None:
    op.drop_index("project_state_recent", table_name="project_state")
    op.drop_table("project_state")
    op.drop_index("events_pr_notifications", table_name="events")
