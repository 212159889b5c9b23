"""sent_emails.pending: recipients an SMTP server refused for now (4xx)

An email that reached some recipients while the server answered 4xx for others (a
greylisting or full mailbox) is retried for those others only, on the message's next
delivery; the row says who got it and who is still owed it.

Revision ID: 0008
Revises: 0007
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("sent_emails") as batch:
        batch.add_column(sa.Column("pending", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sent_emails") as batch:
        batch.drop_column("pending")
