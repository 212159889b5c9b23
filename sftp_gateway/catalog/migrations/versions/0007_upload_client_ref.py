"""uploads.client_ref: the browser upload (one tus URL) a row belongs to

A link's page resumes only the partial upload its own URL started, and reports done
only the upload its own URL published: never another file of the same name.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.add_column(sa.Column("client_ref", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("uploads") as batch:
        batch.drop_column("client_ref")
