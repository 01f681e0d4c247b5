"""Retention: a project's policy and the chain's hash where its kept log begins.

`pruned_hash` is the chain's hash at seq `oldest - 1` (32 zero bytes until anything is pruned): the
verifier of the live log starts from it, and an archive's last hash must equal it. `keep_days` and
`keep_events` are the policy (both NULL: keep forever, the default); retention.prune applies them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "projects",
        sa.Column(
            "pruned_hash", sa.LargeBinary, nullable=False, server_default=sa.text("'\\x" + "00" * 32 + "'::bytea")
        ),
    )
    op.add_column("projects", sa.Column("keep_days", sa.Integer, nullable=True))
    op.add_column("projects", sa.Column("keep_events", sa.BigInteger, nullable=True))


def downgrade() -> None:
    op.drop_column("projects", "keep_events")
    op.drop_column("projects", "keep_days")
    op.drop_column("projects", "pruned_hash")
