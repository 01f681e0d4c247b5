"""The audit chain: every event's hash, and each project's last hash, kept where appends lock anyway.

Existing logs are hashed here, project by project in seq order, in pages (constant memory, however long
the log), with `service.audit`'s canonical form: that form is part of the wire contract and fixed (a
different one would be a new chain version with a migration of its own), so this migration uses the one
definition rather than a frozen copy that could drift from what the service verifies against.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import orjson
import sqlalchemy as sa
from alembic import op

from service.audit import GENESIS, canonical, link
from service.messages import format_timestamp

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PAGE = 5000

_PAGE = sa.text(
    "SELECT seq, message_id, type, data::text AS data, created_at FROM events "
    "WHERE project_id = :project AND seq > :after ORDER BY seq LIMIT :limit"
)
_FILL = sa.text(
    "UPDATE events SET hash = page.hash "
    "FROM unnest(CAST(:seqs AS bigint[]), CAST(:hashes AS bytea[])) AS page(seq, hash) "
    "WHERE events.project_id = :project AND events.seq = page.seq"
)


def upgrade() -> None:
    op.add_column("events", sa.Column("hash", sa.LargeBinary, nullable=True))
    op.add_column(
        "projects",
        sa.Column("last_hash", sa.LargeBinary, nullable=False, server_default=sa.text("'\\x" + "00" * 32 + "'::bytea")),
    )
    bind = op.get_bind()
    for (project,) in bind.execute(sa.text("SELECT id FROM projects ORDER BY id")).all():
        previous, after = GENESIS, 0
        while True:
            rows = bind.execute(_PAGE, {"project": project, "after": after, "limit": PAGE}).all()
            if not rows:
                break
            seqs, hashes = [], []
            for seq, message_id, type_, data, created_at in rows:
                previous = link(
                    previous,
                    canonical(
                        project_id=project,
                        seq=seq,
                        message_id=message_id,
                        type=type_,
                        timestamp=format_timestamp(created_at),
                        data=orjson.loads(data),
                    ),
                )
                seqs.append(seq)
                hashes.append(previous)
            bind.execute(_FILL, {"project": project, "seqs": seqs, "hashes": hashes})
            after = seqs[-1]
        bind.execute(
            sa.text("UPDATE projects SET last_hash = :hash WHERE id = :project"), {"hash": previous, "project": project}
        )
    op.alter_column("events", "hash", nullable=False)


def downgrade() -> None:
    op.drop_column("projects", "last_hash")
    op.drop_column("events", "hash")
