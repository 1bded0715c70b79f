"""The rest of each location's metadata (Glance's location C{metadata}).

Existing rows keep NULL: no metadata but the store id.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("image_locations") as batch:
        batch.add_column(sa.Column("meta_data", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image_locations") as batch:
        batch.drop_column("meta_data")
