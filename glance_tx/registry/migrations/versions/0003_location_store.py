"""The id of the store that holds each location's data.

Existing rows keep NULL: the store map then picks the store by the URL's
scheme, as it did before store ids were recorded.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("image_locations") as batch:
        batch.add_column(sa.Column("store", sa.String(255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("image_locations") as batch:
        batch.drop_column("store")
