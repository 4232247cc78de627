"""Workspace key services (SPEC §11): CSE resources and admins, DKE keys and versions.

``cse_admins``, ``dke_keys`` and ``dke_key_versions`` are sealed rows (see
``sceau.store.workspace``); ``cse_resources`` is an index verified against the sealed key
record at every use.

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
    op.create_table(
        "cse_resources",
        sa.Column("resource_name", sa.String(512), primary_key=True),
        sa.Column("key_id", sa.LargeBinary(16), sa.ForeignKey("keys.key_id"), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "cse_admins",
        sa.Column("email", sa.String(320), primary_key=True),
        sa.Column("added_by", sa.String(320), nullable=False),
        sa.Column("added_at", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("seal", sa.LargeBinary(64), nullable=True),
    )
    op.create_table(
        "dke_keys",
        sa.Column("name", sa.String(128), primary_key=True),
        sa.Column("key_id", sa.LargeBinary(16), sa.ForeignKey("keys.key_id"), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("seal", sa.LargeBinary(64), nullable=True),
    )
    op.create_table(
        "dke_key_versions",
        sa.Column("name", sa.String(128), sa.ForeignKey("dke_keys.name"), primary_key=True),
        sa.Column("keyid", sa.String(64), primary_key=True),
        sa.Column("n", sa.Text, nullable=False),
        sa.Column("e", sa.BigInteger, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("retired_at", sa.BigInteger, nullable=True),
        sa.Column("revision", sa.BigInteger, nullable=False, server_default="1"),
        sa.Column("seal", sa.LargeBinary(64), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("dke_key_versions")
    op.drop_table("dke_keys")
    op.drop_table("cse_admins")
    op.drop_table("cse_resources")
