"""The initial registry schema: images, their properties, locations and tags.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(255)),
        sa.Column("status", sa.String(30), nullable=False),
        sa.Column("size", sa.BigInteger),
        sa.Column("virtual_size", sa.BigInteger),
        sa.Column("checksum", sa.String(32)),
        sa.Column("os_hash_algo", sa.String(64)),
        sa.Column("os_hash_value", sa.String(128)),
        sa.Column("disk_format", sa.String(20)),
        sa.Column("container_format", sa.String(20)),
        sa.Column("visibility", sa.String(20), nullable=False),
        sa.Column("owner", sa.String(255)),
        sa.Column("min_ram", sa.Integer, nullable=False),
        sa.Column("min_disk", sa.Integer, nullable=False),
        sa.Column("protected", sa.Boolean, nullable=False),
        sa.Column("os_hidden", sa.Boolean, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deleted_at", sa.DateTime(timezone=True)),
        sa.Column("deleted", sa.Boolean, nullable=False),
    )
    for key in ("created_at", "updated_at", "name", "status", "size", "owner",
                "visibility"):
        op.create_index(f"ix_images_deleted_{key}_id", "images",
                        ["deleted", key, "id"])
    op.create_index("ix_images_checksum", "images", ["checksum"])

    op.create_table(
        "image_properties",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image_id", sa.String(36),
                  sa.ForeignKey("images.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("value", sa.Text, nullable=False),
        sa.UniqueConstraint("image_id", "name",
                            name="uq_image_properties_image_id_name"),
    )
    # Only a prefix of the value is indexed: PostgreSQL refuses B-tree rows
    # over about 2.7 kB, and property values are unbounded text.
    op.create_index("ix_image_properties_name_value", "image_properties",
                    ["name", sa.text("substr(value, 1, 255)")])

    op.create_table(
        "image_locations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("image_id", sa.String(36),
                  sa.ForeignKey("images.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("url", sa.Text, nullable=False),
        sa.UniqueConstraint("image_id", "position",
                            name="uq_image_locations_image_id_position"),
    )

    op.create_table(
        "image_tags",
        sa.Column("image_id", sa.String(36),
                  sa.ForeignKey("images.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("value", sa.String(255), primary_key=True),
    )


def downgrade() -> None:
    op.drop_table("image_tags")
    op.drop_table("image_locations")
    op.drop_table("image_properties")
    op.drop_table("images")
