"""Upload leases: which node runs each upload, and until when it vouches for it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_leases",
        sa.Column("image_id", sa.String(36),
                  sa.ForeignKey("images.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("node_id", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("failure_status", sa.String(30), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("upload_leases")
