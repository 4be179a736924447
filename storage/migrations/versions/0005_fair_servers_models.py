"""fair order across servers, several models and remote workers: guild_share; fair_share per server; jobs.model,
jobs.area; workers.model, max_area, features; served_models; job_progress

Revision ID: 0005
Revises: 0004
Create Date: 2027-02-01

Members' finish tags become per server (each server runs fair queuing among its members on its own clock); the
queued jobs keep their tags, every server's clock starts at the old queue-wide virtual time, and the queue-wide
clock now orders servers (it starts again at 0 with every server's pass). Jobs queued before this revision ran
on the one model there was: they get the name of the configured default model when the bot starts
(``JobQueue.adopt_unnamed``), since the migration cannot know it.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    bind = op.get_bind()
    clock = bind.execute(sa.text("SELECT virtual_now FROM queue_clock WHERE id = 1")).scalar() or 0
    op.create_table(
        "guild_share",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("pass", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("weight", sa.Float(), server_default="1", nullable=False),
        sa.Column("clock", sa.BigInteger(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_guild_share")),
    )
    bind.execute(
        sa.text("INSERT INTO guild_share (guild_id, pass, weight, clock) SELECT id, 0, 1, :clock FROM guilds"),
        {"clock": clock},
    )
    op.drop_table("fair_share")
    op.create_table(
        "fair_share",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("finish_tag", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("guild_id", "user_id", name=op.f("pk_fair_share")),
    )
    bind.execute(
        sa.text(
            "INSERT INTO fair_share (guild_id, user_id, finish_tag) SELECT guild_id, user_id, max(start_tag + cost) "
            "FROM jobs WHERE status = 'queued' GROUP BY guild_id, user_id"
        )
    )
    bind.execute(sa.text("UPDATE queue_clock SET virtual_now = 0"))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("model", sa.String(length=64), server_default="", nullable=False))
        batch.add_column(sa.Column("area", sa.Integer(), server_default="0", nullable=False))
        batch.create_index("ix_jobs_status_model_guild_id", ["status", "model", "guild_id"])
    with op.batch_alter_table("workers") as batch:
        batch.add_column(sa.Column("model", sa.String(length=64), server_default="", nullable=False))
        batch.add_column(sa.Column("max_area", sa.Integer(), server_default="0", nullable=False))
        batch.add_column(sa.Column("features", _json(), server_default="[]", nullable=False))
    op.create_table(
        "served_models",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("max_area", sa.Integer(), nullable=False),
        sa.Column("features", _json(), nullable=False),
        sa.Column("first_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_served_models")),
    )
    op.create_table(
        "job_progress",
        sa.Column("job_id", _id(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("stage", sa.String(length=64), server_default="", nullable=False),
        sa.Column("preview", sa.LargeBinary(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_job_progress_job_id_jobs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job_progress")),
    )


def downgrade() -> None:
    bind = op.get_bind()
    op.drop_table("job_progress")
    op.drop_table("served_models")
    with op.batch_alter_table("workers") as batch:
        batch.drop_column("features")
        batch.drop_column("max_area")
        batch.drop_column("model")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_status_model_guild_id")
        batch.drop_column("area")
        batch.drop_column("model")
    clock = bind.execute(sa.text("SELECT coalesce(max(clock), 0) FROM guild_share")).scalar() or 0
    op.drop_table("fair_share")
    op.create_table(
        "fair_share",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("finish_tag", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_fair_share")),
    )
    bind.execute(
        sa.text(
            "INSERT INTO fair_share (user_id, finish_tag) SELECT user_id, max(start_tag + cost) FROM jobs "
            "WHERE status = 'queued' GROUP BY user_id"
        )
    )
    bind.execute(sa.text("UPDATE queue_clock SET virtual_now = :clock"), {"clock": clock})
    op.drop_table("guild_share")
