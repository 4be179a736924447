"""channel_settings.nsfw dropped: nothing read it (a channel is NSFW when Discord marks it age-restricted)

Revision ID: 0003
Revises: 0002
Create Date: 2027-01-12
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("channel_settings") as batch:
        batch.drop_column("nsfw")


def downgrade() -> None:
    with op.batch_alter_table("channel_settings") as batch:
        batch.add_column(sa.Column("nsfw", sa.Boolean(), server_default=sa.false(), nullable=False))
