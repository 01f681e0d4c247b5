"""Token revocations: a token id, or every token of a user issued up to a moment.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "token_revocations",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column("user", sa.Text, nullable=True),
        sa.Column("token_id", sa.Text, nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint('("user" IS NULL) <> (token_id IS NULL)', name="token_revocations_one_kind"),
    )
    op.create_index("token_revocations_recent", "token_revocations", ["revoked_at"])


def downgrade() -> None:
    op.drop_table("token_revocations")
