"""Image members (sharing), and an index to find images by tag.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "image_members",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image_id", sa.String(36),
                  sa.ForeignKey("images.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("member_id", sa.String(255), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("image_id", "member_id",
                            name="uq_image_members_image_id_member_id"),
    )
    op.create_index("ix_image_members_member_id_status_image_id",
                    "image_members", ["member_id", "status", "image_id"])
    op.create_index("ix_image_tags_value_image_id", "image_tags",
                    ["value", "image_id"])


def downgrade() -> None:
    op.drop_index("ix_image_tags_value_image_id", table_name="image_tags")
    op.drop_index("ix_image_members_member_id_status_image_id",
                  table_name="image_members")
    op.drop_table("image_members")
