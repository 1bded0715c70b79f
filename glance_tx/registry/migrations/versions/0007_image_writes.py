"""The id of each image's last identified write, so a repeated write is known.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_writes",
        sa.Column("image_id", sa.String(36),
                  sa.ForeignKey("images.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("write_id", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("image_writes")
