"""modules: hypernetworks, LoRAs and textual-inversion embeddings in one table with a kind

Revision ID: 0006
Revises: 0005
Create Date: 2027-01-27

``hypernetwork_modules`` becomes ``modules`` with a ``kind`` column; its rows are hypernetworks and keep
their ids (members' active modules name them in the guild settings).  Names are unique per server and
kind.  The downgrade keeps the hypernetworks and drops the LoRA and embedding rows (their files stay
on disk).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATUS = "status IN ('private', 'pending', 'approved', 'rejected')"
_COLUMNS = "id, guild_id, owner_id, name, path, sha256, shared, status, metadata, created_at, updated_at"


def _table(name: str, *, kind: bool) -> None:
    op.create_table(
        name,
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("guild_id", sa.BigInteger(), nullable=False),
        *([sa.Column("kind", sa.String(16), nullable=False)] if kind else []),
        sa.Column("owner_id", sa.BigInteger(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("shared", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("metadata", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(_STATUS, name=op.f(f"ck_{name}_status")),
        *([sa.CheckConstraint("kind IN ('hypernet', 'lora', 'embedding')", name=op.f(f"ck_{name}_kind"))] if kind else []),
        sa.ForeignKeyConstraint(["guild_id"], ["guilds.id"], name=op.f(f"fk_{name}_guild_id_guilds"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f(f"pk_{name}")),
        sa.UniqueConstraint("guild_id", *(["kind"] if kind else []), "name", name=f"uq_{name}_guild_{'kind_' if kind else ''}name"),
    )
    op.create_index(op.f(f"ix_{name}_owner_id"), name, ["owner_id"])
    op.create_index(op.f(f"ix_{name}_sha256"), name, ["sha256"])


def _continue_ids(name: str) -> None:
    """PostgreSQL: the copied ids were given explicitly, so the id sequence starts after them."""
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"SELECT setval(pg_get_serial_sequence('{name}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {name}")


def upgrade() -> None:
    _table("modules", kind=True)
    op.execute(f"INSERT INTO modules (kind, {_COLUMNS}) SELECT 'hypernet', {_COLUMNS} FROM hypernetwork_modules")
    _continue_ids("modules")
    op.drop_table("hypernetwork_modules")


def downgrade() -> None:
    _table("hypernetwork_modules", kind=False)
    op.execute(f"INSERT INTO hypernetwork_modules ({_COLUMNS}) SELECT {_COLUMNS} FROM modules WHERE kind = 'hypernet'")
    _continue_ids("hypernetwork_modules")
    op.drop_table("modules")
