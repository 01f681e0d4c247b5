"""Per-project webhook secrets, and the hash of each delivery's body, so a signed body re-sent under a
new delivery id appends nothing.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("projects", sa.Column("webhook_secret", sa.Text, nullable=True))
    op.add_column("webhook_deliveries", sa.Column("body_sha256", sa.LargeBinary, nullable=True))
    op.create_index("webhook_deliveries_body", "webhook_deliveries", ["project_id", "body_sha256"], unique=True)


def downgrade() -> None:
    op.drop_index("webhook_deliveries_body", table_name="webhook_deliveries")
    op.drop_column("webhook_deliveries", "body_sha256")
    op.drop_column("projects", "webhook_secret")
