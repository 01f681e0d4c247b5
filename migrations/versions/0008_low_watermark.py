"""The log's low watermark: `projects.oldest`, the oldest seq the log keeps.

Events with seq < oldest are gone (pruned); a read that starts below it answers `history_truncated`
instead of skipping them (docs/protocol.md §7.4). It is 1 for every existing project: nothing has
been pruned, and with oldest 1 nothing is ever truncated. A prune deletes events and raises it in one
transaction, so a reader sees either both or neither.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("projects", sa.Column("oldest", sa.BigInteger, nullable=False, server_default=sa.text("1")))


def downgrade() -> None:
    op.drop_column("projects", "oldest")
