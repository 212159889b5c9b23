"""Browser upload links: the upload_links table and uploads.link_id

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_links",
        sa.Column("id", sa.String(length=36), primary_key=True),
        sa.Column("token_sha256", sa.String(length=64), nullable=False, unique=True),
        sa.Column("user_name", sa.String(length=64), nullable=False),
        sa.Column("folder", sa.Text(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("max_uploads", sa.Integer(), nullable=True),
        sa.Column("max_size", sa.BigInteger(), nullable=True),
        sa.Column("uploads_used", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_upload_links_user_name", "upload_links", ["user_name"])
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("link_id", sa.String(length=36), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("link_id")
    op.drop_index("ix_upload_links_user_name", table_name="upload_links")
    op.drop_table("upload_links")
