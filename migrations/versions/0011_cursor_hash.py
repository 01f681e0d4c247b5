"""Cursors remember the audit chain's hash of the event they acknowledge.

After a failover to a standby that had not received the last commits, the log reissues seqs with other
events. A cursor that holds the hash of the event its client acknowledged lets a resume from it find out:
the log's hash at the cursor's seq differs (docs/delivery.md, "Failover"). NULL for the cursors acked
before this migration: those resume unchecked until their next ack.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("cursors", sa.Column("hash", sa.LargeBinary, nullable=True))


def downgrade() -> None:
    op.drop_column("cursors", "hash")
