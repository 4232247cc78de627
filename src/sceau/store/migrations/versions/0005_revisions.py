"""Revision counters of tables a node keeps in memory (``store_revisions``).

Every change of an application or of one of its signing keys bumps the ``applications``
counter in its own transaction; a node reads the counter once per group commit and reloads
its in-memory copy of those tables when it moved (``sceau.store.applications``).

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
    table = op.create_table(
        "store_revisions",
        sa.Column("name", sa.String(32), primary_key=True),
        sa.Column("revision", sa.BigInteger, nullable=False),
    )
    op.bulk_insert(table, [{"name": "applications", "revision": 1}])


def downgrade() -> None:
    op.drop_table("store_revisions")
