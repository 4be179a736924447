"""worker registry and durable announcements: the workers table; jobs.answered_at, announce_attempts, next_announce_at

Revision ID: 0004
Revises: 0003
Create Date: 2027-01-20

Jobs that finished before this revision count as answered (their result or failure was announced, or
its chance has passed), except finished results that were never posted: those are posted after the
upgrade, as before.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

jobs = sa.table(
    "jobs", sa.column("status"), sa.column("posted_message_id"), sa.column("answered_at", sa.DateTime(timezone=True)),
    sa.column("finished_at", sa.DateTime(timezone=True)),
)  # fmt: skip


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("announce_attempts", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("next_announce_at", sa.DateTime(timezone=True), nullable=True))
    op.get_bind().execute(
        jobs.update()
        .where(
            jobs.c.status.in_(["done", "failed", "cancelled"]),
            sa.or_(jobs.c.status != "done", jobs.c.posted_message_id.is_not(None)),
        )
        .values(answered_at=jobs.c.finished_at)
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("next_announce_at")
        batch.drop_column("announce_attempts")
        batch.drop_column("answered_at")
    op.drop_table("workers")
