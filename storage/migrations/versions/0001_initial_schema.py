"""initial schema: users, guilds, settings, accounts + ledger, jobs + fair-share clock, images, favourites,
hypernetwork modules, audit log, bans, banned words

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Self-contained on purpose: migrations must not import the application's models, which move on.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _id() -> sa.types.TypeEngine:
    # BIGINT on PostgreSQL; INTEGER PRIMARY KEY (the rowid alias, which autoincrements) on SQLite
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _json() -> sa.types.TypeEngine:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _timestamps(*names: str) -> list[sa.Column]:
    return [sa.Column(n, sa.DateTime(timezone=True), nullable=False) for n in names]


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(100), nullable=True),
        *_timestamps("created_at", "updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_table(
        "guilds",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("name", sa.String(100), nullable=True),
        *_timestamps("created_at", "updated_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_guilds")),
    )
    op.create_table(
        "guild_settings",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("paused", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("settings", _json(), nullable=False),
        sa.Column("updated_by", sa.BigInteger(), nullable=True),
        *_timestamps("updated_at"),
        sa.ForeignKeyConstraint(
            ["guild_id"], ["guilds.id"], name=op.f("fk_guild_settings_guild_id_guilds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("guild_id", name=op.f("pk_guild_settings")),
    )
    op.create_table(
        "channel_settings",
        sa.Column("channel_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("enabled", sa.Boolean(), server_default=sa.true(), nullable=False),
        sa.Column("nsfw", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("settings", _json(), nullable=False),
        sa.Column("updated_by", sa.BigInteger(), nullable=True),
        *_timestamps("updated_at"),
        sa.ForeignKeyConstraint(
            ["guild_id"], ["guilds.id"], name=op.f("fk_channel_settings_guild_id_guilds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("channel_id", name=op.f("pk_channel_settings")),
    )
    op.create_index(op.f("ix_channel_settings_guild_id"), "channel_settings", ["guild_id"])

    op.create_table(
        "accounts",
        sa.Column("id", _id(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("balance", sa.BigInteger(), nullable=False),
        *_timestamps("last_topup_at", "created_at", "updated_at"),
        sa.CheckConstraint("balance >= 0", name=op.f("ck_accounts_balance_not_negative")),
        sa.ForeignKeyConstraint(
            ["guild_id"], ["guilds.id"], name=op.f("fk_accounts_guild_id_guilds"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_accounts_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_accounts")),
        sa.UniqueConstraint("guild_id", "user_id", name="uq_accounts_guild_user"),
    )
    op.create_index(op.f("ix_accounts_user_id"), "accounts", ["user_id"])

    op.create_table(
        "jobs",
        sa.Column("id", _id(), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("channel_id", sa.BigInteger(), nullable=True),
        sa.Column("user_id", sa.BigInteger(), nullable=False),
        sa.Column("account_id", _id(), nullable=False),
        sa.Column("interaction_id", sa.String(200), nullable=True),
        sa.Column("parent_job_id", _id(), nullable=True),
        sa.Column("params", _json(), nullable=False),
        sa.Column("batch_key", sa.String(255), nullable=False),
        sa.Column("cost", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("start_tag", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("worker_id", sa.String(100), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("result", _json(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("posted_message_id", sa.BigInteger(), nullable=True),
        sa.Column("cancelled_by", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'done', 'failed', 'cancelled')", name=op.f("ck_jobs_status")
        ),
        sa.ForeignKeyConstraint(
            ["account_id"], ["accounts.id"], name=op.f("fk_jobs_account_id_accounts"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["guild_id"], ["guilds.id"], name=op.f("fk_jobs_guild_id_guilds"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent_job_id"], ["jobs.id"], name=op.f("fk_jobs_parent_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_jobs_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("interaction_id", name=op.f("uq_jobs_interaction_id")),
    )
    op.create_index(op.f("ix_jobs_account_id"), "jobs", ["account_id"])
    op.create_index("ix_jobs_guild_id_status", "jobs", ["guild_id", "status"])
    op.create_index("ix_jobs_status_start_tag_id", "jobs", ["status", "start_tag", "id"])
    op.create_index("ix_jobs_user_id_status", "jobs", ["user_id", "status"])
    op.create_index(op.f("ix_jobs_posted_message_id"), "jobs", ["posted_message_id"])

    op.create_table(
        "ledger_entries",
        sa.Column("id", _id(), nullable=False),
        sa.Column("account_id", _id(), nullable=False),
        sa.Column("delta", sa.BigInteger(), nullable=False),
        sa.Column("balance_after", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=False),
        sa.Column("job_id", _id(), nullable=True),
        sa.Column("actor_id", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "kind IN ('start', 'reserve', 'settle', 'refund', 'grant', 'take', 'set', 'topup')",
            name=op.f("ck_ledger_entries_kind"),
        ),
        sa.ForeignKeyConstraint(
            ["account_id"],
            ["accounts.id"],
            name=op.f("fk_ledger_entries_account_id_accounts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_ledger_entries_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ledger_entries")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_ledger_entries_idempotency_key")),
    )
    op.create_index("ix_ledger_entries_account_id_id", "ledger_entries", ["account_id", "id"])
    op.create_index(op.f("ix_ledger_entries_job_id"), "ledger_entries", ["job_id"])

    op.create_table(
        "fair_share",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("finish_tag", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_fair_share")),
    )
    queue_clock = op.create_table(
        "queue_clock",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("virtual_now", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_clock")),
    )
    op.bulk_insert(queue_clock, [{"id": 1, "virtual_now": 0}])

    op.create_table(
        "images",
        sa.Column("id", _id(), nullable=False),
        sa.Column("job_id", _id(), nullable=True),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("seed", sa.BigInteger(), nullable=False),
        sa.Column("batch_index", sa.Integer(), server_default="0", nullable=False),
        sa.Column("params", _json(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_images_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_images")),
    )
    op.create_index("ix_images_guild_id_owner_id_id", "images", ["guild_id", "owner_id", "id"])
    op.create_index(op.f("ix_images_job_id"), "images", ["job_id"])
    op.create_index(op.f("ix_images_key"), "images", ["key"])
    op.create_index(op.f("ix_images_owner_id"), "images", ["owner_id"])

    op.create_table(
        "favourites",
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("image_id", _id(), autoincrement=False, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_favourites_image_id_images"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "image_id", name=op.f("pk_favourites")),
    )
    op.create_index(op.f("ix_favourites_image_id"), "favourites", ["image_id"])

    op.create_table(
        "hypernetwork_modules",
        sa.Column("id", _id(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("shared", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metadata", _json(), nullable=False),
        *_timestamps("created_at", "updated_at"),
        sa.CheckConstraint(
            "status IN ('private', 'pending', 'approved', 'rejected')",
            name=op.f("ck_hypernetwork_modules_status"),
        ),
        sa.ForeignKeyConstraint(
            ["guild_id"],
            ["guilds.id"],
            name=op.f("fk_hypernetwork_modules_guild_id_guilds"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hypernetwork_modules")),
        sa.UniqueConstraint("guild_id", "name", name="uq_hypernetwork_modules_guild_name"),
    )
    op.create_index(op.f("ix_hypernetwork_modules_owner_id"), "hypernetwork_modules", ["owner_id"])
    op.create_index(op.f("ix_hypernetwork_modules_sha256"), "hypernetwork_modules", ["sha256"])

    op.create_table(
        "audit_log",
        sa.Column("id", _id(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("actor_id", sa.BigInteger(), nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("target_user_id", sa.BigInteger(), nullable=True),
        sa.Column("target_job_id", _id(), nullable=True),
        sa.Column("details", _json(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )
    op.create_index("ix_audit_log_guild_id_id", "audit_log", ["guild_id", "id"])

    op.create_table(
        "bans",
        sa.Column("guild_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("user_id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("actor_id", sa.BigInteger(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["guild_id"], ["guilds.id"], name=op.f("fk_bans_guild_id_guilds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("guild_id", "user_id", name=op.f("pk_bans")),
    )
    op.create_index(op.f("ix_bans_user_id"), "bans", ["user_id"])

    op.create_table(
        "banned_words",
        sa.Column("id", _id(), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        sa.Column("word", sa.String(100), nullable=False),
        sa.Column("actor_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["guild_id"], ["guilds.id"], name=op.f("fk_banned_words_guild_id_guilds"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_banned_words")),
        sa.UniqueConstraint("guild_id", "word", name="uq_banned_words_guild_word"),
    )


def downgrade() -> None:
    # children before parents; dropping a table drops its indexes
    for table in (
        "banned_words",
        "bans",
        "audit_log",
        "hypernetwork_modules",
        "favourites",
        "images",
        "queue_clock",
        "fair_share",
        "ledger_entries",
        "jobs",
        "accounts",
        "channel_settings",
        "guild_settings",
        "guilds",
        "users",
    ):
        op.drop_table(table)
