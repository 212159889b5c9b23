"""Reliability and storage: resume leases, parked events, compressed size

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("stored_size", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("compression", sa.String(length=16), nullable=True))
    with op.batch_alter_table("outbox") as batch:
        batch.add_column(sa.Column("parked_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("outbox") as batch:
        batch.drop_column("parked_at")
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("compression")
        batch.drop_column("stored_size")
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
